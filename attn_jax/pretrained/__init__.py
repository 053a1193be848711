"""Pretrained weights in and out: Google `.npz` and Hugging Face checkpoints.

Loading (NumPy trees in this repo's parameter names; use them with `model.apply`):

    params = load_npz("ViT-B_16.npz")                  # vision_transformer / big_vision layout
    config, params = load_hf("hf_dir")                 # ViTForImageClassification, GPT2LMHeadModel
    model = build_model(*hf_model_config(config))      # the repo model of that config.json
    fmt, config, flat = load_pretrained(path)          # what config.init uses: {path: array}

Export:

    save_npz(params, "vit.npz")                        # vision_transformer layout (timm reads it)
    save_npz(params, "vit.npz", layout="big_vision")
    save_hf(model, params, "out_dir")                  # model.safetensors + config.json

Fine-tuning from them goes through `config.init` (`attn_jax.train.init.Initializer`):

    config.init.path = "ViT-B_16.npz"    # or a HF directory / model.safetensors, or a workdir
    config.init.format = "auto"          # 'auto' | 'workdir' | 'npz' | 'hf'
    config.init.posemb_resize = "linear" # or 'bicubic' (timm / HF), for a new image size
    config.init.strict = False           # True: every model parameter must load (or adapt)

Formats: `npz` (attn_jax.pretrained.npz) is a flat '/'-joined Flax tree, renamed only (the
MLP-Mixer's names load as they are); `hf` (attn_jax.pretrained.hf) maps the two
architectures' keys and layouts. No torch is needed at run time; `safetensors` is.
This package lives outside `attn_jax/train` because its tables know particular models, which
the trainer must not (DESIGN.md); the Initializer asks it only for a flat {path: array}.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from attn_jax.pretrained.hf import (hf_model_config, hf_to_repo, load_hf, read_hf, repo_to_hf,
                                   save_hf)
from attn_jax.pretrained.npz import load_npz, npz_to_repo, read_npz, repo_to_npz, save_npz

FORMATS = ("auto", "workdir", "npz", "hf")

__all__ = ["FORMATS", "detect_format", "is_pretrained_file", "load_pretrained", "load_npz", "save_npz", "read_npz",
           "npz_to_repo", "repo_to_npz", "load_hf", "save_hf", "read_hf", "hf_to_repo",
           "repo_to_hf", "hf_model_config"]


def detect_format(path: str) -> str:
    """'npz' for an .npz file, 'hf' for a .safetensors file or a directory holding
    config.json and model.safetensors (or its index), 'workdir' for a directory with
    checkpoints/ or config.json; ValueError otherwise."""
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return "npz"
        if path.endswith(".safetensors"):
            return "hf"
    elif os.path.isdir(path):
        files = set(os.listdir(path))
        if "config.json" in files and files & {"model.safetensors", "model.safetensors.index.json"}:
            return "hf"
        if files & {"checkpoints", "config.json"}:
            return "workdir"
    elif not os.path.exists(path):
        raise FileNotFoundError(f"config.init.path={path!r} does not exist")
    raise ValueError(f"config.init.path={path!r}: cannot tell its format; expected a workdir of "
                     "this repo (checkpoints/, config.json), an .npz (vision_transformer / "
                     "big_vision) or a Hugging Face directory / model.safetensors; set "
                     f"config.init.format to one of {FORMATS[1:]}")


def is_pretrained_file(path: str, format: str = "auto") -> bool:  # noqa: A002
    """Whether `config.init` (path, format) names a pretrained file ('npz' / 'hf') rather than
    a workdir of this repo (which also carries a config and a tokenizer)."""
    if format != "auto":
        return format in ("npz", "hf")
    try:
        return os.path.exists(path) and detect_format(path) in ("npz", "hf")
    except ValueError:  # neither: the Initializer says so when it reads the path
        return False


def load_pretrained(path: str, format: str = "auto"  # noqa: A002  (config.init.format)
                    ) -> tuple[str, dict[str, Any] | None, dict[str, np.ndarray]]:
    """(format, the checkpoint's config or None, {repo path: array}) of an .npz file or a HF
    checkpoint ('workdir' checkpoints are read by `attn_jax.train.restore`)."""
    if format not in FORMATS:
        raise ValueError(f"config.init.format must be one of {FORMATS}, got {format!r}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "npz":
        return fmt, None, npz_to_repo(read_npz(path), where=path)
    if fmt == "hf":
        config, state = read_hf(path)
        return fmt, config, hf_to_repo(config, state, where=path)
    raise ValueError(f"load_pretrained reads 'npz' and 'hf' checkpoints, not {fmt!r}")
