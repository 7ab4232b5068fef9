"""xvit_jax: X-ViT (space-time mixing attention for video transformers) in JAX/Flax."""

__version__ = "0.1.0"
