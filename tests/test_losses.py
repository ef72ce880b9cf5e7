"""The chunked cross-entropy equals the plain one in value and gradient, and never holds [B, L, V]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import losses, objectives
from dllm_jax.models import ModelConfig, Transformer


def _plain(hidden, head, targets, vocab_limit):
    logits = jnp.einsum("bld,dv->blv", hidden, head.astype(hidden.dtype)).astype(jnp.float32)
    return objectives.token_cross_entropy(logits, targets, vocab_limit)


def _problem(b=2, length=13, d=16, v=40, vocab_limit=33, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (b, length, d))
    head = 0.3 * jax.random.normal(k[1], (d, v))
    targets = jax.random.randint(k[2], (b, length), 0, vocab_limit)
    weights = jax.random.uniform(k[3], (b, length))
    return hidden, head, targets, weights, vocab_limit


@pytest.mark.parametrize("chunk", [3, 13])  # 3: five chunks, L=13 padded to 15; 13: one chunk of exactly L
def test_value_and_gradient_equal_the_plain_loss(chunk):
    hidden, head, targets, weights, limit = _problem()

    def total(fn):
        return lambda h, w: (jnp.sum(weights * fn(h, w)), fn(h, w))

    plain = jax.jit(jax.value_and_grad(total(lambda h, w: _plain(h, w, targets, limit)), argnums=(0, 1), has_aux=True))
    chunked = jax.jit(jax.value_and_grad(total(lambda h, w: losses.chunked_token_cross_entropy(h, w, targets, limit, chunk)),
                                         argnums=(0, 1), has_aux=True))
    ((v0, _), (gh0, gw0)), ((v1, ce), (gh1, gw1)) = plain(hidden, head), chunked(hidden, head)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(gh1, gh0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw1, gw0, rtol=1e-5, atol=1e-6)
    # per-position values too, against a hand-written log-softmax over the real ids only
    logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    logits = logits[..., :limit]
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    expected = log_z - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, expected, rtol=1e-5)


def test_bfloat16_hidden_matches_the_plain_bfloat16_path():
    hidden, head, targets, weights, limit = _problem(seed=1)
    hidden = hidden.astype(jnp.bfloat16)
    f0 = lambda h, w: jnp.sum(weights * _plain(h, w, targets, limit))
    f1 = lambda h, w: jnp.sum(weights * losses.chunked_token_cross_entropy(h, w, targets, limit, 4))
    (v0, g0), (v1, g1) = jax.jit(jax.value_and_grad(f0, (0, 1)))(hidden, head), jax.jit(jax.value_and_grad(f1, (0, 1)))(hidden, head)
    assert g1[0].dtype == jnp.bfloat16 and g1[1].dtype == head.dtype
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=2e-2, atol=2e-3)


def test_compiled_memory_never_holds_the_full_logits():
    b, length, d, v, chunk = 2, 512, 32, 8192, 32
    logits_bytes = b * length * v * 4  # 32 MiB
    h = jax.ShapeDtypeStruct((b, length, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    t = jax.ShapeDtypeStruct((b, length), jnp.int32)

    def temp(ce_fn):
        grad = jax.jit(jax.value_and_grad(lambda h, w, t: jnp.sum(ce_fn(h, w, t)), argnums=(0, 1)))
        return grad.lower(h, w, t).compile().memory_analysis().temp_size_in_bytes

    plain = temp(lambda h, w, t: _plain(h, w, t, v - 7))
    chunked = temp(lambda h, w, t: losses.chunked_token_cross_entropy(h, w, t, v - 7, chunk))
    assert plain >= logits_bytes  # the plain loss materialises [B, L, V] (at least once)
    block = b * chunk * v * 4  # 2 MiB: one chunk's logits
    assert chunked < 3 * block < logits_bytes / 4  # a few chunk-sized buffers (logits, softmax, d logits)


def test_model_loss_with_chunks_equals_the_plain_model_loss():
    from dllm_jax.train_step import forward_ce

    cfg = ModelConfig(vocab_size=48, d_model=32, n_layers=1, n_heads=2, d_ff=64, scan_layers=False)
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 40)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens, causal=True)["params"])
    prep = objectives.prepare_ar(tokens, jax.random.key(2), objectives.TokenIds(pad_id=0, eos_id=1, mask_id=40))

    def loss(p, chunk):
        ce, aux = forward_ce(model, p, prep, causal=True, vocab_limit=40, loss_chunk=chunk)
        assert isinstance(aux, jax.Array) and aux.shape == ()  # dense model: a zero load-balancing term
        return jnp.sum(prep.weights * ce) / prep.denom + aux

    both = jax.jit(lambda p: (jax.value_and_grad(loss)(p, 0), jax.value_and_grad(loss)(p, 3)))  # one compilation
    (v0, g0), (v1, g1) = both(params)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_bad_chunk_and_config_are_clear_errors():
    from dllm_jax.config import default_config, validate
    from dllm_jax.errors import ConfigError

    hidden, head, targets, _, limit = _problem()
    with pytest.raises(ValueError, match="chunk=0"):
        losses.chunked_token_cross_entropy(hidden, head, targets, limit, 0)
    c = default_config()
    c.data.paths = "x"
    c.model.loss_chunk = -1
    with pytest.raises(ConfigError, match="model.loss_chunk=-1"):
        validate(c)
