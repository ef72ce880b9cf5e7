"""From a config to packed training / validation sequences and a Grain loader.

The data a run sees is fixed by (source, tokenizer, config.seed, data.val_tokens,
data.unique_tokens, data.seq_len, train.batch_size), never by the objective, so AR and
MDM runs with the same config train on exactly the same tokens:

1. documents in source order -> a permutation seeded by ``config.seed``;
2. validation = whole documents from the start of that order until >= data.val_tokens
   tokens, concatenated (each ends with EOS) and cut into seq_len rows (remainder dropped);
3. training stream = the remaining documents, concatenated in order; the training set is
   its first U tokens, U = data.unique_tokens (0 = all), rounded DOWN to a multiple of
   train.batch_size * seq_len so each epoch is a whole number of global batches;
4. ``train_loader`` shuffles the sequences anew each epoch, repeats data.epochs times and
   gives each process its rows of every global batch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import grain
import numpy as np

from dllm_jax import paths
from dllm_jax.data import cache as cache_lib
from dllm_jax.data import sources
from dllm_jax.data.tokenizer import TRAINER_VERSION, HFTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from dllm_jax.errors import ConfigError, DataError

logger = logging.getLogger("dllm_jax")

TOKENIZER_FILENAMES = (Tokenizer.filename, HFTokenizer.filename)  # a workdir holds one of them
_GATHER_DOCS_PER_CHUNK = 1 << 16


@dataclasses.dataclass
class Dataset:
    tokenizer: Tokenizer | HFTokenizer
    train: np.ndarray  # [num_train_seqs, seq_len] int32, the unique training sequences
    val: np.ndarray    # [num_val_seqs, seq_len] int32
    stats: dict


# -- helpers ---------------------------------------------------------------------------

def _int_key(value, name: str, minimum: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}={value!r} is not an integer; set it to an integer >= {minimum}.") from e
    if v != value or v < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}; fix it in the config.")
    return v


def document_order(num_docs: int, seed: int) -> np.ndarray:
    """The seeded permutation of document indices shared by every objective."""
    return np.random.default_rng(int(seed)).permutation(num_docs)


def gather_tokens(cache: cache_lib.TokenCache, doc_ids: np.ndarray, limit: int | None = None) -> np.ndarray:
    """The documents ``doc_ids`` concatenated in that order (int32), cut to ``limit`` tokens."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    starts = cache.offsets[doc_ids]
    lens = cache.offsets[doc_ids + 1] - starts
    total = int(lens.sum()) if limit is None else min(int(limit), int(lens.sum()))
    out = np.empty(total, dtype=np.int32)
    pos = 0
    for c in range(0, len(doc_ids), _GATHER_DOCS_PER_CHUNK):
        if pos >= total:
            break
        s, l = starts[c:c + _GATHER_DOCS_PER_CHUNK], lens[c:c + _GATHER_DOCS_PER_CHUNK]
        n = int(l.sum())
        out_start = np.cumsum(l) - l  # where each document starts in this chunk's output
        idx = np.repeat(s - out_start, l) + np.arange(n, dtype=np.int64)
        take = min(n, total - pos)
        out[pos:pos + take] = cache.tokens[idx[:take]]
        pos += take
    return out


def pack(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cuts a token stream into [n, seq_len] rows, dropping the remainder."""
    n = len(stream) // seq_len
    return np.ascontiguousarray(stream[: n * seq_len].reshape(n, seq_len), dtype=np.int32)


def num_train_steps(num_train_seqs: int, global_batch: int, epochs: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``num_train_seqs`` sequences (whole batches only)."""
    if global_batch <= 0:
        raise ConfigError(f"train.batch_size={global_batch} must be positive.")
    return (int(num_train_seqs) // int(global_batch)) * int(epochs)


# -- tokenizer -------------------------------------------------------------------------

def workdir_tokenizer_path(workdir: str | None, tok=None) -> str | None:
    """Where a workdir keeps its tokenizer: the existing file, else the name for ``tok``'s kind
    (``tokenizer.model`` for SentencePiece, ``tokenizer.json`` for Hugging Face)."""
    if not workdir:
        return None
    root = paths.expand(workdir)
    for name in TOKENIZER_FILENAMES:
        if paths.isfile(paths.join(root, name)):
            return paths.join(root, name)
    return paths.join(root, (tok.filename if tok is not None else Tokenizer.filename))


def _get_tokenizer(data_cfg, workdir, spec, get_documents):
    wpath = workdir_tokenizer_path(workdir)
    if data_cfg.tokenizer:
        tok = load_tokenizer(data_cfg.tokenizer)
        logger.info("loaded tokenizer %s (%d pieces, fingerprint %s)", data_cfg.tokenizer, tok.vocab_size, tok.fingerprint)
        if wpath:
            wpath = workdir_tokenizer_path(workdir, tok)
            if paths.isfile(wpath):
                existing = load_tokenizer(wpath)
                if existing.fingerprint != tok.fingerprint:
                    raise DataError(
                        f"workdir tokenizer {wpath!r} (fingerprint {existing.fingerprint}) differs from "
                        f"data.tokenizer={data_cfg.tokenizer!r} (fingerprint {tok.fingerprint}); this "
                        "workdir was trained with the other one. Use a new workdir, or set "
                        f"data.tokenizer={wpath!r}."
                    )
            else:
                tok.save(wpath)
        return tok

    if wpath and paths.isfile(wpath):
        tok = load_tokenizer(wpath)
        logger.info("reusing the workdir tokenizer %s (%d pieces, fingerprint %s)", wpath, tok.vocab_size, tok.fingerprint)
        return tok

    vocab_size = _int_key(data_cfg.vocab_size, "data.vocab_size", 1)
    cpath = cache_lib.tokenizer_cache_path(
        spec, vocab_size, data_cfg.tokenizer_type, TRAINER_VERSION, data_cfg.cache_dir
    )
    if os.path.isfile(cpath):
        tok = Tokenizer.load(cpath)
        logger.info("tokenizer cache hit: %s (%d pieces)", cpath, tok.vocab_size)
    else:
        t0 = time.perf_counter()
        tok = train_tokenizer(get_documents(), vocab_size, None, data_cfg.tokenizer_type)
        try:
            tok.save(cpath)
        except OSError as e:  # the cache is an optimisation; the workdir copy is what matters
            logger.warning("could not cache the tokenizer at %s: %s", cpath, e)
        logger.info("tokenizer trained in %.1fs", time.perf_counter() - t0)
    if wpath:
        tok.save(wpath)
        logger.info("saved the tokenizer to %s", wpath)
    return tok


# -- dataset ---------------------------------------------------------------------------

def build_dataset(config, workdir: str | None) -> Dataset:
    """Loads (or builds) the cached tokens and cuts the validation and training sets."""
    t_start = time.perf_counter()
    d = config.data
    seq_len = _int_key(d.seq_len, "data.seq_len", 1)
    epochs = _int_key(d.epochs, "data.epochs", 1)
    unique_requested = _int_key(d.unique_tokens, "data.unique_tokens", 0)
    val_requested = _int_key(d.val_tokens, "data.val_tokens", 0)
    _int_key(d.max_docs, "data.max_docs", 0)
    global_batch = _int_key(config.train.batch_size, "train.batch_size", 1)
    seed = int(config.seed)

    spec = sources.source_spec(d)
    documents = []

    def get_documents():
        if not documents:
            t0 = time.perf_counter()
            documents.extend(sources.load_documents(d))
            logger.info("read %d documents in %.1fs", len(documents), time.perf_counter() - t0)
        return documents

    tok = _get_tokenizer(d, workdir, spec, get_documents)
    cache = cache_lib.load_or_build(spec, tok, get_documents, d.cache_dir)
    documents.clear()

    num_docs = cache.num_docs
    order = document_order(num_docs, seed)
    cum = np.cumsum(cache.doc_lengths()[order])

    # validation: whole documents from the front of the order
    if val_requested > 0:
        num_val_docs = int(np.searchsorted(cum, val_requested, side="left")) + 1
        if num_val_docs >= num_docs:
            raise DataError(
                f"data.val_tokens={val_requested} takes all {num_docs} documents ({int(cum[-1])} tokens), "
                "leaving nothing to train on; lower data.val_tokens, add data, or cut the text into more "
                f"documents with data.text_split='paragraph' (blank lines) or data.text_split='line' "
                f"(now {getattr(d, 'text_split', 'file')!r}; applies to data.source='text')."
            )
    else:
        num_val_docs = 0
    val_doc_tokens = int(cum[num_val_docs - 1]) if num_val_docs else 0
    val = pack(gather_tokens(cache, order[:num_val_docs]), seq_len)
    if val_requested > 0 and len(val) == 0:
        logger.warning(
            "the %d validation tokens make no full row of data.seq_len=%d; validation is empty "
            "(raise data.val_tokens)", val_doc_tokens, seq_len,
        )

    # training: the first U tokens of the remaining documents
    available = int(cum[-1]) - val_doc_tokens
    if unique_requested > available:
        raise DataError(
            f"data.unique_tokens={unique_requested} but only {available} tokens are available "
            f"(after {val_doc_tokens} validation tokens); use a smaller data.unique_tokens "
            "(0 = all) or more data."
        )
    unique_target = unique_requested or available
    tokens_per_batch = global_batch * seq_len
    unique = (unique_target // tokens_per_batch) * tokens_per_batch
    if unique == 0:
        raise DataError(
            f"{unique_target} training tokens are fewer than one global batch of "
            f"train.batch_size * data.seq_len = {global_batch} * {seq_len} = {tokens_per_batch} tokens; "
            "lower train.batch_size or data.seq_len, or use more data."
        )
    if unique != unique_target:
        logger.info(
            "unique tokens rounded down from %d to %d (a multiple of train.batch_size * data.seq_len = %d)",
            unique_target, unique, tokens_per_batch,
        )
    train_ids = order[num_val_docs:]
    num_train_docs = int(np.searchsorted(cum[num_val_docs:] - val_doc_tokens, unique, side="left")) + 1
    train = pack(gather_tokens(cache, train_ids[:num_train_docs], unique), seq_len)
    assert train.size == unique, (train.shape, unique)

    steps_per_epoch = len(train) // global_batch
    stats = {
        "documents": num_docs,
        "corpus_tokens": int(cum[-1]),
        "val_documents": num_val_docs,
        "val_tokens_requested": val_requested,
        "val_tokens": val_doc_tokens,
        "val_sequences": len(val),
        "available_tokens": available,
        "unique_tokens_requested": unique_requested,
        "unique_tokens": unique,
        "train_documents": min(num_train_docs, len(train_ids)),
        "train_sequences": len(train),
        "seq_len": seq_len,
        "global_batch": global_batch,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "num_steps": steps_per_epoch * epochs,
        "total_train_tokens": unique * epochs,
        "vocab_size": tok.vocab_size,
        "tokenizer_fingerprint": tok.fingerprint,
        "cache_hit": cache.hit,
        "cache_path": cache.path,
        "build_seconds": round(time.perf_counter() - t_start, 3),
    }
    logger.info(
        "data: %d docs, %d val seqs (%d tokens), U=%d unique tokens = %d seqs of %d, %d epochs x %d steps "
        "= %d steps (built in %.1fs)",
        num_docs, len(val), val_doc_tokens, unique, len(train), seq_len, epochs, steps_per_epoch,
        stats["num_steps"], stats["build_seconds"],
    )
    return Dataset(tokenizer=tok, train=train, val=val, stats=stats)


# -- loaders ---------------------------------------------------------------------------

class _ProcessRowsOfStep:
    """Global step s -> this process's rows of global batch s (picklable for Grain workers)."""

    def __init__(self, order: grain.MapDataset, train: np.ndarray, global_batch: int, first_row: int, rows: int):
        self._order = order
        self._train = train
        self._global_batch = global_batch
        self._first_row = first_row
        self._rows = rows

    def __call__(self, step: int) -> np.ndarray:
        start = int(step) * self._global_batch + self._first_row
        idx = np.fromiter((self._order[i] for i in range(start, start + self._rows)), dtype=np.int64, count=self._rows)
        return np.asarray(self._train[idx], dtype=np.int32)


def train_loader(
    train: np.ndarray, *, global_batch: int, epochs: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """A MapDataset over global steps; element s = this process's rows of global batch s.

    Sequence order: ``MapDataset.range(n).shuffle(seed).repeat(epochs)`` (a new shuffle each
    epoch, epochs kept apart); global batch s is items [s*B, (s+1)*B) of it, and process p
    gets rows [p*b, (p+1)*b) of that batch, b = B // process_count. The global order does
    not depend on the process count, so a run can resume with a different number of hosts.
    """
    n = len(train)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    if global_batch < 1 or global_batch % process_count:
        raise ConfigError(
            f"train.batch_size={global_batch} must be a positive multiple of the process count "
            f"({process_count}); change train.batch_size."
        )
    if epochs < 1:
        raise ConfigError(f"data.epochs={epochs} must be >= 1.")
    if n == 0 or n % global_batch:
        raise DataError(
            f"{n} training sequences are not a positive multiple of the global batch {global_batch}; "
            "build them with build_dataset (which rounds data.unique_tokens down to whole batches)."
        )
    order = grain.MapDataset.range(n).shuffle(seed=int(seed)).repeat(int(epochs))
    rows = global_batch // process_count
    step_rows = _ProcessRowsOfStep(order, train, global_batch, process_index * rows, rows)
    return grain.MapDataset.range(num_train_steps(n, global_batch, epochs)).map(step_rows)


def val_batches(val: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed validation batches, in order; the remainder is dropped."""
    if batch_size < 1:
        raise ConfigError(f"validation batch_size={batch_size} must be positive.")
    n = len(val) // batch_size
    if n == 0 and len(val):
        logger.warning(
            "%d validation sequences make no batch of %d; validation will be skipped "
            "(raise data.val_tokens or lower the batch size)", len(val), batch_size,
        )
    return [np.asarray(val[i * batch_size:(i + 1) * batch_size], dtype=np.int32) for i in range(n)]
