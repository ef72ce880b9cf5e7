"""Train state, sharded initialisation and the jitted train / eval steps (both objectives).

The step is a plain `jax.jit` with in/out shardings derived from the logical axis rules,
the state donated. Randomness (masks, t, dropout) comes from `fold_in(key(seed), step)`,
so a run is a pure function of (config, data) and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from dllm_jax import losses, objectives, sharding
from dllm_jax.models import ModelConfig, Transformer
from dllm_jax.models.transformer import output_head


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def model_vocab_rows(tokenizer_vocab: int, multiple: int) -> int:
    """Embedding rows: the tokenizer's pieces plus [MASK], rounded up for efficient matmuls."""
    rows = tokenizer_vocab + 1
    return -(-rows // multiple) * multiple if multiple > 1 else rows


def build_model(config, tokenizer_vocab: int) -> Transformer:
    return Transformer(ModelConfig.from_config(config.model, model_vocab_rows(tokenizer_vocab, config.model.vocab_multiple)))


def token_ids(tokenizer) -> objectives.TokenIds:
    return objectives.TokenIds(pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, mask_id=tokenizer.mask_id)


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


def init_state(model: Transformer, tx, mesh, seq_len: int, seed: int) -> TrainState:
    shardings = state_shardings(model, tx, mesh, seq_len)
    init = _init_fn(model, tx, seq_len)
    with jax.set_mesh(mesh):
        return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))


def state_from_params(tx, params, shardings) -> TrainState:
    """A step-0 train state around given parameters (fresh optimizer state), on `shardings`;
    `params` are donated."""
    def make(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

    return jax.jit(make, out_shardings=shardings, donate_argnums=(0,))(params)


def forward_ce(model: Transformer, params, prep: objectives.Prepared, *, causal: bool, vocab_limit: int, loss_chunk: int = 0, **apply_kwargs):
    """Per-position cross-entropy [B, L] and the MoE load-balancing loss summed over layers
    (0.0 for a dense model). `loss_chunk > 0` uses the chunked loss (`dllm_jax.losses`),
    which never holds the [B, L, V] logits; 0 the plain one. Same values either way."""
    moe = model.cfg.num_experts > 0
    out = model.apply({"params": params}, prep.inputs, causal=causal, segment_ids=prep.segment_ids,
                      return_hidden=loss_chunk > 0, mutable=["intermediates"] if moe else False, **apply_kwargs)
    aux = jnp.zeros((), jnp.float32)
    if moe:
        out, state = out
        aux = sum(jnp.sum(v) for v in jax.tree.leaves(state.get("intermediates", {})))
    if loss_chunk:
        ce = losses.chunked_token_cross_entropy(out, output_head(params, model.cfg), prep.targets, vocab_limit, loss_chunk)
    else:
        ce = objectives.token_cross_entropy(out, prep.targets, vocab_limit)
    return ce, aux


def _split_micro(x, accum: int):
    return x.reshape((accum, x.shape[0] // accum) + x.shape[1:])


def make_train_step(model: Transformer, tx, config, ids: objectives.TokenIds, mesh, shardings, lr_fn: Callable) -> Callable:
    """Jitted `(state, tokens[B, L]) -> (state, metrics)`."""
    causal = objectives.is_causal(config.objective)
    prepare = objectives.prepare_fn(config, ids, train=True)
    accum = config.train.grad_accum
    base_key = jax.random.key(config.seed)
    use_dropout = config.model.dropout > 0.0

    moe = model.cfg.num_experts > 0

    anneal = config.objective == "mdm" and config.mdm.anneal_steps > 0

    def micro_loss(params, prep: objectives.Prepared, denom, rng, attn_mask):
        ce, aux = forward_ce(
            model, params, prep, causal=causal, vocab_limit=ids.mask_id, loss_chunk=config.model.loss_chunk,
            deterministic=not use_dropout, rngs={"dropout": rng} if use_dropout else None, attn_mask=attn_mask,
        )
        sums = objectives.metrics_from_ce(ce, prep, config.objective)
        loss = sums["loss_sum"] / denom
        if moe:  # load balancing: weight * (sum over layers), averaged over micro-batches
            loss = loss + model.cfg.router_aux_weight * aux / accum
            sums = dict(sums, moe_aux_sum=aux / accum)
        return loss, sums

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def step(state: TrainState, tokens):
        rng = jax.random.fold_in(base_key, state.step)
        k_prep, k_drop = jax.random.split(rng)
        prep = prepare(tokens, k_prep)
        denom = prep.denom
        attn_mask = None
        if anneal:  # causal -> bidirectional over mdm.anneal_steps (DiffuLLaMA); evaluation stays bidirectional
            attn_mask = objectives.anneal_mask(jax.random.fold_in(rng, 0xA11), state.step, tokens.shape[1], config.mdm.anneal_steps)
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
        metrics = objectives.finalize(sums, config.objective)
        if moe:  # per-layer load-balancing loss; 1.0 = perfectly balanced routing
            metrics["moe_aux"] = sums["moe_aux_sum"] / model.cfg.n_layers
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = lr_fn(state.step)
        metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh)), out_shardings=(shardings, None), donate_argnums=(0,))


def make_eval_step(model: Transformer, config, ids: objectives.TokenIds, mesh, param_shardings) -> Callable:
    """Jitted `(params, tokens, batch_index) -> summed metrics`. Masks are seeded by the batch
    index (not the step), so validation numbers are comparable across a run."""
    causal = objectives.is_causal(config.objective)
    prepare = objectives.prepare_fn(config, ids, train=False)
    base_key = jax.random.fold_in(jax.random.key(config.seed), 0x7A1)

    def evaluate(params, tokens, index):
        prep = prepare(tokens, jax.random.fold_in(base_key, index))
        ce, _ = forward_ce(model, params, prep, causal=causal, vocab_limit=ids.mask_id, loss_chunk=config.model.loss_chunk)
        return objectives.metrics_from_ce(ce, prep, config.objective)

    return jax.jit(evaluate, in_shardings=(param_shardings, sharding.batch_sharding(mesh), None))
