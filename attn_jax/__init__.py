"""attn_jax: attention models in JAX/Flax linen, trained by one sharded train.py."""

__version__ = "0.1.0"
