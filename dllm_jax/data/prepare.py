"""Corpus -> token store (``data/store.py``), once: ``dllm-jax prepare`` and the trainer's cache.

One function, ``prepare_shard`` (read one source shard -> tokenise -> write the store shard and
its done record), does all the work. Two drivers run it over the shards that are not done yet:

* ``run_beam``: an Apache Beam pipeline ``Create(shard indices) | Reshuffle | Map(prepare_shard)
  | CombineGlobally(sum of counts)``. Without ``--runner`` it runs on the DirectRunner with one
  worker process per core (``--direct_running_mode=multi_processing --direct_num_workers=N``);
  any other runner (``--runner=DataflowRunner --project=... --temp_location=gs://...``,
  Flink, Spark) takes its standard Beam pipeline options from the command line. Beam's fixed
  start-up cost is ~20 s on a small machine.
* ``run_in_process``: a plain loop in this process (small corpora, ``dllm-jax train
  --config.data.paths=...``, tests). Same function, same bytes.

Identity and re-runs. A store is identified by (format version, the source spec minus
``max_docs``, the tokenizer recipe): ``{"file": fingerprint}`` for a given tokenizer, or the
training settings of a SentencePiece model trained here. ``plan.json`` records it first;
``manifest.json`` is written last from the shards' done records. Re-running on the same inputs
with a manifest present does nothing ("up to date") unless a shard lacks its done record or a
file of the recorded size: those shards are prepared again and the manifest rewritten (how a
damaged store is repaired). Without a manifest it resumes, keeping every shard
whose done record and files are intact. An existing store (finished or not) of OTHER inputs or
another tokenizer is never reused or overwritten: ``prepare`` refuses and names ``--output``.
The trainer's cache keys the directory by the identity instead (``cached_store_path``), so a
changed input makes a new store next to the old one.

The store always holds the WHOLE source: ``data.max_docs`` is applied by the trainer (the
first N documents of the store) and to the tokenizer's training sample.

Tokenizer: ``data.tokenizer`` (SentencePiece ``.model`` or Hugging Face ``tokenizer.json``), or a
SentencePiece model trained on a bounded, seeded sample of documents (``tokenizer_sample``).

Text handling (``encoding_spec``, part of the identity): documents are encoded by
``prepare_shard`` alone, in Beam workers and in-process alike, with
``data.split_special_tokens`` (default True: a literal ``</s>`` / ``<|endoftext|>`` in a document
is text, not EOS; see ``dllm_jax.data.tokenizer``). With a tokenizer that cannot keep U+2581
('▁', decoded as a space: ``keeps_u2581`` False) each shard counts the character and
``prepare`` logs ONE warning naming the count and the files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import time
from typing import Iterator, Sequence

import ml_collections
import numpy as np

from dllm_jax import paths
from dllm_jax.data import sources
from dllm_jax.data import store as store_lib
from dllm_jax.data.tokenizer import ENCODING_VERSION, SPACE_SYMBOL, TRAINER_VERSION, load_tokenizer, tokenizer_from_bytes, tokenizer_names, train_tokenizer
from dllm_jax.errors import ConfigError, DataError, DllmError

logger = logging.getLogger("dllm_jax")

# The SentencePiece trainer reads at most this many characters of documents (whole source
# shards drawn in a seeded order). A corpus of at most this size is read whole, in order.
TOKENIZER_SAMPLE_CHARS = 64_000_000
TOKENIZER_SAMPLE_SEED = 0  # fixed: runs with different config.seed share a tokenizer, as before
_ENCODE_CHUNK_CHARS = 8_000_000  # documents encoded (and held as Python lists) at a time


def resolve_cache_dir(cache_dir: str = "") -> str:
    """data.cache_dir, else $DLLM_JAX_CACHE, else ~/.cache/dllm_jax (~ and $VARS expanded).

    The cache is a local directory: a URL (``gs://...``) is a DataError (a remote store is
    made with ``dllm-jax prepare --output gs://...`` and trained from with ``data.store``).
    """
    d = cache_dir or os.environ.get("DLLM_JAX_CACHE", "") or "~/.cache/dllm_jax"
    if paths.is_url(d):
        where = "data.cache_dir" if cache_dir else "$DLLM_JAX_CACHE"
        raise DataError(
            f"{where}={d!r} is a URL, but the data cache is a local directory; use a local path, or make "
            f"a store there with `dllm-jax prepare --config CONFIG --output {d}` and train with data.store={d}."
        )
    return os.path.abspath(os.path.expandvars(os.path.expanduser(d)))


def hash_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def _whole_source(data_cfg) -> ml_collections.ConfigDict:
    """The data config with max_docs = 0: what a store holds."""
    d = ml_collections.ConfigDict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg))
    d.max_docs = 0
    return d


def encoding_spec(data_cfg) -> dict:
    """How documents become ids besides the tokenizer itself: ``{"split_special_tokens": bool,
    "version": ENCODING_VERSION}`` (``data.split_special_tokens``, default True when a config
    predates the key).

    Raises:
      ConfigError: data.split_special_tokens is not a bool.
    """
    split = data_cfg.get("split_special_tokens", True)
    if not isinstance(split, bool):
        raise ConfigError(f"data.split_special_tokens={split!r} must be True (special-token strings in the corpus are "
                          "text, the default) or False (they become the special ids); set it to True or False.")
    return {"split_special_tokens": split, "version": ENCODING_VERSION}


# -- tokenizer -------------------------------------------------------------------------

def tokenizer_recipe(data_cfg, tokenizer=None) -> dict:
    """What fixes the tokenizer: a given one's fingerprint (which covers a data.eos_token /
    data.pad_token choice), or the settings a model is trained with (and those names, if set)."""
    if tokenizer is not None:
        return {"file": tokenizer.fingerprint}
    train = {
        "model_type": data_cfg.tokenizer_type, "vocab_size": int(data_cfg.vocab_size),
        "trainer": TRAINER_VERSION, "max_docs": int(data_cfg.max_docs),
        "sample_chars": TOKENIZER_SAMPLE_CHARS, "sample_seed": TOKENIZER_SAMPLE_SEED,
    }
    # EOS / pad choices change the stored ids; the [MASK] piece (data.mask_token) does not: not part of the identity
    train.update({k: v for k, v in tokenizer_names(data_cfg).items() if v and k != "mask_token"})
    return {"train": train}


def tokenizer_sample(data_cfg, max_chars: int = TOKENIZER_SAMPLE_CHARS, seed: int = TOKENIZER_SAMPLE_SEED) -> list[str]:
    """A bounded, seeded sample of the corpus's documents to train a tokenizer on.

    Whole source shards are read in a permutation seeded by ``seed`` until ``max_chars``
    characters are collected; the sample is their documents, shards in source order. A corpus of
    at most ``max_chars`` characters is therefore read whole and in order (exactly the documents
    ``load_documents`` gives). With ``data.max_docs = N`` the sample is drawn from the first N
    documents: shards are read in source order, stopping at N documents or ``max_chars``.
    """
    shards = sources.source_shards(_whole_source(data_cfg))
    max_docs = int(data_cfg.max_docs)
    order = range(len(shards)) if max_docs else np.random.default_rng(seed).permutation(len(shards))
    picked, chars, ndocs = {}, 0, 0
    for i in order:
        docs = sources.read_shard(data_cfg, shards[int(i)], max_docs - ndocs if max_docs else 0)
        if max_docs:
            docs = docs[:max_docs - ndocs]
        picked[int(i)] = docs
        chars += sum(map(len, docs))
        ndocs += len(docs)
        if chars >= max_chars or (max_docs and ndocs >= max_docs):
            break
    if len(picked) < len(shards) and not max_docs:
        logger.info("tokenizer sample: %d of %d source shards (%d characters, seed %d)", len(picked), len(shards), chars, seed)
    return list(itertools.chain.from_iterable(picked[i] for i in sorted(picked)))


def resolve_tokenizer(data_cfg, given=None, reuse_from=None):
    """(tokenizer, recipe): ``given`` (a loaded tokenizer), data.tokenizer, the tokenizer of the
    unfinished store at ``reuse_from`` when it was trained with the same recipe, or a new one."""
    names = tokenizer_names(data_cfg)
    if given is None and data_cfg.tokenizer:
        given = load_tokenizer(data_cfg.tokenizer, **names)
    recipe = tokenizer_recipe(data_cfg, given)
    if given is not None:
        return given, recipe
    if reuse_from is not None:
        plan = store_lib.read_json(reuse_from / store_lib.PLAN)
        if plan and plan["identity"]["tokenizer"] == recipe:
            path = reuse_from / plan["tokenizer"]["filename"]
            if path.exists():
                return tokenizer_from_bytes(path.read_bytes(), source=str(path), **names), recipe
    t0 = time.perf_counter()
    docs = tokenizer_sample(data_cfg)
    if not docs:
        raise DataError(f"cannot train a tokenizer: data.paths={data_cfg.paths!r} holds no text; point it at files with text.")
    tok = train_tokenizer(docs, int(data_cfg.vocab_size), None, data_cfg.tokenizer_type)
    if any(names.values()):  # data.eos_token / data.pad_token name pieces of the trained model
        tok = tokenizer_from_bytes(tok.model_bytes, source="trained here", **names)
    logger.info("tokenizer trained in %.1fs", time.perf_counter() - t0)
    return tok, recipe


# -- one shard -------------------------------------------------------------------------

def _encode_chunks(documents: Sequence[str], tokenizer, dtype, num_threads,
                   split_special_tokens: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, lengths) chunks of ``documents``, each followed by EOS, ~8M characters each."""
    start = 0
    while start < len(documents):
        end, chars = start, 0
        while end < len(documents) and (end == start or chars < _ENCODE_CHUNK_CHARS):
            chars += len(documents[end])
            end += 1
        ids = tokenizer.encode_batch(documents[start:end], num_threads=num_threads, split_special_tokens=split_special_tokens)
        lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(x, (tokenizer.eos_id,)) for x in ids),
                           dtype=dtype, count=int(lens.sum()))
        yield flat, lens
        start = end


_TOKENIZERS: dict[tuple, object] = {}  # per worker process: (sha256 of the file, names) -> tokenizer


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything a (Beam) worker needs to prepare any shard; picklable, small."""

    data_cfg: dict
    root: str
    shards: tuple
    tokenizer_bytes: bytes
    dtype: str
    num_threads: int | None = None  # encoder threads; Beam workers use 1 (Beam parallelises)
    tokenizer_names: tuple = ()  # ((name, value), ...): the tokenizer's `overrides` (data.eos_token / data.pad_token)

    def tokenizer(self):
        key = (hashlib.sha256(self.tokenizer_bytes).hexdigest(), self.tokenizer_names)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = tokenizer_from_bytes(self.tokenizer_bytes, **dict(self.tokenizer_names))
        return _TOKENIZERS[key]

    def __call__(self, index: int) -> dict:
        return prepare_shard(self, int(index))


def prepare_shard(job: ShardJob, index: int) -> dict:
    """Reads source shard ``index``, tokenises it and writes store shard ``index`` + its done record."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = ml_collections.ConfigDict(job.data_cfg)
    shard = job.shards[index]
    docs = sources.read_shard(cfg, shard)
    if not docs:
        logger.warning("source shard %d (%s) holds no documents", index, shard)
    t1 = time.perf_counter()
    tok = job.tokenizer()
    split = encoding_spec(cfg)["split_special_tokens"]
    chunks = _encode_chunks(docs, tok, np.dtype(job.dtype), job.num_threads, split)
    chars = sum(map(len, docs))
    # U+2581 that this tokenizer turns into a space: counted here, reported once by `prepare`
    lost = 0 if getattr(tok, "keeps_u2581", True) else sum(d.count(SPACE_SYMBOL) for d in docs)

    def stats():  # measured once the shard's data is written; kept in its done record
        return {"characters": chars, "read_seconds": round(t1 - t0, 3), "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),  # this process's CPU time (all its threads)
                **({"u2581_as_space": lost} if lost else {})}

    return store_lib.write_shard(job.root, index, chunks, shard, stats)


# -- drivers ---------------------------------------------------------------------------

def run_in_process(job: ShardJob, todo: Sequence[int]) -> None:
    for i in todo:
        prepare_shard(job, i)


def _sum_counts(records) -> dict:
    out = {"shards": 0, "documents": 0, "tokens": 0, "characters": 0, "seconds": 0.0}
    for r in records:
        for k in out:
            out[k] += r.get(k, 1 if k == "shards" else 0)
    return out


def beam_options(pipeline_args: Sequence[str]):
    """Beam PipelineOptions from command-line style args; without --runner: the DirectRunner
    with one worker process per core."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError("`dllm-jax prepare` runs an Apache Beam pipeline; install it: pip install 'dllm_jax[beam]' "
                        "(or pass --in-process for a single-process preparation).") from e
    args = list(pipeline_args)
    has = lambda name: any(a == name or a.startswith(name + "=") for a in args)  # noqa: E731
    if not has("--runner"):
        args.append("--runner=DirectRunner")
    direct = any(a in ("--runner=DirectRunner", "--runner=direct") for a in args) or (
        "--runner" in args and args[args.index("--runner") + 1] in ("DirectRunner", "direct"))
    if direct and not has("--direct_running_mode"):
        args.append("--direct_running_mode=multi_processing")
    if direct and not has("--direct_num_workers"):
        args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    options = PipelineOptions(args)
    unknown = _unparsed_beam_args(options, args)
    if unknown:
        raise DataError(f"unknown option(s) for `dllm-jax prepare`: {' '.join(unknown)}; the options other than --config, "
                        "--output, --in-process and --verify go to Apache Beam, which does not know these: check the "
                        "spelling (e.g. --direct_num_workers=4, --runner=DataflowRunner)")
    return options


def _unparsed_beam_args(options, args: Sequence[str]) -> list:
    """The arguments of `args` Beam's option parser does not recognise (Beam itself only logs and
    drops them): the options `retain_unknown_options` keeps that no registered option class has."""
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    return [a for a in args if a.startswith("--") and a[2:].split("=")[0] in unknown]


def run_beam(job: ShardJob, todo: Sequence[int], options) -> None:
    """Prepares shards ``todo`` with an Apache Beam pipeline run with ``options`` (`beam_options`;
    the counts are summed and logged; the driver then reads the shards' done records, which
    also cover shards done earlier)."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    logger.info("beam: %s", " ".join(f"--{k}={v}" for k, v in sorted(options.get_all_options(drop_default=True).items())))
    job = dataclasses.replace(job, num_threads=1)
    try:
        with beam.Pipeline(options=options) as p:
            _ = (p
                 | "shards" >> beam.Create(list(todo))
                 | "spread" >> beam.Reshuffle()
                 | "prepare" >> beam.Map(job)
                 | "count" >> beam.CombineGlobally(_sum_counts)
                 | "log" >> beam.Map(lambda c: logger.info("beam prepared %s", c)))
    except Exception as e:  # pylint: disable=broad-except
        user = worker_error(e)
        if user is None:
            raise
        raise user from None


_WORKER_ERROR = re.compile(r"\b(DataError|ConfigError): (.*?)(?= \[while running|\n|$)")


def worker_error(e: BaseException) -> DllmError | None:
    """Our DataError / ConfigError raised in a Beam worker, recovered from the runner's exception.

    Beam re-raises a worker's exception wrapped (often as text, with the worker's traceback and
    " [while running 'step']" appended); this searches the exception chain for the original
    object, else its text for ``DataError: message``. None when the failure is not ours.
    """
    seen, texts = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (DataError, ConfigError)):  # Beam re-raises it with " [while running 'step']" added
            return type(e)(re.sub(r" \[while running '[^']*'\]$", "", str(e)))
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    for text in texts:
        m = _WORKER_ERROR.search(text)
        if m:
            return (DataError if m.group(1) == "DataError" else ConfigError)(m.group(2).strip())
    return None


@dataclasses.dataclass
class PrepareResult:
    path: str
    up_to_date: bool
    documents: int
    tokens: int
    shards: int
    shards_written: int
    tokens_written: int
    seconds: float
    manifest: dict

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"store": self.path, "up_to_date": self.up_to_date, "documents": self.documents, "tokens": self.tokens,
                "shards": self.shards, "shards_written": self.shards_written, "tokens_written": self.tokens_written,
                "seconds": round(self.seconds, 3), "tokens_per_sec": round(self.tokens_per_sec, 1)}


def _digest_memo_dir(data_cfg) -> str | None:
    """Where corpus files' content digests are remembered between runs (under the data cache);
    None when the cache is not a usable local directory (digests are then computed each time)."""
    try:
        return os.path.join(resolve_cache_dir(data_cfg.cache_dir), "file-digests")
    except DataError:
        return None


def _identity(data_cfg, recipe: dict) -> dict:
    spec = dict(sources.source_spec(_whole_source(data_cfg), memo_dir=_digest_memo_dir(data_cfg)))
    spec.pop("max_docs", None)
    identity = {"format": store_lib.FORMAT, "version": store_lib.VERSION, "source": spec, "tokenizer": recipe,
                "encoding": encoding_spec(data_cfg)}
    return json.loads(json.dumps(identity, sort_keys=True, default=str))  # as it reads back from plan.json


def cached_store_path(data_cfg, tokenizer=None) -> str:
    """Where the trainer's cache keeps the store of this source and tokenizer (recipe)."""
    key = hash_key(_identity(data_cfg, tokenizer_recipe(data_cfg, tokenizer)))
    return os.path.join(resolve_cache_dir(data_cfg.cache_dir), f"store-{key}")


def prepare(data_cfg, output, *, tokenizer=None, runner: str = "in_process",
            pipeline_args: Sequence[str] = (), stop_after: int | None = None) -> PrepareResult:
    """Prepares (or resumes, or confirms up to date) the token store at ``output``.

    Args:
      data_cfg: the ``data`` section of a config (source, paths, tokenizer settings).
      output: the store directory (local or any etils.epath URL such as gs://bucket/store).
      tokenizer: a loaded tokenizer to use instead of data.tokenizer / training one.
      runner: 'in_process' or 'beam' (then ``pipeline_args`` are Beam pipeline options).
      stop_after: prepare at most this many shards, then return without a manifest (tests
        use it to simulate an interrupted run).

    Raises:
      DataError: ``output`` holds a store (finished or not) of other inputs or another tokenizer;
        the source has no documents; a shard cannot be read.
    """
    t0 = time.perf_counter()
    # a misspelled Beam option fails before anything is read or written
    options = beam_options(pipeline_args) if runner == "beam" else None
    root = store_lib.store_path(output)
    manifest = store_lib.read_json(root / store_lib.MANIFEST)
    plan = manifest or store_lib.read_json(root / store_lib.PLAN)
    given = tokenizer if tokenizer is not None else (
        load_tokenizer(data_cfg.tokenizer, **tokenizer_names(data_cfg)) if data_cfg.tokenizer else None)
    identity = _identity(data_cfg, tokenizer_recipe(data_cfg, given))
    if plan is not None and plan.get("identity") != identity:
        old = (plan.get("identity") or {})
        what = [k for k in ("format", "version", "source", "tokenizer", "encoding") if old.get(k) != identity[k]]
        raise DataError(
            f"--output {str(output)!r} already holds a token store of other inputs ({', '.join(what) or 'unknown'} "
            "differ); a store is never reused for other data. Choose another --output, or delete that directory."
        )
    if manifest is not None:  # up to date only if every shard still has its done record and files
        itemsize = np.dtype(manifest["dtype"]).itemsize
        broken = [i for i in range(len(manifest["shards"])) if store_lib.finished_shard(root, i, itemsize) is None]
        if not broken:
            store_lib.TokenStore(root)
            return _result(root, manifest, True, 0, 0, time.perf_counter() - t0)
        logger.warning("%s: shards %s lack their done record or a file of the recorded size; preparing them again",
                       root, [store_lib.shard_name(i) for i in broken])
        plan = store_lib.read_json(root / store_lib.PLAN) or manifest

    whole = _whole_source(data_cfg)
    tok, _ = resolve_tokenizer(data_cfg, given, reuse_from=root if plan else None)
    shards = sources.source_shards(whole)
    dtype = store_lib.token_dtype(tok.vocab_size)
    tok_info = {"kind": tok.kind, "filename": tok.filename, "fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "names": dict(tok.overrides)}
    if plan is None:
        store_lib.write_bytes_atomic(root / tok.filename, tok.model_bytes)
        store_lib.write_json_atomic(root / store_lib.PLAN, {"identity": identity, "tokenizer": tok_info,
                                                            "dtype": dtype.str, "shards": shards})
    elif plan is not manifest and plan.get("shards") != shards:  # same spec, so this means the shard split itself changed
        raise DataError(f"--output {str(output)!r} holds an unfinished store split into other shards; delete it and prepare again.")

    done = {i: store_lib.finished_shard(root, i, dtype.itemsize) for i in range(len(shards))}
    todo = [i for i, r in done.items() if r is None]
    if stop_after is not None:
        todo = todo[:stop_after]
    if len(todo) < len(shards):
        logger.info("resuming %s: %d of %d shards already prepared", root, len(shards) - len(todo), len(shards))
    job = ShardJob(data_cfg=whole.to_dict(), root=str(root), shards=tuple(shards), tokenizer_bytes=tok.model_bytes, dtype=dtype.str,
                   tokenizer_names=tuple(sorted(tok.overrides.items())))
    if runner == "beam":
        run_beam(job, todo, options)
    elif runner == "in_process":
        run_in_process(job, todo)
    else:
        raise DataError(f"prepare runner={runner!r} is unknown; use 'beam' or 'in_process'.")
    if stop_after is not None:
        return _result(root, {"shards": [], "documents": 0, "tokens": 0}, False, len(todo), 0, time.perf_counter() - t0)

    records = [store_lib.finished_shard(root, i, dtype.itemsize) for i in range(len(shards))]
    missing = [store_lib.shard_name(i) for i, r in enumerate(records) if r is None]
    if missing:
        raise DataError(f"prepare of {str(output)!r} finished without shards {missing[:5]}; rerun it to resume.")
    written = [records[i] for i in todo]
    documents = sum(r["documents"] for r in records)
    if documents == 0:
        raise DataError(f"the source holds no documents (data.paths={data_cfg.paths!r}); point it at files with text.")
    lost = _report_u2581(records, tok)
    seconds = time.perf_counter() - t0
    tokens_written = sum(r["tokens"] for r in written)
    manifest = {
        "format": store_lib.FORMAT, "version": store_lib.VERSION, "identity": identity,
        "tokenizer": tok_info, "dtype": dtype.str,
        "documents": documents, "tokens": sum(r["tokens"] for r in records), "num_shards": len(records),
        "shards": [{k: r[k] for k in ("name", "documents", "tokens", "tokens_sha256", "offsets_sha256")} for r in records],
        "stats": {"runner": runner, "seconds": round(seconds, 3), "shards_written": len(written),
                  "tokens_written": tokens_written, "characters": sum(r.get("characters", 0) for r in records),
                  "shard_seconds": round(sum(r.get("seconds", 0.0) for r in written), 3),
                  "shard_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in written), 3),
                  **({"u2581_as_space": lost} if lost else {})},
    }
    store_lib.write_json_atomic(root / store_lib.MANIFEST, manifest)
    return _result(root, manifest, False, len(written), tokens_written, seconds)


def _report_u2581(records: Sequence[dict], tok) -> int:
    """Logs ONE warning when documents hold U+2581 ('▁') that ``tok`` decodes as a space (the
    count, and the files holding most of them); returns the count (0: none, or kept)."""
    counts = [(r.get("u2581_as_space", 0), r.get("source", {})) for r in records]
    total = sum(n for n, _ in counts)
    if total:
        top = sorted(((n, s.get("path", s)) for n, s in counts if n), key=lambda x: -x[0])
        shown = ", ".join(f"{p} ({n})" for n, p in top[:3]) + (f" and {len(top) - 3} more" if len(top) > 3 else "")
        logger.warning(
            "the corpus holds %d U+2581 characters ('\u2581', SentencePiece's space symbol) in %d source shard(s): %s. The "
            "tokenizer %s (%s) cannot keep it: those characters are stored as its space pieces and decode as ' '. "
            "Replace them in the corpus if they matter, or use a tokenizer trained here (data.tokenizer=''), "
            "which keeps them as byte pieces.", total, len(top), shown, tok.kind, tok.fingerprint)
    return total


def _result(root, manifest, up_to_date, shards_written, tokens_written, seconds) -> PrepareResult:
    return PrepareResult(path=str(root), up_to_date=up_to_date, documents=manifest["documents"], tokens=manifest["tokens"],
                         shards=len(manifest["shards"]), shards_written=shards_written, tokens_written=tokens_written,
                         seconds=seconds, manifest=manifest)
