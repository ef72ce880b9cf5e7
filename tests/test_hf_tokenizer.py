"""Hugging Face tokenizer.json support: built here with the `tokenizers` library (no download)."""
import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

from dllm_jax.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, tokenizer_from_bytes  # noqa: E402
from dllm_jax.errors import DataError  # noqa: E402


def make_hf_tokenizer(path, texts, vocab_size=300):
    """A byte-level BPE tokenizer.json trained on `texts`, with <|endoftext|> and <|padding|>."""
    from tokenizers import Tokenizer as T, decoders, models, pre_tokenizers, trainers

    tok = T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
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
