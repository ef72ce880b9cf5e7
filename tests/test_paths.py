"""The path layer (dllm_jax.paths) on a local directory and on fsspec's in-memory filesystem
(memory://, a non-local filesystem: the same code route as gs:// and s3://)."""
import os
import uuid

import pytest

from dllm_jax import paths


@pytest.fixture
def mem_root():
    """A fresh memory:// directory (the in-memory filesystem is process-wide)."""
    root = f"memory://dllm-test-{uuid.uuid4().hex[:8]}"
    yield root
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists(root.split("://", 1)[1]):
        fs.rm(root.split("://", 1)[1], recursive=True)


def _tree(root):
    for rel, data in {"a.txt": b"A", "sub/b.txt": b"B", "sub/deep/c.txt": b"C", "sub/d.json": b"{}"}.items():
        paths.write_bytes(paths.join(root, rel), data)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_read_glob_stat(where, tmp_path, mem_root):
    root = str(tmp_path) if where == "local" else mem_root
    _tree(root)
    assert paths.read_bytes(paths.join(root, "sub/deep/c.txt")) == b"C"
    assert paths.exists(paths.join(root, "sub")) and paths.isdir(paths.join(root, "sub"))
    assert paths.isfile(paths.join(root, "a.txt")) and not paths.isfile(paths.join(root, "sub"))
    assert not paths.exists(paths.join(root, "nope.txt"))
    # ** recurses through any number of directories (zero included)
    found = paths.glob(paths.join(root, "**", "*.txt"))
    assert [paths.basename(f) for f in found] == ["a.txt", "b.txt", "c.txt"]
    assert all(paths.read_bytes(f) in (b"A", b"B", b"C") for f in found)
    assert [paths.basename(f) for f in paths.glob(paths.join(root, "sub", "*"))] == ["b.txt", "d.json", "deep"]
    assert paths.glob(paths.join(root, "a.txt")) == [paths.join(root, "a.txt")]
    assert paths.glob(paths.join(root, "z*.txt")) == []
    assert paths.listdir(paths.join(root, "sub")) == ["b.txt", "d.json", "deep"]
    st = paths.stat(paths.join(root, "sub/b.txt"))
    assert st["size"] == 1 and st["mtime"] is not None
    # text, overwrite (atomic) and append
    f = paths.join(root, "m", "metrics.jsonl")
    paths.makedirs(paths.dirname(f))
    paths.write_text(f, "1\n")
    paths.append_text(f, "2\n")
    paths.append_text(f, "é\n")
    assert paths.read_text(f) == "1\n2\né\n"
    paths.write_text(f, "new")
    assert paths.read_text(f) == "new"
    with paths.open_file(f, "w") as fh:
        fh.write("via open")
    with paths.open_file(f) as fh:
        assert fh.read() == b"via open"
    paths.remove(f)
    assert not paths.exists(f)


def test_local_expansion_and_urls_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_TEST_ROOT", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.expand("$DLLM_TEST_ROOT/x") == os.path.join(str(tmp_path), "x")
    assert paths.expand("~/y") == os.path.join(str(tmp_path), "home", "y")
    for url in ("gs://bucket/$X/~y", "s3://b/k", "memory://a/b"):
        assert paths.expand(url) == url and paths.absolute(url) == url and paths.is_url(url)
    assert not paths.is_url("/tmp/gs:/x") and not paths.is_url("rel/path")
    assert paths.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert paths.dirname("gs://b/run/x.json") == "gs://b/run"
    assert str(paths.epath_path("gs://b/run")) == "gs://b/run"


def test_local_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "t.bin"
    paths.write_bytes(str(target), b"x" * 10)
    paths.write_bytes(str(target), b"y")
    assert target.read_bytes() == b"y" and os.listdir(tmp_path) == ["t.bin"]


def test_metrics_on_memory_filesystem(mem_root):
    """metrics.jsonl in a memory:// workdir: written, appended, trimmed on resume, read back."""
    from dllm_jax.metrics import MetricsWriter, read_metrics

    workdir = paths.join(mem_root, "run")
    w = MetricsWriter(workdir, tensorboard=True)  # TensorBoard is skipped (with a warning) on memory://
    assert w.trackers == []
    for step in (1, 2, 3):
        w.write({"step": step, "loss": 1.0 / step, "bad": float("nan")})
    w.close()
    assert read_metrics(workdir) == [{"step": s, "loss": 1.0 / s, "bad": "nan"} for s in (1, 2, 3)]
    w = MetricsWriter(workdir, resume_step=2, tensorboard=False)  # a resume drops records after its checkpoint
    w.write({"step": 3, "loss": 0.25})
    assert [r["loss"] for r in read_metrics(workdir)] == [1.0, 0.5, 0.25]
    assert not os.path.exists("memory:")
