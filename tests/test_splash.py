"""Splash attention (Pallas, run in interpret mode on the CPU) against XLA attention: values
and gradients for every mask the objectives use, the model, and a sharded (2,2,2) train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import config as C
from dllm_jax import objectives, optim, sharding, train_step
from dllm_jax.errors import ConfigError
from dllm_jax.models import splash
from dllm_jax.models.transformer import ModelConfig, Transformer, resolve_attention_impl


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Tiles of 128 so that a 256-long sequence has 2 x 2 blocks (some skipped, some partial)."""
    monkeypatch.setattr(splash, "BLOCK_CHOICES", (128,))


def _qkv(b=2, length=256, heads=4, kv_heads=2, d=32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, length, heads, d)), jax.random.normal(ks[1], (b, length, kv_heads, d)),
            jax.random.normal(ks[2], (b, length, kv_heads, d)))


def _segments(length=256):
    """Two rows of contiguous documents; 0 marks padding at the end of the second row."""
    return jnp.asarray(np.repeat(np.array([[1, 1, 2, 3], [1, 2, 2, 0]]), length // 4, axis=1), jnp.int32)


def _value_and_grads(attn, q, k, v):
    """Output and d(sum(sin(out)))/d(q, k, v) (a loss that weights every output differently)."""
    out, vjp = jax.vjp(attn, q, k, v)
    return (out,) + vjp(jnp.cos(out))


def _assert_same(got, want):
    for g, w, name in zip(got, want, ("out", "dq", "dk", "dv")):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("causal,segmented", [(True, False), (False, False), (False, True)])
def test_values_and_gradients_equal_xla_attention(causal, segmented):
    """AR (causal), MDM (full) and document attention (segment ids), with GQA (4 q heads, 2 kv
    heads). Causal with segments: the model and sharded train-step tests below."""
    q, k, v = _qkv()
    seg = _segments() if segmented else None
    dense = None if seg is None else (seg[:, :, None] == seg[:, None, :])[:, None]
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: splash.splash_attention(q, k, v, causal=causal, segment_ids=seg), *a))(q, k, v)
    want = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense, is_causal=causal), q, k, v)
    _assert_same(got, want)


def block_diffusion_mask(length: int, block: int) -> np.ndarray:
    """The 2L x 2L block-diffusion mask (Arriola et al. 2025, BD3-LM), built entry by entry:
    queries/keys [0, L) are the noised copy x_t, [L, 2L) the clean copy x_0.
    x_t -> x_t: same block (block diagonal); x_t -> x_0: strictly earlier blocks (offset
    block-causal); x_0 -> x_0: same or earlier block (block-causal); x_0 -> x_t: never."""
    m = np.zeros((2 * length, 2 * length), bool)
    for i in range(2 * length):
        for j in range(2 * length):
            bi, bj = (i % length) // block, (j % length) // block
            noisy_i, noisy_j = i < length, j < length
            if noisy_i and noisy_j:
                m[i, j] = bi == bj
            elif noisy_i:
                m[i, j] = bj < bi
            elif not noisy_j:
                m[i, j] = bj <= bi
    return m


def test_arbitrary_static_mask_block_diffusion():
    """A static [Lq, Lk] numpy mask plugs in unchanged: the block-diffusion mask (blocks of 32
    inside tiles of 128: full, partial and empty tiles), values and gradients."""
    mask = block_diffusion_mask(128, 32)
    assert mask.any(axis=1).all()
    q, k, v = _qkv(b=1, length=256)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: splash.splash_attention(q, k, v, causal=False, mask=mask), *a))(q, k, v)
    want = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)), q, k, v)
    _assert_same(got, want)
    with pytest.raises(ValueError, match=r"query rows \[0, 1\] attend to no key"):
        splash.splash_attention(q, k, v, causal=False, mask=np.tril(np.ones((256, 256), bool), k=-2))


def test_model_forward_and_backward_equal_xla():
    """The whole model (2 layers, GQA, document segments, causal) with attention_impl='splash' == 'xla'."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, attention_impl="splash")
    tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, 64)
    seg = _segments(128)
    params = Transformer(cfg).init(jax.random.key(0), tokens, causal=True)["params"]

    def loss(p, impl):
        m = Transformer(ModelConfig(**{**cfg.__dict__, "attention_impl": impl}))
        logits = m.apply({"params": p}, tokens, causal=True, segment_ids=seg)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0]), logits

    (l_s, logits_s), g_s = jax.jit(jax.value_and_grad(lambda p: loss(p, "splash"), has_aux=True))(params)
    (l_x, logits_x), g_x = jax.value_and_grad(lambda p: loss(p, "xla"), has_aux=True)(params)
    np.testing.assert_allclose(logits_s, logits_x, atol=2e-5, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_x)):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


def test_sharded_heads_with_kv_heads_the_tensor_axis_cannot_split():
    """Under a data=2 x tensor=2 mesh the kernel runs per shard; with one kv head (MQA) the kv
    heads cannot split like the 2 q heads, so each shard gets its own copies. Same values and
    gradients as unsharded XLA attention."""
    q, k, v = _qkv(length=128, heads=2, kv_heads=1)
    seg = _segments(128)
    dense = (seg[:, :, None] == seg[:, None, :])[:, None]
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: splash.splash_attention(q, k, v, causal=True, segment_ids=seg), *a))(q, k, v)
    want = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense, is_causal=True), q, k, v)
    _assert_same(got, want)


IDS = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=100)


def _train(impl, mesh_sizes, objective):
    cfg = C.default_config()
    cfg.objective = objective
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.d_ff = 32, 2, 4, 2, 64
    cfg.model.attention_impl = impl
    cfg.train.batch_size, cfg.train.warmup_steps = 8, 0
    cfg.data.seq_len, cfg.data.document_attention = 128, True
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_sizes
    mesh = sharding.make_mesh(dict(cfg.mesh), jax.devices()[: int(np.prod(mesh_sizes))])
    model = train_step.build_model(cfg, 100)
    tx, lr = optim.make_optimizer(cfg.train, 10), optim.lr_schedule(cfg.train, 10)
    tokens = np.random.RandomState(0).randint(3, 100, (8, 128)).astype(np.int32)
    tokens[:, 40], tokens[1::2, 90] = IDS.eos_id, IDS.eos_id  # 2-3 documents per row
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, 128)
        state = train_step.init_state(model, tx, mesh, 128, 0)
        step = train_step.make_train_step(model, tx, cfg, IDS, mesh, shardings, lr)
        for _ in range(2):
            state, m = step(state, sharding.global_batch(mesh, tokens))
            losses.append(float(m["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("objective", ["ar", "block_diffusion"])
def test_sharded_2x2x2_splash_step_equals_single_device_xla_step(objective):
    """Data x fsdp x tensor = 2 x 2 x 2: splash runs per shard (batch and heads split) in
    shard_map; two steps with document attention (AR: causal; block diffusion: BD3-LM's static
    2L x 2L pattern with segment ids) equal the unsharded XLA-attention steps."""
    l1, p1 = _train("xla", (1, 1, 1), objective)
    l8, p8 = _train("splash", (2, 2, 2), objective)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(x, y, atol=3e-3)
        assert np.abs(x - y).mean() < 1e-6


def _bd_loss_and_grads(impl, params, tokens, document_attention, ar_loss_weight=0.0):
    """Block diffusion's train loss (the NELBO, plus NBDiff's AR term when weighted) and its
    gradient through `Objective.forward` (the static [x_t ; x_0] pattern) with `impl` attention."""
    cfg = ModelConfig(vocab_size=104, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, attention_impl=impl)
    bd = objectives.by_name("block_diffusion", **{"block_diffusion.block_size": 32, "data.seq_len": 128,
                                                   "data.document_attention": document_attention,
                                                   "block_diffusion.ar_loss_weight": ar_loss_weight})
    model = Transformer(cfg)
    prep = bd.train_prepare_fn(IDS)(tokens, jax.random.key(4), jnp.int32(0))
    mask = bd.train_attention_mask(None, jnp.int32(0), 128)  # None, or the static pattern when adapting

    def loss(p):
        ce, _ = train_step.forward_ce(model, p, prep, objective=bd, vocab_limit=IDS.mask_id,
                                      **({} if mask is None else {"attention_mask": mask}))
        return bd.metrics_from_ce(ce, prep)["loss_sum"] / prep.denom

    return jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(loss)(params)


@pytest.mark.parametrize("document_attention,ar_loss_weight", [(False, 0.0), (True, 0.5)])  # documents alone: within (True, 0.5)
def test_block_diffusion_loss_and_gradients_equal_xla(document_attention, ar_loss_weight):
    """BD3-LM's 2L x 2L pattern (L = 128, blocks of 32 inside tiles of 128) runs through the
    splash kernel, ANDed with the documents' segment ids (padding at the end of a row) and with
    GQA; with NBDiff's AR loss the pattern comes from `train_attention_mask` and the clean half's
    outputs are read too. Loss and gradients equal XLA attention's."""
    tokens = np.random.RandomState(0).randint(3, 100, (2, 128)).astype(np.int32)
    tokens[0, 50], tokens[1, 20], tokens[1, 100:] = IDS.eos_id, IDS.eos_id, IDS.pad_id
    cfg = ModelConfig(vocab_size=104, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 256), jnp.int32), causal=False)["params"])
    (l_s, g_s), jaxpr_s = _bd_loss_and_grads("splash", params, jnp.asarray(tokens), document_attention, ar_loss_weight)
    (l_x, g_x), jaxpr_x = _bd_loss_and_grads("xla", params, jnp.asarray(tokens), document_attention, ar_loss_weight)
    assert "pallas_call" in str(jaxpr_s) and "pallas_call" not in str(jaxpr_x)  # splash did not fall back
    np.testing.assert_allclose(float(l_s), float(l_x), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_x)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)


def test_traced_masks_fall_back_to_xla_attention():
    """A mask that is not static (NBDiff's growing block size, DiffuLLaMA's random annealing
    mask) cannot be the kernel's block mask: 'splash' then runs XLA attention, same values."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, attention_impl="splash")
    tokens = jax.random.randint(jax.random.key(1), (1, 128), 0, 64)
    params = Transformer(cfg).init(jax.random.key(0), tokens, causal=False)["params"]
    anneal = objectives.by_name("mdm", **{"mdm.anneal_steps": 10})

    def run(impl, step):
        m = Transformer(ModelConfig(**{**cfg.__dict__, "attention_impl": impl}))
        mask = anneal.train_attention_mask(jax.random.key(2), step, 128)
        return m.apply({"params": params}, tokens, causal=False, attention_mask=mask)

    assert "pallas_call" not in str(jax.make_jaxpr(run, static_argnums=0)("splash", jnp.int32(3)))
    np.testing.assert_array_equal(jax.jit(run, static_argnums=0)("splash", jnp.int32(3)),
                                  jax.jit(run, static_argnums=0)("xla", jnp.int32(3)))


def test_auto_picks_the_kernel_per_platform(monkeypatch):
    cfg = ModelConfig(vocab_size=64, d_model=64, n_heads=4)
    bf16 = ModelConfig(vocab_size=64, d_model=64, n_heads=4, dtype="bfloat16")
    assert resolve_attention_impl(cfg, 256, decoding=False) == "xla"  # this CPU
    monkeypatch.setattr(splash, "target_platform", lambda: "tpu")
    assert resolve_attention_impl(cfg, 256, decoding=False) == "splash"
    assert resolve_attention_impl(cfg, 100, decoding=False) == "xla"  # does not tile
    assert resolve_attention_impl(cfg, 256, decoding=True) == "xla"  # KV-cache decoding
    monkeypatch.setattr(splash, "target_platform", lambda: "gpu")
    assert resolve_attention_impl(bf16, 256, decoding=False) == "cudnn"
    assert resolve_attention_impl(cfg, 256, decoding=False) == "xla"  # cuDNN needs bf16/fp16
    explicit = ModelConfig(vocab_size=64, d_model=64, n_heads=4, attention_impl="xla")
    assert resolve_attention_impl(explicit, 256, decoding=False) == "xla"
    asked = ModelConfig(vocab_size=64, d_model=64, n_heads=4, attention_impl="splash")
    assert resolve_attention_impl(asked, 256, decoding=False) == "splash"
    assert resolve_attention_impl(asked, 32, decoding=False) == "xla"  # an evaluation bucket that does not tile


def test_lengths_that_do_not_tile_are_a_clear_error():
    q, k, v = _qkv(length=200)
    with pytest.raises(ConfigError, match=r"data.seq_len to a multiple of 128 \(e.g. 256\)"):
        splash.splash_attention(q, k, v, causal=True)
    cfg = C.default_config()
    cfg.model.attention_impl, cfg.data.seq_len = "splash", 200
    with pytest.raises(ConfigError, match=r"data.seq_len=200; set data.seq_len to a multiple of 128"):
        C.validate(cfg)
    

def test_a_run_saved_with_another_attention_kernel_resumes():
    """Runs saved before 'auto' became the default say 'xla'; the kernels compute the same function."""
    from dllm_jax.train import check_resume_compatible

    saved = C.default_config()
    saved.model.attention_impl = "xla"
    check_resume_compatible(saved.to_dict(), C.default_config())  # no ConfigError
    saved.model.d_model = 64
    with pytest.raises(ConfigError, match="model.d_model"):
        check_resume_compatible(saved.to_dict(), C.default_config())
