"""One path layer for every path a user gives (corpus, tokenizer, workdir, eval files, sweeps).

A path is a string: a local path (``~`` and ``$VARS`` are expanded) or a URL
(``gs://bucket/dir``, ``s3://...``, ``memory://...``: any filesystem fsspec knows), which
is left exactly as written. Local paths go through ``etils.epath`` (its local backend is
``os``); URLs go through ``fsspec`` (``fsspec.core.url_to_fs``), the library etils.epath
itself uses for ``gs://`` when TensorFlow is not installed. ``gs://`` needs the ``gcsfs``
package (``pip install 'dllm_jax[gcs]'``) and Google Cloud credentials (e.g.
``gcloud auth application-default login``). Orbax checkpoints take ``epath_path(p)``.

Semantics that differ by filesystem:
- ``glob``: ``*``, ``?``, ``[...]`` and ``**`` (any number of directories, recursive);
  local globs do not match names starting with '.', as the shell.
- ``write_bytes``/``write_text``: atomic. Locally a temporary file in the same directory is
  renamed over the target; an object store (GCS, S3) makes an object visible only when
  its upload completes, so the object is written directly.
- ``append_text``: locally an append; on a URL the object is rewritten (object stores have
  no append), which is fine for the small files it is used for (metrics.jsonl).
"""
from __future__ import annotations

import glob as _glob
import os
import posixpath
import re
import tempfile
from typing import IO

from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_MAGIC = re.compile(r"[*?\[]")


def is_url(path: str) -> bool:
    """True for 'gs://b/x', 'memory://x', 'file:///x' (anything with a scheme)."""
    return bool(_URL.match(os.fspath(path)))


def expand(path) -> str:
    """A local path with ~ and $VARS expanded; a URL unchanged."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.expandvars(os.path.expanduser(path))


def absolute(path) -> str:
    """``expand`` then, for a local path, made absolute (URLs are already absolute)."""
    path = expand(path)
    return path if is_url(path) else os.path.abspath(path)


def join(path, *parts: str) -> str:
    """Joins with '/' on URLs and os.path.join locally."""
    path = os.fspath(path)
    return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def basename(path) -> str:
    return posixpath.basename(os.fspath(path).rstrip("/"))


def dirname(path) -> str:
    path = os.fspath(path)
    if is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(path)


def epath_path(path) -> epath.Path:
    """An etils.epath.Path (what Orbax takes): gs:// and local paths are supported by Orbax."""
    return epath.Path(absolute(path))


def _fs(path: str):
    """(fsspec filesystem, path inside it) of a URL."""
    import fsspec  # pylint: disable=import-outside-toplevel

    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as e:  # e.g. gs:// without gcsfs
        scheme = path.split("://", 1)[0]
        hint = " (pip install 'dllm_jax[gcs]', i.e. gcsfs)" if scheme in ("gs", "gcs") else ""
        from dllm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

        raise ConfigError(f"the path {path!r} needs the fsspec implementation of {scheme}://, which is not installed{hint}: {e}") from None


def exists(path) -> bool:
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return epath.Path(path).exists()


def isdir(path) -> bool:
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return epath.Path(path).is_dir()


def isfile(path) -> bool:
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        return fs.isfile(p)
    return os.path.isfile(path)


def makedirs(path) -> None:
    """mkdir -p (object stores have no directories: a no-op there)."""
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        fs.makedirs(p, exist_ok=True)
    else:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
    """Names (not paths) in a directory, sorted."""
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        return sorted(posixpath.basename(q.rstrip("/")) for q in fs.ls(p, detail=False))
    return sorted(os.listdir(path))


def glob(pattern) -> list[str]:
    """Paths matching ``pattern`` (files and directories), sorted; ``**`` recurses.

    A pattern without magic characters matches itself if it exists (locally also a broken
    symbolic link, so that callers can report it).
    """
    pattern = expand(pattern)
    if not is_url(pattern):
        return sorted(_glob.glob(pattern, recursive=True))
    fs, p = _fs(pattern)
    if not _MAGIC.search(p):
        return [pattern] if fs.exists(p) else []
    return sorted(fs.unstrip_protocol(m) for m in fs.glob(p))


def stat(path) -> dict:
    """{'size': bytes, 'mtime': a number or None}: what identifies a file's version cheaply.

    Locally mtime is st_mtime_ns; on a URL it is the filesystem's modification time (GCS
    'updated', S3 'LastModified', ...) as text, or None when the filesystem gives none.
    """
    path = expand(path)
    if not is_url(path):
        st = os.stat(path)
        return {"size": st.st_size, "mtime": st.st_mtime_ns}
    fs, p = _fs(path)
    info = fs.info(p)
    mtime = next((info[k] for k in ("mtime", "updated", "LastModified", "last_modified", "created") if info.get(k) is not None), None)
    return {"size": info.get("size"), "mtime": None if mtime is None else str(mtime)}


def info(path) -> dict:
    """What the filesystem reports about a URL's object (fsspec ``info``: size, and e.g. GCS
    'md5Hash' / 'crc32c', S3 'ETag'); locally {'size': bytes}."""
    path = expand(path)
    if not is_url(path):
        return {"size": os.stat(path).st_size}
    fs, p = _fs(path)
    return dict(fs.info(p))


def open_file(path, mode: str = "rb", encoding: str | None = None, newline: str | None = None) -> IO:
    """Opens a local file or URL ('r', 'rb', 'w', 'wb', 'a'); text modes default to UTF-8."""
    path = expand(path)
    if "b" in mode:
        if is_url(path):
            fs, p = _fs(path)
            return fs.open(p, mode)
        return open(path, mode)  # pylint: disable=unspecified-encoding
    encoding = encoding or "utf-8"
    if is_url(path):
        fs, p = _fs(path)
        return fs.open(p, mode, encoding=encoding, newline=newline)
    return open(path, mode, encoding=encoding, newline=newline)


def read_bytes(path) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    """UTF-8 text (strict: a decoding error raises UnicodeDecodeError)."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Writes ``data`` atomically (a reader sees the old file or the whole new one)."""
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        with fs.open(p, "wb") as f:
            f.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path, text: str) -> None:
    """Appends ``text`` (UTF-8) to a file, creating it."""
    path = expand(path)
    if is_url(path):
        old = read_bytes(path) if exists(path) else b""
        write_bytes(path, old + text.encode("utf-8"))
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def remove(path) -> None:
    path = expand(path)
    if is_url(path):
        fs, p = _fs(path)
        fs.rm(p)
    else:
        os.unlink(path)


def rename(src, dst) -> None:
    """Moves a file or a directory tree (locally a rename; on an object store a recursive move)."""
    src, dst = expand(src), expand(dst)
    if is_url(src):
        fs, p = _fs(src)
        fs.mv(p, _fs(dst)[1], recursive=True)
    else:
        os.rename(src, dst)


__all__ = [
    "is_url", "expand", "absolute", "join", "basename", "dirname", "epath_path", "exists", "isdir", "isfile",
    "makedirs", "listdir", "glob", "stat", "open_file", "read_bytes", "read_text", "write_bytes", "write_text",
    "append_text", "remove", "rename",
]
