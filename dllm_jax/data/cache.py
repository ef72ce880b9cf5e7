"""Token cache: tokenise a corpus once; later runs memory-map the result.

Layout of one cache entry, ``<cache_dir>/tokens-<key>/``:
    tokens.npy   all documents' ids concatenated, each document followed by EOS
                 (uint16 when the vocabulary fits, else uint32)
    offsets.npy  int64 [num_docs + 1]: document i is tokens[offsets[i]:offsets[i+1]]
    meta.json    what was cached (source spec, tokenizer fingerprint, counts)
The key hashes the source spec (resolved files with sizes and mtimes, or the TFDS
name/split/dir/text key/record count; text_split; max_docs) and the tokenizer
fingerprint, so editing a file or changing the tokenizer builds a new entry. Entries are
written to a temporary directory and renamed into place, so a reader never sees half of
one and concurrent builders do not clash.

Trained tokenizers are cached too (``<cache_dir>/tokenizers/<key>.model``), keyed by the
source spec and the training settings, so runs in fresh workdirs on the same corpus skip
tokenizer training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

from dllm_jax.errors import DataError

logger = logging.getLogger("dllm_jax")

CACHE_FORMAT = 1
_ENCODE_CHUNK_CHARS = 8_000_000


def resolve_cache_dir(cache_dir: str = "") -> str:
    """data.cache_dir, else $DLLM_JAX_CACHE, else ~/.cache/dllm_jax (~ and $VARS expanded)."""
    d = cache_dir or os.environ.get("DLLM_JAX_CACHE", "") or "~/.cache/dllm_jax"
    return os.path.abspath(os.path.expandvars(os.path.expanduser(d)))


def hash_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


@dataclasses.dataclass
class TokenCache:
    """Random access to the tokenised documents (memory-mapped when loaded from disk)."""

    tokens: np.ndarray   # [num_tokens] uint16/uint32, each document ends with EOS
    offsets: np.ndarray  # [num_docs + 1] int64
    path: str
    hit: bool            # True when loaded from an existing entry, False when just built

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the cache directory {path!r} ({e}); set data.cache_dir (or "
            "$DLLM_JAX_CACHE) to a writable directory."
        ) from e


def _load_entry(path: str) -> TokenCache | None:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("format") != CACHE_FORMAT:
            return None
        tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
        offsets = np.load(os.path.join(path, "offsets.npy"))
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if offsets.ndim != 1 or len(offsets) < 2 or int(offsets[-1]) != len(tokens) or meta.get("num_tokens") != len(tokens):
        return None
    return TokenCache(tokens=tokens, offsets=offsets, path=path, hit=True)


def tokenize_documents(documents: Sequence[str], encode_batch: Callable, eos_id: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of ``documents``, each followed by ``eos_id``."""
    token_chunks, lengths = [], []
    start = 0
    while start < len(documents):
        # chunks bound the memory held as Python lists of ints
        end, chars = start, 0
        while end < len(documents) and (end == start or chars < _ENCODE_CHUNK_CHARS):
            chars += len(documents[end])
            end += 1
        ids = encode_batch(documents[start:end])
        lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(x, (eos_id,)) for x in ids),
            dtype=dtype, count=int(lens.sum()),
        )
        token_chunks.append(flat)
        lengths.append(lens)
        start = end
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    tokens = np.concatenate(token_chunks) if token_chunks else np.zeros(0, dtype)
    return tokens, offsets


def load_or_build(
    spec: dict, tokenizer, load_documents: Callable[[], Sequence[str]], cache_dir: str = ""
) -> TokenCache:
    """The cached tokens for (spec, tokenizer); builds and stores them on a miss.

    ``load_documents`` is only called on a miss.
    """
    root = resolve_cache_dir(cache_dir)
    key = hash_key("tokens", CACHE_FORMAT, spec, tokenizer.fingerprint)
    path = os.path.join(root, f"tokens-{key}")
    if os.path.isdir(path):
        entry = _load_entry(path)
        if entry is not None:
            logger.info(
                "token cache hit: %s (%d documents, %d tokens)", path, entry.num_docs, entry.num_tokens
            )
            return entry
        logger.warning("token cache entry %s is unreadable or stale; rebuilding it", path)
        shutil.rmtree(path, ignore_errors=True)

    t0 = time.perf_counter()
    documents = load_documents()
    t1 = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    tokens, offsets = tokenize_documents(documents, tokenizer.encode_batch, tokenizer.eos_id, dtype)
    t2 = time.perf_counter()
    meta = {
        "format": CACHE_FORMAT,
        "spec": spec,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "num_docs": len(offsets) - 1,
        "num_tokens": int(offsets[-1]),
    }
    _mkdir(root)
    tmp = tempfile.mkdtemp(prefix=f".tmp-tokens-{key}-", dir=root)
    try:
        np.save(os.path.join(tmp, "tokens.npy"), tokens)
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):  # not a lost race with another builder: a real failure
                raise
            logger.info("another process built token cache %s first; using its copy", path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "token cache built: %s (%d documents, %d tokens; read %.1fs, tokenised %.1fs)",
        path, meta["num_docs"], meta["num_tokens"], t1 - t0, t2 - t1,
    )
    entry = _load_entry(path)
    if entry is None:
        raise DataError(f"the token cache {path!r} could not be read back after writing; check the disk / data.cache_dir.")
    entry.hit = False
    return entry


def tokenizer_cache_path(spec: dict, vocab_size: int, model_type: str, trainer_version: str, cache_dir: str = "") -> str:
    """Where a tokenizer trained on this source with these settings is kept."""
    key = hash_key("tokenizer", spec, int(vocab_size), model_type, trainer_version)
    return os.path.join(resolve_cache_dir(cache_dir), "tokenizers", f"{key}.model")
