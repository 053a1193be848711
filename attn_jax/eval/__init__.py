"""Evaluation metrics over trained models: Fréchet distance on a classifier's features (FID)."""

from attn_jax.eval.fid import (
    ClassifierFeatures,
    classifier_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
)

__all__ = [
    "ClassifierFeatures",
    "classifier_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
]
