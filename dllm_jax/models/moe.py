"""Token-choice top-k mixture-of-experts MLP with expert-parallel dispatch.

Routing, per token: router logits = x @ W_router in float32, probs = softmax over the E
experts, the k most probable experts are chosen. Combine weights are the chosen probs
renormalised to sum to 1 when k > 1 (Mixtral); with k = 1 the raw top-1 prob (Switch), so
the router still gets a gradient from the main loss.

Load balancing (Switch Transformer, counted over all k choices): aux = E * sum_e f_e P_e,
f_e = fraction of the T*k assignments routed to expert e, P_e = mean router prob of e
over the T tokens of the (global) batch. It is 1.0 for perfectly uniform routing. The
module sows it as `intermediates/moe_aux_loss`; the train step adds
`router_aux_weight * sum over layers` to the loss.

Dispatch (GShard style, static shapes): every device routes its own tokens. Assignment
(token t, choice r) takes the next free slot of its expert's buffer, ordered choice-major
(every token's first choice before any second choice), then by token. Slots past the
expert capacity C are dropped: that assignment contributes 0 (the residual stream carries
the token on). C = ceil(capacity_factor * T_local * k / E); capacity_factor = 0 is
dropless: C = T_local, as an expert gets at most one assignment per token. Dropless is
exact but its buffers (and MLP FLOPs) are E/k times those of a full-capacity run, so
capacity_factor ~1.25 is the fast choice on TPU.

Expert parallelism: under a mesh with an 'expert' axis the dispatch runs in `jax.shard_map`.
Expert e lives on expert-axis device e // (E / n). Each device fills buffers [E, C, D],
`all_to_all` over the expert axis hands each device [E/n, n*C, D] tokens of its own
experts, the SwiGLU runs there (the FFN dimension split over the tensor axis, summed with
`psum`), and a second `all_to_all` brings the outputs home. Without a mesh the same code
runs as one device, so the module works in plain JAX code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

AUX_LOSS_NAME = "moe_aux_loss"


def route(router_logits, k: int):
    """(probs [..., E], expert ids [..., k] int32, combine weights [..., k]) from router logits."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    top_p, top_i = jax.lax.top_k(probs, k)
    weights = top_p / jnp.sum(top_p, axis=-1, keepdims=True) if k > 1 else top_p
    return probs, top_i.astype(jnp.int32), weights


def load_balancing_loss(probs, expert_ids, num_experts: int):
    """E * sum_e f_e * P_e over all tokens (see the module docstring)."""
    probs = probs.reshape(-1, num_experts)
    counts = jnp.sum(jax.nn.one_hot(expert_ids.reshape(-1), num_experts, dtype=jnp.float32), axis=0)
    f = counts / expert_ids.size
    p = jnp.mean(probs, axis=0)
    return num_experts * jnp.sum(f * p)


def capacity(tokens: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert for `tokens` local tokens; capacity_factor 0 = dropless (= tokens)."""
    if capacity_factor <= 0:
        return tokens
    return max(1, min(tokens, math.ceil(capacity_factor * tokens * k / num_experts)))


def _expert_ffn(buf, w_gate, w_up, w_down, dtype):
    gate = jnp.einsum("ecd,edf->ecf", buf, w_gate.astype(dtype))
    up = jnp.einsum("ecd,edf->ecf", buf, w_up.astype(dtype))
    return jnp.einsum("ecf,efd->ecd", nn.silu(gate) * up, w_down.astype(dtype))


def dispatch_combine(x, expert_ids, weights, w_gate, w_up, w_down, *, capacity_factor: float, dtype,
                     expert_axis=None, expert_axis_size: int = 1, tensor_axes=()):
    """The per-device MoE computation: x [b, L, D] -> [b, L, D].

    `w_*` hold this device's experts ([E_local, ...]); with `expert_axis` set it must run
    inside shard_map, and buffers travel over that axis with all_to_all."""
    b, length, d = x.shape
    k = expert_ids.shape[-1]
    e_local = w_gate.shape[0]
    num_experts = e_local * expert_axis_size
    tokens = b * length
    cap = capacity(tokens, k, num_experts, capacity_factor)

    xs = x.reshape(tokens, d).astype(dtype)
    # assignments in choice-major order: a = r * T + t
    expert_of = expert_ids.reshape(tokens, k).T.reshape(-1)
    weight_of = weights.reshape(tokens, k).T.reshape(-1)
    onehot = jax.nn.one_hot(expert_of, num_experts, dtype=jnp.int32)  # [kT, E]
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # slot within the expert
    kept = position < cap
    slot = jnp.where(kept, expert_of * cap + position, num_experts * cap)  # out of range = dropped
    token_of = jnp.tile(jnp.arange(tokens), k)

    buf = jnp.zeros((num_experts * cap, d), dtype).at[slot].set(xs[token_of], mode="drop")
    buf = buf.reshape(num_experts, cap, d)
    if expert_axis is not None and expert_axis_size > 1:
        buf = jax.lax.all_to_all(buf, expert_axis, 0, 1, tiled=True)  # [E_local, n*C, D]
    out = _expert_ffn(buf, w_gate, w_up, w_down, dtype)
    if tensor_axes:
        out = jax.lax.psum(out, tensor_axes)
    if expert_axis is not None and expert_axis_size > 1:
        out = jax.lax.all_to_all(out, expert_axis, 1, 0, tiled=True)  # [E, C, D]
    out = out.reshape(num_experts * cap, d)
    per_assignment = jnp.take(out, slot, axis=0, mode="fill", fill_value=0)
    per_assignment = per_assignment * (weight_of * kept).astype(dtype)[:, None]
    return per_assignment.reshape(k, tokens, d).sum(axis=0).reshape(b, length, d)


def _mesh_axes(logical, mesh):
    """Mesh axes of one logical name under the current rules, restricted to `mesh` (a tuple)."""
    spec = nn.logical_to_mesh_axes((logical,))
    entry = spec[0] if spec else None
    if entry is None:
        return ()
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def _entry(axes):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _dividing(axes, size, mesh):
    """The leading mesh axes whose product divides `size` (e.g. batch 1 at init: none)."""
    kept, prod = [], 1
    for a in axes:
        if size % (prod * mesh.shape[a]):
            break
        kept.append(a)
        prod *= mesh.shape[a]
    return tuple(kept)


class MoEMLP(nn.Module):
    """[B, L, D] -> [B, L, D]; experts are SwiGLU MLPs of width cfg.ffn_size."""

    cfg: "object"  # ModelConfig (not imported: avoids a cycle)

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        e, k, f, d = cfg.num_experts, cfg.experts_per_token, cfg.ffn_size, cfg.d_model

        def param(name, shape, axes, std):
            init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
            return self.param(name, init, shape, jnp.float32)

        router = param("router", (d, e), ("embed", None), cfg.init_std)
        w_gate = param("w_gate", (e, d, f), ("experts", "embed", "mlp"), cfg.init_std)
        w_up = param("w_up", (e, d, f), ("experts", "embed", "mlp"), cfg.init_std)
        w_down = param("w_down", (e, f, d), ("experts", "mlp", "embed"), cfg.init_std / (2 * cfg.n_layers) ** 0.5)

        logits = jnp.einsum("bld,de->ble", x.astype(jnp.float32), router)
        probs, expert_ids, weights = route(logits, k)
        self.sow("intermediates", AUX_LOSS_NAME, load_balancing_loss(probs, expert_ids, e))

        kwargs = dict(capacity_factor=cfg.capacity_factor, dtype=dt)
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return dispatch_combine(x, expert_ids, weights, w_gate, w_up, w_down, **kwargs)

        # tokens keep their batch/length sharding (replicated where a dim does not divide)
        batch = _entry(_dividing(_mesh_axes("activation_batch", mesh), x.shape[0], mesh))
        length = _entry(_dividing(_mesh_axes("activation_length", mesh), x.shape[1], mesh))
        exp_axes = _mesh_axes("activation_exp", mesh)
        if len(exp_axes) > 1:
            raise ValueError(f"'activation_exp' must map to one mesh axis, got {exp_axes}")
        mlp_axes = _mesh_axes("mlp", mesh)
        n_exp = mesh.shape[exp_axes[0]] if exp_axes else 1
        if e % n_exp:
            raise ValueError(f"num_experts={e} is not divisible by the expert mesh axis size {n_exp}")
        experts = _entry(_mesh_axes("experts", mesh))
        tok_spec = P(batch, length, None)
        fn = jax.shard_map(
            lambda *a: dispatch_combine(*a, **kwargs, expert_axis=exp_axes[0] if exp_axes else None,
                                        expert_axis_size=n_exp, tensor_axes=mlp_axes),
            mesh=mesh,
            in_specs=(tok_spec, tok_spec, tok_spec, P(experts, None, _entry(mlp_axes)), P(experts, None, _entry(mlp_axes)),
                      P(experts, _entry(mlp_axes), None)),
            out_specs=tok_spec,
            check_vma=False,
        )
        return fn(x, expert_ids, weights, w_gate, w_up, w_down)


def dense_reference(x, router, w_gate, w_up, w_down, k: int):
    """Every expert on every token, combined with the same routing: the dropless MoE output
    computed without dispatch (for tests; E times the FLOPs)."""
    logits = jnp.einsum("bld,de->ble", x.astype(jnp.float32), router)
    _, expert_ids, weights = route(logits, k)
    gate = jnp.einsum("bld,edf->blef", x, w_gate)
    up = jnp.einsum("bld,edf->blef", x, w_up)
    every = jnp.einsum("blef,efd->bled", nn.silu(gate) * up, w_down)  # [B, L, E, D]
    chosen = jnp.take_along_axis(every, expert_ids[..., None], axis=2)  # [B, L, k, D]
    return jnp.sum(chosen * weights[..., None], axis=2)


__all__ = ["MoEMLP", "route", "load_balancing_loss", "capacity", "dispatch_combine", "dense_reference", "AUX_LOSS_NAME"]
