"""Diffusion exports (dllm_jax.hf.export for MDM / block-diffusion runs): their own transformers
class (config.json `auto_map` -> dllm_jax/hf/remote/modeling_dllm_jax.py, trust_remote_code),
import -> export -> import round trips, and, with torch installed (extra 'hf-test'), the
modeling file's logits and `generate` against our model and samplers."""
import filecmp
import json
import re
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import hf
from dllm_jax.checkpoint import load_run
from dllm_jax.config import default_config
from dllm_jax.hf.layout import DIFFUSION_ARCH, REMOTE_FILES
from dllm_jax.models import Transformer
from dllm_jax.models.transformer import ModelConfig
from dllm_jax.objectives.block_diffusion import block_causal_mask

REMOTE_DIR = os.path.join(os.path.dirname(hf.export.__file__), "remote")


def _params_equal(a, b):
    fa, fb = hf._flat(a), hf._flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def _tensors(out):
    from safetensors.numpy import load_file

    return load_file(os.path.join(out, "model.safetensors"))


def _block_config(block_size: int):
    config = default_config()
    config.objective = "block_diffusion"
    config.block_diffusion.block_size = block_size
    return config, {"objective", "block_diffusion.block_size"}


class _Tok:
    bos_id, eos_id, pad_id, vocab_size, mask_id = -1, 2, 0, 64, 64


@pytest.fixture(scope="module")
def exports(tmp_path_factory, trained_runs):
    """{'mdm': export of the trained MDM run, 'block': export of that run imported as block
    diffusion (block 4), 'block_run': that imported run}."""
    root = tmp_path_factory.mktemp("diffusion_exports")
    out = {"mdm": str(root / "mdm"), "block": str(root / "block"), "block_run": str(root / "block_run")}
    hf.export_run(trained_runs["mdm"], out["mdm"])
    config, explicit = _block_config(4)
    hf.import_run(out["mdm"], out["block_run"], config, explicit=explicit)
    hf.export_run(out["block_run"], out["block"])
    return out


# ---------------------------------------------------------------- export files and round trips (no torch)
def test_diffusion_export_writes_its_modeling_file_and_config(exports, trained_runs):
    out = exports["mdm"]
    run = load_run(trained_runs["mdm"])
    for name in REMOTE_FILES:  # copied verbatim from the package
        assert filecmp.cmp(os.path.join(out, name), os.path.join(REMOTE_DIR, name), shallow=False)
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["architectures"] == [DIFFUSION_ARCH] and cfg["model_type"] == "dllm_jax"
    assert cfg["auto_map"]["AutoModel"] == "modeling_dllm_jax.DllmJaxDiffusionLM"
    assert cfg["auto_map"]["AutoConfig"] == "configuration_dllm_jax.DllmJaxConfig"
    assert (cfg["objective"], cfg["attention"], cfg["block_size"]) == ("mdm", "bidirectional", None)
    assert cfg["mask_token_id"] == run.tokenizer.mask_id and cfg["dllm_pad_token_id"] == run.tokenizer.pad_id
    assert cfg["qk_norm"] is True and cfg["attention_bias"] is False and cfg["shift_logits"] is False
    assert cfg["generation_defaults"]["sampler"] == "topk_confidence" and cfg["generation_defaults"]["temperature"] == 0.0
    block = json.loads(open(os.path.join(exports["block"], "config.json")).read())
    assert (block["objective"], block["attention"], block["block_size"]) == ("block_diffusion", "block_causal", 4)
    assert block["generation_defaults"]["block_length"] == 4 and block["dllm_jax"]["objective_config"]["block_diffusion.block_size"] == 4
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoConfig.from_pretrained(exports["block"], trust_remote_code=True)  # needs transformers only
    assert type(auto).__name__ == "DllmJaxConfig" and auto.block_size == 4 and auto.mask_token_id == run.tokenizer.mask_id
    assert auto.eos_token_id == run.tokenizer.eos_id and auto.num_key_value_heads == run.model.cfg.kv_heads


def test_import_export_import_is_bitwise(tmp_path, exports, trained_runs):
    """MDM: run -> export -> import -> export -> import keeps every parameter bit for bit
    (mask / padding rows included) and the tensors of both exports are identical; the block
    run (imported as block diffusion) round-trips with its objective and block size."""
    w1, out2, w2 = str(tmp_path / "w1"), str(tmp_path / "out2"), str(tmp_path / "w2")
    hf.import_run(exports["mdm"], w1)
    a, b = load_run(trained_runs["mdm"]), load_run(w1)
    assert b.config.objective == "mdm"
    _params_equal(a.params, b.params)
    hf.export_run(w1, out2)
    t1, t2 = _tensors(exports["mdm"]), _tensors(out2)
    assert t1.keys() == t2.keys()
    for k in t1:
        np.testing.assert_array_equal(t1[k], t2[k], err_msg=k)
    c1, c2 = (json.loads(open(os.path.join(d, "config.json")).read()) for d in (exports["mdm"], out2))
    c1["dllm_jax"].pop("step"), c2["dllm_jax"].pop("step")
    assert c1 == c2
    hf.import_run(out2, w2)
    _params_equal(b.params, load_run(w2).params)
    # block diffusion
    wb = str(tmp_path / "wb")
    hf.import_run(exports["block"], wb)
    rb = load_run(wb)
    assert rb.config.objective == "block_diffusion" and rb.config.block_diffusion.block_size == 4
    _params_equal(load_run(exports["block_run"]).params, rb.params)
    # an AR export over a diffusion export removes the modeling files it does not write
    info = hf.export_run(trained_runs["ar"], out2)
    assert set(REMOTE_FILES) <= set(info["removed"]) and not any(os.path.exists(os.path.join(out2, n)) for n in REMOTE_FILES)


@pytest.mark.parametrize("qk_norm,bias", [(True, True), (False, False), (True, False)])
def test_diffusion_config_reads_back_as_model_settings(qk_norm, bias):
    """A diffusion export's config.json gives back the architecture (QK-norm and q/k/v biases
    are config keys there, any combination); a wrong model_type or a non-boolean switch is refused."""
    from dllm_jax.errors import CheckpointError, ConfigError

    mc = ModelConfig(vocab_size=72, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64, rope_base=500.0, norm_eps=1e-5,
                     qk_norm=qk_norm, attention_bias=bias, tie_embeddings=bias)
    config = default_config()
    config.objective = "mdm"
    cfg = hf.export_config(config, mc, _Tok, 0)
    got = hf.hf_model_settings(cfg, "x")
    assert (got["qk_norm"], got["attention_bias"], got["tie_embeddings"]) == (qk_norm, bias, bias)
    assert (got["n_layers"], got["n_kv_heads"], got["d_ff"], got["rope_base"], got["norm_eps"]) == (3, 2, 64, 500.0, 1e-5)
    with pytest.raises(CheckpointError, match="model_type"):
        hf.hf_model_settings({**cfg, "model_type": "llama"}, "x")
    with pytest.raises(ConfigError, match="qk_norm"):
        hf.hf_model_settings({**cfg, "qk_norm": "yes"}, "x")
    assert hf.hf_family(mc, causal=False) == DIFFUSION_ARCH
    if qk_norm and bias:  # no stock class has both: only a diffusion run exports it
        with pytest.raises(ConfigError, match="qk_norm"):
            hf.hf_family(mc, causal=True)


def test_modeling_file_parses_and_mirrors_our_sampler_constants():
    """Without torch (CI): the shipped modeling file is valid Python whose excluded-logit value
    and sampler names are ours (a sampler added to dllm_jax must be added there too)."""
    import ast

    from dllm_jax.sampling import categorical, diffusion

    tree = ast.parse(open(os.path.join(REMOTE_DIR, "modeling_dllm_jax.py"), encoding="utf-8").read())
    consts = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in ("NEG", "SAMPLERS")}
    assert consts["NEG"] == categorical.NEG and set(consts["SAMPLERS"]) == set(diffusion.KINDS)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert hf.layout.AUTO_MAP["AutoModel"].split(".")[1] in classes
    ast.parse(open(os.path.join(REMOTE_DIR, "configuration_dllm_jax.py"), encoding="utf-8").read())


# ---------------------------------------------------------------- the modeling file under torch
def _torch_model(path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()


def _write_random_export(path, objective, mc, params, block_size=4, seq_len=16):
    config = default_config()
    config.objective = objective
    config.data.seq_len = seq_len
    config.block_diffusion.block_size = block_size
    config.model.shift_logits = mc.shift_logits
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf.export_config(config, mc, _Tok, 0), f)
    from safetensors.numpy import save_file

    save_file(hf.export_params(params, mc), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    for name in REMOTE_FILES:
        with open(os.path.join(REMOTE_DIR, name)) as src, open(os.path.join(path, name), "w") as dst:
            dst.write(src.read())
    return str(path)


@pytest.mark.parametrize("objective,qk_norm,bias,tied,kv,shift", [
    ("mdm", True, True, True, 2, False),  # QK-norm with q/k/v biases (no Llama / Qwen class has both), GQA, tied head
    ("mdm", False, False, False, 4, True),  # Llama-like with shift_logits
    ("block_diffusion", True, False, False, 1, False),  # block-causal pattern, MQA
])
def test_modeling_file_gives_our_logits(tmp_path, objective, qk_norm, bias, tied, kv, shift):
    torch = pytest.importorskip("torch")
    mc = ModelConfig(vocab_size=72, d_model=32, n_layers=2, n_heads=4, n_kv_heads=kv, d_ff=64, rope_base=500.0, norm_eps=1e-5,
                     qk_norm=qk_norm, attention_bias=bias, tie_embeddings=tied, shift_logits=shift)
    model = Transformer(mc)
    ids = np.random.default_rng(0).integers(0, 64, (2, 16))
    params = nn.meta.unbox(jax.jit(lambda x: model.init(jax.random.key(1), x, causal=False)["params"])(jnp.asarray(ids)))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params)  # non-trivial norms, biases
    path = _write_random_export(tmp_path / "export", objective, mc, params)
    kw = {"attention_mask": block_causal_mask(16, 4)} if objective == "block_diffusion" else {}
    ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, causal=False, **kw))(params, jnp.asarray(ids)))
    theirs = _torch_model(path)
    with torch.no_grad():
        got = theirs(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, ours, atol=1e-4, rtol=0)
    if objective == "mdm":  # padding as segment ids: tokens see tokens, padding sees padding
        seg = np.ones_like(ids)
        seg[1, :5] = 0
        ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), causal=False, segment_ids=jnp.asarray(seg)))
        with torch.no_grad():
            got = theirs(torch.tensor(ids), attention_mask=torch.tensor(seg)).logits.numpy()
        np.testing.assert_allclose(got, ours, atol=1e-4, rtol=0)


class _GenTok:
    """Ids of the random generation models: 24 tokens, [MASK] = 24, padding the extra id 25."""
    bos_id, eos_id, pad_id, vocab_size, mask_id, pad_is_extra = -1, 2, 25, 24, 24, True


GEN_PROMPTS = [[5, 9], [7, 1, 13, 3, 22, 8, 17], []]


def _random_generation_model(tmp_path, objective, seed, shift=False):
    """(our model, params, path of its export): a random dense model (GQA, QK-norm) over the
    32 rows of _GenTok's vocabulary, logits spread enough that tokens (EOS included) differ."""
    mc = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, rope_base=100.0, norm_eps=1e-5,
                     shift_logits=shift)
    model = Transformer(mc)
    params = nn.meta.unbox(jax.jit(lambda x: model.init(jax.random.key(seed), x, causal=False)["params"])(jnp.zeros((1, 8), jnp.int32)))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 100))
    params = jax.tree.map(lambda x: x + 0.4 * jax.random.normal(next(keys), x.shape), params)
    params["embedding"] = jax.random.normal(next(keys), params["embedding"].shape)  # distinct tokens, distinct predictions
    config = default_config()
    config.objective = objective
    config.data.seq_len = 32
    config.block_diffusion.block_size = 4
    config.model.shift_logits = shift
    path = str(tmp_path / f"{objective}_{seed}_{shift}")
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf.export_config(config, mc, _GenTok, 0), f)
    from safetensors.numpy import save_file

    save_file(hf.export_params(params, mc), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    for name in REMOTE_FILES:
        with open(os.path.join(REMOTE_DIR, name)) as src, open(os.path.join(path, name), "w") as dst:
            dst.write(src.read())
    return model, params, path


def _compare_generate(model, params, hf_model, objective, ours_kw=None, **kw):
    """Our sampler and the modeling file's generate at temperature 0 on GEN_PROMPTS: the same
    tokens, lengths and EOS stops. Returns our result."""
    from dllm_jax.sampling import generate_tokens

    ours = generate_tokens(model, params, _GenTok, GEN_PROMPTS, objective=objective, temperature=0.0, **kw, **(ours_kw or {}))
    theirs = hf_model.generate(GEN_PROMPTS, temperature=0.0, return_dict_in_generate=True, **kw)
    assert theirs.tokens.tolist() == ours.tokens.tolist(), kw
    assert theirs.lengths.tolist() == ours.lengths.tolist() and theirs.stopped_at_eos.tolist() == ours.stopped_at_eos.tolist()
    if not ours_kw:  # the same network calls: MDM's skipped calls when nothing changed, block diffusion's cache commits
        assert theirs.nfe == ours.nfe, kw
    return ours


def test_trained_mdm_export_gives_our_logits(exports, trained_runs):
    torch = pytest.importorskip("torch")
    run = load_run(trained_runs["mdm"])
    model = _torch_model(exports["mdm"])
    ids = [run.tokenizer.encode("A quiet city wakes over the old stone")]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits, np.asarray(run.model.apply({"params": run.params}, jnp.asarray(ids), causal=False)),
                               atol=1e-4, rtol=0)


def test_generate_gives_our_mdm_tokens(tmp_path):
    """MDM at temperature 0: one block, semi-AR blocks (rows advance on their own, RoPE from
    each row's first token), the threshold, margin and entropy samplers, EOS last or not, a
    shift_logits model; prompts of different lengths in one batch (left padding as its own segment)."""
    torch = pytest.importorskip("torch")
    model, params, path = _random_generation_model(tmp_path, "mdm", 3)
    hf_model = _torch_model(path)
    results = [_compare_generate(model, params, hf_model, "mdm", **kw) for kw in (
        dict(max_new_tokens=12), dict(max_new_tokens=12, block_length=4), dict(max_new_tokens=12, steps=6, block_length=6),
        dict(max_new_tokens=12, block_length=4, sampler="threshold", threshold=0.2), dict(max_new_tokens=8, sampler="margin"),
        dict(max_new_tokens=8, sampler="entropy", eos_last=False))]
    stops = np.concatenate([r.stopped_at_eos for r in results])
    assert stops.any() and not stops.all()  # rows that stop at EOS and rows that run to the end
    shifted, shifted_params, shifted_path = _random_generation_model(tmp_path, "mdm", 3, shift=True)  # Dream-style shift
    _compare_generate(shifted, shifted_params, _torch_model(shifted_path), "mdm", max_new_tokens=8, block_length=4)
    # tensor input with left padding and an attention mask: the same rows; sequences = prompt + tokens up to EOS
    ours = results[-2]
    width = max(len(p) for p in GEN_PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in GEN_PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in GEN_PROMPTS])
    seq = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, sampler="margin", temperature=0.0)
    assert seq.shape == (3, width + 8) and seq[:, :width].tolist() == ids.tolist()
    for i in range(3):
        n = int(ours.lengths[i])
        assert seq[i, width:width + n].tolist() == ours.tokens[i, :n].tolist()
        if ours.stopped_at_eos[i]:
            assert int(seq[i, width + n]) == _GenTok.eos_id


def test_generate_gives_our_block_diffusion_tokens(tmp_path):
    """Block diffusion at temperature 0 with the KV cache (ours with and without it): rows of
    different prompt lengths, blocks aligned to each row's start, stop at a block with EOS."""
    pytest.importorskip("torch")
    model, params, path = _random_generation_model(tmp_path, "block_diffusion", 3)
    hf_model = _torch_model(path)
    stops = []
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=10, steps=5), dict(max_new_tokens=12, sampler="threshold", threshold=0.2),
               dict(max_new_tokens=9, sampler="margin", eos_last=False)):
        kw["block_length"] = 4
        stops.append(_compare_generate(model, params, hf_model, "block_diffusion", **kw).stopped_at_eos)
        _compare_generate(model, params, hf_model, "block_diffusion", ours_kw={"kv_cache": False}, **kw)
    stops = np.concatenate(stops)
    assert stops.any() and not stops.all()


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps=0 must be >= 1"), (dict(temperature=-1.0), "temperature=-1.0"), (dict(temperature=float("nan")), "temperature=nan"),
    (dict(top_p=0.0, temperature=1.0), "top_p=0.0"), (dict(top_k=-2), "top_k=-2"), (dict(block_length=0), "block_length=0"),
    (dict(sampler="threshold", threshold=1.5), "threshold=1.5")])
def test_generate_refuses_what_dllm_jax_sample_refuses(tmp_path, kw, match):
    """With torch: settings `dllm-jax sample` refuses are a ValueError naming them, not [MASK] ids or all-EOS rows."""
    torch = pytest.importorskip("torch")
    _, _, path = _random_generation_model(tmp_path, "mdm", 3)
    hf_model = _torch_model(path)
    with pytest.raises(ValueError, match=re.escape(match)):
        hf_model.generate([[5, 6]], max_new_tokens=8, **kw)
    with pytest.raises(ValueError, match=r"shape \(2,\); give \[batch, prompt length\]"):
        hf_model.generate(torch.tensor([5, 6]), max_new_tokens=8)
