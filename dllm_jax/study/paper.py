"""The study's paper-scale setup (field notes section 1), shared by experiments/paper_*.py.

Architecture as in the study's released scripts: SwiGLU with FFN = 3 d_model, RMSNorm eps
1e-6, RoPE base 1e4, QK-norm, no biases, untied embeddings, head_dim 128, sequence length
2048, no dropout, GPT-NeoX vocabulary (~50k; the mask token is an extra id). The study names
its models 1B..8B without publishing every shape; the shapes here are decided so that the
total parameter count (embeddings included, vocab rows 50,304) is within 5% of the name:

    size   layers  d_model  heads  FFN     params
    1b     28      1536     12     4608    1.01B
    1.7b   28      2048     16     6144    1.73B   (the study's script example)
    2b     32      2048     16     6144    1.95B
    4b     30      3072     24     9216    3.99B
    8b     32      4096     32     14336   8.20B
    moe    20      2048     16     32 experts of 1920, top-2: 8.09B total, 1.01B active

Training: AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, init std 0.02, bf16 compute, LR
2e-4 -> 2e-5 with warmup 2000 steps and a WSD schedule (the decay over the last 10% is
decided here: the study's fraction is not published), global batch 256 x 2048 tokens.
A 96B-token budget at U unique tokens is ceil(96B / U) epochs cut at exactly
96B / (256 * 2048) = 183,105 steps (U = 10B is 9.6 epochs). Validation about 50 times per
run and at least once per epoch, as the study validates each epoch.

Data: `data.source = 'array_record'` over `$DLLM_DATA/train/*.array_record` (one UTF-8
document per record) and `data.tokenizer = $DLLM_DATA/gpt-neox-50k.model`, a SentencePiece
model of the GPT-NeoX vocabulary: the tokenizer must be given by path, never trained at
this scale. `data.vocab_size` (50,277, GPT-NeoX) is then used only to size the model
before the tokenizer is loaded (parameter counts, FLOPs tables).
"""

from __future__ import annotations

import math

from dllm_jax.config import default_config, set_key
from dllm_jax.errors import ConfigError
from dllm_jax.study.grid import as_arg

NEOX_VOCAB = 50_277
SEQ_LEN = 2048
GLOBAL_BATCH = 256
TOTAL_TOKENS = 96_000_000_000
UNIQUE_TOKENS = (500_000_000, 1_000_000_000, 1_500_000_000, 10_000_000_000, 96_000_000_000)
DENSE = {
    "1b": dict(d_model=1536, n_layers=28, n_heads=12, d_ff=4608),
    "1.7b": dict(d_model=2048, n_layers=28, n_heads=16, d_ff=6144),
    "2b": dict(d_model=2048, n_layers=32, n_heads=16, d_ff=6144),
    "4b": dict(d_model=3072, n_layers=30, n_heads=24, d_ff=9216),
    "8b": dict(d_model=4096, n_layers=32, n_heads=32, d_ff=14336),
}
MOE = {"moe_8b_a1b": dict(d_model=2048, n_layers=20, n_heads=16, d_ff=1920, num_experts=32, experts_per_token=2)}
NOMINAL_PARAMS = {"1b": 1e9, "1.7b": 1.7e9, "2b": 2e9, "4b": 4e9, "8b": 8e9, "moe_8b_a1b": 8e9}
NOMINAL_ACTIVE = {"moe_8b_a1b": 1e9}


def model_overrides(size: str) -> dict:
    """{'model.KEY': value} of a named size; MoE sizes need the MoE keys (model.num_experts)."""
    shapes = {**DENSE, **MOE}
    if size not in shapes:
        raise ConfigError(f"model size {size!r} is not one of {', '.join(shapes)}")
    if size in MOE and "num_experts" not in default_config().model:
        raise ConfigError(f"model size {size!r} needs MoE support (model.num_experts), which this installation lacks")
    out = {f"model.{k}": v for k, v in shapes[size].items()}
    if size in MOE:
        out["mesh.expert"] = 8
    return out


def budget_overrides(unique_tokens: int, total_tokens: int = TOTAL_TOKENS) -> dict:
    """Data budget keys: U, epochs = ceil(total / U), num_steps = total / tokens per step,
    validation ~50 times per run and at least once per epoch."""
    per_step = GLOBAL_BATCH * SEQ_LEN
    num_steps = int(total_tokens) // per_step
    steps_per_epoch = int(unique_tokens) // per_step
    if steps_per_epoch < 1:
        raise ConfigError(f"unique tokens {unique_tokens} are less than one global batch ({per_step} tokens)")
    return {
        "data.unique_tokens": int(unique_tokens),
        "data.epochs": math.ceil(num_steps / steps_per_epoch),
        "train.num_steps": num_steps,
        "train.eval_every": max(1, min(steps_per_epoch, num_steps // 50)),
    }


def base_config():
    """Everything but the model size, objective and data budget."""
    c = default_config()
    c.objective = "mdm"
    c.seed = 0
    m = c.model
    m.n_kv_heads = 0
    m.head_dim = 0
    m.rope_base = 1e4
    m.norm_eps = 1e-6
    m.qk_norm = True
    m.init_std = 0.02
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat = "full"  # memory-safe default; check a lighter policy with `dllm-jax compile`
    m.dropout = 0.0
    m.vocab_multiple = 128
    d = c.data
    d.source = "array_record"
    d.paths = "$DLLM_DATA/train/*.array_record"
    d.tokenizer = "$DLLM_DATA/gpt-neox-50k.model"
    d.vocab_size = NEOX_VOCAB
    d.seq_len = SEQ_LEN
    d.val_tokens = 16 * GLOBAL_BATCH * SEQ_LEN
    t = c.train
    t.batch_size = GLOBAL_BATCH
    t.lr = 2e-4
    t.min_lr_ratio = 0.1
    t.warmup_steps = 2000
    t.schedule = "wsd"
    t.decay_fraction = 0.1
    t.b1, t.b2 = 0.9, 0.95
    t.weight_decay = 0.1
    t.clip_norm = 1.0
    t.log_every = 50
    t.eval_batches = 16
    t.checkpoint_every = 1000
    t.keep_last = 2
    t.keep_every = 10_000
    t.progress = False
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    return c


def paper_config(size: str, objective: str = "mdm", unique_tokens: int = UNIQUE_TOKENS[1], total_tokens: int = TOTAL_TOKENS):
    """One complete paper-scale run config."""
    c = base_config()
    for key, value in {"objective": objective, **model_overrides(size), **budget_overrides(unique_tokens, total_tokens)}.items():
        set_key(c, key, as_arg(value))
    return c


def param_counts(config) -> tuple[int, int]:
    """(total, active per token) parameters of a config's model, from shapes only (no allocation)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dllm_jax.train_step import build_model

    model = build_model(config, config.data.vocab_size)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), causal=False))
    total, inactive = 0, 0
    m = config.model
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
        size = int(np.prod(leaf.shape))
        total += size
        if m.get("num_experts", 0) and any(getattr(k, "key", None) in ("w_gate", "w_up", "w_down") for k in path) and \
                any(getattr(k, "key", None) == "moe" for k in path):
            inactive += size * (m.num_experts - m.experts_per_token) // m.num_experts
    return total, total - inactive
