"""Hugging Face interop (dllm_jax.hf): import Llama / Qwen2 / Qwen3 checkpoints, export runs.

The tiny checkpoints are built here: config.json by transformers' own config classes,
weights random (numpy, saved with safetensors), tokenizer.json trained with `tokenizers`.
Logits are checked against `hf_reference_logits`, an independent NumPy forward pass of
the HF Llama / Qwen2 / Qwen3 architectures written from transformers' modeling files
(modeling_llama.py: rotate_half RoPE, repeat_kv GQA, RMSNorm weight * x / rms;
modeling_qwen2.py: q/k/v biases; modeling_qwen3.py: q_norm / k_norm per head before RoPE),
not from dllm_jax's model. When torch is installed (extra 'hf-test') the same checks also
run against transformers' own PyTorch models.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from conftest import tiny_config  # noqa: E402
from dllm_jax import hf, sharding, train_step  # noqa: E402
from dllm_jax.checkpoint import load_run  # noqa: E402
from dllm_jax.data.tokenizer import load_tokenizer  # noqa: E402
from dllm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from dllm_jax.models import Transformer  # noqa: E402
from dllm_jax.models.transformer import ModelConfig  # noqa: E402

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM")}


# ---------------------------------------------------------------- independent reference
def hf_reference_logits(cfg: dict, w: dict, ids: np.ndarray, causal: bool = True) -> np.ndarray:
    """float64 logits [B, L, vocab_size] of an HF Llama/Mistral/Qwen2/Qwen3 checkpoint
    (`cfg` its config.json, `w` its tensors by name)."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    d, n_h = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_h
    hd = cfg.get("head_dim") or d // n_h
    eps = cfg["rms_norm_eps"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    qwen3 = cfg["model_type"] == "qwen3"
    b, length = ids.shape

    def rms(x, weight):
        return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))

    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    freqs = np.outer(np.arange(length), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)  # [L, hd]
    cos, sin = np.cos(emb)[None, :, None, :], np.sin(emb)[None, :, None, :]

    def rotate_half(x):
        return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)

    def linear(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = linear(h, p + "self_attn.q_proj").reshape(b, length, n_h, hd)
        k = linear(h, p + "self_attn.k_proj").reshape(b, length, n_kv, hd)
        v = linear(h, p + "self_attn.v_proj").reshape(b, length, n_kv, hd)
        if qwen3:
            q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, n_h // n_kv, axis=2), np.repeat(v, n_h // n_kv, axis=2)  # repeat_kv
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        if causal:
            scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, n_h * hd)
        x = x + linear(attn, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------- tiny checkpoints
TEXTS = ["The river runs under the old stone bridge.\n", "A quiet city wakes: the green door, the small window.\n"] * 20


def make_tokenizer(path, vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.save(str(path))
    return str(path)


def hf_config(family: str, vocab: int = 320, **kw):
    cls = getattr(transformers, CLASSES[family][0])
    args = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=0)
    if family == "qwen2":
        args["max_window_layers"] = 2
    args.update(kw)
    rope = args.pop("rope_theta", 5000.0)
    return cls(**args, rope_parameters={"rope_type": "default", "rope_theta": rope})


def make_hf_dir(path, family: str, seed: int = 0, shards: int = 1, **kw) -> tuple[str, dict, dict]:
    """An HF checkpoint dir with random weights: (dir, config dict, tensors)."""
    os.makedirs(path, exist_ok=True)
    cfg = hf_config(family, **kw)
    cfg.save_pretrained(str(path))
    with open(os.path.join(path, "config.json")) as f:
        cfg_dict = json.load(f)
    cfg_dict.setdefault("architectures", [CLASSES[family][1]])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg_dict, f)
    rng = np.random.default_rng(seed)
    d, f_, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    qd, kvd = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (v, d)), "model.norm.weight": rng.normal(1, 0.2, (d,))}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = rng.normal(0, 0.2, (v, d))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rng.normal(1, 0.2, (d,))
        t[p + "post_attention_layernorm.weight"] = rng.normal(1, 0.2, (d,))
        for name, shape in (("q_proj", (qd, d)), ("k_proj", (kvd, d)), ("v_proj", (kvd, d)), ("o_proj", (d, qd))):
            t[p + f"self_attn.{name}.weight"] = rng.normal(0, 0.2, shape)
        if family == "qwen2":
            for name, n in (("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)):
                t[p + f"self_attn.{name}.bias"] = rng.normal(0, 0.5, (n,))
        if family == "qwen3":
            t[p + "self_attn.q_norm.weight"] = rng.normal(1, 0.2, (hd,))
            t[p + "self_attn.k_norm.weight"] = rng.normal(1, 0.2, (hd,))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (f_, d))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (f_, d))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (d, f_))
    t = {k: v_.astype(np.float32) for k, v_ in t.items()}
    names = sorted(t)
    if shards == 1:
        safetensors_numpy.save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:  # the sharded layout of save_pretrained: model-0000X-of-0000Y.safetensors + index
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            safetensors_numpy.save_file({k: t[k] for k in part}, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    make_tokenizer(os.path.join(path, "tokenizer.json"))
    return str(path), cfg_dict, t


def _import(hf_dir, corpus, mesh_shape=(2, 2, 2), **overrides):
    """(config, model, params) of a new run initialised from `hf_dir` on a (data, fsdp, tensor) mesh."""
    paths, cache = corpus
    config = tiny_config(paths, cache, "ar", init__from_hf=hf_dir, **overrides)
    hf.resolve_init(config)
    tok = load_tokenizer(config.data.tokenizer)
    model = train_step.build_model(config, tok.vocab_size)
    mesh = sharding.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    import optax

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        abstract = train_step.abstract_state(model, optax.sgd(0.1), mesh, config.data.seq_len)
        params = hf.load_hf_params(hf_dir, abstract.params, tok.vocab_size)
    return config, model, params, tok


def _logits(model, params, ids, causal=True, **kw):
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, causal=causal, **kw))  # one compile, not one per op
    return np.asarray(apply(params, jnp.asarray(ids)))


# ---------------------------------------------------------------- import
@pytest.mark.parametrize("family,shards", [("llama", 1), ("qwen2", 2), ("qwen3", 1), ("mistral", 1)])
def test_import_gives_the_hf_logits(tmp_path, corpus, family, shards):
    kw = {"tie_word_embeddings": True} if family == "qwen2" else {}
    hf_dir, cfg, tensors = make_hf_dir(tmp_path / family, family, shards=shards, **kw)
    config, model, params, tok = _import(hf_dir, corpus)
    m = config.model
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.rope_base, m.norm_eps) == (64, 2, 4, 2, 96, 5000.0, 1e-5)
    assert (m.qk_norm, m.attention_bias, m.tie_embeddings) == (family == "qwen3", family == "qwen2", family == "qwen2")
    assert config.data.tokenizer == os.path.join(hf_dir, "tokenizer.json")
    # sharded as the run's rules say (q heads over tensor), and the values are HF's
    assert tuple(params["layers"]["attn"]["wq"].sharding.spec) == (None, "fsdp", "tensor", None)
    np.testing.assert_array_equal(np.asarray(params["layers"]["attn"]["wq"][1]),
                                  tensors["model.layers.1.self_attn.q_proj.weight"].T.reshape(64, 4, 16))
    ids = np.random.default_rng(1).integers(0, tok.vocab_size, (2, 12))
    ours = _logits(model, params, ids)[..., :tok.vocab_size]
    ref = hf_reference_logits(cfg, tensors, ids)[..., :tok.vocab_size]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # [MASK] and padding rows: the mean of the real embedding rows (ids >= mask id are not in the softmax)
    emb = np.asarray(params["embedding"])
    real = tensors["model.embed_tokens.weight"][:tok.vocab_size]
    np.testing.assert_array_equal(emb[:tok.vocab_size], real)
    np.testing.assert_allclose(emb[tok.mask_id], real.mean(0), rtol=1e-5)
    if HAVE_TORCH:  # transformers' own model on the same weights
        import torch

        hf_model = getattr(transformers, CLASSES[family][1]).from_pretrained(hf_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf_model(torch.tensor(ids)).logits.numpy()[..., :tok.vocab_size]
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_import_errors_name_the_key(tmp_path, corpus):
    paths, cache = corpus
    hf_dir, cfg, tensors = make_hf_dir(tmp_path / "llama", "llama")
    # an architecture we cannot represent
    bad = dict(cfg, architectures=["GPT2LMHeadModel"])
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="'GPT2LMHeadModel' is not supported"):
        hf.resolve_init(tiny_config(paths, cache, "ar", init__from_hf=str(tmp_path / "gpt2")))
    with pytest.raises(ConfigError, match="rope_type='llama3'"):
        hf.hf_model_settings(dict(cfg, rope_parameters={"rope_type": "llama3", "rope_theta": 1.0}), "x")
    # Mistral's sliding window shorter than the training sequence: not the same attention
    (tmp_path / "mistral").mkdir()
    (tmp_path / "mistral" / "config.json").write_text(json.dumps(dict(cfg, architectures=["MistralForCausalLM"], sliding_window=16)))
    with pytest.raises(ConfigError, match="sliding_window=16 < data.seq_len=32"):
        hf.resolve_init(tiny_config(paths, cache, "ar", init__from_hf=str(tmp_path / "mistral")))
    # an explicit override that contradicts the checkpoint
    with pytest.raises(ConfigError, match="--config.model.d_model=32 contradicts"):
        hf.resolve_init(tiny_config(paths, cache, "ar", init__from_hf=hf_dir), explicit={"model.d_model"})
    # a missing tensor, an unexpected one, a wrong shape
    for name, change, message in (
        ("model.layers.1.mlp.up_proj.weight", None, "'model.layers.1.mlp.up_proj.weight' is missing"),
        ("model.layers.0.self_attn.o_proj.bias", np.zeros(64, np.float32), "unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"),
        ("model.layers.0.self_attn.k_proj.weight", np.zeros((64, 64), np.float32), r"'model.layers.0.self_attn.k_proj.weight' has shape \[64, 64\], expected \[32, 64\]"),
    ):
        t = dict(tensors)
        if change is None:
            del t[name]
        else:
            t[name] = change
        safetensors_numpy.save_file(t, os.path.join(hf_dir, "model.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            _import(hf_dir, corpus)


def test_a_tied_config_with_a_different_lm_head_is_refused(tmp_path, corpus):
    """tie_word_embeddings=true plus a stored lm_head.weight: transformers 5 keeps that head
    (untied) when it differs from the embedding, transformers >= 4.54 overwrites it, so a
    differing head is a CheckpointError naming both tensors and the difference; an equal one
    (torch .bin conversions store both) loads as the tied model HF computes."""
    hf_dir, cfg, tensors = make_hf_dir(tmp_path / "tied", "llama", tie_word_embeddings=True)
    emb = tensors["model.embed_tokens.weight"]
    for head, ok in ((emb.copy(), True), (emb + np.where(np.arange(emb.size).reshape(emb.shape) == 77, 0.25, 0).astype(np.float32), False),
                     (np.zeros_like(emb[:-1]), False)):
        safetensors_numpy.save_file(dict(tensors, **{"lm_head.weight": head}), os.path.join(hf_dir, "model.safetensors"))
        if ok:
            config, model, params, tok = _import(hf_dir, corpus)
            assert config.model.tie_embeddings and "lm_head" not in params
            ids = np.random.default_rng(1).integers(0, tok.vocab_size, (1, 8))
            np.testing.assert_allclose(_logits(model, params, ids)[..., :tok.vocab_size],
                                       hf_reference_logits(cfg, tensors, ids)[..., :tok.vocab_size], atol=1e-4, rtol=0)
            continue
        message = ("'lm_head.weight' differs from 'model.embed_tokens.weight' \\(max \\|difference\\| 0.25\\)" if head.shape == emb.shape
                   else r"'lm_head.weight' \[319, 64\] and 'model.embed_tokens.weight' \[320, 64\] differ in shape")
        with pytest.raises(CheckpointError, match=message):
            _import(hf_dir, corpus)
    if HAVE_TORCH:  # the premise: transformers 5 keeps a differing stored head
        import torch

        safetensors_numpy.save_file(dict(tensors, **{"lm_head.weight": emb + 1.0}), os.path.join(hf_dir, "model.safetensors"))
        m = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        assert not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)


@pytest.mark.parametrize("extra,theta", [
    ({"rope_scaling": {"rope_type": "default", "rope_theta": 500000.0}}, 500000.0),  # the base only inside the legacy dict
    ({"rope_scaling": {"type": "default", "rope_theta": 250000.0}}, 250000.0),
    ({"rope_scaling": {"rope_type": "default"}, "rope_theta": 30000.0}, 30000.0),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}}, 20000.0),
    ({"rope_theta": 1000000.0}, 1000000.0),
    ({}, 10000.0),
    ({"rope_theta": 10000.0, "rope_scaling": {"rope_type": "default", "rope_theta": 500000.0}}, "gives the RoPE base 2 times"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}, "rope_scaling": {"rope_type": "default", "rope_theta": 2.0}}, "gives the RoPE base 2 times"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type='linear'"),
    ({"rope_scaling": {"rope_type": "default", "rope_theta": 5.0}, "rope_parameters": {"rope_type": "yarn", "rope_theta": 5.0}}, 5.0),
])
def test_rope_base_is_read_where_transformers_reads_it(extra, theta):
    """Every place a config.json can give the RoPE base, checked against transformers' own
    config class; values that disagree (transformers 4 and 5 would differ) are refused."""
    base = {k: v for k, v in hf_config("llama").to_dict().items() if k not in ("rope_parameters", "rope_theta", "rope_scaling")}
    cfg = dict(base, architectures=["LlamaForCausalLM"], **extra)
    if isinstance(theta, str):
        with pytest.raises(ConfigError, match=theta):
            hf.hf_model_settings(cfg, "x")
        return
    assert hf.hf_model_settings(cfg, "x")["rope_base"] == theta
    theirs = transformers.LlamaConfig.from_dict(cfg)
    assert theirs.rope_parameters["rope_type"] == "default" and theirs.rope_parameters["rope_theta"] == theta


def test_index_and_shards_that_disagree_are_one_checkpoint_error(tmp_path, capsys):
    """Sharded checkpoints: every inconsistency between model.safetensors.index.json and the
    shards (or a directory holding two checkpoints) is a CheckpointError naming the tensor and
    the file, never a safetensors traceback; `dllm-jax import` prints one error line."""
    from dllm_jax.cli import main

    src, _, tensors = make_hf_dir(tmp_path / "src", "llama", shards=2)
    index = json.loads(open(os.path.join(src, "model.safetensors.index.json")).read())
    wm = index["weight_map"]
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    moved = next(k for k, v in sorted(wm.items()) if v == first)

    def variant(name, change):
        import shutil

        d = str(tmp_path / name)
        shutil.copytree(src, d)
        change(d)
        return d

    def write_index(d, weight_map):
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)

    cases = {
        "wrong_shard": (lambda d: write_index(d, dict(wm, **{moved: second})),
                        f"maps tensor '{moved}' to shard '{second}', which does not hold it \\(it is in '{first}'\\)"),
        "unlisted_tensor": (lambda d: write_index(d, {k: v for k, v in wm.items() if k != moved}),
                            f"shard '{first}' .* holds tensor '{moved}' .* does not list it"),
        "missing_shard": (lambda d: os.remove(os.path.join(d, second)), f"lists '{second}', which is missing"),
        "unknown_shard": (lambda d: write_index(d, dict(wm, **{moved: "model-00009-of-00009.safetensors"})),
                          "lists 'model-00009-of-00009.safetensors', which is missing"),
        "stale_shard": (lambda d: safetensors_numpy.save_file({"x": np.zeros(2, np.float32)}, os.path.join(d, "model-00001-of-00003.safetensors")),
                        "shard 'model-00001-of-00003.safetensors' is not listed"),
        "both_layouts": (lambda d: safetensors_numpy.save_file(tensors, os.path.join(d, "model.safetensors")), "holds two checkpoints"),
        "bad_index": (lambda d: open(os.path.join(d, "model.safetensors.index.json"), "w").write("{"), "not a readable safetensors index"),
        "bad_shard": (lambda d: open(os.path.join(d, second), "wb").write(b"nonsense"), f"{second}' is not a readable safetensors file"),
        "no_index": (lambda d: os.remove(os.path.join(d, "model.safetensors.index.json")), "has shards .* but no model.safetensors.index.json"),
    }
    with hf.SafetensorsReader(src) as reader:  # the consistent original reads
        assert reader.names() == set(tensors)
        np.testing.assert_array_equal(reader.get(moved), tensors[moved])
    for name, (change, message) in cases.items():
        d = variant(name, change)
        with pytest.raises(CheckpointError, match=message):
            hf.SafetensorsReader(d)
    # through the CLI: one error line, exit 2, no traceback, nothing written
    capsys.readouterr()
    assert main(["import", "--hf", str(tmp_path / "wrong_shard"), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and err.count("\n") == 1 and "Traceback" not in err and moved in err and second in err, err
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_from_hf_run_trains_and_resumes_exactly(tmp_path, corpus):
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    hf_dir, _, tensors = make_hf_dir(tmp_path / "qwen2", "qwen2")
    cfg = tiny_config(paths, cache, "mdm", init__from_hf=hf_dir, data__epochs=1, train__log_every=1, train__eval_every=0,
                      train__checkpoint_every=100)
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    train(cfg, full)
    train(cfg, parts, stop_after=4)
    # on resume the checkpoint wins: init.* may even be dropped
    resumed = tiny_config(paths, cache, "mdm", data__epochs=1, train__log_every=1, train__eval_every=0, train__checkpoint_every=100)
    train(resumed, parts)
    losses = [[(r["step"], r["loss"]) for r in read_metrics(w) if "loss" in r] for w in (full, parts)]
    assert losses[0] == losses[1] and len(losses[0]) == 8
    a, b = load_run(full), load_run(parts)
    assert a.config.model.attention_bias and a.config.init.from_hf == hf_dir and b.config.init.from_hf == hf_dir
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # it started from the checkpoint: after 8 small steps the weights are still close to HF's
    np.testing.assert_allclose(np.asarray(a.params["final_norm"]["scale"]), tensors["model.norm.weight"], atol=0.1)
    assert os.path.isfile(os.path.join(full, "tokenizer.json"))


# ---------------------------------------------------------------- export
def test_export_import_round_trip_is_exact(tmp_path, corpus, trained_runs):
    """An AR run (QK-norm: exported as Qwen3) exports, transformers reads the config, the
    reference forward on the exported tensors gives our logits, and importing gives
    bit-identical parameters."""
    out = str(tmp_path / "export")
    info = hf.export_run(trained_runs["ar"], out)
    assert info["architecture"] == "Qwen3ForCausalLM"
    run = load_run(trained_runs["ar"])
    auto = transformers.AutoConfig.from_pretrained(out)
    assert type(auto).__name__ == "Qwen3Config" and auto.num_hidden_layers == 2 and auto.vocab_size == run.model.cfg.vocab_size
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["dllm_jax"]["attention"] == "causal" and cfg["dllm_jax"]["mask_token_id"] == run.tokenizer.mask_id
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(out, "model.safetensors"))
    ids = np.random.default_rng(0).integers(0, run.tokenizer.vocab_size, (2, 16))
    ours = _logits(run.model, run.params, ids)
    np.testing.assert_allclose(ours, hf_reference_logits(cfg, tensors, ids), atol=1e-4, rtol=0)
    if HAVE_TORCH:
        import torch

        model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            np.testing.assert_allclose(ours, model(torch.tensor(ids)).logits.numpy(), atol=1e-4, rtol=0)
    # import it back: the same parameters, bit for bit (mask and padding rows included)
    paths, cache = corpus
    _, _, params, tok = _import(out, corpus, mesh_shape=(8, 1, 1), data__tokenizer=os.path.join(out, "tokenizer.model"))
    assert tok.fingerprint == run.tokenizer.fingerprint
    got, want = hf._flat(params), hf._flat(run.params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


@pytest.mark.parametrize("qk_norm,bias,tied,arch", [(False, False, False, "LlamaForCausalLM"), (False, True, True, "Qwen2ForCausalLM")])
def test_exported_llama_and_qwen2_match_the_reference(qk_norm, bias, tied, arch):
    """Export of models without QK-norm (Llama) and with q/k/v biases and a tied head
    (Qwen2): the exported tensors under the reference forward give our logits."""
    import ml_collections

    mc = ModelConfig(vocab_size=72, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, rope_base=500.0, norm_eps=1e-5,
                     qk_norm=qk_norm, attention_bias=bias, tie_embeddings=tied)
    model = Transformer(mc)
    ids = np.random.default_rng(0).integers(0, 64, (2, 10))
    params = nn.meta.unbox(jax.jit(lambda x: model.init(jax.random.key(1), x, causal=True)["params"])(jnp.asarray(ids)))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params)  # non-trivial norms, biases
    assert hf.hf_family(mc) == arch
    config = ml_collections.ConfigDict({"objective": "ar", "data": {"seq_len": 10}, "mdm": {"schedule": "linear"}, "model": {}})

    class Tok:
        bos_id, eos_id, pad_id, vocab_size, mask_id = -1, 2, 0, 64, 64

    cfg = hf.export_config(config, mc, Tok, 0)
    tensors = hf.export_params(params, mc)
    assert ("lm_head.weight" in tensors) == (not tied) and ("model.layers.0.self_attn.q_proj.bias" in tensors) == bias
    auto = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("dllm_jax", "architectures")})
    assert auto.head_dim == 8 and auto.num_key_value_heads == 2
    np.testing.assert_allclose(_logits(model, params, ids), hf_reference_logits(cfg, tensors, ids), atol=1e-4, rtol=0)


def test_export_refuses_moe_and_the_cli_writes_files(tmp_path, trained_runs):
    from dllm_jax.cli import main

    with pytest.raises(ConfigError, match="MoE"):
        hf.hf_family(ModelConfig(vocab_size=8, num_experts=4))
    out = tmp_path / "mdm_export"
    assert main(["export", "--workdir", trained_runs["mdm"], "--output", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dllm_jax"]["objective"] == "mdm" and cfg["dllm_jax"]["attention"] == "bidirectional"
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", "tokenizer.json",
            "configuration_dllm_jax.py", "modeling_dllm_jax.py"} == files  # a diffusion export ships its modeling file
    tok, ours = transformers.AutoTokenizer.from_pretrained(str(out)), load_run(trained_runs["mdm"]).tokenizer
    for text in TEXTS[:2] + ["def f(x):\n    return  x\t# ok\n"]:
        assert tok.encode(text, add_special_tokens=False) == ours.encode(text)
    assert main(["export", "--workdir", str(tmp_path / "nothing"), "--output", str(tmp_path / "o2")]) == 2
    # dllm-jax import: the export becomes a step-0 MDM run with the same parameters, which samples as the original
    from dllm_jax.sampling import generate

    workdir = str(tmp_path / "imported")
    assert main(["import", "--hf", str(out), "--workdir", workdir]) == 0
    a, b = load_run(trained_runs["mdm"]), load_run(workdir)
    assert b.config.objective == "mdm" and b.step == 0
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    kw = dict(objective="mdm", max_new_tokens=8, temperature=0.0)
    assert generate(a.model, a.params, a.tokenizer, ["The"], **kw).texts == generate(b.model, b.params, b.tokenizer, ["The"], **kw).texts
    assert main(["import", "--hf", str(out), "--workdir", workdir]) == 2  # never over an existing run


def test_export_over_an_earlier_checkpoint_replaces_it(tmp_path, trained_runs, monkeypatch):
    """`dllm-jax export` into a directory holding an older sharded HF checkpoint: the new
    model.safetensors replaces it and the old index + shards are removed (else transformers
    reads the new file and an index-based reader the old shards); unrelated files stay. A
    dllm-jax run directory is refused, and a failing export leaves the directory as it was."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    out, _, _ = make_hf_dir(tmp_path / "out", "llama", shards=2)
    for name in ("README.md", "notes.txt"):
        (tmp_path / "out" / name).write_text("kept")
    before = sorted(os.listdir(out))
    monkeypatch.setattr(hf.export, "_write_tokenizer", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        hf.export_run(trained_runs["ar"], out)
    assert sorted(os.listdir(out)) == before  # nothing removed, no staging directory left
    monkeypatch.undo()
    info = hf.export_run(trained_runs["ar"], out)
    assert info["removed"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert sorted(os.listdir(out)) == sorted(set(info["files"]) | {"README.md", "notes.txt"})
    assert "tokenizer.json" in info["files"]  # rewritten from the run's tokenizer, not the old one
    run = load_run(trained_runs["ar"])
    text = "The river runs under the old stone bridge.\n"
    assert Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode(text, add_special_tokens=False).ids == run.tokenizer.encode(text)
    want = hf.export_params(run.params, run.model.cfg)
    with hf.SafetensorsReader(out) as reader:
        assert reader.names() == set(want)
    got = load_file(os.path.join(out, "model.safetensors"))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # a run directory (or anything that is not an HF checkpoint) is never exported over
    listing = sorted(os.listdir(trained_runs["mdm"]))
    with pytest.raises(ConfigError, match="is not a Hugging Face checkpoint"):
        hf.export_run(trained_runs["ar"], trained_runs["mdm"])
    assert sorted(os.listdir(trained_runs["mdm"])) == listing


# texts the exported tokenizer.json must encode as our SentencePiece tokenizer: code, unicode,
# whitespace runs, newlines / tabs, characters outside the vocabulary (byte pieces), a literal '▁'
TOKENIZER_TEXTS = [
    "def f(x):\n    return  x\t# ok\n\n\tpass\n", "Ünïcode café, naïve façade — “quotes” ½ ☃\n",
    "a  b   c    d     e      f        g         h\n", "\n\n\t\t \t\n  \n ", "emoji 😀 日本語 \x01 𝔘 end",
    "a\u2581b \u2581\u2581 c\u2581", "The river runs under the old stone bridge.", "",
]


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_runs_export_a_tokenizer_json_without_protobuf(tmp_path, corpus, monkeypatch, kind):
    """A run with a SentencePiece tokenizer trained by dllm_jax (data.tokenizer_type unigram or
    bpe) exports a tokenizer.json built with `tokenizers` alone (transformers' converter, which
    needs protobuf >= 7, is made to fail here), and `tokenizers.Tokenizer.from_file` encodes
    and decodes like our tokenizer."""
    import glob
    import inspect
    import json.decoder

    from tokenizers import Tokenizer

    from dllm_jax.data.tokenizer import train_tokenizer
    from dllm_jax.hf.spm_json import read_spm_model

    paths, _ = corpus
    docs = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(paths))] + [inspect.getsource(json.decoder)]
    src, _, _ = make_hf_dir(tmp_path / "hf", "llama", vocab=512)
    os.remove(os.path.join(src, "tokenizer.json"))
    train_tokenizer(docs, 512, os.path.join(src, "tokenizer.model"), kind)
    workdir = hf.import_run(src, str(tmp_path / "run"))["workdir"]  # a step-0 run with that tokenizer
    ours = load_run(workdir).tokenizer
    assert ours.kind == "sentencepiece"

    def no_converter(*a, **k):
        raise RuntimeError("transformers' converter must not be needed")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_converter)
    out = tmp_path / "export"
    info = hf.export_run(workdir, str(out))
    monkeypatch.undo()
    assert {"tokenizer.json", "tokenizer.model"} <= set(info["files"])
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    theirs = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = TOKENIZER_TEXTS + [inspect.getsource(json.decoder)[:4000]]
    for text in texts:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False).ids == ids, text
        assert theirs.decode(ids) == text
    assert theirs.encode("x</s>y", add_special_tokens=False).ids == ours.encode("x</s>y", split_special_tokens=False)
    auto = transformers.AutoTokenizer.from_pretrained(str(out))  # transformers reads it (no protobuf needed)
    assert auto.encode(texts[0], add_special_tokens=False) == ours.encode(texts[0]) and auto.eos_token == "</s>"
    # whitespace runs after any character: BPE exactly; unigram up to ties (module docstring of spm_json):
    # a different segmentation only where SentencePiece's float32 sums break an exact tie
    scores = [s for _, s, _ in read_spm_model(ours.model_bytes)["pieces"]]
    for text in [c + " " * n + d for n in range(1, 41) for c in ("", "x", "0", "(") for d in ("", "y", "return")]:
        a, b = theirs.encode(text, add_special_tokens=False).ids, ours.encode(text)
        if a != b:
            assert kind == "unigram" and theirs.decode(a) == text, (text, a, b)
            assert abs(sum(scores[i] for i in a) - sum(scores[i] for i in b)) < 1e-4 and sorted(a) == sorted(b), (text, a, b)


def test_sentencepiece_models_not_trained_here_fall_back(tmp_path, caplog):
    """A SentencePiece model with other text handling (SentencePiece's defaults: NFKC, dummy
    prefix) is not converted by dllm_jax; the export then tries transformers' converter and,
    where that fails (protobuf < 7 or no transformers), writes no tokenizer.json and says so."""
    import io
    import logging

    import sentencepiece as spm

    from dllm_jax.data.tokenizer import Tokenizer
    from dllm_jax.hf.export import _spm_tokenizer_json
    from dllm_jax.hf.spm_json import BPE, UNIGRAM, read_spm_model, spm_tokenizer_json

    writer = io.BytesIO()
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(TEXTS * 5), model_writer=writer, vocab_size=60, model_type="bpe",
                                   pad_id=0, unk_id=1, eos_id=2, bos_id=-1, minloglevel=2)
    m = read_spm_model(writer.getvalue())
    assert m["model_type"] == BPE and m["normalizer"]["name"] == "nmt_nfkc" and m["normalizer"]["add_dummy_prefix"]
    assert not m["byte_fallback"] and [p for p, _, _ in m["pieces"][:3]] == ["<pad>", "<unk>", "</s>"]
    assert spm_tokenizer_json(writer.getvalue())[0] is None
    assert "normalization rule 'nmt_nfkc'" in spm_tokenizer_json(writer.getvalue())[1]
    from dllm_jax.data.tokenizer import train_tokenizer

    ours = read_spm_model(train_tokenizer(TEXTS, 320, None, "unigram").model_bytes)
    assert ours["model_type"] == UNIGRAM and ours["byte_fallback"] and ours["normalizer"]["name"] == "identity"
    tok = Tokenizer(writer.getvalue())
    caplog.set_level(logging.INFO, logger="dllm_jax")
    tok.save(str(tmp_path / "tokenizer.model"))
    written = _spm_tokenizer_json(str(tmp_path), tok)
    assert written == os.path.isfile(tmp_path / "tokenizer.json")
    if not written:
        assert "tokenizer.json not written (normalization rule 'nmt_nfkc'" in caplog.text



# ---------------------------------------------------------------- AR-to-MDM adaptation
def test_shift_logits_moves_every_prediction_one_position_right():
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 9)))
    params = jax.jit(lambda x: Transformer(cfg).init(jax.random.key(0), x, causal=False)["params"])(ids)
    plain = _logits(Transformer(cfg), params, ids, causal=False)
    shifted = _logits(Transformer(dataclasses_replace(cfg, shift_logits=True)), params, ids, causal=False)
    np.testing.assert_array_equal(shifted[:, 1:], plain[:, :-1])
    np.testing.assert_array_equal(shifted[:, 0], plain[:, 0])


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_anneal_mask_goes_from_causal_to_bidirectional():
    from dllm_jax import objectives

    length = 64
    tril = np.tril(np.ones((length, length), bool))
    key = jax.random.key(3)
    first = np.asarray(objectives.anneal_mask(key, jnp.int32(0), length, 10**9))[0, 0]
    np.testing.assert_array_equal(first, tril)  # r = 1e-9: causal
    last = np.asarray(objectives.anneal_mask(key, jnp.int32(99), length, 100))[0, 0]
    assert last.all()  # r = 1: bidirectional
    mid = np.asarray(objectives.anneal_mask(key, jnp.int32(49), length, 100))[0, 0]
    assert (mid | ~tril).sum() == (~tril).sum() + tril.sum() and (mid >= tril).all()
    opened = mid[~tril].mean()  # r = 0.5 of the 2016 future pairs
    assert 0.45 < opened < 0.55
    # the model with an explicit causal mask and causal=False equals the causal model
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 8)))
    params = jax.jit(lambda x: Transformer(cfg).init(jax.random.key(0), x, causal=False)["params"])(ids)
    causal = _logits(Transformer(cfg), params, ids, causal=True)
    masked = _logits(Transformer(cfg), params, ids, causal=False, attention_mask=jnp.tril(jnp.ones((8, 8), bool))[None, None])
    np.testing.assert_allclose(masked, causal, atol=1e-6)


def test_ar_run_continued_as_mdm_from_workdir(tmp_path, corpus, trained_runs):
    """init.from_workdir: the AR run's parameters (exactly), architecture and tokenizer; then
    MDM training with shifted prediction and annealing runs and samples."""
    from dllm_jax.sampling import generate
    from dllm_jax.train import train

    paths, cache = corpus
    src = load_run(trained_runs["ar"])
    cfg = tiny_config(paths, cache, "mdm", init__from_workdir=trained_runs["ar"], model__shift_logits=True, mdm__anneal_steps=4,
                      data__epochs=1, train__eval_every=0, model__d_model=256)
    with pytest.raises(ConfigError, match="model.d_model=256 contradicts"):
        hf.resolve_init(cfg.copy_and_resolve_references(), explicit={"model.d_model"})
    cfg.model.d_model = 32
    resolved = cfg.copy_and_resolve_references()
    hf.resolve_init(resolved)
    model = train_step.build_model(resolved, src.tokenizer.vocab_size)
    import optax

    mesh = src.mesh
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        abstract = train_step.abstract_state(model, optax.sgd(0.1), mesh, resolved.data.seq_len)
        params = hf.initial_params(resolved, model, abstract.params, mesh, src.tokenizer)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(src.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    workdir = str(tmp_path / "adapted")
    summary = train(cfg, workdir)
    assert summary["step"] == 8 and np.isfinite(summary["final"]["val_loss"])
    run = load_run(workdir)
    assert run.model.cfg.shift_logits and run.tokenizer.fingerprint == src.tokenizer.fingerprint
    res = generate(run.model, run.params, run.tokenizer, ["The river"], objective="mdm", max_new_tokens=8, temperature=0.0)
    assert len(res.texts) == 1
    with pytest.raises(ConfigError, match="prefix_cache"):
        generate(run.model, run.params, run.tokenizer, ["The river"], objective="mdm", max_new_tokens=8, prefix_cache=True)


def test_tied_head_with_the_chunked_loss():
    """model.tie_embeddings: no lm_head parameter, and the chunked loss uses the embedding."""
    from dllm_jax import objectives
    from dllm_jax.train_step import forward_ce

    cfg = ModelConfig(vocab_size=48, d_model=32, n_layers=1, n_heads=2, d_ff=64, tie_embeddings=True)
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 16)))
    params = nn.meta.unbox(jax.jit(lambda x: model.init(jax.random.key(0), x, causal=True)["params"])(tokens))
    assert "lm_head" not in params
    prep = objectives.prepare_ar(tokens, jax.random.key(1), objectives.TokenIds(pad_id=0, eos_id=2, mask_id=40))
    ce = [jax.jit(lambda p, chunk=chunk: forward_ce(model, p, prep, causal=True, vocab_limit=40, loss_chunk=chunk)[0])(params)
          for chunk in (0, 4)]
    np.testing.assert_allclose(np.asarray(ce[1]), np.asarray(ce[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch,bad,match", [
    ("LlamaForCausalLM", {"attention_bias": True}, r"attention_bias=true \(LlamaForCausalLM then also has an output-projection bias\)"),
    ("Qwen3ForCausalLM", {"attention_bias": True}, r"attention_bias=true \(Qwen3ForCausalLM"),
    ("MistralForCausalLM", {"hidden_act": "gelu"}, r"hidden_act='gelu'"),
    ("LlamaForCausalLM", {"mlp_bias": True}, r"mlp_bias=true"),
    ("Qwen2ForCausalLM", {"use_sliding_window": True}, r"use_sliding_window=true"),
])
def test_unrepresentable_architecture_settings_are_one_config_error(arch, bad, match):
    """Each option that changes the block is refused with a ConfigError naming it (never another exception)."""
    from dllm_jax.errors import ConfigError
    from dllm_jax.hf.load import hf_model_settings

    hf_cfg = {"architectures": [arch], "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 128, "vocab_size": 100, **bad}
    with pytest.raises(ConfigError, match=match):
        hf_model_settings(hf_cfg, "ckpt/config.json")
