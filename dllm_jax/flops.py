"""FLOPs accounting, one module for MFU in training and for cost tables in reports.

Model FLOPs (what the math needs, not what remat recomputes): a matmul of an [n, a]
input with an [a, b] weight is 2*n*a*b forward; backward is twice forward. Attention
scores and the weighted sum cost 4 * L_kv * heads * head_dim per query token per layer.
AR and MDM run the same network on the same shapes, so their training FLOPs per token
are identical; both compute full [L, L] attention (the causal mask is applied, not
skipped), and that is what is counted.
"""

from __future__ import annotations

from dllm_jax.models import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls (everything but embeddings and norms)."""
    d, hd = cfg.d_model, cfg.head_size
    attn = d * cfg.n_heads * hd * 2 + d * cfg.kv_heads * hd * 2
    mlp = 3 * d * cfg.ffn_size
    return cfg.n_layers * (attn + mlp) + d * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    """Forward FLOPs for one query token attending to `context_len` keys."""
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.head_size * context_len
    return 2.0 * matmul_params(cfg) + attention


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per training token (3x forward)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
