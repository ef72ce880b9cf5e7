"""FLOPs accounting, one module for MFU in training and for cost tables in reports.

Model FLOPs (what the math needs, not what remat recomputes): a matmul of an [n, a]
input with an [a, b] weight is 2*n*a*b forward; backward is twice forward. Attention
scores and the weighted sum cost 4 * L_kv * heads * head_dim per query token per layer.
AR and MDM run the same network on the same shapes, so their training FLOPs per token
are identical; both compute full [L, L] attention (the causal mask is applied, not
skipped), and that is what is counted. Block diffusion (BD3-LM's vectorised training) runs
2L tokens, [x_t ; x_0], through every layer with full [2L, 2L] attention (the block mask is
applied, not skipped) and the output head on the L noisy positions only: per training
token ~2x the matmul FLOPs and 4x the attention FLOPs of AR/MDM
(`block_diffusion_train_flops_per_token`).

Inference (generating `gen_len` tokens after a prompt of `prompt_len` tokens; the prompt is
at least the BOS token) counts what each decoding method needs, attention included:
- AR with a KV cache: the prompt is prefilled and every generated token but the last is fed
  back once; the token at position j attends to the j + 1 keys up to itself.
- MDM: every network call runs the whole canvas T = prompt_len + gen_len, each query
  attending to all T keys. Without a cache a call per step; `tokens_per_step` tokens are
  revealed per step (1 = steps = length; more = fewer steps, as LLaDA with fewer steps or
  Fast-dLLM's confidence threshold on average); `block_length` decodes blocks left to right.
  With a Fast-dLLM-style cache a full call refreshes it at each block start (and gives
  that block's first step); the other steps of the block compute only the queries that
  change, attending to all T keys: the block and everything after it ('prefix' cache) or
  just the block ('dual' cache).
- Block diffusion with the exact KV cache (`block_diffusion_generate_flops`): the prompt is
  prefilled; each block takes `ceil(block / tokens_per_step)` calls of its `block` queries
  attending to the cached prefix and itself, then one call that writes the finished clean
  block's keys/values.
`INFERENCE_METHODS` names the methods the report tabulates; the tokens revealed per step of
the fast samplers are assumptions (they depend on the model and the threshold).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing this module (aot's chip table) needs no JAX
    from dllm_jax.models import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a token's matmuls (everything but embeddings and norms).
    For an MoE (cfg.num_experts > 0) only the active ones: the router and the
    experts_per_token experts (each a SwiGLU of width ffn_size) a token is sent to."""
    d, hd = cfg.d_model, cfg.head_size
    attn = d * cfg.n_heads * hd * 2 + d * cfg.kv_heads * hd * 2
    mlp = 3 * d * cfg.ffn_size
    experts = getattr(cfg, "num_experts", 0)
    if experts:
        mlp = cfg.experts_per_token * mlp + d * experts
    return cfg.n_layers * (attn + mlp) + d * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    """Forward FLOPs for one query token attending to `context_len` keys."""
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.head_size * context_len
    return 2.0 * matmul_params(cfg) + attention


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per training token (3x forward)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


def block_diffusion_train_flops_per_token(cfg: ModelConfig, seq_len: int, clean_head: bool = False) -> float:
    """Forward + backward FLOPs per training token of block diffusion: 2 * seq_len network
    tokens per seq_len targets, each attending to 2 * seq_len keys, the head on seq_len
    (on both halves with `clean_head`: NBDiff's auxiliary AR loss, block_diffusion.ar_loss_weight > 0)."""
    head = 2.0 * cfg.d_model * cfg.vocab_size
    body = 2.0 * matmul_params(cfg) - head
    return 3.0 * (2.0 * body + (2.0 if clean_head else 1.0) * head) + train_attention_flops_per_token(cfg, seq_len, 2 * seq_len)


def train_attention_flops_per_token(cfg: ModelConfig, seq_len: int, network_len: int | None = None) -> float:
    """The attention part of the training FLOPs per token (forward + backward = 3x forward):
    `network_len / seq_len` network tokens per training token (`Objective.network_length`:
    seq_len for AR/MDM, 2 * seq_len for block diffusion), each attending to all `network_len`
    keys (full [L, L] scores; masked blocks are not subtracted). This is the work a fused
    attention kernel (Pallas splash) does outside XLA's cost analysis (dllm_jax.aot)."""
    n = network_len or seq_len
    return 3.0 * (n / seq_len) * attention_flops_per_query(cfg, n)


def block_diffusion_generate_flops(cfg: ModelConfig, gen_len: int, prompt_len: int = 1, *, block_length: int = 16,
                                   tokens_per_step: float = 1.0) -> float:
    """Forward FLOPs for block-diffusion generation with the exact KV cache (module docstring);
    blocks are counted from the end of the prompt."""
    _check_lengths(gen_len, prompt_len, minimum_prompt=1)
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step} must be >= 1")
    dense = 2.0 * matmul_params(cfg)
    flops = prompt_len * dense + attention_flops_per_query(cfg, 1) * prompt_len * (prompt_len + 1) / 2
    prefix = prompt_len
    for start in range(0, gen_len, block_length):
        size = min(block_length, gen_len - start)
        per_call = size * (dense + attention_flops_per_query(cfg, prefix + size))
        flops += (math.ceil(size / tokens_per_step) + 1) * per_call  # the steps, then the clean block's K/V
        prefix += size
    return flops


def attention_flops_per_query(cfg: ModelConfig, context_len: int) -> float:
    """Scores and weighted sum for one query over `context_len` keys, all layers."""
    return 4.0 * cfg.n_layers * cfg.n_heads * cfg.head_size * context_len


def ar_generate_flops(cfg: ModelConfig, gen_len: int, prompt_len: int = 1) -> float:
    """Forward FLOPs for AR generation with a KV cache (see the module docstring)."""
    _check_lengths(gen_len, prompt_len, minimum_prompt=1)
    fed = prompt_len + gen_len - 1  # the last generated token is never fed back
    # token j attends to j + 1 keys: sum_{j<fed} (j + 1) = fed (fed + 1) / 2
    return fed * 2.0 * matmul_params(cfg) + attention_flops_per_query(cfg, 1) * fed * (fed + 1) / 2


def mdm_generate_flops(cfg: ModelConfig, gen_len: int, prompt_len: int = 1, *, tokens_per_step: float = 1.0,
                       block_length: int = 0, cache: str = "none") -> float:
    """Forward FLOPs for masked-diffusion generation (see the module docstring).
    `cache`: 'none', 'prefix' or 'dual'; `block_length` 0 = one block of gen_len."""
    _check_lengths(gen_len, prompt_len, minimum_prompt=0)
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step} must be >= 1")
    if cache not in ("none", "prefix", "dual"):
        raise ValueError(f"cache={cache!r} is not one of 'none', 'prefix', 'dual'")
    total_len = prompt_len + gen_len
    call_per_token = forward_flops_per_token(cfg, total_len)  # every query sees the whole canvas
    block = block_length or gen_len
    flops, prefix = 0.0, prompt_len
    for start in range(0, gen_len, block):
        size = min(block, gen_len - start)
        steps = math.ceil(size / tokens_per_step)
        if cache == "none":
            flops += steps * total_len * call_per_token
        else:
            queries = total_len - prefix if cache == "prefix" else size
            flops += total_len * call_per_token + (steps - 1) * queries * call_per_token
        prefix += size
    return flops


def _check_lengths(gen_len: int, prompt_len: int, minimum_prompt: int) -> None:
    if gen_len < 1:
        raise ValueError(f"gen_len={gen_len} must be >= 1")
    if prompt_len < minimum_prompt:
        raise ValueError(f"prompt_len={prompt_len} must be >= {minimum_prompt}")


# name -> (description, function(cfg, gen_len, prompt_len) -> FLOPs); the report's columns
INFERENCE_METHODS = {
    "ar_kv_cache": ("AR, KV cache", lambda cfg, n, p: ar_generate_flops(cfg, n, p)),
    "mdm_steps_eq_len": ("MDM, steps = length", lambda cfg, n, p: mdm_generate_flops(cfg, n, p)),
    "mdm_steps_len_div4": ("MDM, steps = length / 4", lambda cfg, n, p: mdm_generate_flops(cfg, n, p, tokens_per_step=4)),
    "mdm_dual_cache_b32": ("MDM, blocks of 32, dual cache, ~4 tokens/step (Fast-dLLM-like)",
                           lambda cfg, n, p: mdm_generate_flops(cfg, n, p, tokens_per_step=4, block_length=32, cache="dual")),
    "bd_kv_cache_b16": ("block diffusion, blocks of 16, exact KV cache, steps = length",
                        lambda cfg, n, p: block_diffusion_generate_flops(cfg, n, p, block_length=16)),
}
GENERATION_LENGTHS = (16, 64, 256, 1024, 4096)


def generation_flops_table(cfg: ModelConfig, lengths=GENERATION_LENGTHS, prompt_len: int = 1) -> list[dict]:
    """One row per length: FLOPs of each INFERENCE_METHODS entry and its ratio to AR."""
    rows = []
    for n in lengths:
        row = {"gen_len": n}
        for name, (_, fn) in INFERENCE_METHODS.items():
            row[name] = fn(cfg, n, prompt_len)
        row.update({f"{name}_vs_ar": row[name] / row["ar_kv_cache"] for name in INFERENCE_METHODS if name != "ar_kv_cache"})
        rows.append(row)
    return rows


# ---------------------------------------------------------------- peak FLOP/s by chip (for MFU)
# Dense (no structured sparsity) bfloat16 peak FLOP/s per chip, by jax `Device.device_kind`.
# MFU is taken against this peak whatever the compute dtype (model.dtype), as MaxText does.
# Sources (vendor data sheets / product pages):
#   TPU v2 45, v3 123, v4 275, v5e 197, v5p 459, v6e (Trillium) 918 TFLOP/s per chip:
#     cloud.google.com/tpu/docs/v2, .../v3, .../v4, .../v5e, .../v5p, .../v6e ("System architecture");
#   NVIDIA H100 SXM 989.5, H100 PCIe 756.5, H100 NVL 835.5 TFLOP/s (the data sheet's BF16 Tensor Core
#     figures 1,979 / 1,513 / 1,671 are "with sparsity": halved here): nvidia.com/en-us/data-center/h100/;
#   NVIDIA H200 SXM 989.5, H200 NVL 835.5 (1,979 / 1,671 with sparsity): nvidia.com/en-us/data-center/h200/;
#   NVIDIA A100 (SXM and PCIe, 40/80 GB) 312 (624 with sparsity): nvidia.com/en-us/data-center/a100/.
# JAX names v5e "TPU v5 lite", v5p "TPU v5" and v6e "TPU v6 lite"; the Cloud names are aliases.
TPU_PEAK_FLOPS = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}
# GPUs: the first entry whose words all occur in the device kind (e.g. 'NVIDIA H100 80GB HBM3') wins
GPU_PEAK_FLOPS = (
    (("H100", "PCIE"), 756.5e12), (("H100", "NVL"), 835.5e12), (("H100",), 989.5e12),
    (("H200", "NVL"), 835.5e12), (("H200",), 989.5e12),
    (("A100",), 312e12),
)
# TPU v2/v3 expose each chip's 2 TensorCores as 2 JAX devices; later chips are one device each
DEVICES_PER_CHIP = {"TPU v2": 2, "TPU v3": 2}


def peak_flops_per_chip(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip of `device_kind` (a jax `Device.device_kind`), or
    None where the table has none (CPUs, other GPUs): no MFU is reported there."""
    if device_kind in TPU_PEAK_FLOPS:
        return TPU_PEAK_FLOPS[device_kind]
    upper = device_kind.upper().replace("-", " ")
    for words, peak in GPU_PEAK_FLOPS:
        if all(w in upper for w in words):
            return peak
    return None


def chips(device_kind: str, num_devices: int) -> float:
    """The chips that `num_devices` JAX devices of `device_kind` make up."""
    return num_devices / DEVICES_PER_CHIP.get(device_kind, 1)


def utilisation(flops_per_token: float, tokens_per_sec: float, device_kind: str, num_devices: int) -> dict:
    """Model FLOP/s per chip and MFU of a training throughput.

    `flops_per_token`: model FLOPs per training token (`Objective.train_flops_per_token`:
    forward + backward, full attention); `tokens_per_sec`: training tokens per second over all
    `num_devices`. Returns {'tflops_per_chip': model TFLOP/s per chip} plus {'mfu': that over
    the chip's dense bf16 peak (a fraction, not %)} where `peak_flops_per_chip` knows the kind."""
    per_chip = flops_per_token * tokens_per_sec / chips(device_kind, num_devices)
    out = {"tflops_per_chip": per_chip / 1e12}
    peak = peak_flops_per_chip(device_kind)
    if peak:
        out["mfu"] = per_chip / peak
    return out
