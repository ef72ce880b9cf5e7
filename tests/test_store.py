"""Token store: prepare (in-process and Apache Beam), resume, integrity errors, and training
from a store with exactly the semantics of packing the documents in memory."""
import collections
import json
import os

import numpy as np
import pytest

from dllm_jax.data import prepare as prepare_lib
from dllm_jax.data import store as store_lib
from dllm_jax.data.pipeline import LOADER_READ_OPTIONS, build_dataset, train_loader
from dllm_jax.data.sources import load_documents
from dllm_jax.errors import DataError

from test_data import make_config, make_docs, rows, write_corpus


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 9-file corpus (one file without text), its config and a store prepared in-process."""
    root = tmp_path_factory.mktemp("store")
    docs = make_docs(80, seed=11)
    glob_ = write_corpus(root / "text", docs)
    (root / "text" / "part004.txt").write_text("\n \n")  # a source shard without documents
    cfg = make_config(paths=glob_, text_split="paragraph", cache_dir=str(root / "cache"), val_tokens=150)
    result = prepare_lib.prepare(cfg.data, str(root / "inproc"))
    return {"root": root, "cfg": cfg, "docs": load_documents(cfg.data), "store": result.path, "result": result}


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_store_holds_the_documents(small):
    store = store_lib.TokenStore(small["store"])
    tok = store.tokenizer
    docs = small["docs"]
    assert small["result"].shards == 8 and store.num_shards == 8 and store.num_documents == len(docs)
    assert store.manifest["shards"][4]["documents"] == 0  # empty source shard -> empty store shard, indices aligned
    expected = np.concatenate([np.array(tok.encode(d) + [tok.eos_id]) for d in docs])
    assert store.num_tokens == len(expected) and store.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(store.read(0, store.num_tokens), expected)
    starts, lengths = store.document_starts_and_lengths()
    for i in (0, 9, 10, 41, len(docs) - 1):  # across shard boundaries
        assert tok.decode(store.read(int(starts[i]), int(lengths[i]))) == docs[i]
        np.testing.assert_array_equal(store.read_document(i), tok.encode(docs[i]) + [tok.eos_id])
        np.testing.assert_array_equal(store.read_document(i, 3, 4), (tok.encode(docs[i]) + [tok.eos_id])[3:7])
    assert len(store.document_starts_and_lengths(max_docs=7)[0]) == 7
    store.verify()


def test_beam_direct_runner_equals_in_process_byte_for_byte(small, tmp_path):
    pytest.importorskip("apache_beam")
    out = str(tmp_path / "beam")
    result = prepare_lib.prepare(small["cfg"].data, out, runner="beam", pipeline_args=["--direct_running_mode=in_memory"])
    assert not result.up_to_date and result.shards_written == 8
    a, b = _files(small["store"]), _files(out)
    a.pop("manifest.json"), b.pop("manifest.json")
    strip = lambda files: {k: v for k, v in files.items() if not k.endswith(".done.json")}  # noqa: E731 (timings)
    assert sorted(a) == sorted(b) and strip(a) == strip(b)
    ma = json.load(open(os.path.join(small["store"], "manifest.json")))
    mb = json.load(open(os.path.join(out, "manifest.json")))
    assert ma["shards"] == mb["shards"] and ma["identity"] == mb["identity"] and ma["tokenizer"] == mb["tokenizer"]


def _reference(cfg, tok, docs):
    """Today's in-memory semantics, brute force: seeded order, whole validation docs, first U tokens, packed."""
    d, L, B = cfg.data, cfg.data.seq_len, cfg.train.batch_size
    docs = docs[:d.max_docs] if d.max_docs else docs
    enc = [tok.encode(x) + [tok.eos_id] for x in docs]
    order = np.random.default_rng(cfg.seed).permutation(len(docs))
    val, n = [], 0
    k = 0
    while d.val_tokens and n < d.val_tokens:
        val += enc[order[k]]
        n += len(enc[order[k]])
        k += 1
    stream = [t for i in order[k:] for t in enc[i]]
    unique = ((d.unique_tokens or len(stream)) // (B * L)) * B * L
    pack = lambda s: np.array(s[:len(s) // L * L], np.int32).reshape(-1, L)  # noqa: E731
    return pack(val), pack(stream[:unique])


@pytest.mark.parametrize("overrides", [{}, {"unique_tokens": 500, "seed": 3}, {"max_docs": 50, "seq_len": 8, "val_tokens": 0}])
def test_store_rows_equal_in_memory_reference(small, tmp_path, overrides):
    cfg = make_config(**small["cfg"].data)
    cfg.data.update({k: v for k, v in overrides.items() if k != "seed"})
    cfg.seed = overrides.get("seed", 0)
    cfg.data.store = small["store"]
    ds = build_dataset(cfg, str(tmp_path / "work"), process_index=0)
    val, train = _reference(cfg, ds.tokenizer, small["docs"])
    np.testing.assert_array_equal(ds.val, val)
    np.testing.assert_array_equal(np.asarray(ds.train), train)
    assert ds.stats["index_hit"] is False and ds.stats["unique_tokens"] == train.size
    again = build_dataset(cfg, str(tmp_path / "work"), process_index=0)  # the cached index, memory-mapped
    assert again.stats["index_hit"] is True and isinstance(again.train.cum, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.train), train)
    np.testing.assert_array_equal(again.val, val)


def test_store_training_epochs_disjoint_val_two_processes_and_resume(small, tmp_path):
    cfg = make_config(**small["cfg"].data)
    cfg.data.store, cfg.data.epochs = small["store"], 3
    ds = build_dataset(cfg, str(tmp_path / "w"), process_index=0)
    B = 4
    loader = train_loader(ds.train, global_batch=B, epochs=3, seed=5)
    batches = [np.asarray(loader[s]) for s in range(len(loader))]
    seen = collections.Counter(r for b in batches for r in rows(b))
    unique = collections.Counter(rows(np.asarray(ds.train)))
    assert seen == collections.Counter({k: 3 * v for k, v in unique.items()})  # each unique sequence exactly E times
    assert not set(rows(ds.val)) & set(seen)
    halves = [train_loader(ds.train, global_batch=B, epochs=3, seed=5, process_index=p, process_count=2) for p in range(2)]
    for s in (0, 7, len(loader) - 1):
        np.testing.assert_array_equal(np.concatenate([halves[0][s], halves[1][s]]), batches[s])
    # exact resume through the prefetching iterator the trainer uses
    it = iter(loader.to_iter_dataset(LOADER_READ_OPTIONS))
    for _ in range(4):
        next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    resumed = iter(train_loader(ds.train, global_batch=B, epochs=3, seed=5).to_iter_dataset(LOADER_READ_OPTIONS))
    resumed.set_state(state)
    for a in rest:
        np.testing.assert_array_equal(next(resumed), a)


def test_interrupted_prepare_resumes_and_rerun_is_noop(small, tmp_path, monkeypatch):
    cfg, out = small["cfg"], str(tmp_path / "st")
    partial = prepare_lib.prepare(cfg.data, out, stop_after=3)
    assert partial.shards_written == 3 and not os.path.exists(os.path.join(out, "manifest.json"))
    with pytest.raises(DataError, match="did not finish"):
        store_lib.TokenStore(out)
    os.remove(os.path.join(out, "shards", "shard-00001.done.json"))  # as if killed before its done record
    before = {i: os.stat(os.path.join(out, "shards", f"shard-0000{i}.tokens")).st_mtime_ns for i in (0, 2)}
    done = []
    real = prepare_lib.prepare_shard
    monkeypatch.setattr(prepare_lib, "prepare_shard", lambda job, i: (done.append(i), real(job, i))[1])
    monkeypatch.setattr(prepare_lib, "train_tokenizer", lambda *a, **k: pytest.fail("retrained the tokenizer"))
    result = prepare_lib.prepare(cfg.data, out)
    assert sorted(done) == [1, 3, 4, 5, 6, 7] and result.shards_written == 6
    assert {i: os.stat(os.path.join(out, "shards", f"shard-0000{i}.tokens")).st_mtime_ns for i in (0, 2)} == before
    assert _files(os.path.join(out, "shards")).keys() == _files(os.path.join(small["store"], "shards")).keys()
    for k, v in _files(os.path.join(small["store"], "shards")).items():
        if not k.endswith(".done.json"):
            assert _files(os.path.join(out, "shards"))[k] == v, k
    done.clear()
    again = prepare_lib.prepare(cfg.data, out)
    assert again.up_to_date and done == [] and again.tokens == small["result"].tokens


def test_changed_input_is_refused_and_cache_keys_by_input(small, tmp_path):
    root = tmp_path / "c"
    glob_ = write_corpus(root, make_docs(20, seed=1))
    cfg = make_config(paths=glob_, text_split="paragraph", cache_dir=str(tmp_path / "cache"))
    out = str(tmp_path / "st")
    prepare_lib.prepare(cfg.data, out)
    first = prepare_lib.cached_store_path(cfg.data)
    with open(root / "part000.txt", "a") as f:
        f.write("\n\nOne more paragraph.\n")
    with pytest.raises(DataError, match=r"--output .*st.* other inputs \(source"):
        prepare_lib.prepare(cfg.data, out)
    assert prepare_lib.cached_store_path(cfg.data) != first
    cfg.data.vocab_size = 600  # another tokenizer recipe
    with pytest.raises(DataError, match=r"other inputs \(source, tokenizer"):
        prepare_lib.prepare(cfg.data, out)


def test_missing_and_corrupt_shards_are_named(small, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(small["store"], bad)
    tokens = bad / "shards" / "shard-00002.tokens"
    data = bytearray(tokens.read_bytes())
    data[5] ^= 0xFF
    tokens.write_bytes(bytes(data))
    store_lib.TokenStore(str(bad))  # same size: opening is cheap and does not hash
    with pytest.raises(DataError, match=r"shard-00002 file shard-00002.tokens is corrupt.*shard-00002.done.json"):
        store_lib.TokenStore(str(bad)).verify()
    cfg = make_config(**small["cfg"].data)
    cfg.data.store = str(bad)
    with pytest.raises(DataError, match="shard-00002"):  # the first index build verifies the checksums
        build_dataset(cfg, str(tmp_path / "w"), process_index=0)
    (bad / "shards" / "shard-00006.offsets").unlink()
    with pytest.raises(DataError, match=r"shard-00006 file shard-00006.offsets is missing"):
        store_lib.TokenStore(str(bad))
    with pytest.raises(DataError, match="not a token store"):
        store_lib.TokenStore(str(tmp_path / "nothing"))


def test_tokenizer_sample_is_bounded_and_whole_when_small(small):
    cfg = small["cfg"]
    assert prepare_lib.tokenizer_sample(cfg.data) == small["docs"]  # under the bound: the whole corpus, in order
    part = prepare_lib.tokenizer_sample(cfg.data, max_chars=1500, seed=0)
    assert 0 < sum(map(len, part)) < sum(map(len, small["docs"])) / 2
    assert part == prepare_lib.tokenizer_sample(cfg.data, max_chars=1500, seed=0)  # seeded
    assert part != prepare_lib.tokenizer_sample(cfg.data, max_chars=1500, seed=1)
    assert set(part) <= set(small["docs"])
    capped = make_config(**cfg.data)
    capped.data.max_docs = 15
    assert prepare_lib.tokenizer_sample(capped.data) == small["docs"][:15]


def test_cli_prepare_then_train_from_the_store(tmp_path, corpus, capsys):
    from dllm_jax.cli import main

    paths, _ = corpus
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "from conftest import tiny_config\n"
        f"def get_config():\n    return tiny_config({paths!r}, {str(tmp_path / 'cache')!r}, 'ar', train__num_steps=2, "
        "train__eval_every=0, train__checkpoint_every=2, data__val_tokens=0)\n"
    )
    store = str(tmp_path / "store")
    assert main(["prepare", "--config", str(config_file), "--output", store, "--in-process", "--verify"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 12 and out["shards"] == 12 and out["tokens"] > 0 and out["tokens_per_sec"] > 0
    assert main(["prepare", "--config", str(config_file), "--output", store, "--in-process"]) == 0
    assert json.loads(capsys.readouterr().out)["up_to_date"] is True
    assert main(["prepare", "--config", str(config_file), "--output", store, "--no_such_option_of_anyone=1", "--in-process"]) == 0
    capsys.readouterr()
    work = str(tmp_path / "run")
    assert main(["train", "--config", str(config_file), "--workdir", work, f"--config.data.store={store}",
                 "--config.data.paths="]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["step"] == 2
    stats = json.load(open(os.path.join(work, "data_stats.json")))
    assert stats["store"] == store and os.path.isfile(os.path.join(work, "tokenizer.model"))
    with pytest.raises(SystemExit):  # only `prepare` passes unknown arguments on (to Beam)
        main(["train", "--config", str(config_file), "--workdir", str(tmp_path / "r2"), "--bogus"])


def test_other_processes_wait_for_process_0s_index(small, tmp_path):
    import threading

    from dllm_jax.data.index import load_or_build_index

    store = store_lib.TokenStore(small["store"])
    params = dict(seed=2, max_docs=0, val_tokens=100, unique_tokens=0, seq_len=16, global_batch=4)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(p1=load_or_build_index(store, str(tmp_path), process_index=1, **params)))
    waiter.start()
    arrays0, stats0, hit0 = load_or_build_index(store, str(tmp_path), process_index=0, **params)
    waiter.join(timeout=60)
    arrays1, stats1, hit1 = got["p1"]
    assert (hit0, hit1) == (False, True) and stats0 == stats1
    for k in arrays0:
        np.testing.assert_array_equal(arrays1[k], arrays0[k])
    assert os.listdir(tmp_path / "data_index")  # one cached index directory, reused by both


def test_store_with_a_hugging_face_tokenizer(small, tmp_path):
    pytest.importorskip("tokenizers")
    from test_hf_tokenizer import make_hf_tokenizer

    path = make_hf_tokenizer(tmp_path / "tokenizer.json", small["docs"][:30])
    cfg = make_config(**small["cfg"].data)
    cfg.data.tokenizer = path
    result = prepare_lib.prepare(cfg.data, str(tmp_path / "hf"))
    assert sorted(os.listdir(result.path)) == ["manifest.json", "plan.json", "shards", "tokenizer.json"]
    assert result.manifest["tokenizer"]["kind"] == "hf" and result.manifest["identity"]["tokenizer"] == {
        "file": store_lib.TokenStore(result.path).tokenizer.fingerprint}
    cfg.data.store, cfg.data.tokenizer = result.path, ""
    ds = build_dataset(cfg, str(tmp_path / "w"), process_index=0)
    val, train = _reference(cfg, ds.tokenizer, small["docs"])
    np.testing.assert_array_equal(ds.val, val)
    np.testing.assert_array_equal(np.asarray(ds.train), train)
    assert os.path.isfile(tmp_path / "w" / "tokenizer.json")


def test_ranged_reads_used_for_non_local_paths_give_the_same_tokens(small, monkeypatch):
    """The non-local branch (epath seek + read, threaded stats/offsets/hashes), run on a local store."""
    local = store_lib.TokenStore(small["store"])
    expected = local.read(0, local.num_tokens)
    starts, lengths = local.document_starts_and_lengths()
    monkeypatch.setattr(store_lib, "_is_local", lambda path: False)
    remote = store_lib.TokenStore(small["store"])
    assert remote._tokens[0]._fd is None
    np.testing.assert_array_equal(remote.read(0, remote.num_tokens), expected)
    np.testing.assert_array_equal(remote.read(int(starts[37]) + 2, 9), expected[int(starts[37]) + 2:int(starts[37]) + 11])
    r_starts, r_lengths = remote.document_starts_and_lengths()
    np.testing.assert_array_equal(r_starts, starts)
    np.testing.assert_array_equal(r_lengths, lengths)
    remote.verify()
    assert remote._tokens[0]._fd is None  # never opened a local file descriptor


def test_url_cache_dir_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data.cache_dir='gs://b/cache' is a URL.*--output gs://b/cache"):
        prepare_lib.resolve_cache_dir("gs://b/cache")
    monkeypatch.setenv("DLLM_JAX_CACHE", "memory://c")
    with pytest.raises(DataError, match=r"\$DLLM_JAX_CACHE='memory://c' is a URL"):
        prepare_lib.resolve_cache_dir("")
    assert not os.path.exists(tmp_path / "gs:") and os.listdir(tmp_path) == []
    assert prepare_lib.resolve_cache_dir(str(tmp_path / "c")) == str(tmp_path / "c")


def test_following_the_damage_message_repairs_the_store(small, tmp_path):
    """Corrupt bytes + the done record deleted as the message says, or a deleted .tokens file:
    rerunning prepare rewrites just those shards and the manifest, and the store trains."""
    import shutil

    cfg, bad = small["cfg"], tmp_path / "bad"
    shutil.copytree(small["store"], bad)
    good = _files(os.path.join(small["store"], "shards"))
    tokens = bad / "shards" / "shard-00002.tokens"
    data = bytearray(tokens.read_bytes())
    data[5] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"Delete shard-00002.done.json and rerun"):
        store_lib.TokenStore(str(bad)).verify()
    (bad / "shards" / "shard-00002.done.json").unlink()
    result = prepare_lib.prepare(cfg.data, str(bad))
    assert not result.up_to_date and result.shards_written == 1 and result.tokens == small["result"].tokens
    store_lib.TokenStore(str(bad)).verify()
    assert tokens.read_bytes() == good["shard-00002.tokens"]
    (bad / "shards" / "shard-00005.tokens").unlink()
    with pytest.raises(DataError, match=r"shard-00005.tokens is missing"):
        store_lib.TokenStore(str(bad))
    result = prepare_lib.prepare(cfg.data, str(bad))
    assert not result.up_to_date and result.shards_written == 1
    store_lib.TokenStore(str(bad)).verify()
    assert prepare_lib.prepare(cfg.data, str(bad)).up_to_date
    fp = store_lib.TokenStore(small["store"]).content_fingerprint
    assert store_lib.TokenStore(str(bad)).content_fingerprint == fp  # same content at another path
    assert {k: v for k, v in _files(os.path.join(bad, "shards")).items() if not k.endswith(".done.json")} == {
        k: v for k, v in good.items() if not k.endswith(".done.json")}
    tcfg = make_config(**cfg.data)
    tcfg.data.store = str(bad)
    ds = build_dataset(tcfg, str(tmp_path / "w"), process_index=0)
    ref = make_config(**cfg.data)
    ref.data.store = small["store"]
    want = build_dataset(ref, str(tmp_path / "w2"), process_index=0)
    np.testing.assert_array_equal(np.asarray(ds.train), np.asarray(want.train))
    np.testing.assert_array_equal(ds.val, want.val)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["shards"][3]["tokens_sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert store_lib.TokenStore(str(bad)).content_fingerprint != fp


def test_beam_worker_data_error_is_one_clean_data_error(small, tmp_path):
    """A corrupt .gz fails inside a Beam worker; prepare raises our DataError with the same
    message the in-process run gives (no wrapped RuntimeError / worker traceback)."""
    pytest.importorskip("apache_beam")
    d = tmp_path / "c"
    write_corpus(d, make_docs(12, seed=5))
    (d / "zz.txt.gz").write_bytes(b"not gzip at all")
    cfg = make_config(paths=str(d / "*"), text_split="paragraph", cache_dir=str(tmp_path / "cache"))
    tok = store_lib.TokenStore(small["store"]).tokenizer  # given, so the bad file is first read in a worker
    with pytest.raises(DataError) as inproc:
        prepare_lib.prepare(cfg.data, str(tmp_path / "a"), tokenizer=tok)
    with pytest.raises(DataError) as beam:
        prepare_lib.prepare(cfg.data, str(tmp_path / "b"), tokenizer=tok, runner="beam",
                            pipeline_args=["--direct_running_mode=in_memory"])
    assert "zz.txt.gz' is not a valid gzip file" in str(beam.value)
    assert str(beam.value) == str(inproc.value) and "\n" not in str(beam.value) and "while running" not in str(beam.value)
    wrapped = RuntimeError("Traceback ...\ndllm_jax.errors.DataError: 'x.gz' is bad; fix it. [while running 'prepare']")
    assert isinstance(prepare_lib.worker_error(wrapped), DataError) and str(prepare_lib.worker_error(wrapped)) == "'x.gz' is bad; fix it."
    assert prepare_lib.worker_error(RuntimeError("boom")) is None


def test_beam_options_reject_what_beam_does_not_know():
    pytest.importorskip("apache_beam")
    opts = prepare_lib.beam_options(["--direct_num_workers=3"]).get_all_options()
    assert opts["direct_num_workers"] == 3 and opts["runner"] == "DirectRunner"
    # Beam alone logs "Discarding unparseable args" and runs with its defaults
    with pytest.raises(DataError, match="--direct_num_wrkers=3.*check the spelling"):
        prepare_lib.beam_options(["--direct_num_wrkers=3"])


def test_misspelled_beam_option_fails_before_anything_is_written(tmp_path, corpus):
    pytest.importorskip("apache_beam")
    from dllm_jax.config import default_config

    cfg = default_config()
    cfg.data.paths = corpus[0]
    out = tmp_path / "store"
    with pytest.raises(DataError, match="direct_num_wrkers"):
        prepare_lib.prepare(cfg.data, str(out), runner="beam", pipeline_args=["--direct_num_wrkers=2"])
    assert not out.exists()


# -- text handling: special-token strings and U+2581 in corpus text (issue 25 items 2, 5) ----------

_TRICKY = [
    "A line that quotes the end marker </s> and goes on after it.",
    "Joined by hand<|endoftext|>still the same document, with <pad> and <unk> and <|padding|> inside.",
    "SentencePiece's space symbol: a\u2581b, \u2581\u2581 at the start and the end \u2581",
    "Plain text, river and stone, nothing special at all.",
]


def _tokenizer_file(kind, tmp_path, docs):
    if kind == "hf":
        pytest.importorskip("tokenizers")
        from test_hf_tokenizer import make_hf_tokenizer

        return make_hf_tokenizer(tmp_path / "tokenizer.json", docs)
    from dllm_jax.data.tokenizer import train_tokenizer

    train_tokenizer(docs, 600, str(tmp_path / "tokenizer.model"))
    return str(tmp_path / "tokenizer.model")


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_special_token_strings_in_text_are_text_in_beam_and_in_process(kind, tmp_path):
    """The same corpus through Beam `prepare` and the in-process path gives identical ids; a
    literal </s> / <|endoftext|> is never EOS (EOS only ends documents); every document,
    U+2581 included, decodes back to itself."""
    pytest.importorskip("apache_beam")
    docs = make_docs(30, seed=7) + _TRICKY * 3
    glob_ = write_corpus(tmp_path / "c", docs)
    cfg = make_config(paths=glob_, text_split="paragraph", cache_dir=str(tmp_path / "cache"))
    cfg.data.tokenizer = _tokenizer_file(kind, tmp_path, docs)
    inproc = prepare_lib.prepare(cfg.data, str(tmp_path / "a"))
    beam = prepare_lib.prepare(cfg.data, str(tmp_path / "b"), runner="beam", pipeline_args=["--direct_running_mode=in_memory"])
    a, b = _files(inproc.path), _files(beam.path)
    assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a if k.endswith((".tokens", ".offsets")))
    assert inproc.manifest["identity"]["encoding"] == {"split_special_tokens": True, "version": 2}
    store = store_lib.TokenStore(inproc.path)
    tok = store.tokenizer
    assert tok.keeps_u2581
    ids = store.read(0, store.num_tokens)
    assert int((ids == tok.eos_id).sum()) == store.num_documents == len(docs)  # EOS only where a document ends
    for i, doc in enumerate(load_documents(cfg.data)):
        got = store.read_document(i)
        assert got[-1] == tok.eos_id and tok.decode(got) == doc
        np.testing.assert_array_equal(got[:-1], tok.encode(doc))
    # the ids of the marker's characters, not the special id
    marker = "</s>" if kind == "sentencepiece" else "<|endoftext|>"
    assert tok.eos_id not in tok.encode(f"x{marker}y") and tok.decode(tok.encode(f"x{marker}y")) == f"x{marker}y"
    # opting in: the strings become their ids (in the store, too), and the store is another one
    cfg.data.split_special_tokens = False
    assert tok.encode(f"x{marker}y", split_special_tokens=False).count(tok.eos_id) == 1
    special = prepare_lib.prepare(cfg.data, str(tmp_path / "s"))
    s = store_lib.TokenStore(special.path)
    assert int((s.read(0, s.num_tokens) == tok.eos_id).sum()) > len(docs)
    assert prepare_lib.cached_store_path(cfg.data, tok) != prepare_lib.cached_store_path(make_config(**{**cfg.data, "split_special_tokens": True}).data, tok)
    with pytest.raises(DataError, match=r"other inputs \(encoding differ"):
        prepare_lib.prepare(cfg.data, inproc.path)
    # training from a store with the other setting is refused; a non-bool value is a config error
    train_cfg = make_config(**cfg.data)
    train_cfg.data.update(store=inproc.path, tokenizer="")
    with pytest.raises(DataError, match=r"data\.split_special_tokens=False but the store .* was prepared with data\.split_special_tokens=True"):
        build_dataset(train_cfg, str(tmp_path / "w"), process_index=0)
    from dllm_jax.errors import ConfigError

    bad = make_config(paths=glob_, text_split="paragraph", split_special_tokens="no")
    with pytest.raises(ConfigError, match=r"data\.split_special_tokens='no' must be True"):
        prepare_lib.prepare(bad.data, str(tmp_path / "x"), tokenizer=tok)


def _metaspace_tokenizer(path, texts):
    """A Llama-2-style tokenizer.json (Metaspace: ' ' -> '▁' and back), which cannot keep a literal '▁'."""
    from tokenizers import Tokenizer as T, decoders, models, pre_tokenizers, trainers

    tok = T(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<pad>"], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))
    return str(path)


def test_u2581_a_tokenizer_cannot_keep_is_reported_once(tmp_path, caplog):
    pytest.importorskip("tokenizers")
    docs = make_docs(20, seed=8)
    docs[3] += " a\u2581b"
    docs[14] += " \u2581\u2581 and \u2581"
    glob_ = write_corpus(tmp_path / "c", docs)  # docs 3 and 14 land in part000 and part001
    cfg = make_config(paths=glob_, text_split="paragraph", cache_dir=str(tmp_path / "cache"))
    cfg.data.tokenizer = _metaspace_tokenizer(tmp_path / "tokenizer.json", docs)
    with caplog.at_level("WARNING", logger="dllm_jax"):
        result = prepare_lib.prepare(cfg.data, str(tmp_path / "s"))
    warnings = [r.getMessage() for r in caplog.records if "U+2581" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "holds 4 U+2581 characters" in warnings[0] and "in 2 source shard(s)" in warnings[0]
    assert "part001.txt (3)" in warnings[0] and "part000.txt (1)" in warnings[0]
    assert result.manifest["stats"]["u2581_as_space"] == 4
    store = store_lib.TokenStore(result.path)
    assert not store.tokenizer.keeps_u2581 and store.tokenizer.decode(store.read_document(3)).endswith(" a b")
    caplog.clear()
    with caplog.at_level("WARNING", logger="dllm_jax"):
        assert prepare_lib.prepare(cfg.data, str(tmp_path / "s")).up_to_date  # said once, when the store is built
    assert not [r for r in caplog.records if "U+2581" in r.getMessage()]
