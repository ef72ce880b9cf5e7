"""A run's view of a token store as per-document index arrays: order, split, budget, packing.

Semantics (identical to packing the tokens in memory):

1. the first N documents of the store (N = data.max_docs, 0 = all), in a permutation seeded
   by ``config.seed`` (``document_order``);
2. validation = whole documents from the front of that order until >= data.val_tokens tokens,
   concatenated (each ends with EOS) and cut into seq_len rows (remainder dropped);
3. training stream = the remaining documents concatenated in order; its first U tokens
   (U = data.unique_tokens, 0 = all, rounded DOWN to whole global batches) cut into seq_len rows.

Nothing here holds tokens: the index is, per training document in stream order, its store
position and the stream's cumulative length (int64 each, 16 bytes per document), plus the
validation documents' positions and lengths. Training row i is read on demand from the store
(``PackedSequences``). Process 0 builds the index once (hashing the store's shards on the way:
``TokenStore.verify``) and saves it as .npy files in ``<workdir>/data_index/<key>/`` (key: the
store's content fingerprint + the parameters); later builds and the other processes memory-map
them. Checksum policy: shards are hashed only then; a resume checks only that every shard file
exists with its recorded size (a stat each), so bytes damaged in place after the first build
are not noticed on resume (hashing the whole corpus on every restart would cost minutes at
the study's scale). ``TokenStore.verify()`` (``dllm-jax prepare`` on the store after deleting
a suspect shard's done record repairs it) checks on demand. Building holds ~40 bytes per corpus document
for a moment (positions, lengths, permutation, cumulative sums): ~4 GB at 100M documents,
once, on process 0; nothing per token.
"""
from __future__ import annotations

import io
import logging
import os
import time

import numpy as np
from etils import epath

from dllm_jax.data import store as store_lib
from dllm_jax.errors import DataError

logger = logging.getLogger("dllm_jax")

INDEX_VERSION = 1
_ARRAYS = ("train_start", "train_cum", "val_start", "val_len")
_WAIT_SECONDS = 600.0


def document_order(num_docs: int, seed: int) -> np.ndarray:
    """The seeded permutation of document indices shared by every objective."""
    return np.random.default_rng(int(seed)).permutation(num_docs)


def build_index(store: store_lib.TokenStore, *, seed: int, max_docs: int, val_tokens: int, unique_tokens: int,
                seq_len: int, global_batch: int) -> tuple[dict[str, np.ndarray], dict]:
    """The index arrays and their counts (see the module docstring).

    Returns ({'train_start', 'train_cum', 'val_start', 'val_len'} int64 arrays, stats dict).

    Raises:
      DataError: validation takes every document, U exceeds what is left, or U is under one batch.
    """
    starts, lengths = store.document_starts_and_lengths(max_docs)
    num_docs = len(lengths)
    order = document_order(num_docs, seed)
    cum = np.cumsum(lengths[order])
    if val_tokens > 0:
        num_val_docs = int(np.searchsorted(cum, val_tokens, side="left")) + 1
        if num_val_docs >= num_docs:
            raise DataError(
                f"data.val_tokens={val_tokens} takes all {num_docs} documents ({int(cum[-1])} tokens), "
                "leaving nothing to train on; lower data.val_tokens, add data, or cut the text into more "
                "documents with data.text_split='paragraph' (blank lines) or data.text_split='line' "
                "(for data.source='text')."
            )
    else:
        num_val_docs = 0
    val_doc_tokens = int(cum[num_val_docs - 1]) if num_val_docs else 0
    available = int(cum[-1]) - val_doc_tokens
    if unique_tokens > available:
        raise DataError(
            f"data.unique_tokens={unique_tokens} but only {available} tokens are available "
            f"(after {val_doc_tokens} validation tokens); use a smaller data.unique_tokens "
            "(0 = all) or more data."
        )
    unique_target = unique_tokens or available
    tokens_per_batch = global_batch * seq_len
    unique = (unique_target // tokens_per_batch) * tokens_per_batch
    if unique == 0:
        raise DataError(
            f"{unique_target} training tokens are fewer than one global batch of "
            f"train.batch_size * data.seq_len = {global_batch} * {seq_len} = {tokens_per_batch} tokens; "
            "lower train.batch_size or data.seq_len, or use more data."
        )
    if unique != unique_target:
        logger.info("unique tokens rounded down from %d to %d (a multiple of train.batch_size * data.seq_len = %d)",
                    unique_target, unique, tokens_per_batch)
    train_cum_all = cum[num_val_docs:] - val_doc_tokens
    num_train_docs = int(np.searchsorted(train_cum_all, unique, side="left")) + 1
    train_ids = order[num_val_docs:num_val_docs + num_train_docs]
    val_ids = order[:num_val_docs]
    arrays = {
        "train_start": starts[train_ids],
        "train_cum": np.concatenate([[0], train_cum_all[:num_train_docs]]).astype(np.int64),
        "val_start": starts[val_ids],
        "val_len": lengths[val_ids],
    }
    stats = {
        "documents": num_docs,
        "corpus_tokens": int(cum[-1]),
        "val_documents": num_val_docs,
        "val_tokens_requested": val_tokens,
        "val_tokens": val_doc_tokens,
        "val_sequences": val_doc_tokens // seq_len,
        "available_tokens": available,
        "unique_tokens_requested": unique_tokens,
        "unique_tokens": unique,
        "train_documents": num_train_docs,
        "train_sequences": unique // seq_len,
    }
    return arrays, stats


def index_key(store: store_lib.TokenStore, **params) -> str:
    from dllm_jax.data.prepare import hash_key

    """The index directory's name: the store's CONTENT (``TokenStore.content_fingerprint``) and
    the index parameters; never paths or mtimes, so a resume after the data moved (or a cache
    store prepared again from moved files) reuses the run's index."""
    return hash_key("index", INDEX_VERSION, store.content_fingerprint, sorted(params.items()))


def _load(directory: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The saved index (memory-mapped locally, read whole elsewhere), or None if incomplete."""
    meta = store_lib.read_json(os.path.join(directory, "index.json"))  # written last: the completion marker
    if meta is None or meta.get("version") != INDEX_VERSION:
        return None
    try:
        if "://" in directory:
            arrays = {k: np.load(io.BytesIO(epath.Path(directory, f"{k}.npy").read_bytes())) for k in _ARRAYS}
        else:
            arrays = {k: np.load(os.path.join(directory, f"{k}.npy"), mmap_mode="r") for k in _ARRAYS}
    except (OSError, ValueError):
        return None
    return arrays, meta["stats"]


def _save(directory: str, arrays: dict, stats: dict, params: dict) -> None:
    """Each array atomically, then index.json (so a reader never sees a partial index; concurrent
    builders write identical files)."""
    for k in _ARRAYS:
        buf = io.BytesIO()
        np.save(buf, np.asarray(arrays[k]))
        store_lib.write_bytes_atomic(os.path.join(directory, f"{k}.npy"), buf.getvalue())
    store_lib.write_json_atomic(os.path.join(directory, "index.json"), {"version": INDEX_VERSION, "params": params, "stats": stats})


def load_or_build_index(store: store_lib.TokenStore, workdir: str | None, *, process_index: int = 0, **params):
    """(arrays, stats, hit): the run's index, memory-mapped from ``<workdir>/data_index/<key>``
    when it exists; else built (and saved by process 0, after verifying the store's checksums).
    Other processes wait for process 0's copy (up to 10 min, then build their own: it is
    deterministic). Without a workdir the index is built in memory."""
    if not workdir:
        return (*build_index(store, **params), False)
    directory = os.path.join(workdir, "data_index", index_key(store, **params))
    found = _load(directory)
    if found is not None:
        return (*found, True)
    if process_index != 0:
        deadline = time.monotonic() + _WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.2)
            found = _load(directory)
            if found is not None:
                return (*found, True)
        logger.warning("process 0 did not write the data index %s in %.0fs; building it here", directory, _WAIT_SECONDS)
        return (*build_index(store, **params), False)
    t0 = time.perf_counter()
    store.verify()
    t1 = time.perf_counter()
    arrays, stats = build_index(store, **params)
    _save(directory, arrays, stats, params)
    logger.info("data index built in %.1fs (store checksums verified in %.1fs): %s", time.perf_counter() - t1, t1 - t0, directory)
    return (*_load(directory), False)


class PackedSequences:
    """The training set as a read-only [num_sequences, seq_len] int32 "array" read from the store.

    Row i is tokens [i * seq_len, (i + 1) * seq_len) of the training stream: found with a binary
    search in ``cum`` (int64 [T + 1], cum[j] = stream position of training document j) and read
    document piece by document piece from the store at ``start`` (int64 [T]). Supports
    ``len``, ``shape``, ``dtype``, ``size``, ``x[i]``, ``x[slice]``, ``x[int array]`` and
    ``np.asarray(x)`` (materialises every row: small data and tests only).
    """

    dtype = np.dtype(np.int32)

    def __init__(self, store: store_lib.TokenStore, start: np.ndarray, cum: np.ndarray, seq_len: int, num_sequences: int):
        self.store, self.start, self.cum = store, start, cum
        self.seq_len, self.num_sequences = int(seq_len), int(num_sequences)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_sequences, self.seq_len)

    @property
    def size(self) -> int:
        return self.num_sequences * self.seq_len

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.num_sequences

    def row(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.num_sequences:
            raise IndexError(f"sequence {i} out of range [0, {self.num_sequences})")
        L = self.seq_len
        out = np.empty(L, np.int32) if out is None else out
        pos = i * L
        j = int(np.searchsorted(self.cum, pos, side="right")) - 1
        filled = 0
        while filled < L:
            doc_start, doc_end = int(self.cum[j]), int(self.cum[j + 1])
            off = pos + filled - doc_start
            n = min(L - filled, doc_end - doc_start - off)
            out[filled:filled + n] = self.store.read(int(self.start[j]) + off, n)
            filled += n
            j += 1
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.row(key if key >= 0 else key + self.num_sequences)
        idx = np.arange(self.num_sequences)[key] if isinstance(key, slice) else np.asarray(key, np.int64).reshape(-1)
        out = np.empty((len(idx), self.seq_len), np.int32)
        for r, i in enumerate(idx):
            self.row(int(i), out[r])
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def read_validation(store: store_lib.TokenStore, start: np.ndarray, lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """The validation documents concatenated and cut into [n, seq_len] int32 rows (remainder dropped)."""
    total = int(np.sum(lengths))
    stream = np.empty(total, np.int32)
    pos = 0
    for s, n in zip(start, lengths):
        stream[pos:pos + int(n)] = store.read(int(s), int(n))
        pos += int(n)
    n = total // seq_len
    return np.ascontiguousarray(stream[:n * seq_len].reshape(n, seq_len))
