"""Corpus files: JSONL / Parquet sources, .gz / .zst, text decoding (BOM, line endings,
UTF-16/32, invalid UTF-8), one-file corpora, broken links, unreadable files, memory://."""
import gzip
import json
import os
import uuid

import pytest
import zstandard

from dllm_jax import paths
from dllm_jax.data import sources
from dllm_jax.data.sources import load_documents, read_shard, source_shards, source_spec
from dllm_jax.errors import DataError
from test_data import make_config, make_docs


def _concat_shards(data_cfg):
    return [d for shard in source_shards(data_cfg) for d in read_shard(data_cfg, shard)]


def _write_jsonl(path, records, compress=None):
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


# -- JSONL --------------------------------------------------------------------------------

def test_jsonl_shards_compressed_and_text_key(tmp_path):
    docs = make_docs(9, seed=1) + ["ünïcödé ☃\r\nkept as stored"]
    d = tmp_path / "j"
    d.mkdir()
    _write_jsonl(d / "a.jsonl", [{"body": x, "id": i} for i, x in enumerate(docs[:4])])
    _write_jsonl(d / "b.jsonl.gz", [{"body": x} for x in docs[4:7]] + [{"body": "   "}, {"body": ""}], "gz")
    _write_jsonl(d / "c.jsonl.zst", [{"body": x} for x in docs[7:]], "zst")
    with open(d / "a.jsonl", "ab") as f:
        f.write(b"\n   \n")  # blank lines are skipped
    cfg = make_config(source="jsonl", paths=str(d / "*.jsonl*"), text_key="body")
    assert load_documents(cfg.data) == docs
    assert _concat_shards(cfg.data) == docs
    assert [paths.basename(s["path"]) for s in source_shards(cfg.data)] == ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst"]
    assert source_spec(cfg.data)["text_key"] == "body"
    cfg.data.max_docs = 5
    assert load_documents(cfg.data) == docs[:5]


def test_jsonl_errors_name_file_line_and_key(tmp_path):
    f = tmp_path / "x.jsonl"
    cfg = make_config(source="jsonl", paths=str(f))
    _write_jsonl(f, [{"text": "ok"}, {"content": "no text key"}])
    with pytest.raises(DataError, match=r"x\.jsonl' line 2 has no field data\.text_key='text'.*content"):
        load_documents(cfg.data)
    _write_jsonl(f, [{"text": "ok"}, {"text": "ok"}, {"text": 7}])
    with pytest.raises(DataError, match=r"line 3: the field data\.text_key='text' is a int, not text"):
        load_documents(cfg.data)
    _write_jsonl(f, [{"text": None}])
    with pytest.raises(DataError, match=r"line 1: .* is missing \(null\)"):
        load_documents(cfg.data)
    f.write_bytes(b'{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        load_documents(cfg.data)
    f.write_bytes(b'{"text": "a"}\n["text"]\n')
    with pytest.raises(DataError, match=r"line 2 is a JSON list"):
        load_documents(cfg.data)
    # latin-1 bytes on line 2: offset counts from the start of the file
    f.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8: line 2, byte offset 27 .*iconv -f LATIN1"):
        load_documents(cfg.data)
    f.write_bytes("\ufeff".encode() + b'{"text": "bom"}\r\n{"text": "crlf"}\r\n')
    assert load_documents(cfg.data) == ["bom", "crlf"]
    f.write_bytes('{"text": "wide"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"looks like UTF-16LE.*iconv -f UTF-16LE -t UTF-8"):
        load_documents(cfg.data)
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz' is not a valid gzip file"):
        load_documents(make_config(source="jsonl", paths=str(tmp_path / "bad.jsonl.gz")).data)



def test_truncated_zstd_is_an_error_not_an_empty_file(tmp_path):
    """A .zst file cut short (anywhere, even its last bytes) is a DataError naming it; two
    whole frames back to back read as their concatenation."""
    from dllm_jax.data.formats import read_decompressed

    text = "".join(f"line {i} of the corpus: {i * 7919 % 100003} {i ** 3 % 9973}\n" for i in range(3000)).encode()
    good = zstandard.ZstdCompressor().compress(text)
    assert len(good) > 3000
    two = tmp_path / "two.txt.zst"
    two.write_bytes(good + zstandard.ZstdCompressor().compress(b"tail\n"))
    assert read_decompressed(str(two)) == text + b"tail\n"
    for name, cut in [("head.txt.zst", good[:3000]), ("tail.jsonl.zst", good[:-50]), ("one.txt.zst", good[:-1])]:
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}' is not a valid Zstandard file .*damaged or truncated zstd file"):
            read_decompressed(str(tmp_path / name))
    (tmp_path / "t.txt.zst").write_bytes(good[:-50])
    with pytest.raises(DataError, match=r"t\.txt\.zst' is not a valid Zstandard file"):
        load_documents(make_config(paths=str(tmp_path / "t.txt.zst")).data)


# -- compression by content (issue 25 item 8) ---------------------------------------------

def _compress(kind: str, data: bytes) -> bytes:
    import bz2
    import lzma
    import tarfile
    import zipfile
    import io as io_

    if kind == "gz":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if kind == "zst":
        return zstandard.ZstdCompressor().compress(data)
    buf = io_.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("corpus.txt", data)
        return buf.getvalue()
    if kind == "tar":
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo("corpus.txt")
            info.size = len(data)
            t.addfile(info, io_.BytesIO(data))
        return buf.getvalue()
    raise ValueError(kind)


_TEXT = "First paragraph, caf\u00e9.\n\nSecond one, ok.\n"


@pytest.mark.parametrize("kind,name", [("gz", "c.txt.gz"), ("bz2", "c.txt.bz2"), ("xz", "c.txt.xz"), ("zst", "c.txt.zst"),
                                       ("lzma", "c.txt.lzma"), ("bz2", "hidden.txt"), ("xz", "no_suffix")])
def test_every_readable_compression_is_read_by_content(tmp_path, kind, name):
    """gzip / bzip2 / xz / zstd (and legacy .lzma) are decompressed, as text and as JSONL, and
    the bytes decide, not the name (a bzip2 file called hidden.txt is read)."""
    data = _compress(kind, _TEXT.encode())
    assert _docs_of(tmp_path, name, data) == ["First paragraph, caf\u00e9.", "Second one, ok."]
    jl = tmp_path / "j" / (name.replace(".txt", ".jsonl"))
    jl.parent.mkdir()
    jl.write_bytes(_compress(kind, b'{"text": "a"}\n{"text": "b"}\n'))
    assert load_documents(make_config(source="jsonl", paths=str(jl)).data) == ["a", "b"]
    from dllm_jax import files

    assert files.read_text(str(tmp_path / name)) == _TEXT  # task files: the same rule


@pytest.mark.parametrize("name,data,says", [
    ("c.zip", lambda: _compress("zip", _TEXT.encode()), r"is a zip archive .*does not read; extract it \(unzip c\.zip\)"),
    ("c.tar", lambda: _compress("tar", _TEXT.encode()), r"is a tar archive .*tar -xf c\.tar"),
    ("c.tar.gz", lambda: gzip.compress(_compress("tar", _TEXT.encode())), r"is a tar archive .*tar -xf c\.tar\.gz"),
    ("c.txt.gz.gz", lambda: gzip.compress(gzip.compress(_TEXT.encode())), r"is gzip inside gzip \(compressed twice\).*gunzip"),
    ("c.txt.7z", lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + os.urandom(200), r"is a 7z archive .*7z x c\.txt\.7z"),
    ("c.txt.lz4", lambda: b"\x04\x22\x4d\x18" + os.urandom(200), r"is lz4-compressed, which dllm_jax does not read.*lz4 -d"),
    ("disguised.txt", lambda: b"\x04\x22\x4d\x18" + os.urandom(200), r"disguised\.txt' is lz4-compressed"),
    ("c.txt.Z", lambda: b"\x1f\x9d\x90" + os.urandom(200), r"is compress-compressed.*uncompress c\.txt\.Z"),
    ("c.txt.br", lambda: os.urandom(200), r"is brotli-compressed.*brotli -d c\.txt\.br"),
    ("plain.txt.bz2", lambda: _TEXT.encode(), r"plain\.txt\.bz2' is not a valid bzip2 file: its name says bzip2 .*rename it"),
    ("cut.txt.xz", lambda: _compress("xz", _TEXT.encode() * 50)[:-20], r"cut\.txt\.xz' is not a valid xz file .*damaged or truncated xz"),
])
def test_unreadable_compression_is_one_error_naming_it(tmp_path, capsys, name, data, says):
    """Any compression or archive that is not read is ONE error naming the format and the fix,
    never the UTF-8 / iconv advice; the same for a task file and through the CLI (exit 2)."""
    (tmp_path / name).write_bytes(data())
    with pytest.raises(DataError, match=says) as e:
        load_documents(make_config(paths=str(tmp_path / name)).data)
    assert "UTF" not in str(e.value) and "iconv" not in str(e.value) and "\n" not in str(e.value)
    from dllm_jax import cli, files

    with pytest.raises(DataError, match=says):
        files.read_text(str(tmp_path / name), "task file")
    rc = cli.main(["prepare", "--config", "experiments/tiny.py", "--output", str(tmp_path / "store"), "--in-process",
                   f"--config.data.paths={tmp_path / name}", f"--config.data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error: " in err and "iconv" not in err and "Traceback" not in err


# -- Parquet ------------------------------------------------------------------------------

def test_parquet_row_groups_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(25, seed=2)
    texts = docs[:10] + ["  "] + docs[10:]
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"text": texts[:15], "n": list(range(15))}), d / "part-0.parquet", row_group_size=4)
    pq.write_table(pa.table({"text": texts[15:]}), d / "part-1.parquet", row_group_size=3, compression="zstd")
    cfg = make_config(source="parquet", paths=str(d / "*.parquet"))
    assert load_documents(cfg.data) == docs
    assert _concat_shards(cfg.data) == docs
    cfg.data.max_docs = 7
    assert load_documents(cfg.data) == docs[:7]
    with pytest.raises(DataError, match=r"part-0\.parquet' has no column data\.text_key='body' \(columns: \['text', 'n'\]\)"):
        load_documents(make_config(source="parquet", paths=str(d / "*.parquet"), text_key="body").data)
    with pytest.raises(DataError, match=r"column data\.text_key='n' has type int64, not text"):
        load_documents(make_config(source="parquet", paths=str(d / "part-0.parquet"), text_key="n").data)
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), tmp_path / "nulls.parquet", row_group_size=2)
    with pytest.raises(DataError, match=r"nulls\.parquet' row 2 \(counting from 0\): the column data\.text_key='text' is null"):
        load_documents(make_config(source="parquet", paths=str(tmp_path / "nulls.parquet")).data)
    (tmp_path / "fake.parquet").write_text("plain text")
    with pytest.raises(DataError, match=r"fake\.parquet' is not a readable Parquet file"):
        load_documents(make_config(source="parquet", paths=str(tmp_path / "fake.parquet")).data)


# -- text decoding (issue 12 A1) ----------------------------------------------------------

def _docs_of(tmp_path, name, data: bytes, **kw):
    (tmp_path / name).write_bytes(data)
    return load_documents(make_config(paths=str(tmp_path / name), **{"text_split": "paragraph", **kw}).data)


def test_text_decoding_normalises_only_bom_and_line_endings(tmp_path):
    assert _docs_of(tmp_path, "bom.txt", b"\xef\xbb\xbfFirst para\n\nSecond") == ["First para", "Second"]
    assert _docs_of(tmp_path, "crlf.txt", b"a\r\nb\r\n\r\nc\r\n") == ["a\nb", "c"]
    assert _docs_of(tmp_path, "cr.txt", b"a\rb\r\rc") == ["a\nb", "c"]
    assert _docs_of(tmp_path, "lines.txt", b"x\r\ny\rz\n", text_split="line") == ["x", "y", "z"]
    # everything else is kept: a BOM that is not at the start, tabs, trailing spaces, NUL-free unicode
    text = "caf\u00e9 \ufeffmid\t \u2603"
    assert _docs_of(tmp_path, "u.txt", text.encode()) == [text]
    # compressed text files decode the same way
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.txt.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfg1\r\n\r\ng2"))
    (tmp_path / "z" / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"z1\n\nz2\n"))
    cfg = make_config(paths=str(tmp_path / "z" / "*"), text_split="paragraph")
    assert load_documents(cfg.data) == ["g1", "g2", "z1", "z2"]


@pytest.mark.parametrize("encoding,name", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
                                           ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32LE")])
def test_utf16_and_utf32_files_are_an_error_naming_the_fix(tmp_path, encoding, name):
    with pytest.raises(DataError, match=rf"wide\.txt' looks like {name}.*iconv -f {name} -t UTF-8 wide\.txt > wide\.txt\.utf8"):
        _docs_of(tmp_path, "wide.txt", "plain ascii text\n\nmore".encode(encoding))


def test_invalid_utf8_is_an_error_with_line_and_offset(tmp_path):
    with pytest.raises(DataError, match=r"latin\.txt' is not valid UTF-8: line 3, byte offset 11 \(bytes e9 0a\).*iconv -f LATIN1"):
        _docs_of(tmp_path, "latin.txt", b"ok\nfine\ncaf\xe9\n")
    (tmp_path / "l.txt.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfab\xff"))
    with pytest.raises(DataError, match=r"line 1, byte offset 5 \(after decompression\)"):
        load_documents(make_config(paths=str(tmp_path / "l.txt.gz")).data)


def test_invalid_utf8_through_the_cli_is_exit_2(tmp_path, capsys):
    from dllm_jax import cli

    (tmp_path / "corpus.txt").write_bytes("wide text".encode("utf-16"))
    rc = cli.main(["train", "--config", "experiments/tiny.py", "--workdir", str(tmp_path / "w"),
                   f"--config.data.paths={tmp_path / 'corpus.txt'}", f"--config.data.cache_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "error:" in err and "looks like UTF-16" in err and "Traceback" not in err


# -- one big text file (issue 12 A2) ------------------------------------------------------

def test_one_file_is_split_into_paragraphs(tmp_path):
    docs = make_docs(40, seed=4)
    (tmp_path / "big.txt").write_text("\n\n".join(docs) + "\n")
    cfg = make_config(paths=str(tmp_path / "big.txt"))  # text_split='file' (the default)
    assert load_documents(cfg.data) == docs
    assert _concat_shards(cfg.data) == load_documents(cfg.data)
    assert source_spec(cfg.data)["text_split"] == "paragraph"
    # several files keep one document per file
    (tmp_path / "small.txt").write_text("another file")
    cfg2 = make_config(paths=f"{tmp_path}/*.txt")
    assert len(load_documents(cfg2.data)) == 2 and source_spec(cfg2.data)["text_split"] == "file"


def test_one_file_corpus_builds_a_dataset(tmp_path):
    from dllm_jax.data.pipeline import build_dataset

    docs = make_docs(300, seed=5, words=(5, 15))
    (tmp_path / "one_big_file.txt").write_text("\n\n".join(docs))
    cfg = make_config(paths=str(tmp_path / "one_big_file.txt"), cache_dir=str(tmp_path / "c"), val_tokens=400)
    ds = build_dataset(cfg, str(tmp_path / "w"))
    assert ds.stats["documents"] == 300 and len(ds.val) > 0 and len(ds.train) > 0


def test_val_tokens_taking_everything_names_text_split(tmp_path):
    from dllm_jax.data.pipeline import build_dataset

    (tmp_path / "a.txt").write_text("one single paragraph without blank lines\nsecond line")
    cfg = make_config(paths=str(tmp_path / "a.txt"), cache_dir=str(tmp_path / "c"), val_tokens=10_000)
    with pytest.raises(DataError, match=r"data\.val_tokens=10000 takes all 1 documents.*data\.text_split='line'"):
        build_dataset(cfg, str(tmp_path / "w"))


# -- paths that are not readable files (issue 12 A7) ---------------------------------------

def test_broken_symlink_names_its_target(tmp_path, caplog):
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone" / "real.txt")
    with pytest.raises(DataError, match=r"broken symbolic link.*dangling\.txt' -> '.*gone/real\.txt'"):
        load_documents(make_config(paths=str(tmp_path / "dangling.txt")).data)
    with pytest.raises(DataError, match=r"broken symbolic link"):
        load_documents(make_config(paths=str(tmp_path / "*.txt")).data)
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"matches only directories"):
        load_documents(make_config(paths=str(tmp_path / "d")).data)
    # next to real files a broken link is skipped with a warning that names it
    (tmp_path / "real.txt").write_text("text")
    assert load_documents(make_config(paths=str(tmp_path / "*.txt")).data) == ["text"]
    assert "broken symbolic links" in caplog.text and "gone/real.txt" in caplog.text


def test_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "secret.txt"
    f.write_text("text")
    if os.geteuid() != 0:  # a real permission error (root reads everything)
        f.chmod(0)
        with pytest.raises(DataError, match=r"secret\.txt' .*cannot be read \(permission denied\).*chmod"):
            load_documents(make_config(paths=str(f)).data)
        f.chmod(0o644)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(f) else real_access(p, m))
    with pytest.raises(DataError, match=r"secret\.txt' .*cannot be read \(permission denied\).*chmod"):
        source_shards(make_config(paths=str(f)).data)


# -- a non-local filesystem (memory://) ---------------------------------------------------

@pytest.fixture
def mem_root():
    import fsspec

    root = f"memory://dllm-src-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.split("://", 1)[1]):
        fs.rm(root.split("://", 1)[1], recursive=True)


def test_corpus_and_tokenizer_on_memory_filesystem(tmp_path, mem_root):
    from dllm_jax.data.tokenizer import load_tokenizer, train_tokenizer

    docs = make_docs(12, seed=6)
    for i in range(0, 12, 4):
        paths.write_text(paths.join(mem_root, "txt", f"part{i}.txt"), "\n\n".join(docs[i:i + 4]))
    jl = paths.join(mem_root, "jl", "deep", "a.jsonl.gz")
    paths.write_bytes(jl, gzip.compress("".join(json.dumps({"text": x}) + "\n" for x in docs).encode()))
    cfg = make_config(paths=paths.join(mem_root, "txt", "*.txt"), text_split="paragraph")
    assert load_documents(cfg.data) == docs
    cfg_j = make_config(source="jsonl", paths=paths.join(mem_root, "**", "*.jsonl.gz"))
    assert load_documents(cfg_j.data) == docs
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, row_group_size=5)
    paths.write_bytes(paths.join(mem_root, "pq", "a.parquet"), buf.getvalue())
    assert load_documents(make_config(source="parquet", paths=paths.join(mem_root, "pq", "*.parquet")).data) == docs
    spec = source_spec(cfg.data)
    assert [f[0] for f in spec["files"]] == [paths.join(mem_root, "txt", f"part{i}.txt").replace("memory://", "memory:///") for i in (0, 4, 8)]
    paths.write_text(paths.join(mem_root, "txt", "part4.txt"), "changed")
    assert source_spec(cfg.data) != spec
    # a tokenizer saved to and loaded from memory://
    tok = train_tokenizer(docs * 20, 300, None)
    tok.save(paths.join(mem_root, "tok", "tokenizer.model"))
    assert load_tokenizer(paths.join(mem_root, "tok", "tokenizer.model")).fingerprint == tok.fingerprint
    assert load_tokenizer(paths.join(mem_root, "tok")).fingerprint == tok.fingerprint
    assert not os.path.exists("memory:"), "a memory:// path was written as a local directory"


def test_source_spec_keys_on_content_not_mtime(tmp_path, monkeypatch):
    """Issue 25 item 10: a same-size edit whose mtime is put back changes the key; a touch
    (same bytes, new mtime) does not; digests are remembered on disk under the file's stat."""
    import hashlib

    monkeypatch.setattr(sources, "_RACY_NS", 0)  # remember digests of files written just now
    f = tmp_path / "a.jsonl"
    _write_jsonl(f, [{"text": "one"}])
    cfg = make_config(source="jsonl", paths=str(f))
    memo = str(tmp_path / "memo")
    spec = source_spec(cfg.data, memo_dir=memo)
    assert spec["files"][0][2] == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    assert spec == source_spec(cfg.data, memo_dir=memo)
    st = os.stat(f)
    f.write_bytes(f.read_bytes().replace(b"one", b"two"))  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: size + mtime say "unchanged"
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    edited = source_spec(cfg.data, memo_dir=memo)
    assert edited != spec and edited["files"][0][2] == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    os.utime(f, ns=(1, 1))  # a touch: same bytes, other mtime -> same key
    assert source_spec(cfg.data, memo_dir=memo) == edited
    assert source_spec(make_config(source="jsonl", paths=str(f), text_key="body").data) != source_spec(cfg.data)
    # a new process (empty in-process memo) takes the digest from the memo file without reading the corpus
    monkeypatch.setattr(sources, "_DIGESTS", {})
    monkeypatch.setattr(sources, "_sha256_of", lambda p: (_ for _ in ()).throw(AssertionError("hashed again")))
    assert source_spec(cfg.data, memo_dir=memo) == edited
    assert len(os.listdir(memo)) == 1
    # a file changed just now (< 2 s) is hashed every time: a same-tick write could keep its stat
    monkeypatch.setattr(sources, "_RACY_NS", 2_000_000_000)
    hashed = []
    monkeypatch.setattr(sources, "_sha256_of", lambda p: hashed.append(p) or "sha256:x")
    _write_jsonl(f, [{"text": "six"}])
    source_spec(cfg.data, memo_dir=memo)
    source_spec(cfg.data, memo_dir=memo)
    assert len(hashed) == 2


def test_array_record_that_is_not_utf8_names_the_record(tmp_path):
    arm = pytest.importorskip("array_record.python.array_record_module")

    path = str(tmp_path / "x.array_record")
    writer = arm.ArrayRecordWriter(path, "group_size:1")
    for rec in (b"fine", "caf\u00e9".encode(), b"caf\xe9"):
        writer.write(rec)
    writer.close()
    with pytest.raises(DataError, match=r"record 2 \(counting from 0\) of '.*x\.array_record' is not valid UTF-8 \(byte offset 3: e9\)"):
        load_documents(make_config(source="array_record", paths=path).data)


def test_a_compressed_file_in_another_encoding_gets_a_pipeline_that_decompresses_first(tmp_path):
    """iconv on compressed bytes would make garbage: the advice decompresses, then converts."""
    import bz2
    import gzip
    import lzma

    from dllm_jax.data.sources import load_documents

    cases = [("lat.txt.gz", gzip.compress("café\n".encode("latin-1")), r"gzip -dc lat\.txt\.gz \| iconv -f LATIN1 -t UTF-8 > lat\.txt\.gz\.utf8\.txt"),
             ("lat.txt.bz2", bz2.compress("café\n".encode("latin-1")), r"bzip2 -dc lat\.txt\.bz2 \| iconv -f LATIN1"),
             ("u16.txt.xz", lzma.compress("wide text\n".encode("utf-16")), r"\(after decompression\).*`xz -dc u16\.txt\.xz \| iconv -f UTF-16 -t UTF-8 > u16\.txt\.xz\.utf8\.txt`")]
    for name, data, advice in cases:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=advice) as e:
            load_documents(make_config(paths=str(tmp_path / name)).data)
        assert f"iconv -f LATIN1 -t UTF-8 {name} >" not in str(e.value) and f"iconv -f UTF-16 -t UTF-8 {name} >" not in str(e.value)
