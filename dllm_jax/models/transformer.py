"""A Llama-style decoder as a pure Flax (linen) module, shared by AR and masked-diffusion LMs.

Token embedding, pre-RMSNorm blocks with RoPE attention (optional QK-norm and grouped-query
attention) and a SwiGLU MLP, final RMSNorm, untied output head, no biases (optional q/k/v
biases and a tied head, for checkpoints imported from Hugging Face: dllm_jax.hf). The attention
mask is an argument: `causal=True` for AR, `causal=False` (bidirectional) for MDM; that
and the objective are the only differences between the two model families.

Every parameter carries logical axis names and every large activation a logical
constraint (see `dllm_jax.sharding.LOGICAL_RULES`). Outside a mesh the constraints are
no-ops, so the module works in plain JAX code:

    cfg = ModelConfig(vocab_size=1024, d_model=128, n_layers=2, n_heads=4)
    model = Transformer(cfg)
    params = model.init(jax.random.key(0), tokens, causal=False)["params"]
    logits = model.apply({"params": params}, tokens, causal=False)

Decoding: pass `cache=init_cache(cfg, batch, max_len)` and `cache_index` (a scalar, or an
int array [B]: one write position per row); the call writes the new keys/values at
[cache_index, cache_index + L) and returns `(logits, new_cache)`. Queries attend to cached
positions < cache_index + L (and, if causal, only to positions <= their own).

Other attention patterns (block diffusion's, see dllm_jax.objectives.block_diffusion) come
as an explicit `attention_mask` with explicit `positions`. A static pattern, the same for
every example, is a function `pattern(q_idx, k_idx) -> bool` of query / key indices (numpy or
jax arrays, broadcast; e.g. `block_diffusion.BlockPattern`) or a numpy bool [Lq, Lk]: the
splash kernel takes it as its block-sparse mask, XLA attention evaluates it on iotas (a numpy
array: as a constant). A jax bool array [B or 1, 1, Lq, Lk] (per example, or traced) needs
XLA attention. `out_length=n` computes the output head for
the first n positions only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dllm_jax.models import splash
from dllm_jax.models.moe import MoEMLP

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # rows of the embedding / output head (tokenizer vocab + [MASK], padded)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 = n_heads
    head_dim: int = 0  # 0 = d_model // n_heads
    d_ff: int = 0  # 0 = 8/3 d_model rounded up to a multiple of 64
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True
    attention_bias: bool = False  # biases on the q/k/v projections (Qwen2); the output projection never has one
    tie_embeddings: bool = False  # True: the output head is the embedding transposed (no lm_head parameter)
    shift_logits: bool = False  # True: the output at position i comes from the hidden state at i-1 (AR-to-MDM adaptation)
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; parameters stay float32
    scan_layers: bool = True
    remat: str = "none"  # 'none' | 'full' | 'dots' | 'dots_with_no_batch_dims' | 'minimal'
    dropout: float = 0.0
    attention_impl: str = "auto"  # 'auto' | 'xla' | 'cudnn' | 'splash' (see resolve_attention_impl)
    num_experts: int = 0  # 0 = dense SwiGLU MLP; > 0 = token-choice top-k MoE MLP (models/moe.py)
    experts_per_token: int = 2  # top-k
    capacity_factor: float = 1.25  # expert capacity per device = factor * tokens * k / experts; 0 = dropless
    router_aux_weight: float = 0.01  # load-balancing loss weight (applied by the train step)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn_size(self) -> int:
        return self.d_ff or 64 * -(-(8 * self.d_model // 3) // 64)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @classmethod
    def from_config(cls, model_cfg, vocab_size: int) -> "ModelConfig":
        """Build from the `model` group of a run config (a ConfigDict or dict)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
        values = {k: model_cfg[k] for k in fields if k in model_cfg}
        return cls(vocab_size=vocab_size, **values)


def _param(module, name, shape, axes, std):
    init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
    return module.param(name, init, shape, jnp.float32)


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


def project(equation: str, x, w):
    """`jnp.einsum(equation, x, w)` for an activation x and a weight w (e.g. "bld,df->blf").
    On a CPU target its weight gradient is laid out for XLA's CPU dot (`_cpu_project`); on TPU
    and GPU, where XLA chooses layouts itself, it is the plain einsum and JAX's own gradient."""
    if splash.target_platform() == "cpu":
        return _cpu_project(equation, x, w)
    return jnp.einsum(equation, x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cpu_project(equation: str, x, w):
    """`jnp.einsum(equation, x, w)` for an activation x and a weight w (e.g. "bld,df->blf"),
    with the same value and gradients, but the weight gradient contracts the batch and
    length axes with the smaller of (x, dy) as the dot's first operand.

    Why: JAX's own transpose rule always computes dW as dot(dy, x), and XLA's CPU dot
    (YNNPACK) wants the first operand's contracted axes minor, so the [tokens, d_ff]
    gradient of the SwiGLU gate/up projections (and the [tokens, vocab] logits gradient of
    the output head) was copied into a transposed layout every layer: ~30% of an AR train
    step of the 34M model on 2 CPU cores (bench/train_speed.py --peer maxtext; README
    "Speed"). dot(x, dy) lays out x ([tokens, d_model], 3x smaller there) instead; for the
    down projection, where dy is the smaller, dot(dy, x) and a transpose of the result."""
    return jnp.einsum(equation, x, w)


def _project_fwd(equation, x, w):
    return jnp.einsum(equation, x, w), (x, w)


def _project_bwd(equation, res, dy):
    x, w = res
    inputs, out = equation.split("->")
    xs, ws = inputs.split(",")
    dx = jnp.einsum(f"{out},{ws}->{xs}", dy, w)
    if x.size <= dy.size:  # dot(x, dy): x's token axes are the ones laid out again
        dw = jnp.einsum(f"{xs},{out}->{ws}", x, dy)
    else:  # dot(dy, x) in its natural output order, then the (weight-sized) transpose; the barrier
        # keeps XLA from folding that transpose into the dot by swapping its operands (which would
        # transpose the larger x again)
        natural = "".join(c for c in out if c in ws) + "".join(c for c in xs if c in ws)
        dw = jax.lax.optimization_barrier(jnp.einsum(f"{out},{xs}->{natural}", dy, x))
        dw = jnp.einsum(f"{natural}->{ws}", dw)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_project.defvjp(_project_fwd, _project_bwd)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)


def rope(x, positions, base: float):
    """Rotary embedding on [B, L, H, D] with integer positions [B, L] (rotate-half form)."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs  # [B, L, half]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: {'k', 'v'} of shape [n_layers, batch, max_len, kv_heads, head_dim]."""
    shape = (cfg.n_layers, batch, max_len, cfg.kv_heads, cfg.head_size)
    dtype = dtype or cfg.compute_dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _write_cache(cache, new, index):
    """cache [B, T, ...] with `new` [B, L, ...] written at [index, index + L) (index scalar or [B])."""
    new = new.astype(cache.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=1)
    return jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis=0))(cache, new, index)


class Attention(nn.Module):
    cfg: ModelConfig
    static_mask: Any = None  # splash.StaticMask [Lq, Lk]: a static pattern the splash kernel applies (Transformer)

    @nn.compact
    def __call__(self, x, positions, mask, is_causal, layer_cache, cache_index):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        h, k, d = cfg.n_heads, cfg.kv_heads, cfg.head_size
        std = cfg.init_std
        wq = _param(self, "wq", (cfg.d_model, h, d), ("embed", "q_heads", "head_dim"), std)
        wk = _param(self, "wk", (cfg.d_model, k, d), ("embed", "kv_heads", "head_dim"), std)
        wv = _param(self, "wv", (cfg.d_model, k, d), ("embed", "kv_heads", "head_dim"), std)
        wo = _param(self, "wo", (h, d, cfg.d_model), ("q_heads", "head_dim", "embed"), std / (2 * cfg.n_layers) ** 0.5)
        q = project("bld,dhk->blhk", x, wq.astype(dt))
        key = project("bld,dhk->blhk", x, wk.astype(dt))
        value = project("bld,dhk->blhk", x, wv.astype(dt))
        if cfg.attention_bias:
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("q_heads", "head_dim"))
            kv_zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("kv_heads", "head_dim"))
            q = q + self.param("bq", zeros, (h, d), jnp.float32).astype(dt)
            key = key + self.param("bk", kv_zeros, (k, d), jnp.float32).astype(dt)
            value = value + self.param("bv", kv_zeros, (k, d), jnp.float32).astype(dt)
        if cfg.qk_norm:
            q = RMSNorm(cfg.norm_eps, dt, name="q_norm")(q)
            key = RMSNorm(cfg.norm_eps, dt, name="k_norm")(key)
        q = _constrain(rope(q, positions, cfg.rope_base), ("activation_batch", "activation_length", "activation_heads", None))
        key = _constrain(rope(key, positions, cfg.rope_base), ("activation_batch", "activation_length", "activation_kv_heads", None))
        value = _constrain(value, ("activation_batch", "activation_length", "activation_kv_heads", None))
        new_cache = None
        if layer_cache is not None:
            key = _write_cache(layer_cache["k"], key, cache_index)
            value = _write_cache(layer_cache["v"], value, cache_index)
            new_cache = {"k": key, "v": value}
            key, value = key.astype(dt), value.astype(dt)
        if cfg.attention_impl == "splash":  # `mask` is then the segment ids [B, L] or None (Transformer)
            out = splash.splash_attention(q, key, value, causal=is_causal, segment_ids=mask, mask=self.static_mask)
        else:
            impl = None if cfg.attention_impl in ("xla", "auto") else cfg.attention_impl
            out = jax.nn.dot_product_attention(q, key, value, mask=mask, is_causal=is_causal, implementation=impl)
        out = _constrain(out, ("activation_batch", "activation_length", "activation_heads", None))
        y = project("blhk,hkd->bld", out, wo.astype(dt))
        return y, new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        f = cfg.ffn_size
        w_gate = _param(self, "w_gate", (cfg.d_model, f), ("embed", "mlp"), cfg.init_std)
        w_up = _param(self, "w_up", (cfg.d_model, f), ("embed", "mlp"), cfg.init_std)
        w_down = _param(self, "w_down", (f, cfg.d_model), ("mlp", "embed"), cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        gate = project("bld,df->blf", x, w_gate.astype(dt))
        up = project("bld,df->blf", x, w_up.astype(dt))
        hidden = _constrain(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return project("blf,fd->bld", hidden, w_down.astype(dt))


class Block(nn.Module):
    """Pre-norm transformer block. Signature fits nn.scan: (carry, scanned) -> (carry, out)."""

    cfg: ModelConfig
    deterministic: bool = True
    is_causal: bool = False  # True only for the fast unmasked causal path (no explicit mask)
    static_mask: Any = None  # splash only: the static pattern (splash.StaticMask), ANDed with `mask`'s segment ids

    @nn.compact
    def __call__(self, x, layer_cache, positions, mask, cache_index):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        y, new_cache = Attention(cfg, self.static_mask, name="attn")(RMSNorm(cfg.norm_eps, dt, name="attn_norm")(x), positions, mask, self.is_causal, layer_cache, cache_index)
        if cfg.dropout:
            y = nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
        x = x + y
        mlp = MoEMLP(cfg, name="moe") if cfg.num_experts else MLP(cfg, name="mlp")
        y = mlp(RMSNorm(cfg.norm_eps, dt, name="mlp_norm")(x))
        if cfg.dropout:
            y = nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
        x = _constrain(x + y, ("activation_batch", "activation_length", "activation_embed"))
        return x, new_cache


def _remat_policy(name: str):
    policies = jax.checkpoint_policies
    return {
        "full": policies.nothing_saveable,
        "dots": policies.checkpoint_dots,
        "dots_with_no_batch_dims": policies.checkpoint_dots_with_no_batch_dims,
        "minimal": policies.dots_with_no_batch_dims_saveable,
    }[name]


def resolve_attention_impl(cfg: ModelConfig, length: int, decoding: bool) -> str:
    """The attention kernel for one call: 'xla', 'cudnn' or 'splash'.

    'auto' picks per platform (`splash.target_platform`: the mesh's devices, else the default
    backend): TPU -> 'splash' (Pallas flash attention: no [B, H, L, L] scores, skips masked
    blocks) when the length tiles into blocks of 128; GPU -> 'cudnn' (cuDNN flash attention)
    when the compute dtype is bfloat16/float16 and head_dim <= 128 is a multiple of 8 (what
    cuDNN accepts); otherwise, and on CPU, 'xla'. Decoding with a KV cache (queries shorter than
    the cache, a dynamic validity mask) always uses 'xla' for 'auto' and 'splash', and so does a
    length that does not tile (training lengths are checked by config.validate; these are evaluation
    buckets and sampling canvases)."""
    impl = cfg.attention_impl
    if impl in ("xla", "cudnn"):
        return impl
    if decoding:
        return "xla"
    if impl == "splash":
        return impl if length % splash.LANES == 0 else "xla"
    platform = splash.target_platform()
    if platform == "tpu" and length % splash.LANES == 0:
        return "splash"
    d = cfg.head_size
    if platform in ("gpu", "cuda") and cfg.dtype in ("bfloat16", "float16") and d % 8 == 0 and d <= 128:
        return "cudnn"
    return "xla"


def attention_mask(segment_ids_q, segment_ids_k, causal, q_positions=None, k_positions=None, k_valid=None):
    """Boolean mask [B, 1, Lq, Lk]: same segment, (causal) key position <= query position, valid key."""
    mask = None
    if segment_ids_q is not None:
        mask = segment_ids_q[:, :, None] == segment_ids_k[:, None, :]
    if causal and q_positions is not None:
        c = k_positions[:, None, :] <= q_positions[:, :, None]
        mask = c if mask is None else mask & c
    if k_valid is not None:
        v = jnp.broadcast_to(k_valid[:, None, :], (k_valid.shape[0], 1 if mask is None else mask.shape[1], k_valid.shape[1]))
        mask = v if mask is None else mask & v
    return None if mask is None else mask[:, None, :, :]


_segment_mask = attention_mask  # (the Transformer's `attention_mask` argument shadows the name)


class Transformer(nn.Module):
    """tokens [B, L] int -> logits [B, L, vocab] float32 (and a new cache when given one)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, *, causal: bool, positions=None, segment_ids=None, cache=None, cache_index=0, deterministic: bool = True,
                 return_hidden: bool = False, attention_mask=None, out_length: int = 0):
        """`return_hidden=True` returns the final-norm hidden states [B, L, d_model] instead of
        logits, for a loss that applies `output_head(params, cfg)` itself (dllm_jax.losses).
        `attention_mask` (bool, True = may attend): an extra mask ANDed with the pattern `causal` /
        `segment_ids` / the cache give. A function of (query, key) indices or a numpy [L, L] is static
        (block diffusion's [x_t ; x_0] pattern with causal=False): splash applies it block-sparsely.
        A jax array [B or 1, 1, L, L or T] (per example or traced: NBDiff's growing blocks, the random
        causal-to-bidirectional annealing of AR-to-MDM adaptation) makes 'splash' fall back to XLA attention.
        `out_length` > 0: logits / hidden of the first `out_length` positions only."""
        cfg, dt = self.cfg, self.cfg.compute_dtype
        b, length = tokens.shape
        row_index = jnp.reshape(cache_index, (-1, 1)) if jnp.ndim(cache_index) else cache_index
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + row_index, (b, length))
        is_causal = False
        impl = resolve_attention_impl(cfg, length, decoding=cache is not None)
        static_mask = None
        if callable(attention_mask) or isinstance(attention_mask, np.ndarray):  # static (block diffusion's [x_t ; x_0])
            k_len = length if cache is None else cache["k"].shape[2]
            if impl == "splash":  # the kernel's block-sparse mask, built with numpy at trace time
                pattern = (attention_mask(np.arange(length)[:, None], np.arange(k_len)[None, :]) if callable(attention_mask)
                           else attention_mask.reshape(attention_mask.shape[-2:]))
                static_mask, attention_mask = splash.StaticMask(pattern), None
            elif callable(attention_mask):  # from iotas: no [L, L] constant in the program
                attention_mask = attention_mask(jnp.arange(length)[:, None], jnp.arange(k_len)[None, :])[None, None]
            else:
                attention_mask = jnp.asarray(attention_mask).reshape((1, 1) + attention_mask.shape[-2:])
        elif attention_mask is not None and impl == "splash":
            # a traced or per-example mask (NBDiff's growing block size, DiffuLLaMA's random annealing
            # mask): the splash kernel's mask is static by construction, so XLA attention
            impl = "xla"
        cfg = dataclasses.replace(cfg, attention_impl=impl)  # the blocks see the resolved kernel
        if cache is not None:
            # decoding: mask over the whole cache, valid up to cache_index + length
            max_len = cache["k"].shape[2]
            k_pos = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (b, max_len))
            k_valid = k_pos < row_index + length
            mask = _segment_mask(None, None, causal, positions, k_pos, k_valid)
            if attention_mask is not None:
                mask = mask & attention_mask
        elif segment_ids is not None and impl == "splash":
            mask, is_causal = segment_ids, causal  # splash masks by segment ids itself (causal by index)
        elif segment_ids is not None:
            mask = _segment_mask(segment_ids, segment_ids, causal, positions, positions)
        else:
            mask, is_causal = None, causal
        if attention_mask is not None and cache is None:
            if mask is None and causal:
                mask = _segment_mask(None, None, True, positions, positions)
            mask = attention_mask if mask is None else mask & attention_mask
            is_causal = False

        embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
        x = jnp.take(embedding, tokens, axis=0).astype(dt)
        x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))

        block = Block
        if cfg.remat != "none":
            block = nn.remat(block, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
        layer_caches = None
        if cfg.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, layer_caches = scanned(cfg, deterministic, is_causal, static_mask, name="layers")(x, cache, positions, mask, cache_index)
        else:
            outs = []
            for i in range(cfg.n_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
                x, new_layer_cache = block(cfg, deterministic, is_causal, static_mask, name=f"layer_{i}")(x, layer_cache, positions, mask, cache_index)
                outs.append(new_layer_cache)
            if cache is not None:
                layer_caches = jax.tree.map(lambda *c: jnp.stack(c), *outs)

        if out_length:
            x = x[:, :out_length]
        x = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x)
        if cfg.shift_logits:
            # Dream / DiffuLLaMA shifted prediction: the state at i-1 predicts token i, the AR
            # head's next-token convention; position 0 keeps its own state. Array order, so
            # not with a slot-ordered KV cache.
            if cache is not None:
                raise ValueError("model.shift_logits: decode without a KV cache (the shift is over array positions)")
            x = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
        head = embedding.T if cfg.tie_embeddings else _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)
        if return_hidden:
            return (x, layer_caches) if cache is not None else x
        logits = project("bld,dv->blv", x, head.astype(dt)).astype(jnp.float32)
        logits = _constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
        if cache is not None:
            return logits, layer_caches
        return logits


def output_head(params, cfg: ModelConfig):
    """The output projection [d_model, vocab]: `lm_head`, or the embedding transposed when tied."""
    return params["embedding"].T if cfg.tie_embeddings else params["lm_head"]


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


__all__ = ["ModelConfig", "Transformer", "init_cache", "count_params", "output_head", "rope", "attention_mask", "resolve_attention_impl"]
