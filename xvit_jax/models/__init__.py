"""X-ViT model: backbone (vit.py), attention variants (attention.py), temporal heads (heads.py)."""

from xvit_jax.models.vit import XViT, abstract_params, create_model

__all__ = ["XViT", "abstract_params", "create_model"]
