"""Document sources: text, JSONL and Parquet files, TFDS (random-access data_source) and
ArrayRecord files.

Every source yields a list of documents (str) in a deterministic order: files in the order
of the globs in ``data.paths`` (each glob's matches sorted by name, duplicates dropped),
TFDS records in index order. ``data.max_docs > 0`` keeps only the first N documents of that
order. Paths may be local or URLs (gs://...; see ``dllm_jax.paths``).

Text files (gzip / bzip2 / xz / zstd decompressed, told by their bytes: ``formats.compression_of``) are read as UTF-8 with the
normalisation stated in ``dllm_jax.data.formats`` (BOM removed, CRLF/CR -> LF; another
encoding is an error) and split into documents by ``data.text_split``: 'file' (one
document per file), 'paragraph' (split on blank lines) or 'line'. A single file under
'file' would be a single document (nothing to hold out for validation), so a source that
matches exactly one text file is split into paragraphs instead (logged). Blank documents
are dropped; an empty file is skipped with a warning, and a source with no text at all is
an error.

JSONL (one JSON object per line, compressed too) and Parquet files: one document per
record, the string in field/column ``data.text_key``; blank texts are skipped, a record
without a text ``data.text_key`` is an error naming file and line/row.

ArrayRecord: each record is one UTF-8 document (see ``write_array_record``; a record that
is not UTF-8 is an error naming it). Records
holding serialised ``tf.train.Example`` protos are not supported: convert them to plain
text records first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Iterable

from dllm_jax import paths as paths_lib
from dllm_jax.data import formats
from dllm_jax.errors import DataError

logger = logging.getLogger("dllm_jax")

SOURCES = ("text", "jsonl", "parquet", "tfds", "array_record")
FILE_SOURCES = ("text", "jsonl", "parquet", "array_record")
TEXT_SPLITS = ("file", "paragraph", "line")
_TFDS_HINT = "install the TFDS extra: pip install 'dllm_jax[tfds]'"


def _check_source(data_cfg) -> str:
    source = data_cfg.source
    if source not in SOURCES:
        raise DataError(f"data.source={source!r} is unknown; use one of {', '.join(map(repr, SOURCES))}.")
    return source


def split_globs(paths: str) -> list[str]:
    """'a/*.txt, ~/b/**/*.txt' -> ['a/*.txt', '~/b/**/*.txt'] (the strings as written)."""
    if not isinstance(paths, str):
        raise DataError(
            f"data.paths={paths!r} must be ONE string of comma-separated globs, e.g. 'data/*.txt,more/*.txt'."
        )
    return [p.strip() for p in paths.split(",") if p.strip()]


def _not_files_hint(matches: list[str]) -> str:
    """Why the paths a glob matched are not files: broken links, directories."""
    broken = [m for m in matches if not paths_lib.is_url(m) and os.path.islink(m) and not os.path.exists(m)]
    if broken:
        shown = ", ".join(f"{m!r} -> {os.readlink(m)!r}" for m in broken[:3])
        return f" (it matches broken symbolic links whose target does not exist: {shown}; fix or remove the links)"
    return " (it matches only directories: add a file pattern such as '/*.txt')"


def _check_readable(path: str, what: str) -> None:
    if not paths_lib.is_url(path) and not os.access(path, os.R_OK):
        raise DataError(
            f"{path!r} (matched by {what}) exists but cannot be read (permission denied); fix its permissions "
            "(e.g. chmod a+r) or remove it from " + what + "."
        )


def resolve_files(paths: str, what: str = "data.paths") -> list[str]:
    """Expands ~, $VARS and globs (** recursive) over local paths or URLs; errors on a glob
    that matches no file (naming broken symbolic links) and on a file that cannot be read."""
    globs = split_globs(paths)
    if not globs:
        raise DataError(f"{what} is empty; set it to comma-separated file globs, e.g. {what}='corpus/*.txt'.")
    files, seen = [], set()
    for g in globs:
        found = paths_lib.glob(g)
        matches = [m for m in found if paths_lib.isfile(m)]
        if not matches:
            hint = _not_files_hint(found) if found else ""
            raise DataError(
                f"the glob {g!r} in {what} matches no file{hint}; fix the path or remove it from {what}."
            )
        others = [m for m in found if m not in matches and not paths_lib.is_url(m) and os.path.islink(m) and not os.path.exists(m)]
        if others:
            logger.warning("%s in %s: skipping broken symbolic links %s", g, what, ", ".join(f"{m} -> {os.readlink(m)}" for m in others[:5]))
        for m in matches:
            key = m if paths_lib.is_url(m) else os.path.realpath(m)
            if key not in seen:
                _check_readable(m, what)
                seen.add(key)
                files.append(m)
    return files


def _split_text(text: str, mode: str) -> list[str]:
    if mode == "file":
        docs = [text]
    elif mode == "paragraph":
        docs = re.split(r"\n[ \t\r\f\v]*\n", text)
        docs = [d.strip("\n") for d in docs]
    elif mode == "line":
        docs = [line.rstrip("\r") for line in text.split("\n")]
    else:
        raise DataError(f"data.text_split={mode!r} is unknown; use one of {', '.join(map(repr, TEXT_SPLITS))}.")
    return [d for d in docs if d.strip()]


def _what(source: str) -> str:
    return {"text": "text", "array_record": "text records", "jsonl": "text records", "parquet": "text rows"}.get(source, "documents")


def _check_text_split(mode: str) -> str:
    if mode not in TEXT_SPLITS:
        raise DataError(f"data.text_split={mode!r} is unknown; use one of {', '.join(map(repr, TEXT_SPLITS))}.")
    return mode


def _read_text_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    mode = shard.get("text_split") or _check_text_split(data_cfg.text_split)
    return _split_text(formats.read_text_file(shard["path"]), mode)


def _read_jsonl_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    return list(formats.iter_jsonl_texts(shard["path"], _text_key(data_cfg), limit))


def _read_parquet_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    return list(formats.iter_parquet_texts(shard["path"], _text_key(data_cfg), limit))


def _text_key(data_cfg) -> str:
    key = data_cfg.text_key
    if not isinstance(key, str) or not key:
        raise DataError(f"data.text_key={key!r} must name the field holding the text, e.g. 'text'.")
    return key


def _effective_text_split(data_cfg, num_files: int, log: bool = True) -> str:
    """data.text_split, except that ONE file under 'file' is split into paragraphs: a
    single document leaves nothing to hold out for validation. `log`: say so (once per run:
    the corpus fingerprint asks first, the shard listing again on a store miss)."""
    mode = _check_text_split(data_cfg.text_split)
    if mode != "file" or num_files != 1:
        return mode
    if log:
        logger.info("data.paths matches one file: splitting it into documents at blank lines "
                    "(data.text_split='file' applies to several files; set 'line' to split at every line)")
    return "paragraph"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError(f"data.source='tfds' needs tensorflow_datasets, which is missing; {_TFDS_HINT}.") from e
    return tfds


def open_tfds(data_cfg):
    """The TFDS random-access data source for data.tfds_name / tfds_split / tfds_data_dir."""
    tfds = _import_tfds()
    name = data_cfg.tfds_name
    if not name:
        raise DataError("data.source='tfds' needs data.tfds_name, e.g. 'tiny_shakespeare' or 'lm1b'.")
    kwargs = {"split": data_cfg.tfds_split, "download": False}  # never download or prepare behind the user's back
    if data_cfg.tfds_data_dir:
        kwargs["data_dir"] = paths_lib.expand(data_cfg.tfds_data_dir)
    try:
        return tfds.data_source(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"TFDS dataset data.tfds_name={name!r} not found; check the name (tfds.list_builders() "
            "lists them; some need an import, e.g. tensorflow_datasets.text.c4)."
        ) from e
    except Exception as e:  # TFDS raises many kinds: missing split, not prepared, wrong format
        raise DataError(
            f"cannot open TFDS dataset {name!r} split {data_cfg.tfds_split!r} "
            f"(data_dir={data_cfg.tfds_data_dir or 'default'!r}): {type(e).__name__}: {e}. It must be prepared "
            "there already (dllm_jax never downloads); check data.tfds_split, and prepare it in a random-access format, e.g. "
            f"`tfds build {name} --file_format=array_record`, then set data.tfds_data_dir."
        ) from e


def _as_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{where} is not valid UTF-8 (byte offset {e.start}: {bytes(value)[e.start:e.start + 4].hex(' ')}); "
                "dllm_jax reads UTF-8 text only: re-encode the records as UTF-8."
            ) from e
    if hasattr(value, "item"):  # numpy scalar / 0-d array of bytes or str
        return _as_text(value.item(), where)
    raise DataError(f"{where} is a {type(value).__name__}, not text; set data.text_key to a text feature.")


TFDS_SHARD_RECORDS = 1 << 16  # records per shard of a TFDS source


def _tfds_shards(data_cfg) -> list[dict]:
    n = len(open_tfds(data_cfg))
    max_docs = int(data_cfg.max_docs)
    if max_docs:
        n = min(n, max_docs)
    return [{"start": a, "stop": min(n, a + TFDS_SHARD_RECORDS)} for a in range(0, n, TFDS_SHARD_RECORDS)]


def _read_tfds_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    source = open_tfds(data_cfg)
    start, stop = int(shard["start"]), int(shard["stop"])
    key = data_cfg.text_key
    docs: list[str] = []
    chunk = 4096
    batched = hasattr(source, "__getitems__")
    for a in range(start, stop, chunk):
        keys = list(range(a, min(stop, a + chunk)))
        records = None
        if batched:
            try:
                records = source.__getitems__(keys)
            except TypeError:  # some sources (e.g. TFDS mocks) only support one key at a time
                batched = False
        if records is None:
            records = [source[i] for i in keys]
        for i, rec in zip(keys, records):
            if not isinstance(rec, dict) or key not in rec:
                available = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise DataError(
                    f"data.text_key={key!r} is not a feature of TFDS dataset {data_cfg.tfds_name!r}; "
                    f"available: {available}. Set data.text_key to the text feature."
                )
            text = _as_text(rec[key], f"feature {key!r} of {data_cfg.tfds_name!r} record {i}")
            if text.strip():
                docs.append(text)
    return docs


def _import_array_record():
    try:
        from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError(
            f"data.source='array_record' needs the array_record package, which is missing; {_TFDS_HINT}."
        ) from e
    return array_record_module


def _read_array_record_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    arm = _import_array_record()
    path = paths_lib.expand(shard["path"])
    try:
        reader = arm.ArrayRecordReader(path)
    except Exception as e:  # the C++ reader raises RuntimeError/ValueError variants
        raise DataError(f"{path!r} is not a readable ArrayRecord file ({str(e)[:200]}); fix data.paths, or set data.source "
                        "to the files' format ('text', 'jsonl', 'parquet').") from None
    try:
        n = reader.num_records()
        n = min(n, limit) if limit else n
        records = reader.read(0, n) if n else []
    except Exception as e:  # a damaged or truncated file, or not ArrayRecord at all (Riegeli raises RuntimeError)
        raise DataError(f"{path!r} cannot be read as an ArrayRecord file ({type(e).__name__}: {str(e)[:200]}); it is damaged "
                        "or in another format: fix data.paths, or set data.source to the files' format ('text', 'jsonl', 'parquet').") from None
    finally:
        reader.close()
    return [d for d in (_as_text(r, f"record {i} (counting from 0) of {path!r}") for i, r in enumerate(records)) if d.strip()]


_SHARD_READERS = {"text": _read_text_shard, "jsonl": _read_jsonl_shard, "parquet": _read_parquet_shard,
                  "tfds": _read_tfds_shard, "array_record": _read_array_record_shard}


def source_shards(data_cfg) -> list[dict]:
    """The corpus as an ordered list of shards: independent units of reading work.

    Each shard is a small JSON-able dict: ``{"path": file}`` for file sources (one shard per
    file, in ``data.paths`` order; a text shard may also carry the ``text_split`` it is read
    with), ``{"start": i, "stop": j}`` (a record range) for TFDS.
    Reading every shard in order with ``read_shard`` and concatenating gives the source's
    documents in source order (``load_documents``, before ``data.max_docs``). This is how
    corpus preparation splits work between (Beam) workers.
    """
    source = _check_source(data_cfg)
    if source == "tfds":
        return _tfds_shards(data_cfg)
    if source == "text":
        _check_text_split(data_cfg.text_split)
    if source in ("jsonl", "parquet"):
        _text_key(data_cfg)
    files = resolve_files(data_cfg.paths)
    if source == "text":
        mode = _effective_text_split(data_cfg, len(files), log=False)
        if mode != data_cfg.text_split:
            return [{"path": p, "text_split": mode} for p in files]
    return [{"path": p} for p in files]


def read_shard(data_cfg, shard: dict, limit: int = 0) -> list[str]:
    """The non-blank documents of one shard of ``source_shards(data_cfg)``, in order.

    ``limit > 0`` is a hint that at most that many documents are wanted (readers may stop
    early; callers still cut). Raises DataError on an unreadable shard.
    """
    return _SHARD_READERS[_check_source(data_cfg)](data_cfg, shard, limit)


def load_documents(data_cfg) -> list[str]:
    """All documents of the configured source, in deterministic source order, up to
    data.max_docs. Shards (files) without text are skipped with a warning; if none has any,
    a DataError names them."""
    source = _check_source(data_cfg)
    max_docs = int(data_cfg.max_docs)
    what = _what(source)
    docs, empty = [], []
    for shard in source_shards(data_cfg):
        shard_docs = read_shard(data_cfg, shard, max_docs - len(docs) if max_docs else 0)
        if not shard_docs and "path" in shard:
            empty.append(shard["path"])
            logger.warning("skipping %s: it holds no %s", shard["path"], what)
        docs.extend(shard_docs)
        if max_docs and len(docs) >= max_docs:
            break
    if not docs:
        if source == "tfds":
            raise DataError(
                f"TFDS dataset {data_cfg.tfds_name!r} split {data_cfg.tfds_split!r} has no non-empty "
                f"{data_cfg.text_key!r} text; check data.tfds_split and data.text_key."
            )
        shown = ", ".join(repr(p) for p in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(f"data.paths={data_cfg.paths!r} matched only files without {what} ({shown}); point it at files with {what}.")
    return docs[:max_docs] if max_docs else docs


_DIGEST_CHUNK = 1 << 23  # bytes hashed per read
_URL_CHECKSUMS = ("md5Hash", "crc32c", "ETag", "etag", "md5", "checksum")  # GCS, S3, others: the store's own
_DIGESTS: dict[tuple, str] = {}  # this process's memo: (path, stat) -> digest
# A digest is not remembered for a file changed less than this long ago (as git's "racily clean"
# check): on a filesystem with coarse timestamps another write in the same tick keeps the stat.
_RACY_NS = 2_000_000_000


def _local_stat_key(path: str) -> tuple:
    """What changes whenever a local file's bytes may have: size, mtime, inode, device, and the
    inode change time (ctime), which the kernel sets on every write AND on every os.utime, so a
    same-size edit whose mtime was put back still changes it."""
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_digest(path: str, memo_dir: str | None = None) -> str:
    """A digest of the file's CONTENT, e.g. ``'sha256:9f86...'``: the cache key of a corpus file.

    Local files: sha256 of the bytes as stored (before decompression), streamed in 8 MiB reads
    (measured on the 2-core test machine under load: 0.7 ms for a 1.1 MB file, 0.18 s for
    100 MiB; a remembered digest: 0.03 ms). The digest is remembered, in this process and,
    when ``memo_dir`` is given, in a small JSON file there, under the file's path, size, mtime,
    ctime, inode and device: a file is hashed again only after any of them changes, so later
    runs over an unchanged corpus cost one stat per file. ctime cannot be set back from user
    space (``os.utime`` sets it to now), so an edit that keeps the size and restores the mtime
    is still seen. A file changed in the last 2 s is not remembered (on filesystems with coarse
    timestamps a second write in the same tick would keep the stat). URLs: the object store's
    own checksum (GCS md5Hash / crc32c, S3 ETag) when it reports one, else sha256 of the bytes
    (read every time).

    Raises:
      DataError: the file cannot be read.
    """
    path = paths_lib.absolute(path)
    if paths_lib.is_url(path):
        info = paths_lib.info(path)
        for k in _URL_CHECKSUMS:
            if info.get(k):
                return f"{k}:{info[k]}"
        return _sha256_of(path)
    key = _local_stat_key(path)
    if key in _DIGESTS:
        return _DIGESTS[key]
    memo = os.path.join(memo_dir, hashlib.sha256(path.encode("utf-8")).hexdigest()[:32] + ".json") if memo_dir else None
    digest = None
    if memo:
        try:
            with open(memo, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("stat") == list(key):
                digest = record.get("digest")
        except (OSError, ValueError):
            pass
    if digest is None:
        digest = _sha256_of(path)
        if _local_stat_key(path) != key or time.time_ns() - key[3] < _RACY_NS:
            return digest  # written to while hashed, or so recently that a same-second write could follow unseen
        if memo:
            try:
                paths_lib.write_text(memo, json.dumps({"stat": list(key), "digest": digest}))
            except OSError:
                pass  # the memo only saves time; a read-only cache still gives the right digest
    _DIGESTS[key] = digest
    return digest


def _sha256_of(path: str) -> str:
    h = hashlib.sha256()
    try:
        with paths_lib.open_file(path, "rb") as f:
            while True:
                b = f.read(_DIGEST_CHUNK)
                if not b:
                    return "sha256:" + h.hexdigest()
                h.update(b)
    except OSError as e:
        raise formats._open_error(path, e) from e  # pylint: disable=protected-access


def source_spec(data_cfg, memo_dir: str | None = None) -> dict:
    """What identifies the documents: the cache key's input.

    Files are identified by absolute path (or URL), size and a digest of their content
    (``file_digest``; ``memo_dir`` keeps digests between runs, so an unchanged corpus is
    not read again); text by the text_split it is read with, JSONL/Parquet by data.text_key;
    TFDS by name, split, data dir, text key and number of records. Keyed on content, not on
    mtime: an edit that keeps the size and restores the mtime changes the key, and a touched
    or copied-back file with the same bytes does not.
    """
    source = _check_source(data_cfg)
    spec: dict[str, Any] = {"source": source, "max_docs": int(data_cfg.max_docs)}
    if source in FILE_SOURCES:
        files = []
        for path in resolve_files(data_cfg.paths):
            st = paths_lib.stat(path)
            files.append([paths_lib.absolute(path), st["size"], file_digest(path, memo_dir)])
        spec["files"] = files
        if source == "text":
            spec["text_split"] = _effective_text_split(data_cfg, len(files))
        if source in ("jsonl", "parquet"):
            spec["text_key"] = _text_key(data_cfg)
    else:
        ds = open_tfds(data_cfg)
        spec.update(
            tfds_name=data_cfg.tfds_name,
            tfds_split=data_cfg.tfds_split,
            tfds_data_dir=data_cfg.tfds_data_dir,
            text_key=data_cfg.text_key,
            num_records=len(ds),
        )
    return spec


def write_array_record(documents: Iterable[str], path: str) -> None:
    """Writes one UTF-8 record per document (group_size:1 for fast random access)."""
    arm = _import_array_record()
    path = os.path.expandvars(os.path.expanduser(str(path)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = arm.ArrayRecordWriter(path, "group_size:1")
    try:
        for doc in documents:
            writer.write(doc.encode("utf-8"))
    finally:
        writer.close()


def stdlib_corpus() -> str:
    """A glob of the Python standard library's top-level modules: a corpus every machine with
    Python has (the demo's default)."""
    import sysconfig

    return os.path.join(sysconfig.get_paths()["stdlib"], "*.py")
