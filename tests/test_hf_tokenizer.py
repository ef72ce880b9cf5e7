"""Hugging Face tokenizer.json support: built here with the `tokenizers` library (no download)."""
import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

from dllm_jax.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, tokenizer_from_bytes  # noqa: E402
from dllm_jax.errors import DataError  # noqa: E402


def make_hf_tokenizer(path, texts, vocab_size=300, specials=("<|endoftext|>", "<|padding|>")):
    """A byte-level BPE tokenizer.json trained on `texts`, with special tokens `specials` (ids 0, 1, ...;
    default <|endoftext|> and <|padding|>, as GPT-NeoX)."""
    from tokenizers import Tokenizer as T, decoders, models, pre_tokenizers, trainers

    tok = T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))
    return str(path)


TEXTS = ["The river runs under the old stone bridge.\n", "A quiet city wakes: ünïcode, tabs\tand 123!"] * 20


def test_hf_tokenizer_round_trip_and_ids(tmp_path):
    path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer) and tok.filename == "tokenizer.json"
    vocab = json.loads(open(path, encoding="utf-8").read())["model"]["vocab"]
    assert tok.eos_id == 0 and tok.pad_id == 1  # special tokens come first
    assert tok.mask_id == tok.vocab_size == len(vocab)
    for text in TEXTS[:2] + ["never seen: ζ∑ and emoji 🙂"]:
        ids = tok.encode(text)
        assert tok.eos_id not in ids and max(ids) < tok.vocab_size
        assert tok.decode(ids) == text
        assert tok.decode(ids + [tok.eos_id, tok.mask_id, tok.pad_id]) == text  # specials dropped
    assert tok.encode_batch(TEXTS[:2]) == [tok.encode(t) for t in TEXTS[:2]]
    # content-based dispatch, directory form, fingerprint stable across save/load
    again = tokenizer_from_bytes(tok.model_bytes)
    assert isinstance(again, HFTokenizer) and again.fingerprint == tok.fingerprint
    assert load_tokenizer(str(tmp_path)).fingerprint == tok.fingerprint
    tok.save(str(tmp_path / "copy" / "tokenizer.json"))
    assert load_tokenizer(str(tmp_path / "copy" / "tokenizer.json")).fingerprint == tok.fingerprint


def test_hf_tokenizer_bad_inputs(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(DataError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    from tokenizers import Tokenizer as T, models

    T(models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "noeos.json"))
    with pytest.raises(DataError, match="end-of-text"):
        load_tokenizer(str(tmp_path / "noeos.json"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(str(tmp_path / "empty_dir"))


def test_train_with_hf_tokenizer_and_resume(tmp_path, corpus):
    """A run trains with a tokenizer.json, keeps it in the workdir and checkpoint, and resumes."""
    from conftest import tiny_config
    from dllm_jax.checkpoint import load_run
    from dllm_jax.train import train

    paths, cache = corpus
    tok_path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, vocab_size=280)
    cfg = tiny_config(paths, cache, "ar", data__tokenizer=tok_path, data__epochs=1)
    workdir = str(tmp_path / "run")
    train(cfg, workdir, stop_after=4)
    assert (tmp_path / "run" / "tokenizer.json").exists() and not (tmp_path / "run" / "tokenizer.model").exists()
    summary = train(cfg, workdir)
    run = load_run(workdir)
    assert isinstance(run.tokenizer, HFTokenizer)
    assert run.tokenizer.fingerprint == load_tokenizer(tok_path).fingerprint
    assert run.model.cfg.vocab_size >= run.tokenizer.vocab_size + 1  # room for [MASK]
    assert summary["step"] == 8


def test_hf_special_token_strings_in_text_are_text(tmp_path):
    """encode_special_tokens: special added tokens in text are text by default (their ids with
    split_special_tokens=False); non-special added tokens always match, as in transformers."""
    from tokenizers import AddedToken, Tokenizer as T

    path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS)
    raw = T.from_file(path)
    raw.add_tokens([AddedToken("<sep>", special=False)])
    raw.save(str(tmp_path / "t2.json"))
    tok = load_tokenizer(str(tmp_path / "t2.json"))
    sep = raw.token_to_id("<sep>")
    text = "one<|endoftext|>two <|padding|> three<sep>four"
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.pad_id not in ids and sep in ids and tok.decode(ids) == text
    special = tok.encode(text, split_special_tokens=False)
    assert special.count(tok.eos_id) == 1 and special.count(tok.pad_id) == 1 and sep in special
    assert tok.encode_batch([text, "x"], split_special_tokens=False)[0] == special
    assert tok.encode_batch([text, "x"])[0] == ids and tok.encode(text) == ids  # the default is unchanged by the other mode
    assert tok.keeps_u2581 and tok.decode(tok.encode("a\u2581b")) == "a\u2581b"  # byte-level BPE keeps it


# ---------------------------------------------------------------- EOS and padding
# Pad-less byte-level BPE tokenizers, as Llama 3 and Qwen2 ship them (no pad token at all).
PADLESS = {"llama3": ("<|begin_of_text|>", "<|end_of_text|>"), "qwen2": ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}


def _vocab(path):
    return json.loads(open(path, encoding="utf-8").read())["model"]["vocab"]


@pytest.mark.parametrize("style", sorted(PADLESS))
def test_padless_tokenizer_pads_with_an_extra_id_never_eos(tmp_path, style):
    import hashlib

    from dllm_jax import objectives
    from dllm_jax.train_step import model_vocab_rows

    path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=PADLESS[style])
    tok = load_tokenizer(path)
    eos_name = {"llama3": "<|end_of_text|>", "qwen2": "<|endoftext|>"}[style]
    assert tok.eos_id == _vocab(path)[eos_name]
    assert tok.mask_id == tok.vocab_size and tok.pad_id == tok.vocab_size + 1 and tok.pad_is_extra
    assert tok.id_to_piece(tok.pad_id) == "[PAD]" and tok.id_to_piece(tok.eos_id) == eos_name
    ids = tok.encode(TEXTS[0])
    assert tok.decode(ids + [tok.eos_id, tok.pad_id, tok.mask_id]) == TEXTS[0]
    # the automatic rule keeps the file's fingerprint (stores and checkpoints made before stay valid)
    assert tok.fingerprint == hashlib.sha256(open(path, "rb").read()).hexdigest()[:16] == tokenizer_from_bytes(tok.model_bytes).fingerprint
    # the extra id gets an embedding row of its own; a tokenizer with a pad piece needs none
    v = tok.vocab_size
    assert model_vocab_rows(v, 1, tok.pad_is_extra) == v + 2 and model_vocab_rows(v, 8, tok.pad_is_extra) == -(-(v + 2) // 8) * 8
    neox = load_tokenizer(make_hf_tokenizer(tmp_path / "neox.json", TEXTS))
    assert (neox.eos_id, neox.pad_id, neox.pad_is_extra) == (0, 1, False) and model_vocab_rows(neox.vocab_size, 1, False) == neox.vocab_size + 1
    with pytest.raises(ValueError, match="padding needs an id of its own"):
        objectives.TokenIds(pad_id=tok.eos_id, eos_id=tok.eos_id, mask_id=tok.mask_id)


def test_eos_and_pad_token_names_are_checked_against_the_tokenizer(tmp_path):
    from dllm_jax.errors import ConfigError

    path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=("<|eos|>", "<|fill|>"))
    vocab = _vocab(path)
    with pytest.raises(DataError, match=r"end-of-text.*set data.eos_token.*'<\|eos\|>', '<\|fill\|>'"):
        load_tokenizer(path)  # none of the known names
    tok = load_tokenizer(path, eos_token="<|eos|>")
    assert tok.eos_id == vocab["<|eos|>"] and tok.pad_id == tok.vocab_size + 1 and tok.overrides == {"eos_token": "<|eos|>"}
    again = tokenizer_from_bytes(tok.model_bytes, **tok.overrides)
    assert (again.eos_id, again.pad_id, again.fingerprint) == (tok.eos_id, tok.pad_id, tok.fingerprint)
    named = load_tokenizer(path, eos_token="<|eos|>", pad_token="<|fill|>")
    assert (named.eos_id, named.pad_id, named.pad_is_extra) == (vocab["<|eos|>"], vocab["<|fill|>"], False)
    assert named.fingerprint != tok.fingerprint  # another pad id: another tokenizer for runs and stores
    with pytest.raises(ConfigError, match=r"data.eos_token='<\|nope\|>' is not a token .*'<\|eos\|>', '<\|fill\|>'"):
        load_tokenizer(path, eos_token="<|nope|>")
    with pytest.raises(ConfigError, match=r"data.eos_token='a' is an ordinary piece"):
        load_tokenizer(path, eos_token="a")  # every 'a' in the text would end a document
    with pytest.raises(ConfigError, match=r"data.pad_token='<\|eos\|>' is the EOS token"):
        load_tokenizer(path, eos_token="<|eos|>", pad_token="<|eos|>")
    with pytest.raises(ConfigError, match=r"data.pad_token='<\|nope\|>' is not a token"):
        load_tokenizer(path, eos_token="<|eos|>", pad_token="<|nope|>")
    # naming the token the automatic rule picks changes nothing; naming another one changes the fingerprint
    qwen = make_hf_tokenizer(tmp_path / "qwen.json", TEXTS, specials=PADLESS["qwen2"])
    auto = load_tokenizer(qwen)
    assert load_tokenizer(qwen, eos_token="<|endoftext|>").fingerprint == auto.fingerprint
    im_end = load_tokenizer(qwen, eos_token="<|im_end|>")
    assert im_end.eos_id == _vocab(qwen)["<|im_end|>"] and im_end.fingerprint != auto.fingerprint


def test_sentencepiece_follows_the_same_rule():
    from dllm_jax.data.tokenizer import train_tokenizer
    from dllm_jax.errors import ConfigError

    tok = train_tokenizer(TEXTS * 5, 400, None)
    assert (tok.pad_id, tok.eos_id, tok.pad_is_extra) == (0, 2, False)
    assert Tokenizer(tok.model_bytes, eos_token="</s>").fingerprint == tok.fingerprint
    # EOS named as the model's pad piece: padding falls back to the extra id past [MASK]
    odd = Tokenizer(tok.model_bytes, eos_token="<pad>")
    assert (odd.eos_id, odd.pad_id, odd.pad_is_extra) == (0, tok.vocab_size + 1, True) and odd.fingerprint != tok.fingerprint
    with pytest.raises(ConfigError, match=r"data.eos_token='<\|eos\|>' is not a token .*'<pad>', '</s>'"):
        Tokenizer(tok.model_bytes, eos_token="<|eos|>")
    with pytest.raises(ConfigError, match="data.eos_token='<unk>' is an ordinary piece"):
        Tokenizer(tok.model_bytes, eos_token="<unk>")  # not a control piece
    with pytest.raises(ConfigError, match="data.pad_token='</s>' is the EOS token"):
        Tokenizer(tok.model_bytes, pad_token="</s>")
    # a model without a pad piece (Llama 2's layout: unk=0, bos=1, eos=2, pad=-1) pads with the extra id
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(TEXTS * 5), model_writer=buf, vocab_size=60, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    llama2 = Tokenizer(buf.getvalue())
    assert (llama2.eos_id, llama2.pad_id, llama2.pad_is_extra) == (2, llama2.vocab_size + 1, True)


def _packed_rows(tok, rows: int, length: int):
    """Documents (each + EOS) concatenated and cut into [rows, length] int32, as the data pipeline packs them."""
    import numpy as np

    docs = [t.strip() for t in TEXTS[:2] + ["A b c.", "Stone, river; old.", "ok"]]
    flat = []
    i = 0
    while len(flat) < rows * length:
        flat += tok.encode(docs[i % len(docs)]) + [tok.eos_id]
        i += 1
    return np.asarray(flat[:rows * length], np.int32).reshape(rows, length)


def test_eos_is_trained_and_counted_like_any_token_with_a_padless_tokenizer(tmp_path):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dllm_jax import objectives
    from dllm_jax.evaluation.likelihood import Scorer, ScoreSpec
    from dllm_jax.train_step import token_ids

    tok = load_tokenizer(make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=PADLESS["llama3"]))
    ids = token_ids(tok)
    tokens = _packed_rows(tok, 12, 32)
    is_eos = tokens == tok.eos_id
    assert is_eos.sum() >= 24
    # AR: every next token is a target with weight 1, EOS included, and so is the token after an EOS
    ar = objectives.prepare_ar(jnp.asarray(tokens), None, ids)
    expected = np.ones(tokens.shape, np.float32)
    expected[:, -1] = 0  # the last position has no next token
    np.testing.assert_array_equal(np.asarray(ar.weights), expected)
    np.testing.assert_array_equal(np.asarray(ar.targets)[:, :-1], tokens[:, 1:])
    # with document attention the next document's first token is not predicted from this one, but EOS still is
    ar_doc = objectives.prepare_ar(jnp.asarray(tokens), None, ids, document_attention=True)
    np.testing.assert_array_equal(np.asarray(ar_doc.weights), expected * ~is_eos)
    # MDM: EOS is masked at rate p(t) = t like any token, counted in the denominator, in its document's segment
    masked_eos = expected_eos = masked_other = expected_other = 0.0
    for k in range(64):
        prep = objectives.prepare_mdm(jnp.asarray(tokens), jax.random.key(k), ids, document_attention=True)
        m, t = np.asarray(prep.extras["masked"]) > 0, np.asarray(prep.extras["t"])
        masked_eos += (m & is_eos).sum()
        expected_eos += (t[:, None] * is_eos).sum()
        masked_other += (m & ~is_eos).sum()
        expected_other += (t[:, None] * ~is_eos).sum()
        assert float(prep.denom) == tokens.size
        np.testing.assert_array_equal(np.asarray(prep.inputs)[~m], tokens[~m])
    assert abs(masked_eos / expected_eos - 1) < 0.06 and abs(masked_other / expected_other - 1) < 0.03, (masked_eos, expected_eos)
    seg = np.asarray(prep.segment_ids)
    eos_r, eos_c = np.nonzero(is_eos[:, 1:])
    assert (seg > 0).all()
    np.testing.assert_array_equal(seg[eos_r, eos_c + 1], seg[eos_r, eos_c])  # EOS belongs to the document it ends
    after = is_eos[:, :-1]
    np.testing.assert_array_equal(seg[:, 1:][after], seg[:, :-1][after] + 1)  # the next token starts a new one
    # block diffusion: the same
    bd = objectives.prepare_block_diffusion(jnp.asarray(tokens), jax.random.key(0), ids, block_size=8)
    assert float(bd.denom) == tokens.size and (np.asarray(bd.extras["masked"])[is_eos] > 0).any()

    # validation counts the tokens that training counts
    def logits_fn(params, x, seg):
        return jnp.zeros(x.shape + (tok.vocab_size + 8,), jnp.float32)

    for objective, doc in (("ar", False), ("ar", True), ("mdm", False)):
        spec = ScoreSpec(objective=objective, vocab_limit=tok.mask_id, mask_id=tok.mask_id, eos_id=tok.eos_id, max_len=32,
                         document_attention=doc)
        val = Scorer(logits_fn, spec, batch_size=16).sequence_nll(None, tokens, mc_samples=2)
        prep = objectives.prepare_ar(jnp.asarray(tokens), None, ids, document_attention=doc) if objective == "ar" else \
            objectives.prepare_mdm(jnp.asarray(tokens), jax.random.key(0), ids)
        counted = float(prep.weights.sum()) if objective == "ar" else float(prep.denom)
        assert val["tokens"] == counted, (objective, doc)


def _eos_model(tok):
    """A tiny Transformer that predicts EOS at every position (blocks add nothing, every
    embedding row is the same, the head reads EOS off it), and the tokenizer's ids."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from dllm_jax.models import ModelConfig, Transformer
    from dllm_jax.train_step import model_vocab_rows, token_ids

    cfg = ModelConfig(vocab_size=model_vocab_rows(tok.vocab_size, 8, tok.pad_is_extra), d_model=16, n_layers=1, n_heads=2, d_ff=32)
    model = Transformer(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), causal=False)["params"])
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if path[-1].key in ("wo", "w_down") else x, params)
    params["embedding"] = jnp.ones_like(params["embedding"])
    params["lm_head"] = jnp.zeros_like(params["lm_head"]).at[:, tok.eos_id].set(1.0)
    return model, params, token_ids(tok)


@pytest.mark.parametrize("objective", ["ar", "mdm", "block_diffusion"])
def test_every_sampler_emits_eos_and_stops(tmp_path, objective):
    from dllm_jax.sampling import generate_tokens

    tok = load_tokenizer(make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=PADLESS["qwen2"]))
    model, params, ids = _eos_model(tok)
    prompts = [tok.encode("The river"), tok.encode("A")]
    kw = dict(block_length=4) if objective == "block_diffusion" else {}
    res = generate_tokens(model, params, ids, prompts, objective=objective, max_new_tokens=8, temperature=0.0, **kw)
    assert res.stopped_at_eos.all() and (res.lengths == 0).all()
    assert (res.tokens == tok.pad_id).all()  # nothing kept, the rest is padding


def test_sampling_refuses_a_model_without_the_pad_row(tmp_path):
    from dllm_jax.errors import ConfigError
    from dllm_jax.models import ModelConfig, Transformer
    from dllm_jax.sampling import generate_tokens
    from dllm_jax.train_step import token_ids

    tok = load_tokenizer(make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=PADLESS["qwen2"]))
    short = Transformer(ModelConfig(vocab_size=tok.vocab_size + 1, d_model=16, n_layers=1, n_heads=2, d_ff=32))  # no [PAD] row
    with pytest.raises(ConfigError, match=f"has {tok.vocab_size + 1} embedding rows but pad_id={tok.vocab_size + 1}"):
        generate_tokens(short, {}, token_ids(tok), [[5]], objective="ar", max_new_tokens=2)


def test_a_padless_run_with_a_named_eos_learns_to_end_documents_and_exports_them(tmp_path, corpus):
    """End to end with `data.eos_token` naming an EOS no automatic rule knows, in a tokenizer with
    no pad token: the store, the checkpoint and the export keep that choice; the trained AR model
    ends its documents (one sentence each) with EOS, so sampling stops."""
    import glob

    import numpy as np
    from conftest import tiny_config

    from dllm_jax.checkpoint import load_run
    from dllm_jax.hf import export_run, import_run
    from dllm_jax.sampling import generate
    from dllm_jax.train import train

    paths, cache = corpus
    lines = [line for f in sorted(glob.glob(paths)) for line in open(f, encoding="utf-8").read().splitlines()]
    tok_path = make_hf_tokenizer(tmp_path / "tokenizer.json", lines, vocab_size=320, specials=("<|eos|>",))
    cfg = tiny_config(paths, cache, "ar", data__tokenizer=tok_path, data__eos_token="<|eos|>", data__text_split="line",
                      data__unique_tokens=4 * 8 * 32, data__epochs=40, train__lr=1e-2, train__eval_every=0)
    workdir = str(tmp_path / "run")
    train(cfg, workdir)
    run = load_run(workdir)
    eos = _vocab(tok_path)["<|eos|>"]
    assert (run.tokenizer.eos_id, run.tokenizer.pad_id) == (eos, run.tokenizer.vocab_size + 1)
    assert run.model.cfg.vocab_size >= run.tokenizer.vocab_size + 2  # [MASK] and [PAD] rows
    # every document is one sentence: after its full stop comes EOS, and sampling stops there
    prompts = ["The river walks.", "A quiet house keeps the light.", "Then", ""]
    res = generate(run.model, run.params, run.tokenizer, prompts, objective="ar", max_new_tokens=40, temperature=0.0)
    assert res.stopped_at_eos[:2].all() and (res.lengths[:2] == 0).all(), res.texts
    for text, stopped in zip(res.texts[2:], res.stopped_at_eos[2:]):  # a sentence it writes ends there too
        assert ("." in text) == bool(stopped) and (not stopped or text.endswith(".")), res.texts
    # export: EOS is the run's EOS; no pad token (the extra id is no token of the exported tokenizer)
    out = tmp_path / "export"
    export_run(workdir, str(out))
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["eos_token_id"] == eos and hf_cfg["pad_token_id"] is None
    assert hf_cfg["dllm_jax"]["pad_token_id"] == run.tokenizer.vocab_size + 1
    assert hf_cfg["dllm_jax"]["tokenizer_names"] == {"eos_token": "<|eos|>"}
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == eos and "pad_token_id" not in gen
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|eos|>" and "pad_token" not in tok_cfg
    # import: the named EOS comes back with the checkpoint, so the same tokenizer and the same rows
    info = import_run(str(out), str(tmp_path / "imported"))
    back = load_run(info["workdir"])
    assert back.config.data.eos_token == "<|eos|>" and back.tokenizer.fingerprint == run.tokenizer.fingerprint
    np.testing.assert_array_equal(np.asarray(back.params["embedding"]), np.asarray(run.params["embedding"]))


def test_a_bad_or_missing_eos_name_is_one_error_line(tmp_path, corpus, capsys):
    import os

    from dllm_jax.cli import main

    paths, cache = corpus
    tok_path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=("<|eos|>",))
    base = ["train", "--config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "tiny.py"),
            f"--config.data.paths={paths}", f"--config.data.cache_dir={cache}", f"--config.data.tokenizer={tok_path}"]
    for extra, needles in (([], ("end-of-text", "set data.eos_token", "'<|eos|>'")),
                           (["--config.data.eos_token=<|nope|>"], ("data.eos_token='<|nope|>' is not a token", "'<|eos|>'"))):
        assert main(base + ["--workdir", str(tmp_path / f"run{len(extra)}")] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err
        assert all(n in err for n in needles), err


def test_a_store_keeps_its_eos_choice_and_refuses_another(tmp_path, corpus):
    """`dllm-jax prepare` with data.eos_token: the store's documents end with that EOS, its
    manifest keeps the name, and training from it with other names is a ConfigError."""
    import ml_collections
    from conftest import tiny_config

    from dllm_jax.data import prepare as prepare_lib
    from dllm_jax.data import store as store_lib
    from dllm_jax.data.pipeline import build_dataset
    from dllm_jax.errors import ConfigError

    paths, cache = corpus
    tok_path = make_hf_tokenizer(tmp_path / "tokenizer.json", TEXTS, specials=PADLESS["qwen2"])
    im_end = _vocab(tok_path)["<|im_end|>"]
    cfg = tiny_config(paths, cache, "mdm", data__tokenizer=tok_path, data__eos_token="<|im_end|>")
    out = str(tmp_path / "store")
    prepare_lib.prepare(ml_collections.ConfigDict(cfg.data.to_dict()), out)
    store = store_lib.TokenStore(out)
    assert store.manifest["tokenizer"]["names"] == {"eos_token": "<|im_end|>"} and store.tokenizer.eos_id == im_end
    doc = store.read_document(0)
    assert doc[-1] == im_end and im_end not in doc[:-1].tolist()
    ok = tiny_config(paths, cache, "mdm", data__store=out, data__eos_token="<|im_end|>")
    ds = build_dataset(ok, str(tmp_path / "run"), process_index=0)
    assert ds.tokenizer.eos_id == im_end and ds.tokenizer.fingerprint == store.tokenizer.fingerprint
    other = tiny_config(paths, cache, "mdm", data__store=out)  # the automatic EOS would be <|endoftext|>
    with pytest.raises(ConfigError, match=r"data.eos_token=''.*EOS id 0 .*prepared with EOS id .*data.eos_token='<\|im_end\|>'"):
        build_dataset(other, str(tmp_path / "run2"), process_index=0)
