"""The token store: a tokenised corpus on disk (or any etils.epath / fsspec filesystem, e.g.
``gs://``), written once by ``dllm-jax prepare`` and read by random access while training.

Layout (format ``dllm_jax.token_store``, version 1)::

    STORE/plan.json                   what is being prepared (written FIRST): identity + shard list
    STORE/tokenizer.model | .json     the tokenizer the ids come from
    STORE/shards/shard-NNNNN.tokens   raw little-endian ids (uint16 if the vocabulary fits, else
                                      uint32) of the shard's documents, each followed by EOS
    STORE/shards/shard-NNNNN.offsets  raw little-endian int64 [documents + 1]: document d of the
                                      shard is tokens[offsets[d]:offsets[d + 1]]
    STORE/shards/shard-NNNNN.done.json  the shard's record (counts, sha256 of both files), written
                                      atomically AFTER its data: a shard without it is unfinished
    STORE/manifest.json               written LAST: format + version, identity (source spec,
                                      tokenizer), token dtype, counts, per-shard records, stats

Shard files are written under per-writer temporary names (``shard-NNNNN.tokens.tmp-<tag>``) and
renamed; an interrupted writer leaves such a file behind, which readers ignore (delete at will).

One store shard per source shard (``sources.source_shards``), in source order; a source shard
without documents gives an empty store shard, so indices align. The concatenation of all
shards' tokens is the corpus's document stream in source order, so a single int64 "store
position" addresses any token, and a document is (position, length).

Raw arrays (not .npy) make random reads trivial: ``os.pread`` locally, ranged reads on object stores.
Integrity: ``TokenStore(path)`` checks the manifest, the version and that every shard file
exists with the size the manifest says (cheap: one stat per file). ``verify()`` re-hashes
every shard (sha256); the trainer calls it once, when process 0 builds a run's index (see
``data/index.py``), and ``dllm-jax prepare --verify`` calls it on demand.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from typing import Any

import numpy as np
from etils import epath

from dllm_jax import paths
from dllm_jax.errors import DataError

logger = logging.getLogger("dllm_jax")

FORMAT = "dllm_jax.token_store"
VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARDS = "shards"
OFFSET_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype("<u4")


def shard_name(index: int) -> str:
    return f"shard-{int(index):05d}"


def shard_paths(root, index: int) -> dict[str, epath.Path]:
    base = epath.Path(root) / SHARDS / shard_name(index)
    return {k: epath.Path(f"{base}.{k}") for k in ("tokens", "offsets")} | {"done": epath.Path(f"{base}.done.json")}


def store_path(path) -> epath.Path:
    """A user path (~ and $VARS expanded; any etils.epath scheme such as gs://) as an epath.Path
    (through the library's path layer, `dllm_jax.paths`)."""
    return paths.epath_path(path)


# -- file I/O: the only functions that touch store files ---------------------------------

def _is_local(path) -> bool:
    return "://" not in str(path)


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes ``data`` so that a reader sees either nothing or the whole file (`paths.write_bytes`)."""
    paths.write_bytes(str(path), data)


def write_json_atomic(path, obj: dict) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode("utf-8"))


def read_json(path) -> dict | None:
    """The JSON object at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(epath.Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def file_size(path) -> int | None:
    try:
        return int(epath.Path(path).stat().length)
    except (OSError, FileNotFoundError):
        return None


class ArrayFile:
    """Random access to a raw little-endian array file: positional reads (``os.pread``) for
    local paths, ranged reads (seek + read) through etils.epath for any other filesystem.
    Picklable (the handle is reopened lazily), so Grain worker processes can hold one.

    Not np.memmap: measured (bench/data_scale.py), a memory map leaves every page it touched
    (with the kernel's fault-around, 64 KiB per random read) mapped into the process, so a
    training process's RSS grew towards the size of the store it samples from; ``pread`` copies
    just the requested range (the OS page cache still caches the file, outside the RSS).
    """

    def __init__(self, path, dtype, length: int):
        self.path, self.dtype, self.length = str(path), np.dtype(dtype), int(length)
        self._fd = None

    def __getstate__(self):
        return {"path": self.path, "dtype": self.dtype.str, "length": self.length}

    def __setstate__(self, state):
        self.__init__(state["path"], state["dtype"], state["length"])

    def read(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start + count) (fewer at the end of the file), read-only."""
        start, count = int(start), min(int(count), self.length - int(start))
        if count <= 0:
            return np.zeros(0, self.dtype)
        size = self.dtype.itemsize
        if _is_local(self.path):
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return np.frombuffer(os.pread(self._fd, count * size, start * size), dtype=self.dtype)
        with epath.Path(self.path).open("rb") as f:
            f.seek(int(start) * size)
            return np.frombuffer(f.read(int(count) * size), dtype=self.dtype)

    def __del__(self, _close=os.close):  # bound now: at interpreter exit the module `os` may be gone
        if getattr(self, "_fd", None) is not None:
            _close(self._fd)
            self._fd = None

    def read_all(self) -> np.ndarray:
        return np.array(self.read(0, self.length))


def map_io(fn, items, root) -> list:
    """``[fn(x) for x in items]``; on a non-local filesystem in 32 threads (each call is a round trip)."""
    items = list(items)
    if _is_local(root) or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(fn, items))


def sha256_file(path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


# -- writing one shard -----------------------------------------------------------------

def write_shard(root, index: int, token_chunks, source: dict, extra=None) -> dict:
    """Writes shard ``index`` from an iterable of (tokens, lengths) chunks, then its done record.

    ``tokens`` are the chunk's ids (already in the store dtype, each document followed by EOS)
    and ``lengths`` its documents' lengths (int64, EOS included). Data files are written under
    temporary names and renamed; the done record is written last, with ``extra`` (a dict, or a
    function returning one, called once the data is written: e.g. timings). Returns the record.
    """
    files = shard_paths(root, index)
    files["tokens"].parent.mkdir(parents=True, exist_ok=True)
    th, oh = hashlib.sha256(), hashlib.sha256()
    tag = uuid.uuid4().hex[:12]  # two writers of the same shard (processes sharing a cache) never share a file
    tmp = {k: epath.Path(f"{files[k]}.tmp-{tag}") for k in ("tokens", "offsets")}
    num_docs, num_tokens = 0, 0
    with tmp["tokens"].open("wb") as tf, tmp["offsets"].open("wb") as of:
        first = np.zeros(1, OFFSET_DTYPE).tobytes()
        of.write(first)
        oh.update(first)
        for tokens, lengths in token_chunks:
            b = np.ascontiguousarray(tokens).tobytes()
            tf.write(b)
            th.update(b)
            ends = (num_tokens + np.cumsum(np.asarray(lengths, np.int64))).astype(OFFSET_DTYPE).tobytes()
            of.write(ends)
            oh.update(ends)
            num_docs += len(lengths)
            num_tokens += int(np.sum(lengths))
    for k in ("tokens", "offsets"):
        tmp[k].replace(files[k])  # overwrites an interrupted attempt's file (same content from a concurrent writer)
    record = {
        "shard": int(index), "name": shard_name(index), "source": source,
        "documents": num_docs, "tokens": num_tokens,
        "tokens_sha256": th.hexdigest(), "offsets_sha256": oh.hexdigest(),
        **((extra() if callable(extra) else extra) or {}),
    }
    write_json_atomic(files["done"], record)
    return record


def finished_shard(root, index: int, itemsize: int) -> dict | None:
    """The done record of shard ``index`` when it and both files (of the recorded sizes) exist."""
    files = shard_paths(root, index)
    record = read_json(files["done"])
    if not record or record.get("shard") != index:
        return None
    if file_size(files["tokens"]) != record["tokens"] * itemsize:
        return None
    if file_size(files["offsets"]) != (record["documents"] + 1) * OFFSET_DTYPE.itemsize:
        return None
    return record


# -- reading ---------------------------------------------------------------------------

class TokenStore:
    """A prepared token store, opened for random access.

    Attributes: ``num_documents``, ``num_tokens``, ``num_shards``, ``dtype``, ``manifest``;
    ``shard_doc_start`` / ``shard_token_start`` (int64 [num_shards + 1]): where each shard's
    documents / tokens start in the store's document stream.

    Raises:
      DataError: no manifest (not a store, or its prepare did not finish), another format or
        version, or a shard file missing or of the wrong size (the message names the shard
        and the fix).
    """

    def __init__(self, path):
        self.root = store_path(path)
        manifest = read_json(self.root / MANIFEST)
        if manifest is None:
            hint = (" its preparation did not finish (plan.json without manifest.json); rerun the same "
                    "`dllm-jax prepare` command to resume it") if (self.root / PLAN).exists() else (
                    " prepare one with `dllm-jax prepare --config CONFIG --output STORE`")
            raise DataError(f"{str(path)!r} is not a token store (no readable {MANIFEST}):{hint}.")
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise DataError(
                f"{str(path)!r} holds format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                f"not {FORMAT!r} version {VERSION}; prepare it again with this version of dllm_jax."
            )
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        shards = manifest["shards"]
        self.num_shards = len(shards)
        docs = np.array([s["documents"] for s in shards], np.int64)
        toks = np.array([s["tokens"] for s in shards], np.int64)
        self.shard_doc_start = np.concatenate([[0], np.cumsum(docs)]).astype(np.int64)
        self.shard_token_start = np.concatenate([[0], np.cumsum(toks)]).astype(np.int64)
        self.num_documents = int(self.shard_doc_start[-1])
        self.num_tokens = int(self.shard_token_start[-1])
        self._tokens = []
        sizes = map_io(lambda i: {k: file_size(p) for k, p in shard_paths(self.root, i).items()}, range(len(shards)), self.root)
        for i, s in enumerate(shards):
            paths = shard_paths(self.root, i)
            for kind, want in (("tokens", s["tokens"] * self.dtype.itemsize),
                               ("offsets", (s["documents"] + 1) * OFFSET_DTYPE.itemsize)):
                have = sizes[i][kind]
                if have != want:
                    what = "is missing" if have is None else f"has {have} bytes, not {want}"
                    raise DataError(
                        f"token store {str(path)!r}: shard {shard_name(i)} file {paths[kind].name} {what}; "
                        f"the store is damaged. Delete {paths['done'].name} and rerun `dllm-jax prepare` "
                        "with the same --output to rebuild that shard."
                    )
            self._tokens.append(ArrayFile(paths["tokens"], self.dtype, s["tokens"]))
        self._tokenizer = None

    @property
    def identity(self) -> dict:
        """How the store was made (source spec with file paths and content digests, tokenizer
        recipe, text handling: ``encoding``; stores made before that rule lack it)."""
        return self.manifest["identity"]

    @property
    def content_fingerprint(self) -> str:
        """A hash of what the store holds, not where it came from: format version, tokenizer
        fingerprint, token dtype, and per shard its document / token counts and the sha256 of
        both files (from the manifest; nothing is read). Copies or moves of the same data, and
        stores prepared again from moved files, have the same fingerprint."""
        shards = [[s["documents"], s["tokens"], s["tokens_sha256"], s["offsets_sha256"]] for s in self.manifest["shards"]]
        blob = json.dumps([FORMAT, VERSION, self.manifest["tokenizer"]["fingerprint"], self.manifest["dtype"], shards])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from dllm_jax.data.tokenizer import tokenizer_from_bytes

            path = self.root / self.manifest["tokenizer"]["filename"]
            names = self.manifest["tokenizer"].get("names") or {}  # data.eos_token / data.pad_token it was prepared with
            self._tokenizer = tokenizer_from_bytes(path.read_bytes(), source=repr(str(path)), **names)
            if self._tokenizer.fingerprint != self.manifest["tokenizer"]["fingerprint"]:
                raise DataError(f"token store {str(self.root)!r}: {path.name} does not match the manifest's fingerprint; prepare the store again.")
        return self._tokenizer

    def shard_offsets(self, i: int) -> np.ndarray:
        """int64 [documents + 1] of shard ``i`` (read whole: 8 bytes per document)."""
        s = self.manifest["shards"][i]
        return ArrayFile(shard_paths(self.root, i)["offsets"], OFFSET_DTYPE, s["documents"] + 1).read_all()

    def document_starts_and_lengths(self, max_docs: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(store position, length) of the first ``max_docs`` documents (0 = all), int64 each."""
        n = min(int(max_docs), self.num_documents) if max_docs else self.num_documents
        starts, lengths = np.empty(n, np.int64), np.empty(n, np.int64)
        needed = [i for i in range(self.num_shards) if int(self.shard_doc_start[i]) < n]
        for i, off in zip(needed, map_io(self.shard_offsets, needed, self.root)):
            a = int(self.shard_doc_start[i])
            b = min(int(self.shard_doc_start[i + 1]), n)
            starts[a:b] = self.shard_token_start[i] + off[:b - a]
            lengths[a:b] = np.diff(off)[:b - a]
        return starts, lengths

    def read_document(self, doc: int, offset: int = 0, count: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + count) of document ``doc`` (count None = to its end, EOS included)."""
        if not 0 <= doc < self.num_documents:
            raise IndexError(f"document {doc} out of range [0, {self.num_documents})")
        shard = int(np.searchsorted(self.shard_doc_start, doc, side="right")) - 1
        local = int(doc) - int(self.shard_doc_start[shard])
        offsets = ArrayFile(shard_paths(self.root, shard)["offsets"], OFFSET_DTYPE, int(self.shard_doc_start[shard + 1]
                            - self.shard_doc_start[shard]) + 1).read(local, 2)
        length = int(offsets[1] - offsets[0])
        count = length - offset if count is None else min(count, length - offset)
        return self.read(int(self.shard_token_start[shard] + offsets[0]) + offset, max(count, 0))

    def read(self, position: int, count: int) -> np.ndarray:
        """Tokens [position, position + count) of the store's document stream (store dtype)."""
        shard = int(np.searchsorted(self.shard_token_start, position, side="right")) - 1
        local = int(position) - int(self.shard_token_start[shard])
        first = self._tokens[shard].read(local, count)
        if len(first) == count:
            return first
        parts, got = [first], len(first)
        while got < count:
            shard += 1
            if shard >= self.num_shards:
                raise IndexError(f"token range [{position}, {position + count}) is past the store's end {self.num_tokens}")
            parts.append(self._tokens[shard].read(0, count - got))
            got += len(parts[-1])
        return np.concatenate(parts)

    def verify(self) -> None:
        """Re-hashes every shard file against the manifest's sha256.

        Raises:
          DataError: naming the first corrupt shard and how to rebuild it.
        """
        shards = self.manifest["shards"]
        digests = map_io(lambda i: {k: sha256_file(shard_paths(self.root, i)[k]) for k in ("tokens", "offsets")},
                         range(len(shards)), self.root)
        for i, s in enumerate(shards):
            paths = shard_paths(self.root, i)
            for kind in ("tokens", "offsets"):
                if digests[i][kind] != s[f"{kind}_sha256"]:
                    raise DataError(
                        f"token store {str(self.root)!r}: shard {shard_name(i)} file {paths[kind].name} is corrupt "
                        f"(its sha256 differs from the manifest's). Delete {paths['done'].name} and rerun "
                        "`dllm-jax prepare` with the same --output to rebuild that shard."
                    )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.root)}

    def __setstate__(self, state):
        self.__init__(state["path"])
