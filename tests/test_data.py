"""Data pipeline: tokenizer, sources, token store cache, unique-token budget, Grain loader."""
import collections
import os

import ml_collections
import numpy as np
import pytest

from dllm_jax.data import prepare, sources
from dllm_jax.data.pipeline import build_dataset, num_train_steps, train_loader, val_batches
from dllm_jax.data.sources import load_documents, write_array_record
from dllm_jax.data.tokenizer import Tokenizer, train_tokenizer
from dllm_jax.errors import DataError

WORDS = (
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud "
    "forest light shadow window garden market silver copper winter summer quiet bright"
).split()


def make_config(**data_overrides):
    """A config with exactly the keys the data pipeline reads."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.train = ml_collections.ConfigDict({"batch_size": 4})
    config.data = ml_collections.ConfigDict({
        "source": "text",
        "paths": "",
        "text_split": "file",
        "tfds_name": "",
        "tfds_split": "train",
        "tfds_data_dir": "",
        "text_key": "text",
        "seq_len": 16,
        "unique_tokens": 0,
        "epochs": 1,
        "val_tokens": 200,
        "tokenizer": "",
        "vocab_size": 512,
        "tokenizer_type": "unigram",
        "cache_dir": "",
        "max_docs": 0,
    })
    config.data.update(data_overrides)
    return config


def make_docs(n, seed=0, words=(20, 60)):
    """n distinct documents of random words (a serial number makes each one unique)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS, size=int(rng.integers(*words))))
        docs.append(f"Document {i}: {body}.\nIt ends here, {i}.")
    return docs


def write_corpus(directory, docs, per_file=10):
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(0, len(docs), per_file):
        (directory / f"part{f // per_file:03d}.txt").write_text("\n\n".join(docs[f:f + per_file]) + "\n")
    return str(directory / "*.txt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(150)
    return {"glob": write_corpus(root / "text", docs), "docs": docs, "root": root}


@pytest.fixture(scope="module")
def built(corpus):
    """One dataset shared by the loader tests: 3 epochs, one document per paragraph."""
    config = make_config(paths=corpus["glob"], text_split="paragraph", epochs=3,
                         cache_dir=str(corpus["root"] / "cache"))
    ds = build_dataset(config, str(corpus["root"] / "work"))
    return config, ds


def rows(a):
    return [r.tobytes() for r in np.asarray(a)]


# -- tokenizer -------------------------------------------------------------------------

def test_tokenizer_train_save_load_roundtrip(tmp_path, corpus):
    path = str(tmp_path / "tok.model")
    tok = train_tokenizer(corpus["docs"], 512, path)
    assert os.path.isfile(path)
    assert (tok.pad_id, tok.unk_id, tok.eos_id, tok.bos_id) == (0, 1, 2, -1)
    assert tok.mask_id == tok.vocab_size and 300 < tok.vocab_size <= 512
    loaded = Tokenizer.load(path)
    assert loaded.fingerprint == tok.fingerprint == Tokenizer.from_bytes(tok.model_bytes).fingerprint
    assert len(tok.fingerprint) == 16
    for text in ["Document 3: alpha beta gamma.", "  indented\n\tand tabbed\n\nlines ",
                 "Unicode: héllo wörld — ☃ 日本", "def f(x):\n    return x + 1\n"]:
        ids = loaded.encode(text)
        assert loaded.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    batch = tok.encode_batch(["alpha beta", "gamma"])
    assert batch == [tok.encode("alpha beta"), tok.encode("gamma")]
    ids = tok.encode("river stone")
    noisy = [tok.pad_id] + ids[:1] + [tok.mask_id, tok.vocab_size + 7, -3] + ids[1:] + [tok.eos_id, tok.pad_id]
    assert tok.decode(noisy) == "river stone"
    assert tok.decode(np.asarray(ids, np.int32)) == "river stone"
    # deterministic: the same corpus gives the same model
    assert train_tokenizer(corpus["docs"], 512, None).model_bytes == tok.model_bytes


def test_sentencepiece_text_handling_specials_and_u2581(tmp_path, corpus):
    """Control pieces in text are text unless split_special_tokens=False; a literal U+2581 is
    its three UTF-8 byte pieces (round trip); encode_batch == encode, mixed texts included."""
    import sentencepiece as spm

    tok = train_tokenizer(corpus["docs"], 512, None)
    sp = spm.SentencePieceProcessor(model_proto=tok.model_bytes)
    assert tok.special_pieces() == {"<pad>": 0, "<unk>": 1, "</s>": 2}
    text = "x </s> y<pad>z <unk>"
    assert not {0, 1, 2} & set(tok.encode(text)) and tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == sp.EncodeAsIds(text)  # what SentencePiece itself does with control symbols
    assert tok.encode(text, split_special_tokens=False) == (
        sp.EncodeAsIds("x ") + [2] + sp.EncodeAsIds(" y") + [0] + sp.EncodeAsIds("z ") + [1])
    space = [sp.PieceToId(p) for p in ("<0xE2>", "<0x96>", "<0x81>")]
    assert tok.encode("a\u2581b") == sp.EncodeAsIds("a") + space + sp.EncodeAsIds("b")
    assert sp.DecodeIds(sp.EncodeAsIds("a\u2581b")) == "a b"  # what plain SentencePiece would store
    texts = ["a\u2581b \u2581\u2581 c\u2581", "\u2581", "plain", "", "x</s>\u2581</s>"]
    for split in (True, False):
        assert tok.encode_batch(texts, split_special_tokens=split) == [tok.encode(t, split_special_tokens=split) for t in texts]
    assert [tok.decode(tok.encode(t)) for t in texts] == texts and tok.keeps_u2581
    # a model that squeezes whitespace / adds a dummy prefix cannot be cut into pieces: it says it loses '▁'
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(corpus["docs"]), model_writer=buf, vocab_size=300,
                                   byte_fallback=True, minloglevel=2)
    lossy = Tokenizer(buf.getvalue())
    assert not lossy.keeps_u2581 and lossy.decode(lossy.encode("a\u2581b")) == "a b"


def test_tokenizer_bpe_and_bad_paths(tmp_path, corpus):
    tok = train_tokenizer(corpus["docs"][:40], 400, None, model_type="bpe")
    assert tok.decode(tok.encode("quiet bright garden")) == "quiet bright garden"
    missing = str(tmp_path / "nope.model")
    with pytest.raises(DataError, match="nope.model"):
        Tokenizer.load(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(DataError, match="garbage.model"):
        Tokenizer.load(str(garbage))
    with pytest.raises(DataError, match="vocab_size=100"):
        train_tokenizer(corpus["docs"], 100, None)
    config = make_config(paths=str(tmp_path / "*.txt"), tokenizer=missing, cache_dir=str(tmp_path / "c"))
    (tmp_path / "a.txt").write_text("some text")
    with pytest.raises(DataError, match="nope.model"):
        build_dataset(config, str(tmp_path / "work"))


# -- sources ---------------------------------------------------------------------------

def test_text_splits_and_max_docs(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n  \nfour\n")
    (tmp_path / "b.txt").write_text("five\n")
    glob_ = str(tmp_path / "*.txt")
    assert load_documents(make_config(paths=glob_).data) == ["one\ntwo\n\nthree\n  \nfour\n", "five\n"]
    assert load_documents(make_config(paths=glob_, text_split="paragraph").data) == ["one\ntwo", "three", "four", "five"]
    assert load_documents(make_config(paths=glob_, text_split="line").data) == ["one", "two", "three", "four", "five"]
    assert load_documents(make_config(paths=glob_, text_split="line", max_docs=2).data) == ["one", "two"]
    # comma-separated globs, ~ and env vars; a file matched twice is read once
    monkeypatch.setenv("DLLM_TEST_DATA_DIR", str(tmp_path))
    paths = "$DLLM_TEST_DATA_DIR/b.txt, " + glob_
    assert load_documents(make_config(paths=paths, text_split="line").data)[0] == "five"
    assert len(load_documents(make_config(paths=paths, text_split="line").data)) == 5


def test_source_errors(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    missing = str(tmp_path / "nothing_here" / "*.txt")
    with pytest.raises(DataError, match="nothing_here"):
        load_documents(make_config(paths=f"{tmp_path}/a.txt,{missing}").data)
    with pytest.raises(DataError, match="empty"):
        load_documents(make_config(paths="").data)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e1.txt").write_text("")
    (tmp_path / "empty" / "e2.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="e1.txt"):
        load_documents(make_config(paths=str(tmp_path / "empty" / "*.txt")).data)
    with pytest.raises(DataError, match="'csv'"):
        load_documents(make_config(source="csv", paths=str(tmp_path / "a.txt")).data)
    with pytest.raises(DataError, match="'sentence'"):
        load_documents(make_config(paths=str(tmp_path / "a.txt"), text_split="sentence").data)
    with pytest.raises(DataError, match="nothing_here"):
        build_dataset(make_config(paths=missing, cache_dir=str(tmp_path / "c")), str(tmp_path / "w"))


def test_array_record_roundtrip(tmp_path):
    docs = make_docs(60, seed=3) + ["ünïcödé ☃ document"]
    write_array_record(docs[:30], str(tmp_path / "ar" / "a.array_record"))
    write_array_record(docs[30:], str(tmp_path / "ar" / "b.array_record"))
    cfg = make_config(source="array_record", paths=str(tmp_path / "ar" / "*.array_record"),
                      cache_dir=str(tmp_path / "cache"))
    assert load_documents(cfg.data) == docs
    cfg.data.max_docs = 35
    assert load_documents(cfg.data) == docs[:35]
    cfg.data.max_docs = 0
    ds = build_dataset(cfg, str(tmp_path / "work"))
    assert ds.stats["documents"] == len(docs) and ds.train.shape[1] == 16 and len(ds.val) > 0


def test_tfds_mock_end_to_end(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = make_config(source="tfds", tfds_name="imdb_reviews", seq_len=8, val_tokens=16,
                      vocab_size=300, cache_dir=str(tmp_path / "cache"))
    cfg.train.batch_size = 2
    with tfds.testing.mock_data(num_examples=40):
        docs = load_documents(cfg.data)
        assert len(docs) == 40 and all(isinstance(d, str) for d in docs)
        ds = build_dataset(cfg, str(tmp_path / "work"))
        assert ds.stats["documents"] == 40 and ds.train.shape[1] == 8 and ds.stats["num_steps"] > 0
        assert len(train_loader(ds.train, global_batch=2, epochs=1, seed=0)) == ds.stats["num_steps"]
        cfg.data.text_key = "review"
        with pytest.raises(DataError, match=r"'review'.*'label'.*'text'"):
            load_documents(cfg.data)
    with pytest.raises(DataError, match="no_such_dataset_xyz"):
        load_documents(make_config(source="tfds", tfds_name="no_such_dataset_xyz").data)


# -- dataset and budget ----------------------------------------------------------------

def test_dataset_shapes_budget_and_no_overlap(built):
    config, ds = built
    s = ds.stats
    assert ds.train.dtype == np.int32 and ds.val.dtype == np.int32
    assert ds.train.shape == (s["train_sequences"], 16) and ds.val.shape == (s["val_sequences"], 16)
    assert s["unique_tokens"] == ds.train.size and s["unique_tokens"] % (4 * 16) == 0
    assert s["available_tokens"] - s["unique_tokens"] < 4 * 16  # U=0: all, rounded down
    assert s["val_tokens"] >= 200 and s["documents"] == 150 and s["epochs"] == 3
    assert s["num_steps"] == num_train_steps(len(ds.train), 4, 3) == 3 * s["steps_per_epoch"]
    assert not set(rows(ds.val)) & set(rows(ds.train))
    eos = ds.tokenizer.eos_id
    train = np.asarray(ds.train)  # the store-backed rows, materialised
    assert (train == eos).sum() > 0 and train.max() < ds.tokenizer.vocab_size
    # validation and training texts come from disjoint documents
    val_text = ds.tokenizer.decode(ds.val.reshape(-1))
    train_text = ds.tokenizer.decode(train.reshape(-1))
    for doc_no in {int(t.split(":")[0]) for t in val_text.split("Document ")[1:] if t.split(":")[0].isdigit()}:
        assert f"Document {doc_no}:" not in train_text
    batches = val_batches(ds.val, 3)
    assert len(batches) == len(ds.val) // 3
    np.testing.assert_array_equal(np.concatenate(batches), ds.val[: len(batches) * 3])


def test_unique_token_budget(corpus, tmp_path):
    base = dict(paths=corpus["glob"], text_split="paragraph", cache_dir=str(corpus["root"] / "cache"))
    full = build_dataset(make_config(**base), str(tmp_path / "w1"))
    available = full.stats["available_tokens"]
    small = build_dataset(make_config(unique_tokens=300, **base), str(tmp_path / "w2"))
    assert small.stats["unique_tokens"] == 256 and small.train.shape == (16, 16)
    np.testing.assert_array_equal(small.train, full.train[:16])  # the same stream, cut earlier
    np.testing.assert_array_equal(small.val, full.val)
    with pytest.raises(DataError, match=rf"{available + 1}.*{available}"):
        build_dataset(make_config(unique_tokens=available + 1, **base), str(tmp_path / "w3"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        build_dataset(make_config(unique_tokens=63, **base), str(tmp_path / "w4"))
    # another seed: another document order, hence other validation documents
    other = make_config(**base)
    other.seed = 1
    assert not np.array_equal(build_dataset(other, str(tmp_path / "w5")).val, full.val)


def test_cache_reuse(tmp_path, monkeypatch):
    glob_ = write_corpus(tmp_path / "text", make_docs(60, seed=5))
    cfg = make_config(paths=glob_, cache_dir=str(tmp_path / "cache"))
    first = build_dataset(cfg, str(tmp_path / "w1"))
    assert first.stats["cache_hit"] is False
    assert sorted(os.listdir(first.stats["cache_path"])) == ["manifest.json", "plan.json", "shards", "tokenizer.model"]

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenised or retrained despite the cache")

    with monkeypatch.context() as m:
        m.setattr(Tokenizer, "encode_batch", boom)
        m.setattr(prepare, "train_tokenizer", boom)
        m.setattr(sources, "read_shard", boom)
        # a fresh workdir: the tokenizer and the tokens come from the cached token store
        second = build_dataset(cfg, str(tmp_path / "w2"))
    assert second.stats["cache_hit"] is True
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert os.path.isfile(tmp_path / "w2" / "tokenizer.model")
    # editing a file changes the key: the tokens are built again (with the workdir's tokenizer)
    with open(tmp_path / "text" / "part000.txt", "a") as f:
        f.write("\n\nOne more paragraph, river stone.\n")
    third = build_dataset(cfg, str(tmp_path / "w2"))
    assert third.stats["cache_hit"] is False and third.stats["cache_path"] != first.stats["cache_path"]
    assert third.tokenizer.fingerprint == first.tokenizer.fingerprint


def test_same_size_edit_with_restored_mtime_rebuilds_the_store(tmp_path):
    """Issue 25 item 10: the cache key is the files' content, so a one-byte edit that keeps the
    size and puts the mtime back (os.utime) is a cache miss; a touch alone is a hit."""
    glob_ = write_corpus(tmp_path / "text", make_docs(40, seed=6))
    cfg = make_config(paths=glob_, cache_dir=str(tmp_path / "cache"))
    first = build_dataset(cfg, str(tmp_path / "w1"))
    f = tmp_path / "text" / "part001.txt"
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert build_dataset(cfg, str(tmp_path / "w1")).stats["cache_hit"] is True  # same bytes, new mtime
    st = os.stat(f)
    data = f.read_bytes()
    i = data.index(b"Document 1")
    f.write_bytes(data[:i] + b"X" + data[i + 1:])  # one byte, same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(f).st_size, os.stat(f).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = build_dataset(cfg, str(tmp_path / "w1"))
    assert again.stats["cache_hit"] is False and again.stats["cache_path"] != first.stats["cache_path"]
    assert again.stats["data_fingerprint"] != first.stats["data_fingerprint"]
    assert any("Xocument 1" in again.tokenizer.decode(again.store.read_document(d)) for d in range(again.store.num_documents))


# -- loader ----------------------------------------------------------------------------

def collect(loader):
    return [np.asarray(loader[s]) for s in range(len(loader))]


def test_each_sequence_seen_epochs_times_and_reshuffled(built):
    config, ds = built
    loader = train_loader(ds.train, global_batch=4, epochs=3, seed=config.seed)
    steps = ds.stats["steps_per_epoch"]
    assert len(loader) == ds.stats["num_steps"] == 3 * steps
    batches = collect(loader)
    assert all(b.shape == (4, 16) and b.dtype == np.int32 for b in batches)
    seen = collections.Counter(r for b in batches for r in rows(b))
    expected = collections.Counter(rows(ds.train))
    assert seen == collections.Counter({k: 3 * v for k, v in expected.items()})
    epoch = [np.concatenate(batches[e * steps:(e + 1) * steps]) for e in range(3)]
    for e in range(3):  # each epoch is one full pass
        assert collections.Counter(rows(epoch[e])) == expected
    assert not np.array_equal(epoch[0], epoch[1])
    assert not set(rows(ds.val)) & set(seen)
    # the seed fixes the order
    np.testing.assert_array_equal(collect(train_loader(ds.train, global_batch=4, epochs=3, seed=config.seed))[5], batches[5])


def test_process_sharding_matches_single_process(built):
    _, ds = built
    single = collect(train_loader(ds.train, global_batch=4, epochs=2, seed=7))
    shards = [collect(train_loader(ds.train, global_batch=4, epochs=2, seed=7, process_index=p, process_count=2))
              for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for s, batch in enumerate(single):
        assert shards[0][s].shape == (2, 16)
        np.testing.assert_array_equal(np.concatenate([shards[0][s], shards[1][s]]), batch)
    with pytest.raises(Exception, match="batch_size=4"):
        train_loader(ds.train, global_batch=4, epochs=1, seed=0, process_count=3)


def test_iterator_state_resume(built):
    _, ds = built
    loader = train_loader(ds.train, global_batch=4, epochs=2, seed=3)
    it = iter(loader.to_iter_dataset())
    for _ in range(5):
        next(it)
    state = it.get_state()
    assert state == {"next_index": 5}
    rest = [next(it) for _ in range(6)]
    resumed = iter(train_loader(ds.train, global_batch=4, epochs=2, seed=3).to_iter_dataset())
    resumed.set_state(state)
    for a in rest:
        np.testing.assert_array_equal(next(resumed), a)
    np.testing.assert_array_equal(rest[0], loader[5])


def test_more_epochs_keep_the_batches_of_the_first_ones():
    """Issue 27 (extending a run): element s of the loader is global batch s whatever
    data.epochs is, so a run extended from E to E' epochs trains steps 1..N on the same
    batches; each epoch is a permutation of all rows, and epochs differ."""
    rows = np.arange(24 * 3, dtype=np.int32).reshape(24, 3)  # row i = (3i, 3i+1, 3i+2)
    short = [np.asarray(b) for b in train_loader(rows, global_batch=4, epochs=2, seed=5)]
    long = [np.asarray(b) for b in train_loader(rows, global_batch=4, epochs=5, seed=5)]
    assert len(short) == 12 and len(long) == 30
    for a, b in zip(short, long):
        np.testing.assert_array_equal(a, b)
    epochs = [np.sort(np.concatenate(long[e * 6:(e + 1) * 6])[:, 0] // 3) for e in range(5)]
    for e in epochs:
        np.testing.assert_array_equal(e, np.arange(24))
    orders = {tuple(np.concatenate(long[e * 6:(e + 1) * 6])[:, 0]) for e in range(5)}
    assert len(orders) == 5
