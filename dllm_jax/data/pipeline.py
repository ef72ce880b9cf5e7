"""From a config to packed training / validation sequences and a Grain loader.

The data a run sees is fixed by (token store, config.seed, data.max_docs, data.val_tokens,
data.unique_tokens, data.seq_len, train.batch_size), never by the objective, so AR and MDM
runs with the same config train on exactly the same tokens:

0. the corpus is tokenised once into a token store (``data/store.py``): ``data.store`` names
   one made by ``dllm-jax prepare``; otherwise the source (``data.paths`` / TFDS) is prepared
   in-process into ``<data.cache_dir>/store-<key>/`` (``data/prepare.py``), keyed by the source
   spec and the tokenizer, and reused by later runs;
1. the first data.max_docs documents (0 = all) -> a permutation seeded by ``config.seed``;
2. validation = whole documents from the start of that order until >= data.val_tokens
   tokens, concatenated (each ends with EOS) and cut into seq_len rows (remainder dropped);
3. training stream = the remaining documents, concatenated in order; the training set is
   its first U tokens, U = data.unique_tokens (0 = all), rounded DOWN to a multiple of
   train.batch_size * seq_len so each epoch is a whole number of global batches;
4. ``train_loader`` shuffles the sequences anew each epoch, repeats data.epochs times and
   gives each process its rows of every global batch.

Steps 1-3 are per-document index arrays (``data/index.py``), so host memory does not grow
with U: training rows are read from the store on demand (``Dataset.train`` is a lazy
``PackedSequences``); only the validation rows are materialised.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import grain
import numpy as np

from dllm_jax import paths
from dllm_jax.data import index as index_lib
from dllm_jax.data import prepare as prepare_lib
from dllm_jax.data import store as store_lib
from dllm_jax.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, tokenizer_from_bytes, tokenizer_names
from dllm_jax.errors import ConfigError, DataError

logger = logging.getLogger("dllm_jax")

TOKENIZER_FILENAMES = (Tokenizer.filename, HFTokenizer.filename)  # a workdir holds one of them
# Grain read options for the training iterator: element s is one process's rows of global batch s;
# threads read the next steps' rows from the store while the accelerator runs this one.
LOADER_READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=16)


@dataclasses.dataclass
class Dataset:
    tokenizer: Tokenizer | HFTokenizer
    train: index_lib.PackedSequences  # [num_train_seqs, seq_len] int32, read from the store on demand
    val: np.ndarray    # [num_val_seqs, seq_len] int32
    stats: dict
    store: store_lib.TokenStore | None = None


# -- helpers ---------------------------------------------------------------------------

def _int_key(value, name: str, minimum: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}={value!r} is not an integer; set it to an integer >= {minimum}.") from e
    if v != value or v < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}; fix it in the config.")
    return v


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


def _check_same(tok, other, what: str, fix: str) -> None:
    if other is not None and other.fingerprint != tok.fingerprint:
        raise DataError(f"{what} (fingerprint {other.fingerprint}) differs from the tokenizer of the data "
                        f"(fingerprint {tok.fingerprint}); {fix}")


def _check_encoding(store: store_lib.TokenStore, d, store_dir: str) -> None:
    """data.split_special_tokens must say how the store's text was encoded (its identity)."""
    want = prepare_lib.encoding_spec(d)
    have = store.identity.get("encoding")
    if have is None:
        logger.warning("token store %s predates dllm_jax's text-handling rule %d (special-token strings in text, U+2581); "
                       "prepare it again to apply it", store_dir, want["version"])
    elif have.get("split_special_tokens") != want["split_special_tokens"]:
        raise DataError(
            f"data.split_special_tokens={want['split_special_tokens']} but the store {store_dir!r} was prepared with "
            f"data.split_special_tokens={have.get('split_special_tokens')}; set it to match the store, or prepare a "
            "store with this setting."
        )


def with_mask_token(tok, d):
    """`tok` with the [MASK] id that data.mask_token names (a store's tokenizer is rebuilt from
    its manifest's EOS / pad names, which do not include the mask: it does not change the tokens)."""
    name = tokenizer_names(d)["mask_token"]
    if tok.mask_names.get("mask_token") == name or (name is None and not tok.mask_names):
        return tok
    return tokenizer_from_bytes(tok.model_bytes, source="of the run", **tok.overrides, mask_token=name)


def _check_special_names(tok, names: dict, store_dir: str) -> None:
    """ConfigError unless data.eos_token / data.pad_token give the store's tokenizer the EOS and
    pad ids it was prepared with (the run's config is what rebuilds its tokenizer later)."""
    mine = tokenizer_from_bytes(tok.model_bytes, source=f"of the store {store_dir!r}", **names)
    if (mine.eos_id, mine.pad_id) != (tok.eos_id, tok.pad_id):
        given = ", ".join(f"data.{k}={(v or '')!r}" for k, v in names.items())
        stored = ", ".join(f"data.{k}={v!r}" for k, v in tok.overrides.items()) or "both ''"
        raise ConfigError(f"{given} give EOS id {mine.eos_id} and pad id {mine.pad_id}, but the store {store_dir!r} was prepared "
                          f"with EOS id {tok.eos_id} and pad id {tok.pad_id} ({stored}); set those keys as the store was "
                          "prepared, or prepare a store with yours.")


def _open_store(d, workdir) -> tuple[store_lib.TokenStore, bool]:
    """The run's token store and whether it already existed (prepared before this call)."""
    wpath = workdir_tokenizer_path(workdir)
    names = tokenizer_names(d)  # data.eos_token / data.pad_token
    given = load_tokenizer(d.tokenizer, **names) if d.tokenizer else None
    existing = load_tokenizer(wpath, **names) if wpath and paths.isfile(wpath) else None
    store_dir = d.get("store", "")
    if store_dir:
        store = store_lib.TokenStore(store_dir)
        tok = store.tokenizer
        _check_same(tok, given, f"data.tokenizer={d.tokenizer!r}", f"the store {store_dir!r} was prepared with another "
                    "tokenizer: drop data.tokenizer, or prepare a store with it.")
        _check_encoding(store, d, store_dir)
        _check_special_names(tok, names, store_dir)
        hit = True
    else:
        if given is not None and existing is not None and given.fingerprint != existing.fingerprint:
            raise DataError(
                f"workdir tokenizer {wpath!r} (fingerprint {existing.fingerprint}) differs from "
                f"data.tokenizer={d.tokenizer!r} (fingerprint {given.fingerprint}); this "
                "workdir was trained with the other one. Use a new workdir, or set "
                f"data.tokenizer={wpath!r}."
            )
        tok_in = given if given is not None else existing  # a workdir keeps the tokenizer it started with
        if existing is not None and given is None:
            logger.info("reusing the workdir tokenizer %s (%d pieces, fingerprint %s)", wpath, existing.vocab_size, existing.fingerprint)
        path = prepare_lib.cached_store_path(d, tok_in)
        if given is None and existing is not None:  # a resume: the store this run's tokenizer was trained for
            trained = prepare_lib.cached_store_path(d, None)
            manifest = store_lib.read_json(store_lib.store_path(trained) / store_lib.MANIFEST)
            if manifest and manifest.get("tokenizer", {}).get("fingerprint") == existing.fingerprint:
                path, tok_in = trained, None  # up to date: nothing is tokenised again
        try:
            result = prepare_lib.prepare(d, path, tokenizer=tok_in)
        except OSError as e:
            raise DataError(f"cannot write the token store {path!r} ({e}); set data.cache_dir (or $DLLM_JAX_CACHE) "
                            "to a writable directory.") from e
        if not result.up_to_date:
            logger.info("token store built: %s (%d documents, %d tokens in %d shards, %.0f tokens/s)", path,
                        result.documents, result.tokens, result.shards, result.tokens_per_sec)
        else:
            logger.info("token store hit: %s (%d documents, %d tokens)", path, result.documents, result.tokens)
        store, hit = store_lib.TokenStore(path), result.up_to_date
        tok = store.tokenizer
    _check_same(tok, existing, f"workdir tokenizer {wpath!r}", "this workdir was trained with the other one; use a new workdir.")
    if wpath and existing is None:
        tok.save(workdir_tokenizer_path(workdir, tok))
        logger.info("saved the tokenizer to %s", workdir_tokenizer_path(workdir, tok))
    return store, hit


# -- dataset ---------------------------------------------------------------------------

def build_dataset(config, workdir: str | None, process_index: int | None = None, check_store=None) -> Dataset:
    """Opens (or prepares) the token store and builds (or loads) the run's index; see the module doc.

    ``process_index`` (default: ``jax.process_index()``) decides who builds the index in a
    multi-process run: process 0 builds and saves it in the workdir, the others wait for it.
    ``check_store`` (optional): called with the opened ``TokenStore`` before the index is built
    or loaded (the trainer uses it to refuse other data on resume; it raises to refuse).
    """
    t_start = time.perf_counter()
    d = config.data
    seq_len = _int_key(d.seq_len, "data.seq_len", 1)
    epochs = _int_key(d.epochs, "data.epochs", 1)
    unique_requested = _int_key(d.unique_tokens, "data.unique_tokens", 0)
    val_requested = _int_key(d.val_tokens, "data.val_tokens", 0)
    max_docs = _int_key(d.max_docs, "data.max_docs", 0)
    global_batch = _int_key(config.train.batch_size, "train.batch_size", 1)
    seed = int(config.seed)
    if process_index is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index()

    store, hit = _open_store(d, workdir)
    if check_store is not None:  # e.g. the trainer refusing other data on resume, before an index is built
        check_store(store)
    tok = with_mask_token(store.tokenizer, d)
    arrays, stats, index_hit = index_lib.load_or_build_index(
        store, workdir, process_index=process_index, seed=seed, max_docs=max_docs, val_tokens=val_requested,
        unique_tokens=unique_requested, seq_len=seq_len, global_batch=global_batch)
    val = index_lib.read_validation(store, arrays["val_start"], arrays["val_len"], seq_len)
    if val_requested > 0 and len(val) == 0:
        logger.warning(
            "the %d validation tokens make no full row of data.seq_len=%d; validation is empty "
            "(raise data.val_tokens)", stats["val_tokens"], seq_len,
        )
    train = index_lib.PackedSequences(store, arrays["train_start"], arrays["train_cum"], seq_len, stats["train_sequences"])
    steps_per_epoch = len(train) // global_batch
    stats = {
        **stats,
        "seq_len": seq_len,
        "global_batch": global_batch,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "num_steps": steps_per_epoch * epochs,
        "total_train_tokens": stats["unique_tokens"] * epochs,
        "vocab_size": tok.vocab_size,
        "tokenizer_fingerprint": tok.fingerprint,
        "data_fingerprint": store.content_fingerprint,
        "store": str(store.root),
        "cache_hit": hit,
        "cache_path": str(store.root),
        "index_hit": index_hit,
        "build_seconds": round(time.perf_counter() - t_start, 3),
    }
    logger.info(
        "data: %d docs, %d val seqs (%d tokens), U=%d unique tokens = %d seqs of %d, %d epochs x %d steps "
        "= %d steps (built in %.1fs)",
        stats["documents"], len(val), stats["val_tokens"], stats["unique_tokens"], len(train), seq_len, epochs,
        steps_per_epoch, stats["num_steps"], stats["build_seconds"],
    )
    return Dataset(tokenizer=tok, train=train, val=val, stats=stats, store=store)


def corpus_split(config) -> dict:
    """The token counts of a run's corpus before it has a workdir: opens (or prepares, into
    data.cache_dir, where the run will find it) the token store as ``build_dataset`` does for a
    new workdir, and splits off validation as ``index.build_index`` does. Returns
    {``documents``, ``val_documents``, ``corpus_tokens``, ``val_tokens``, ``available_tokens``
    (what a budget U may use: build_index refuses U above it), ``store``, ``data_fingerprint``};
    counts in documents and tokens. Nothing is written to a workdir (``dllm-jax sweep`` checks
    its budgets with it).

    Raises: DataError / ConfigError as ``build_dataset`` would (no corpus, validation takes
    every document)."""
    d = config.data
    store, _ = _open_store(d, None)
    _, stats = index_lib.build_index(  # rows of one token: no rounding to batches, only the split
        store, seed=int(config.seed), max_docs=_int_key(d.max_docs, "data.max_docs", 0),
        val_tokens=_int_key(d.val_tokens, "data.val_tokens", 0), unique_tokens=0, seq_len=1, global_batch=1)
    keys = ("documents", "val_documents", "corpus_tokens", "val_tokens", "available_tokens")
    return {**{k: stats[k] for k in keys}, "store": str(store.root), "data_fingerprint": store.content_fingerprint}


# -- loaders ---------------------------------------------------------------------------

class _ProcessRowsOfStep:
    """Global step s -> this process's rows of global batch s (picklable for Grain workers)."""

    def __init__(self, order: grain.MapDataset, train, global_batch: int, first_row: int, rows: int):
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
    train, *, global_batch: int, epochs: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """A MapDataset over global steps; element s = this process's rows of global batch s.

    ``train``: the [n, seq_len] training sequences, an ndarray or a store-backed
    ``PackedSequences`` (indexed with an int64 array of rows; only those rows are read).

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
