"""MoE: routing and load-balancing by hand, the capacity rule, expert-parallel dispatch
(shard_map + all_to_all) equal to the dense reference, and the aux loss in the train loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import sharding
from dllm_jax.models.moe import MoEMLP, capacity, dense_reference, dispatch_combine, load_balancing_loss, route
from dllm_jax.models.transformer import ModelConfig


def _cfg(**kw):
    base = dict(vocab_size=48, d_model=16, n_layers=2, n_heads=2, d_ff=32, num_experts=8, experts_per_token=2, capacity_factor=0.0)
    return ModelConfig(**{**base, **kw})


def test_routing_and_load_balancing_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    probs, ids, weights = route(logits, 2)
    np.testing.assert_allclose(probs, [[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]], rtol=1e-6)
    assert ids.tolist() == [[0, 1], [3, 2]]
    np.testing.assert_allclose(weights, [[0.5 / 0.8, 0.3 / 0.8], [0.4 / 0.7, 0.3 / 0.7]], rtol=1e-6)
    # k = 1 keeps the raw probability (Switch), so the router learns from the main loss
    np.testing.assert_allclose(route(logits, 1)[2], [[0.5], [0.4]], rtol=1e-6)
    # f = counts / (T k) = [1, 1, 1, 1] / 4; P = mean probs = [.3, .25, .2, .25]; aux = 4 * sum(f P) = 1
    np.testing.assert_allclose(load_balancing_loss(probs, ids, 4), 1.0, rtol=1e-6)
    # everything on expert 0 with top-1: f = [1, 0, 0, 0], aux = 4 * mean p_0
    skewed = jnp.log(jnp.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2]]))
    p, i, _ = route(skewed, 1)
    np.testing.assert_allclose(load_balancing_loss(p, i, 4), 4 * 0.55, rtol=1e-6)


def test_capacity_drops_the_overflow_in_choice_then_token_order():
    assert capacity(tokens=4, k=1, num_experts=2, capacity_factor=1.0) == 2
    assert capacity(tokens=4, k=2, num_experts=8, capacity_factor=0.0) == 4  # dropless: one slot per token
    d, f = 3, 4
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (1, 4, d))
    wg, wu, wd = (jax.random.normal(kk, s) for kk, s in zip(k[1:], [(2, d, f), (2, d, f), (2, f, d)]))
    ids = jnp.zeros((1, 4, 1), jnp.int32)  # every token wants expert 0; capacity 2
    w = jnp.ones((1, 4, 1))
    dispatch = jax.jit(dispatch_combine, static_argnames=("capacity_factor", "dtype"))
    y = dispatch(x, ids, w, wg, wu, wd, capacity_factor=1.0, dtype=jnp.float32)
    expert0 = (nn.silu(x[0] @ wg[0]) * (x[0] @ wu[0])) @ wd[0]
    np.testing.assert_allclose(y[0, :2], expert0[:2], rtol=1e-5)  # tokens 0, 1 got the slots
    np.testing.assert_array_equal(y[0, 2:], 0.0)  # tokens 2, 3 dropped
    # top-2: all first choices are placed before any second choice
    ids2 = jnp.array([[[0, 1], [1, 0], [0, 1], [1, 0]]], jnp.int32)
    y2 = dispatch(x, ids2, jnp.ones((1, 4, 2)), wg, wu, wd, capacity_factor=1.0, dtype=jnp.float32)  # C = 4
    both = expert0 + (nn.silu(x[0] @ wg[1]) * (x[0] @ wu[1])) @ wd[1]
    np.testing.assert_allclose(y2[0], both, rtol=1e-5)  # capacity 4 = no drop
    y3 = dispatch(x, ids2, jnp.ones((1, 4, 2)), wg, wu, wd, capacity_factor=0.5, dtype=jnp.float32)  # C = 2
    even, odd = np.array([0, 2]), np.array([1, 3])
    np.testing.assert_allclose(y3[0, even], expert0[even], rtol=1e-5)  # first choices of tokens 0, 2 -> e0
    np.testing.assert_allclose(y3[0, odd], (both - expert0)[odd], rtol=1e-5)  # tokens 1, 3 -> e1, second choices dropped


def _init(cfg, x):
    m = MoEMLP(cfg)
    return m, nn.meta.unbox(m.init(jax.random.key(0), x)["params"])


@pytest.mark.parametrize("axes", [dict(data=1, fsdp=1, expert=8, tensor=1), dict(data=1, fsdp=2, expert=2, tensor=2)])
def test_expert_parallel_dispatch_equals_the_dense_reference(axes):
    """expert=8: one expert per device, the batch split over the expert axis too;
    fsdp=2, expert=2, tensor=2: 4 experts per device, FFN split over tensor (psum)."""
    cfg = _cfg()
    x = jax.random.normal(jax.random.key(1), (8, 6, cfg.d_model))
    m, p = _init(cfg, x)
    probe = jax.random.normal(jax.random.key(2), x.shape)

    def loss_moe(p, x):
        return jnp.sum(probe * m.apply({"params": p}, x))

    def loss_ref(p, x):
        return jnp.sum(probe * dense_reference(x, p["router"], p["w_gate"], p["w_up"], p["w_down"], cfg.experts_per_token))

    mesh = sharding.make_mesh(axes)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        fn = jax.jit(jax.value_and_grad(loss_moe, argnums=(0, 1)))
        assert "all_to_all" in fn.lower(p, x).as_text()  # dispatch really goes over the expert axis
        v_ep, g_ep = fn(p, x)
    v_ref, g_ref = jax.jit(jax.value_and_grad(loss_ref, argnums=(0, 1)))(p, x)
    np.testing.assert_allclose(np.asarray(v_ep), np.asarray(v_ref), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ep)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_aux_loss_is_summed_over_layers_and_reaches_the_loss():
    from dllm_jax import objectives
    from dllm_jax.models import Transformer
    from dllm_jax.train_step import forward_ce

    cfg = _cfg(num_experts=4, router_aux_weight=0.5)
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 40)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens, causal=False)["params"])
    assert "moe" in params["layers"] and "mlp" not in params["layers"]
    assert params["layers"]["moe"]["w_gate"].shape == (2, 4, 16, 32)  # [layers, experts, d, ffn]
    prep = objectives.prepare_mdm(tokens, jax.random.key(2), objectives.TokenIds(pad_id=0, eos_id=1, mask_id=40))

    @jax.jit
    def run(p, weight):
        def loss(p):  # the train step's loss: objective + weight * load balancing
            ce, a = forward_ce(model, p, prep, causal=False, vocab_limit=40)
            return jnp.sum(prep.weights * ce) / prep.denom + weight * a, a

        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(p)
        _, state = model.apply({"params": p}, prep.inputs, causal=False, mutable=["intermediates"])
        return aux, state["intermediates"]["layers"]["moe"]["moe_aux_loss"][0], grads["layers"]["moe"]["router"]

    aux, per_layer, router_grad0 = run(params, 0.0)
    assert per_layer.shape == (2,)
    np.testing.assert_allclose(aux, per_layer.sum(), rtol=1e-6)
    # by hand: a zero router gives uniform probs P_e = 1/E in every layer, so whatever the
    # routing, E * sum_e f_e P_e = sum_e f_e = 1 per layer (2 layers: 2)
    flat = dict(params, layers=dict(params["layers"], moe=dict(params["layers"]["moe"], router=jnp.zeros_like(params["layers"]["moe"]["router"]))))
    aux_uniform, per_layer_uniform, _ = run(flat, 0.0)
    np.testing.assert_allclose(np.asarray(per_layer_uniform), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(aux_uniform, 2.0, rtol=1e-6)
    assert not np.allclose(np.asarray(per_layer), 1.0)  # the real router is not uniform: a different value
    # the router's gradient changes with the aux weight: the term is in the loss
    assert not np.allclose(router_grad0, run(params, 1.0)[2])


def test_moe_config_errors_name_the_fix():
    from dllm_jax.config import default_config, validate
    from dllm_jax.errors import ConfigError

    c = default_config()
    c.data.paths = "x"
    c.model.num_experts, c.model.experts_per_token = 4, 5
    with pytest.raises(ConfigError, match="experts_per_token=5"):
        validate(c)
    c.model.experts_per_token, c.mesh.expert = 2, 3
    with pytest.raises(ConfigError, match="num_experts=4 is not divisible by mesh.expert=3"):
        validate(c)
