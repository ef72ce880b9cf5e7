"""Import of released diffusion LMs (dllm_jax.hf): LLaDA (LLaDAModelLM), Dream (DreamModel),
SDAR (SDARForCausalLM), and the checkpoint's own [MASK] inside the vocabulary.

Each tiny checkpoint is written here in its released layout: config.json with the fields of
the authors' configuration file, safetensors with the published tensor names (random
weights), and a tokenizer.json whose mask piece sits INSIDE the vocabulary with a real
special token above it (as LLaDA's <|mdm_mask|> 126336 below <|eot_id|> 126348). The logits
are compared with independent NumPy forwards written from the authors' modeling files:

- LLaDA (GSAI-ML/LLaDA modeling_llada.py, LLaDALlamaBlock): RMSNorm(attn_norm), q/k/v_proj,
  RoPE over head_dim = d_model / n_heads (rotate-half, cos/sin of cat(freqs, freqs)),
  repeat_interleave GQA, full (bidirectional) attention, attn_out; RMSNorm(ff_norm),
  ff_out(silu(ff_proj x) * up_proj x); ln_f; head transformer.ff_out.
- Dream (modeling_dream.py): Qwen2's block (q/k/v biases, no o_proj bias) with full
  attention; generation shifts the logits: position i reads the output at i - 1.
- SDAR (modeling_sdar.py): Qwen3's block (per-head q/k RMSNorm before RoPE); training runs
  [x_t ; x_0] with `block_diff_mask` (block-diagonal within x_t, x_t -> x_0 of earlier
  blocks, block-causal within x_0), both halves at positions 0..n-1.

No torch and no released weights are needed.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")
pytest.importorskip("tokenizers")

from dllm_jax import config as config_lib  # noqa: E402
from dllm_jax import hf, objectives, train_step  # noqa: E402
from dllm_jax.checkpoint import load_run  # noqa: E402
from dllm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from dllm_jax.models import Transformer  # noqa: E402

TEXTS = ["The river runs under the old stone bridge.\n", "A quiet city wakes: the green door, the small window.\n"] * 20
ROWS = 304  # embedding rows of the checkpoints: more than the tokenizer's ids, as LLaDA's 126464 > its tokenizer
MASKS = {"llada": "<|mdm_mask|>", "dream": "<|mask|>", "sdar": "<|MASK|>"}


# ---------------------------------------------------------------- independent references (float64)
def _rms(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rope(x, positions, theta):
    """rotate-half RoPE of x [B, L, H, hd] at integer `positions` [L]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    emb = np.concatenate([np.outer(positions, inv_freq)] * 2, axis=-1)[None, :, None, :]
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def _attend(q, k, v, allowed):
    """softmax(q k^T / sqrt(hd)) v with kv heads repeated (repeat_interleave); allowed [Lq, Lk] bool."""
    n_h, n_kv, hd = q.shape[2], k.shape[2], q.shape[3]
    k, v = np.repeat(k, n_h // n_kv, axis=2), np.repeat(v, n_h // n_kv, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v).reshape(q.shape[0], q.shape[1], n_h * hd)


def llada_reference(cfg: dict, w: dict, ids: np.ndarray) -> np.ndarray:
    """LLaDA's forward (bidirectional), float64 logits [B, L, rows]."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    d, n_h = cfg["d_model"], cfg["n_heads"]
    n_kv, hd, eps = cfg["n_kv_heads"], cfg["d_model"] // cfg["n_heads"], cfg["rms_norm_eps"]
    b, length = ids.shape
    pos = np.arange(length)
    x = w["model.transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "q_proj.weight"].T).reshape(b, length, n_h, hd)
        k = (h @ w[p + "k_proj.weight"].T).reshape(b, length, n_kv, hd)
        v = (h @ w[p + "v_proj.weight"].T).reshape(b, length, n_kv, hd)
        q, k = _rope(q, pos, cfg["rope_theta"]), _rope(k, pos, cfg["rope_theta"])
        x = x + _attend(q, k, v, np.ones((length, length), bool)) @ w[p + "attn_out.weight"].T
        h = _rms(x, w[p + "ff_norm.weight"], eps)
        gate, up = h @ w[p + "ff_proj.weight"].T, h @ w[p + "up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ff_out.weight"].T
    x = _rms(x, w["model.transformer.ln_f.weight"], eps)
    return x @ w["model.transformer.ff_out.weight"].T


def qwen_reference(cfg: dict, w: dict, ids: np.ndarray, allowed: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Dream (Qwen2 block: q/k/v biases) or SDAR (Qwen3 block: q/k norm) with an explicit
    attention pattern `allowed` [L, L] and RoPE `positions` [L]; float64 logits [B, L, rows]."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    d, n_h, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, theta = cfg.get("head_dim") or d // n_h, cfg["rms_norm_eps"], cfg["rope_theta"]
    b, length = ids.shape

    def linear(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj").reshape(b, length, n_h, hd)
        k = linear(h, p + "self_attn.k_proj").reshape(b, length, n_kv, hd)
        v = linear(h, p + "self_attn.v_proj").reshape(b, length, n_kv, hd)
        if p + "self_attn.q_norm.weight" in w:
            q, k = _rms(q, w[p + "self_attn.q_norm.weight"], eps), _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        x = x + linear(_attend(q, k, v, allowed), p + "self_attn.o_proj")
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def dream_reference(cfg, w, ids):
    """Dream's logits as its generation reads them: full attention, then shifted right by one."""
    length = ids.shape[1]
    logits = qwen_reference(cfg, w, ids, np.ones((length, length), bool), np.arange(length))
    return np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


def sdar_block_diff_mask(n: int, block_size: int) -> np.ndarray:
    """SDAR's training mask over [x_t ; x_0] (2n tokens), from modeling_sdar.block_diff_mask."""
    q, k = np.arange(2 * n)[:, None], np.arange(2 * n)[None, :]
    q0, k0 = q >= n, k >= n
    bq, bk = np.where(q0, q - n, q) // block_size, np.where(k0, k - n, k) // block_size
    return ((bq == bk) & (q0 == k0)) | ((bq > bk) & k0 & ~q0) | ((bq >= bk) & k0 & q0)


# ---------------------------------------------------------------- tiny released checkpoints
def make_tokenizer(path, mask_name: str) -> dict:
    """A byte-level BPE tokenizer.json whose [MASK] is an added special token INSIDE the
    vocabulary, with another special token (<|eot_id|>, a real token) above it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.add_special_tokens([AddedToken(mask_name, special=True), AddedToken("<|eot_id|>", special=True)])
    tok.save(str(path))
    vocab = tok.get_vocab(with_added_tokens=True)
    return {"mask": vocab[mask_name], "eot": vocab["<|eot_id|>"], "eos": vocab["<|endoftext|>"], "size": len(vocab)}


def make_released_dir(path, family: str, seed: int = 0) -> tuple[str, dict, dict, dict]:
    """(dir, config.json dict, tensors, token ids) of a tiny checkpoint in `family`'s released layout."""
    os.makedirs(path, exist_ok=True)
    ids = make_tokenizer(os.path.join(path, "tokenizer.json"), MASKS[family])
    rng = np.random.default_rng(seed)
    d, f_, n_h, n_kv = 32, 48, 4, 2

    def normal(shape, mean=0.0, std=0.2):
        return rng.normal(mean, std, shape)

    if family == "llada":
        hd = d // n_h
        cfg = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": d, "n_heads": n_h, "n_kv_heads": n_kv,
               "n_layers": 2, "mlp_hidden_size": f_, "mlp_ratio": 4, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
               "vocab_size": ROWS, "embedding_size": ROWS, "weight_tying": False, "include_bias": False, "include_qkv_bias": False,
               "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "layer_norm_with_affine": True,
               "bias_for_layer_norm": False, "attention_layer_norm": False, "rope": True, "alibi": False, "input_emb_norm": False,
               "scale_logits": False, "block_group_size": 1, "flash_attention": False, "max_sequence_length": 4096,
               "mask_token_id": ids["mask"], "eos_token_id": ids["eos"], "pad_token_id": ids["eos"], "use_cache": False}
        t = {"model.transformer.wte.weight": normal((ROWS, d), std=0.5), "model.transformer.ln_f.weight": normal((d,), 1.0),
             "model.transformer.ff_out.weight": normal((ROWS, d))}
        for i in range(2):
            p = f"model.transformer.blocks.{i}."
            t.update({p + "attn_norm.weight": normal((d,), 1.0), p + "ff_norm.weight": normal((d,), 1.0),
                      p + "q_proj.weight": normal((d, d)), p + "k_proj.weight": normal((n_kv * hd, d)),
                      p + "v_proj.weight": normal((n_kv * hd, d)), p + "attn_out.weight": normal((d, d)),
                      p + "ff_proj.weight": normal((f_, d)), p + "up_proj.weight": normal((f_, d)), p + "ff_out.weight": normal((d, f_))})
    else:
        sdar = family == "sdar"
        hd = 16 if sdar else d // n_h  # SDAR (Qwen3) gives head_dim explicitly, here != d / n_heads
        cfg = {"architectures": ["SDARForCausalLM" if sdar else "DreamModel"], "model_type": "sdar" if sdar else "Dream",
               "hidden_size": d, "intermediate_size": f_, "num_hidden_layers": 2, "num_attention_heads": n_h,
               "num_key_value_heads": n_kv, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
               "vocab_size": ROWS, "tie_word_embeddings": sdar, "hidden_act": "silu", "attention_bias": False,
               "use_sliding_window": False, "sliding_window": None, "max_position_embeddings": 4096,
               "eos_token_id": ids["eos"], "pad_token_id": ids["eos"]}
        if sdar:
            cfg.update(head_dim=hd, block_size=4)  # its mask is named by tokenizer_config.json only
            with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
                json.dump({"tokenizer_class": "Qwen2Tokenizer", "mask_token": MASKS[family], "eos_token": "<|endoftext|>"}, f)
        else:
            cfg["mask_token_id"] = ids["mask"]
        t = {"model.embed_tokens.weight": normal((ROWS, d), std=0.5), "model.norm.weight": normal((d,), 1.0)}
        if not sdar:
            t["lm_head.weight"] = normal((ROWS, d))
        for i in range(2):
            p = f"model.layers.{i}."
            t.update({p + "input_layernorm.weight": normal((d,), 1.0), p + "post_attention_layernorm.weight": normal((d,), 1.0),
                      p + "self_attn.q_proj.weight": normal((n_h * hd, d)), p + "self_attn.k_proj.weight": normal((n_kv * hd, d)),
                      p + "self_attn.v_proj.weight": normal((n_kv * hd, d)), p + "self_attn.o_proj.weight": normal((d, n_h * hd)),
                      p + "mlp.gate_proj.weight": normal((f_, d)), p + "mlp.up_proj.weight": normal((f_, d)),
                      p + "mlp.down_proj.weight": normal((d, f_))})
            if sdar:
                t.update({p + "self_attn.q_norm.weight": normal((hd,), 1.0), p + "self_attn.k_norm.weight": normal((hd,), 1.0)})
            else:  # Dream's q/k/v always have biases (whatever attention_bias says)
                t.update({p + "self_attn.q_proj.bias": normal((n_h * hd,), std=0.5),
                          p + "self_attn.k_proj.bias": normal((n_kv * hd,), std=0.5),
                          p + "self_attn.v_proj.bias": normal((n_kv * hd,), std=0.5)})
    t = {k: v.astype(np.float32) for k, v in t.items()}
    safetensors_numpy.save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return str(path), cfg, t, ids


def _run_config(**overrides):
    c = config_lib.default_config()
    c.data.seq_len = 16
    c.mesh.data = 8
    for k, v in overrides.items():
        config_lib.set_key(c, k, v)
    return c


def _ids_with_mask(ids, n_rows=2, length=16, seed=1):
    """Token rows [n_rows, length] over the whole tokenizer (the mask and <|eot_id|> included)."""
    x = np.random.default_rng(seed).integers(0, ids["size"], (n_rows, length))
    x[0, 3], x[0, 7], x[1, 5] = ids["mask"], ids["eot"], ids["mask"]
    return x


# ---------------------------------------------------------------- import
EXPECTED = {"llada": ("mdm", False, 16), "dream": ("mdm", True, 16), "sdar": ("block_diffusion", False, 4)}


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_released_dlm_imports_with_its_objective_mask_and_logits(tmp_path, family):
    hf_dir, cfg, tensors, ids = make_released_dir(tmp_path / family, family)
    info = hf.import_run(hf_dir, str(tmp_path / "run"), _run_config())
    run = load_run(str(tmp_path / "run"))
    objective, shift, block = EXPECTED[family]
    assert (info["objective"], info["shift_logits"], info.get("block_size"), info["mask_id"]) == (
        objective, shift, block if family == "sdar" else None, ids["mask"])
    assert (run.config.objective, run.config.model.shift_logits) == (objective, shift)
    if family == "sdar":
        assert run.config.block_diffusion.block_size == block
    # the checkpoint's own [MASK], inside the vocabulary, with a real token above it
    tok = run.tokenizer
    assert run.config.data.mask_token == MASKS[family] and tok.mask_id == ids["mask"] and not tok.mask_is_extra
    assert tok.vocab_size == ids["size"] and ids["eot"] > tok.mask_id and tok.eos_id == ids["eos"] and tok.pad_id != tok.eos_id
    tid = train_step.token_ids(tok)
    assert (tid.mask_id, tid.vocab_limit) == (ids["mask"], ids["size"])
    m = run.config.model
    assert (m.rope_base, m.qk_norm, m.attention_bias, m.tie_embeddings) == (
        {"llada": 500000.0}.get(family, 1e6), family == "sdar", family == "dream", family == "sdar")
    # every real row (the mask's too) is the checkpoint's
    emb = tensors["model.transformer.wte.weight" if family == "llada" else "model.embed_tokens.weight"]
    np.testing.assert_array_equal(np.asarray(run.params["embedding"])[:ids["size"]], emb[:ids["size"]])

    x = _ids_with_mask(ids)
    obj = objectives.build(run.config)
    real = ids["size"]
    if family == "sdar":  # the training forward: [x_t ; x_0] with SDAR's mask, both halves at positions 0..n-1
        x_t = np.where(np.random.default_rng(2).random(x.shape) < 0.5, ids["mask"], x)
        inputs = np.concatenate([x_t, x], axis=1)
        ours = np.asarray(jax.jit(lambda p, t: obj.forward(run.model, p, t, None))(run.params, jnp.asarray(inputs)))
        ref = qwen_reference(cfg, tensors, inputs, sdar_block_diff_mask(16, 4), np.concatenate([np.arange(16)] * 2))[:, :16]
        np.testing.assert_allclose(ours[..., :real], ref[..., :real], atol=1e-4, rtol=0)
        # its decoding pattern: a block sees itself and the blocks before it (generate.py's block_diffusion_attention_mask)
        allowed = np.arange(16)[None, :] // 4 <= np.arange(16)[:, None] // 4
        ours = np.asarray(jax.jit(lambda p, t: run.model.apply({"params": p}, t, causal=False, attention_mask=allowed))(
            run.params, jnp.asarray(x)))
        ref = qwen_reference(cfg, tensors, x, allowed, np.arange(16))
    else:
        ours = np.asarray(jax.jit(lambda p, t: obj.forward(run.model, p, t, None))(run.params, jnp.asarray(x)))
        ref = llada_reference(cfg, tensors, x) if family == "llada" else dream_reference(cfg, tensors, x)
    np.testing.assert_allclose(ours[..., :real], ref[..., :real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_round_trip_import_export_import_is_bitwise(tmp_path, family):
    hf_dir, _, _, ids = make_released_dir(tmp_path / family, family)
    first, out, second = (str(tmp_path / n) for n in ("first", "export", "second"))
    hf.import_run(hf_dir, first, _run_config())
    hf.export_run(first, out)
    hf.import_run(out, second, _run_config())
    a, b = load_run(first), load_run(second)
    assert (b.config.objective, b.config.model.shift_logits, b.config.data.mask_token) == (
        a.config.objective, a.config.model.shift_logits, a.config.data.mask_token)
    assert b.config.block_diffusion.block_size == a.config.block_diffusion.block_size
    assert b.tokenizer.mask_id == a.tokenizer.mask_id == ids["mask"]
    got, want = hf._flat(b.params), hf._flat(a.params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


@pytest.mark.slow  # two short trainings with a resume: ~30 s each on 2 CPU cores
@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_train_continues_a_released_dlm_on_a_corpus(tmp_path, corpus, family):
    """`train --config.init.from_hf=DIR` on a corpus: the run is the checkpoint's objective with
    its own [MASK] (also when it resumes), and its first step starts from the released weights."""
    from conftest import tiny_config
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    hf_dir, _, tensors, ids = make_released_dir(tmp_path / family, family)
    paths, cache = corpus
    cfg = tiny_config(paths, cache, "ar", init__from_hf=hf_dir, train__num_steps=2, train__warmup_steps=1, train__log_every=1, train__eval_every=0,
                      train__checkpoint_every=1, data__epochs=1)
    workdir = str(tmp_path / "run")
    train(cfg, workdir, stop_after=1)
    train(cfg, workdir)  # resumes: the saved objective and mask win over the experiment's objective='ar'
    run = load_run(workdir)
    assert run.step == 2 and run.config.objective == EXPECTED[family][0] and run.tokenizer.mask_id == ids["mask"]
    assert all(np.isfinite(r["loss"]) for r in read_metrics(workdir) if "loss" in r)
    emb = tensors["model.transformer.wte.weight" if family == "llada" else "model.embed_tokens.weight"]
    np.testing.assert_allclose(np.asarray(run.params["embedding"])[:ids["size"]], emb[:ids["size"]], atol=0.05)


# ---------------------------------------------------------------- the mask id is never predicted, sampled or scored
def test_cross_entropy_excludes_an_in_vocabulary_mask():
    logits = np.random.default_rng(0).normal(0, 2, (2, 5, 12)).astype(np.float32)
    targets = np.array([[0, 3, 9, 8, 1], [2, 9, 4, 5, 6]])
    vocab, mask = 10, 7  # ids 10, 11: padding rows; 7: [MASK] with real ids 8, 9 above it
    real = np.array([i < vocab and i != mask for i in range(12)])
    lz = np.log(np.exp(logits[..., real].astype(np.float64)).sum(-1))
    want = lz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    got = objectives.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), vocab, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    from dllm_jax import losses

    hidden = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    head = np.random.default_rng(2).normal(size=(4, 12)).astype(np.float32)
    plain = objectives.token_cross_entropy(jnp.asarray(hidden @ head), jnp.asarray(targets), vocab, mask)
    chunked = losses.chunked_token_cross_entropy(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), vocab, 2, mask)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(plain), rtol=1e-5)
    # our runs' rule (mask = vocab size) is the old one: the same values with or without mask_id
    np.testing.assert_array_equal(np.asarray(objectives.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), vocab, vocab)),
                                  np.asarray(objectives.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), vocab)))


class MaskLoving(Transformer):
    """A model whose [MASK] logit dominates every other: a sampler that did not exclude the
    checkpoint's mask id would emit it everywhere."""

    mask_id: int = 0

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        bump = lambda logits: logits.at[..., self.mask_id].add(1e4)  # noqa: E731
        return (bump(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else bump(out)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_samplers_never_emit_the_checkpoint_mask(tmp_path, family):
    from dllm_jax.sampling.api import generate_tokens

    hf_dir, _, _, ids = make_released_dir(tmp_path / family, family)
    hf.import_run(hf_dir, str(tmp_path / "run"), _run_config())
    run = load_run(str(tmp_path / "run"))
    model = MaskLoving(run.model.cfg, mask_id=ids["mask"])
    tid = train_step.token_ids(run.tokenizer)
    res = generate_tokens(model, run.params, tid, [[5, 6, 7], [8]], objective=run.config.objective, max_new_tokens=8,
                          steps=8, block_length=4, temperature=1.0, seed=0)
    out = np.asarray(res.tokens)
    assert out.size and not (out == ids["mask"]).any()
    assert ((out >= 0) & (out < ids["size"])).all() or (out == tid.pad_id).any()


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_scores_do_not_count_the_checkpoint_mask(tmp_path, family):
    """Sequence NELBO, answer log-likelihoods and one-token choices of the model whose [MASK]
    logit dominates equal the plain model's: the mask's probability is never in a score."""
    from dllm_jax.evaluation.likelihood import Scorer

    hf_dir, _, _, ids = make_released_dir(tmp_path / family, family)
    hf.import_run(hf_dir, str(tmp_path / "run"), _run_config())
    run = load_run(str(tmp_path / "run"))
    seqs = np.random.default_rng(3).integers(0, ids["mask"], (2, 16))
    pairs = [(list(seqs[0, :6]), list(seqs[0, 6:9])), (list(seqs[1, :5]), [int(ids["eot"])])]
    results = []
    for model in (run.model, MaskLoving(run.model.cfg, mask_id=ids["mask"])):
        scorer = Scorer.for_model(model, run.config, run.tokenizer, batch_size=4)
        nll = scorer.sequence_nll(run.params, seqs, mc_samples=2, seed=0)["nats_per_token"]
        lls = [(p.logprob, p.greedy) for p in scorer.loglikelihood(run.params, pairs, mc_samples=2, seed=0, greedy=True)]
        results.append((nll, lls))
    assert np.isfinite(results[0][0]) and results[0][0] < 50
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for (a, ga), (b, gb) in zip(results[0][1], results[1][1]):
        assert ga == gb and abs(a - b) < 1e-4 * max(1.0, abs(a))


def test_uniform_objectives_refuse_an_in_vocabulary_mask():
    ids = objectives.TokenIds(pad_id=11, eos_id=0, mask_id=7, vocab_limit=10)
    with pytest.raises(ConfigError, match="data.mask_token"):
        objectives.prepare_interpolating(jnp.zeros((2, 8), jnp.int32), jax.random.key(0), ids, objectives.by_name("gidd").process())


# ---------------------------------------------------------------- refusals
def test_llada_options_that_change_the_block_are_refused(tmp_path):
    hf_dir, cfg, _, _ = make_released_dir(tmp_path / "llada", "llada")
    for key, value in (("attention_layer_norm", True), ("activation_type", "swiglu"), ("scale_logits", True), ("block_type", "sequential")):
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump({**cfg, key: value}, f)
        with pytest.raises(ConfigError, match=key):
            hf.resolve_init(_run_config(**{"init.from_hf": hf_dir}))


def test_llada_moe_and_a_missing_mask_are_checkpoint_errors(tmp_path):
    hf_dir, cfg, _, _ = make_released_dir(tmp_path / "dream", "dream")
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump({**cfg, "architectures": ["LLaDAMoEModelLM"]}, f)
    with pytest.raises(CheckpointError, match="norm_topk_prob"):
        hf.resolve_init(_run_config(**{"init.from_hf": hf_dir}))
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump({k: v for k, v in cfg.items() if k != "mask_token_id"}, f)
    with pytest.raises(CheckpointError, match="mask"):
        hf.resolve_init(_run_config(**{"init.from_hf": hf_dir}))


def test_mask_token_must_be_a_special_token_other_than_eos(tmp_path):
    from dllm_jax.data.tokenizer import load_tokenizer

    path = str(tmp_path / "tokenizer.json")
    ids = make_tokenizer(path, "<|mdm_mask|>")
    tok = load_tokenizer(path, mask_token="<|mdm_mask|>")
    assert (tok.mask_id, tok.mask_is_extra, tok.mask_names) == (ids["mask"], False, {"mask_token": "<|mdm_mask|>"})
    assert tok.id_to_piece(ids["mask"]) == "<|mdm_mask|>" and tok.decode([5, ids["mask"], 6]) == tok.decode([5, 6])
    plain = load_tokenizer(path)
    assert plain.mask_id == plain.vocab_size and plain.fingerprint == tok.fingerprint  # the mask changes no token data
    with pytest.raises(ConfigError, match="data.mask_token='<\\|endoftext\\|>' is the EOS token"):
        load_tokenizer(path, mask_token="<|endoftext|>")
    with pytest.raises(ConfigError, match="ordinary piece"):
        load_tokenizer(path, mask_token=plain.id_to_piece(40))


def test_an_explicit_objective_that_contradicts_a_released_dlm_is_refused(tmp_path):
    hf_dir, _, _, _ = make_released_dir(tmp_path / "dream", "dream")
    with pytest.raises(ConfigError, match="model.shift_logits"):
        hf.import_run(hf_dir, str(tmp_path / "run"), _run_config(**{"model.shift_logits": False}), explicit={"model.shift_logits"})
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------- released DLM -> import -> export (diffusion class) -> transformers
def _export_chain(tmp_path, family):
    """(released ids, our imported run, the export's directory): a released-layout checkpoint
    imported (`dllm-jax import`'s import_run) and exported as a diffusion checkpoint."""
    hf_dir, _, _, ids = make_released_dir(tmp_path / family, family)
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "export")
    hf.import_run(hf_dir, run_dir, _run_config())
    hf.export_run(run_dir, out)
    return ids, load_run(run_dir), out


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_export_of_a_released_dlm_records_its_vocab_limit_and_mask(tmp_path, family):
    """The export's config.json keeps the tokenizer's vocabulary size apart from the in-vocabulary
    [MASK] (the modeling file's exclusion rule reads both); tokenizer_config.json names the mask piece."""
    from dllm_jax.hf.layout import DIFFUSION_ARCH

    ids, run, out = _export_chain(tmp_path, family)
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["architectures"] == [DIFFUSION_ARCH] and cfg["objective"] == EXPECTED[family][0]
    assert (cfg["vocab_limit"], cfg["mask_token_id"]) == (ids["size"], ids["mask"]) and ids["eot"] < cfg["vocab_limit"]
    assert cfg["dllm_pad_token_id"] == run.tokenizer.pad_id and cfg["shift_logits"] == EXPECTED[family][1]
    assert cfg["vocab_size"] == run.model.cfg.vocab_size > ids["size"]
    tok_cfg = json.loads(open(os.path.join(out, "tokenizer_config.json")).read())
    assert (tok_cfg["mask_token_id"], tok_cfg["mask_token"]) == (ids["mask"], MASKS[family])


class MaskAndEotLoving(MaskLoving):
    """MaskLoving, with the real token above the mask (<|eot_id|>) also raised by `eot_boost`:
    it then wins some positions, so an exclusion of ids >= the mask id (instead of ids >= the
    vocabulary size, and the mask id) changes the tokens, and allowing the mask puts it everywhere."""

    eot_id: int = 0
    eot_boost: float = 2.0

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        bump = lambda logits: logits.at[..., self.eot_id].add(self.eot_boost)  # noqa: E731
        return (bump(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else bump(out)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_exported_released_dlm_runs_in_transformers_as_in_dllm_jax(tmp_path, family):
    """With torch: the export's modeling file gives our logits (within 1e-4, every column) and,
    at temperature 0 with the mask and <|eot_id|> logits raised, our sampler's tokens: it never
    generates the in-vocabulary [MASK] and does generate the real token above it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from dllm_jax.objectives.block_diffusion import block_causal_mask
    from dllm_jax.sampling import generate_tokens

    ids, run, out = _export_chain(tmp_path, family)
    theirs = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert transformers.AutoTokenizer.from_pretrained(out).mask_token_id == ids["mask"]
    x = _ids_with_mask(ids)
    kw = {"attention_mask": block_causal_mask(16, 4)} if family == "sdar" else {}
    ours = np.asarray(jax.jit(lambda p, t: run.model.apply({"params": p}, t, causal=False, **kw))(run.params, jnp.asarray(x)))
    with torch.no_grad():
        got = theirs(torch.tensor(x)).logits.numpy()
    np.testing.assert_allclose(got, ours, atol=1e-4, rtol=0)

    bump = torch.zeros(run.model.cfg.vocab_size)
    bump[ids["mask"]], bump[ids["eot"]] = 1e4, 2.0
    head = theirs._head
    theirs._head = lambda hidden: head(hidden) + bump  # the same raise as MaskAndEotLoving's, on the torch side
    model = MaskAndEotLoving(run.model.cfg, mask_id=ids["mask"], eot_id=ids["eot"])
    tid = train_step.token_ids(run.tokenizer)
    prompts = [[5, 6, 7], [8, ids["eot"]], []]  # a real token above the mask is a valid prompt id
    seen = []
    for opts in (dict(max_new_tokens=8, block_length=4), dict(max_new_tokens=8, sampler="margin", block_length=4 if family == "sdar" else 8),
                 dict(max_new_tokens=10, steps=5, block_length=4) if family == "sdar" else dict(max_new_tokens=10, steps=4, block_length=5)):
        want = generate_tokens(model, run.params, tid, prompts, objective=run.config.objective, temperature=0.0, **opts)
        got = theirs.generate(prompts, temperature=0.0, return_dict_in_generate=True, **opts)
        assert got.tokens.tolist() == np.asarray(want.tokens).tolist(), opts
        assert got.lengths.tolist() == np.asarray(want.lengths).tolist(), opts
        seen.append(np.asarray(want.tokens))
    seen = np.concatenate([s.ravel() for s in seen])
    assert (seen == ids["eot"]).any() and (seen < ids["mask"]).any() and not (seen == ids["mask"]).any()
    with pytest.raises(ValueError, match="mask id"):
        theirs.generate([[5, ids["mask"]]], max_new_tokens=4)


def test_the_mask_token_is_not_part_of_a_trained_tokenizers_store_identity():
    """data.mask_token picks an id of the stored tokenizer (rebuilt per run); it must not make a
    new token store, while data.eos_token (which changes the stored ids) does."""
    from dllm_jax.config import default_config
    from dllm_jax.data.prepare import tokenizer_recipe

    plain, masked, eos = default_config().data, default_config().data, default_config().data
    masked.mask_token, eos.eos_token = "<|mask|>", "<|eos|>"
    assert tokenizer_recipe(masked) == tokenizer_recipe(plain) != tokenizer_recipe(eos)


def test_damaged_config_json_and_bad_values_are_one_checkpoint_error(tmp_path):
    """A config.json that is not JSON, not UTF-8, not an object, or whose architectures /
    mask_token_id have the wrong type: a CheckpointError naming the file or value (never a
    JSON/Unicode/Attribute error from inside the reader)."""
    hf_dir, cfg, _, _ = make_released_dir(tmp_path / "llada", "llada")
    path = os.path.join(hf_dir, "config.json")
    cases = [(b'{"architectures": ["LLaDAModelLM"], "d_mo', "not readable JSON"), (b'{"name": "caf\xe9"}', "not readable JSON"),
             (b"[1, 2]", "holds a JSON list"), (json.dumps({**cfg, "architectures": "LLaDAModelLM"}).encode(), "architectures='LLaDAModelLM'"),
             (json.dumps({**cfg, "mask_token_id": "abc"}).encode(), "mask_token_id='abc' is not an integer"),
             (json.dumps({**cfg, "mask_token_id": True}).encode(), "mask_token_id=True is not an integer")]
    for raw, match in cases:
        with open(path, "wb") as f:
            f.write(raw)
        with pytest.raises(CheckpointError, match=match):
            hf.resolve_init(_run_config(**{"init.from_hf": hf_dir}))


def test_import_checks_the_model_and_run_settings_as_train_does(tmp_path):
    """Shapes the checkpoint gives and run settings the user gives are validated before anything is written."""
    hf_dir, cfg, _, _ = make_released_dir(tmp_path / "llada", "llada")
    run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="data.seq_len"):
        hf.import_run(hf_dir, run_dir, _run_config(**{"data.seq_len": 0}))
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump({**cfg, "n_heads": 5, "n_kv_heads": 2}, f)
    with pytest.raises(ConfigError, match="model.n_kv_heads=2 must divide model.n_heads=5"):
        hf.import_run(hf_dir, run_dir, _run_config())
    assert not os.path.exists(run_dir)


def test_a_run_is_never_written_into_a_hugging_face_checkpoint(tmp_path, corpus):
    """import --workdir or train --workdir pointing at a Hugging Face directory (a released one, or an
    export) is refused before anything is written: its config.json would be overwritten."""
    from conftest import tiny_config

    from dllm_jax.train import train

    hf_dir, _, _, _ = make_released_dir(tmp_path / "llada", "llada")
    before = {n: open(os.path.join(hf_dir, n), "rb").read() for n in os.listdir(hf_dir)}
    with pytest.raises(ConfigError, match="holds a Hugging Face checkpoint"):
        hf.import_run(hf_dir, hf_dir, _run_config())
    paths, cache = corpus
    with pytest.raises(ConfigError, match="holds a Hugging Face checkpoint"):
        train(tiny_config(paths, cache, "mdm"), hf_dir)
    assert {n: open(os.path.join(hf_dir, n), "rb").read() for n in os.listdir(hf_dir)} == before


def test_a_dlm_imported_without_a_corpus_scores_task_files(tmp_path, capsys):
    """docs/huggingface.md: without a corpus at import, `eval` scores a jsonl file (no data.paths needed);
    `--task val` still asks for the corpus, by name."""
    from dllm_jax.cli import main

    hf_dir, _, _, _ = make_released_dir(tmp_path / "llada", "llada")
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "mc.json")
    hf.import_run(hf_dir, run_dir, _run_config())
    data = os.path.join(os.path.dirname(__file__), "data", "mc_toy.jsonl")
    assert main(["eval", "--workdir", run_dir, "--task", "jsonl", "--data", data, "--output", out]) == 0
    assert json.load(open(out))["n"] == 4
    assert main(["eval", "--workdir", run_dir, "--task", "val"]) == 2
    assert "needs data.paths" in capsys.readouterr().err
