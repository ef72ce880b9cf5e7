"""Train state, sharded initialisation and the jitted train / eval steps (every objective:
the step asks the run's `objectives.Objective` for the batch, the attention pattern and the metrics).

The step is a plain `jax.jit` with in/out shardings derived from the logical axis rules,
the state donated. Randomness (masks, t, dropout) comes from `fold_in(stream(seed, TRAIN), step)`
(`dllm_jax.rng`: one stream per random quantity), so a run is a pure function of
(config, data) and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from dllm_jax.errors import ConfigError
from dllm_jax import objectives, sharding
from dllm_jax import rng as rng_lib
from dllm_jax.models import ModelConfig, Transformer
from dllm_jax.models.transformer import output_head


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def model_vocab_rows(tokenizer_vocab: int, multiple: int, extra_pad: bool = False) -> int:
    """Embedding rows: the tokenizer's pieces plus [MASK] (id tokenizer_vocab), plus [PAD]
    (id tokenizer_vocab + 1) when the tokenizer has no pad piece of its own (`extra_pad`, the
    tokenizer's `pad_is_extra`), rounded up to `multiple` for efficient matmuls."""
    rows = tokenizer_vocab + 1 + int(bool(extra_pad))
    return -(-rows // multiple) * multiple if multiple > 1 else rows


def build_model(config, tokenizer_vocab: int, extra_pad: bool = False) -> Transformer:
    """The run's Transformer (`model_vocab_rows(tokenizer_vocab, model.vocab_multiple, extra_pad)`
    embedding rows). ConfigError for model.attention_impl='cudnn' without a GPU (cuDNN
    would fail deep inside the first step with a RuntimeError)."""
    if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"model.attention_impl='cudnn' needs a GPU, and this machine's JAX backend is "
                          f"{jax.default_backend()!r}: use 'auto' (cuDNN on GPUs, splash on TPUs, XLA elsewhere) or 'xla' "
                          "(a run trained with cuDNN can be evaluated here with --config.model.attention_impl=xla)")
    return Transformer(ModelConfig.from_config(config.model, model_vocab_rows(tokenizer_vocab, config.model.vocab_multiple, extra_pad)))


def token_ids(tokenizer) -> objectives.TokenIds:
    """The objectives' ids of a tokenizer: pad (padding only, never EOS), EOS, [MASK] (the extra id
    vocab_size, or a released DLM's own mask piece), and vocab_limit = the tokenizer's vocab size."""
    return objectives.TokenIds(pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, mask_id=tokenizer.mask_id,
                               vocab_limit=tokenizer.vocab_size)


def _init_fn(model: Transformer, tx, seq_len: int):
    def init(rng):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        params = model.init({"params": rng}, tokens, causal=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def state_shardings(model: Transformer, tx, mesh, seq_len: int):
    """NamedShardings of the train state (from the logical names of its parameters)."""
    abstract = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))
    return sharding.tree_shardings(mesh, abstract)


def abstract_state(model: Transformer, tx, mesh, seq_len: int):
    """ShapeDtypeStructs with target shardings: what a checkpoint restores into."""
    shardings = state_shardings(model, tx, mesh, seq_len)
    init = _init_fn(model, tx, seq_len)
    shapes = jax.eval_shape(lambda rng: nn.meta.unbox(init(rng)), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_state(model: Transformer, tx, mesh, seq_len: int, seed) -> TrainState:
    """The step-0 state; `seed`: an int seed or a root key (`rng.run_key`)."""
    shardings = state_shardings(model, tx, mesh, seq_len)
    init = _init_fn(model, tx, seq_len)
    with jax.set_mesh(mesh):
        return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(rng_lib.stream(seed, rng_lib.INIT))


def state_from_params(tx, params, shardings) -> TrainState:
    """A step-0 train state around given parameters (fresh optimizer state), on `shardings`;
    `params` are donated."""
    def make(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

    return jax.jit(make, out_shardings=shardings, donate_argnums=(0,))(params)


def forward_ce(model: Transformer, params, prep: objectives.Prepared, *, objective: objectives.Objective | None = None,
               vocab_limit: int, loss_chunk: int = 0, causal: bool | None = None, mask_id: int | None = None, **apply_kwargs):
    """Per-position cross-entropy [B, L] (L = prep.targets.shape[1]; more generally what the
    objective's `token_loss` returns: uniform / gidd give a dict of [B, L] statistics) and the
    MoE load-balancing loss summed over layers (0.0 for a dense model). The network call is the
    objective's (`Objective.forward`: its attention pattern). `loss_chunk > 0` uses the
    chunked loss (`dllm_jax.losses`), which never holds the [B, L, V] logits; 0 the plain
    one. Same values either way. (`causal` without an objective: a plain causal/bidirectional call.)
    The softmax ranges over the real ids: < vocab_limit and != mask_id (`objectives.common.real_ids`)."""
    moe = model.cfg.num_experts > 0
    if objective is None:
        objective = objectives.AutoRegressive() if causal else objectives.MaskedDiffusion()
    out = objective.forward(model, params, prep.inputs, prep.segment_ids, return_hidden=loss_chunk > 0,
                            mutable=["intermediates"] if moe else False, **apply_kwargs)
    aux = jnp.zeros((), jnp.float32)
    if moe:
        out, state = out
        aux = sum(jnp.sum(v) for v in jax.tree.leaves(state.get("intermediates", {})))
    head = output_head(params, model.cfg) if loss_chunk else None
    extra = {} if mask_id is None or mask_id >= vocab_limit else {"mask_id": mask_id}  # objectives that take no in-vocabulary mask
    return objective.token_loss(out, prep, vocab_limit, head=head, chunk=loss_chunk, **extra), aux


def _split_micro(x, accum: int):
    return x.reshape((accum, x.shape[0] // accum) + x.shape[1:])


def make_train_step(model: Transformer, tx, config, ids: objectives.TokenIds, mesh, shardings, lr_fn: Callable) -> Callable:
    """Jitted `(state, tokens[B, L]) -> (state, metrics)`."""
    objective = objectives.build(config)
    prepare = objective.train_prepare_fn(ids)  # (tokens, rng, step) -> Prepared
    accum = config.train.grad_accum
    base_key = rng_lib.stream(rng_lib.run_key(config.seed, config.train.member_seed), rng_lib.TRAIN)
    use_dropout = config.model.dropout > 0.0

    moe = model.cfg.num_experts > 0

    def micro_loss(params, prep: objectives.Prepared, denom, rng, attn_mask):
        ce, aux = forward_ce(
            model, params, prep, objective=objective, vocab_limit=ids.vocab_limit, mask_id=ids.mask_id, loss_chunk=config.model.loss_chunk,
            deterministic=not use_dropout, rngs={"dropout": rng} if use_dropout else None,
            **({} if attn_mask is None else {"attention_mask": attn_mask}),
        )
        sums = objective.metrics_from_ce(ce, prep)
        loss = sums["loss_sum"] / denom
        if moe:  # load balancing: weight * (sum over layers), averaged over micro-batches
            loss = loss + model.cfg.router_aux_weight * aux / accum
            sums = dict(sums, moe_aux_sum=aux / accum)
        return loss, sums

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def step(state: TrainState, tokens):
        rng = jax.random.fold_in(base_key, state.step)
        k_prep, k_drop = jax.random.split(rng)
        prep = prepare(tokens, k_prep, state.step)
        denom = prep.denom
        # an extra training-time attention restriction (MDM: causal -> bidirectional annealing), or None
        attn_mask = objective.train_attention_mask(rng_lib.stream(rng, rng_lib.TRAIN_ANNEAL), state.step, tokens.shape[1])
        if accum == 1:
            grads, sums = grad_fn(state.params, prep, denom, k_drop, attn_mask)
        else:
            # masks and t were drawn for the whole batch above, so accumulation changes nothing
            # but peak memory: grad_accum=k gives the same update as grad_accum=1.
            per_example = dataclasses.replace(prep, denom=jnp.broadcast_to(denom, (tokens.shape[0],)))
            batched = jax.tree.map(lambda x: _split_micro(x, accum), per_example)

            def body(carry, xs):
                i, mprep = xs
                g, s = grad_fn(state.params, mprep, denom, jax.random.fold_in(k_drop, i), attn_mask)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            first = jax.tree.map(lambda x: x[0], batched)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, denom, k_drop, attn_mask))
            (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), batched))
        sums = dict(sums, denom=denom)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = objective.finalize(sums)
        if moe:  # per-layer load-balancing loss; 1.0 = perfectly balanced routing
            metrics["moe_aux"] = sums["moe_aux_sum"] / model.cfg.n_layers
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = lr_fn(state.step)
        metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh)), out_shardings=(shardings, None), donate_argnums=(0,))
