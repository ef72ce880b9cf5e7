"""The Transformer as a standalone module: masks, scan == loop, sharding names, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import flops
from dllm_jax.models import ModelConfig, Transformer, count_params

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)


@pytest.fixture(scope="module")
def model_and_params():
    model = Transformer(CFG)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), tokens, causal=False)["params"])
    return model, params


def _tokens(seed=0, shape=(2, 12)):
    return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size)


def test_causal_mask_hides_the_future_bidirectional_does_not(model_and_params):
    model, params = model_and_params
    a = _tokens()
    b = a.at[:, 7].set((a[:, 7] + 1) % CFG.vocab_size)
    for causal in (True, False):
        la = model.apply({"params": params}, a, causal=causal)
        lb = model.apply({"params": params}, b, causal=causal)
        past = float(jnp.abs(la[:, :7] - lb[:, :7]).max())
        if causal:
            assert past == 0.0
        else:
            assert past > 1e-4
        assert float(jnp.abs(la[:, 7:] - lb[:, 7:]).max()) > 1e-4


def test_segment_ids_keep_documents_apart(model_and_params):
    model, params = model_and_params
    a = _tokens(1)
    b = a.at[:, 9].set((a[:, 9] + 5) % CFG.vocab_size)
    seg = jnp.array([[1] * 6 + [2] * 6] * 2)
    la = model.apply({"params": params}, a, causal=False, segment_ids=seg)
    lb = model.apply({"params": params}, b, causal=False, segment_ids=seg)
    assert float(jnp.abs(la[:, :6] - lb[:, :6]).max()) == 0.0


def test_scan_and_loop_layers_compute_the_same_function(model_and_params):
    model, params = model_and_params
    loop_model = Transformer(CFG.__class__(**{**CFG.__dict__, "scan_layers": False}))
    stacked = params["layers"]
    loop_params = {k: v for k, v in params.items() if k != "layers"}
    for i in range(CFG.n_layers):
        loop_params[f"layer_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    tokens = _tokens(2)
    for causal in (True, False):
        np.testing.assert_allclose(
            model.apply({"params": params}, tokens, causal=causal),
            loop_model.apply({"params": loop_params}, tokens, causal=causal),
            atol=1e-5,
        )


def test_remat_does_not_change_values_or_gradients(model_and_params):
    model, params = model_and_params
    remat_model = Transformer(CFG.__class__(**{**CFG.__dict__, "remat": "full"}))
    tokens = _tokens(3)

    def loss(m, p):
        return jnp.mean(m.apply({"params": p}, tokens, causal=False) ** 2)

    g1 = jax.grad(lambda p: loss(model, p))(params)
    g2 = jax.grad(lambda p: loss(remat_model, p))(params)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("equation,x_shape,w_shape", [
    ("bld,dhk->blhk", (2, 6, 8), (8, 2, 3)),  # q/k/v projection: x and dy the same size (x is the dot's lhs)
    ("blhk,hkd->bld", (2, 6, 2, 3), (2, 3, 8)),  # attention output projection
    ("bld,df->blf", (2, 6, 4), (4, 12)),  # SwiGLU gate/up: dy larger than x
    ("blf,fd->bld", (2, 6, 12), (12, 4)),  # down projection: dy smaller than x (dy is the dot's lhs)
])
def test_project_has_the_value_and_gradients_of_einsum(equation, x_shape, w_shape):
    """models.transformer.project only reorders the weight-gradient dot (a CPU speed fix);
    value and both gradients are the einsum's, in the inputs' dtypes."""
    from dllm_jax.models.transformer import project

    kx, kw, kg = jax.random.split(jax.random.key(7), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    y, vjp = jax.vjp(lambda a, b: project(equation, a, b), x, w)
    y_ref, vjp_ref = jax.vjp(lambda a, b: jnp.einsum(equation, a, b), x, w)
    dy = jax.random.normal(kg, y.shape)
    np.testing.assert_array_equal(y, y_ref)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # mixed precision as the model uses it: bfloat16 activations, a bfloat16 cast of a float32 weight
    gx, gw = jax.grad(lambda a, b: jnp.sum(project(equation, a, b.astype(jnp.bfloat16)).astype(jnp.float32) ** 2), (0, 1))(
        x.astype(jnp.bfloat16), w)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.float32


def test_every_parameter_has_logical_axis_names():
    model = Transformer(CFG)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), causal=True))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


def test_param_count_matches_flops_accounting(model_and_params):
    _, params = model_and_params
    norms = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_flatten_with_path(params)[0] if "scale" in str(path))
    embed = CFG.vocab_size * CFG.d_model
    assert count_params(params) == flops.matmul_params(CFG) + embed + norms
    # untied head, no biases, GQA: wk/wv have kv_heads
    assert params["layers"]["attn"]["wk"].shape == (CFG.n_layers, CFG.d_model, 2, 8)
    assert "bias" not in str(jax.tree_util.tree_structure(params))


def test_bfloat16_compute_is_close_to_float32(model_and_params):
    model, params = model_and_params
    bf = Transformer(CFG.__class__(**{**CFG.__dict__, "dtype": "bfloat16"}))
    tokens = _tokens(4)
    l32 = model.apply({"params": params}, tokens, causal=True)
    l16 = bf.apply({"params": params}, tokens, causal=True)
    assert l16.dtype == jnp.float32  # logits always float32
    assert float(jnp.abs(l32 - l16).max()) < 0.1


def test_model_builds_from_a_config_dict():
    from dllm_jax.config import default_config

    cfg = ModelConfig.from_config(default_config().model, vocab_size=1152)
    assert cfg.vocab_size == 1152 and cfg.d_model == 256 and cfg.ffn_size % 64 == 0
