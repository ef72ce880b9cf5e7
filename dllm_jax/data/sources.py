"""Document sources: text files, TFDS (random-access data_source) and ArrayRecord files.

Every source yields a list of documents (str) in a deterministic order: text and
ArrayRecord files in the order of the globs in ``data.paths`` (each glob's matches
sorted by name, duplicates dropped), TFDS records in index order. ``data.max_docs > 0``
keeps only the first N documents of that order.

Text files are read as UTF-8 (undecodable bytes are replaced, with a warning) and split
into documents by ``data.text_split``: 'file' (one document per file), 'paragraph'
(split on blank lines) or 'line'. Blank documents are dropped; an empty file is skipped
with a warning, and a source with no text at all is an error.

ArrayRecord: each record is one UTF-8 document (see ``write_array_record``). Records
holding serialised ``tf.train.Example`` protos are not supported: convert them to plain
text records first.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, Iterable

from dllm_jax.errors import DataError

logger = logging.getLogger("dllm_jax")

SOURCES = ("text", "tfds", "array_record")
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


def resolve_files(paths: str, what: str = "data.paths") -> list[str]:
    """Expands ~, $VARS and globs (** recursive); errors on a glob that matches no file."""
    globs = split_globs(paths)
    if not globs:
        raise DataError(f"{what} is empty; set it to comma-separated file globs, e.g. {what}='corpus/*.txt'.")
    files, seen = [], set()
    for g in globs:
        pattern = os.path.expandvars(os.path.expanduser(g))
        matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        if not matches:
            hint = " (it matches only directories: add a file pattern such as '/*.txt')" if glob.glob(pattern) else ""
            raise DataError(
                f"the glob {g!r} in {what} matches no file{hint}; fix the path or remove it from {what}."
            )
        for m in matches:
            key = os.path.realpath(m)
            if key not in seen:
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


def _read_text_file(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s is not valid UTF-8; undecodable bytes were replaced by U+FFFD", path)
        return raw.decode("utf-8", errors="replace")


def _what(source: str) -> str:
    return {"text": "text", "array_record": "text records"}.get(source, "documents")


def _check_text_split(mode: str) -> str:
    if mode not in TEXT_SPLITS:
        raise DataError(f"data.text_split={mode!r} is unknown; use one of {', '.join(map(repr, TEXT_SPLITS))}.")
    return mode


def _read_text_shard(data_cfg, shard: dict, limit: int) -> list[str]:
    return _split_text(_read_text_file(shard["path"]), _check_text_split(data_cfg.text_split))


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
    kwargs = {"split": data_cfg.tfds_split}
    if data_cfg.tfds_data_dir:
        kwargs["data_dir"] = os.path.expandvars(os.path.expanduser(data_cfg.tfds_data_dir))
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
            f"(data_dir={data_cfg.tfds_data_dir or 'default'!r}): {type(e).__name__}: {e}. Check "
            "data.tfds_split, and prepare the data in a random-access format, e.g. "
            f"`tfds build {name} --file_format=array_record`, then set data.tfds_data_dir."
        ) from e


def _as_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
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
    path = shard["path"]
    try:
        reader = arm.ArrayRecordReader(path)
    except Exception as e:  # the C++ reader raises RuntimeError/ValueError variants
        raise DataError(f"{path!r} is not a readable ArrayRecord file ({e}); fix data.paths.") from e
    try:
        n = reader.num_records()
        n = min(n, limit) if limit else n
        records = reader.read(0, n) if n else []
    finally:
        reader.close()
    return [d for d in (_as_text(r, f"a record of {path!r}") for r in records) if d.strip()]


_SHARD_READERS = {"text": _read_text_shard, "tfds": _read_tfds_shard, "array_record": _read_array_record_shard}


def source_shards(data_cfg) -> list[dict]:
    """The corpus as an ordered list of shards: independent units of reading work.

    Each shard is a small JSON-able dict: ``{"path": file}`` for file sources (one shard per
    file, in ``data.paths`` order), ``{"start": i, "stop": j}`` (a record range) for TFDS.
    Reading every shard in order with ``read_shard`` and concatenating gives the source's
    documents in source order (``load_documents``, before ``data.max_docs``). This is how
    corpus preparation splits work between (Beam) workers.
    """
    source = _check_source(data_cfg)
    if source == "tfds":
        return _tfds_shards(data_cfg)
    if source == "text":
        _check_text_split(data_cfg.text_split)
    return [{"path": p} for p in resolve_files(data_cfg.paths)]


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


def source_spec(data_cfg) -> dict:
    """What identifies the documents, cheaply (no file is read): the cache key's input.

    Files are identified by path, size and mtime; TFDS by name, split, data dir, text key
    and number of records.
    """
    source = _check_source(data_cfg)
    spec: dict[str, Any] = {"source": source, "max_docs": int(data_cfg.max_docs)}
    if source in ("text", "array_record"):
        files = []
        for path in resolve_files(data_cfg.paths):
            st = os.stat(path)
            files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
        spec["files"] = files
        if source == "text":
            spec["text_split"] = _check_text_split(data_cfg.text_split)
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
