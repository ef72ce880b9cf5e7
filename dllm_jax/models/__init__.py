"""Models importable on their own: `from dllm_jax.models import ModelConfig, Transformer`."""
from dllm_jax.models.transformer import ModelConfig, Transformer, count_params, init_cache

__all__ = ["ModelConfig", "Transformer", "count_params", "init_cache"]
