"""`generate` (text in, text out) and `generate_tokens` (ids in, ids out) for AR, MDM,
block-diffusion, uniform-state and GIDD runs (the objective's `sampler_family` picks the
decoder: ar.py, diffusion.py, block.py or interpolating.py).

Decisions the issue left open:
- Every prompt starts with EOS, the document separator of the packed training data, so an
  empty prompt means "a new document" for both objectives (and AR always has a first token).
- Returned `tokens` [B, max_new_tokens] are the generated region only, cut at the first EOS
  and padded with pad_id after it; `lengths` count the tokens kept (EOS excluded);
  `stopped_at_eos` says which rows ended with EOS. Infilling keeps the whole template region.
- `seconds` is the wall time of the compiled decoding call (compilation is timed apart, in
  `compile_seconds`); `tokens_per_sec` = positions decoded / seconds, where an AR row that
  stopped at EOS counts the tokens it produced, and an MDM row all N positions it filled.
- `nfe` counts network calls for the whole batch (a CFG call, conditional + unconditional,
  counts 2); a prefix-cache block query counts 1 although it is cheaper than a full call.
- Rows of different prompt lengths share one batch: AR forces each row's prompt tokens
  (ar.py); MDM left-pads and masks the pads out of attention with segment ids. The MDM
  prefix cache cannot mask pads (the model's cache path has no per-row key mask), so
  prompts of different lengths are decoded in groups of equal length there.
- Parameters replicated over several devices are copied to one device first (a replicated
  program would repeat the same work on every device); sharded parameters are used as they
  are and jit partitions the computation.
- ids >= the vocabulary size, the mask id and pad_id are never sampled; EOS is a real token and is sampled like any
  other (the tokenizer's pad_id is never EOS: dllm_jax/data/tokenizer.py), so a model that
  learnt to end documents ends its rows.
- Batch invariance of the block samplers (block diffusion; MDM with semi-AR blocks and no
  prefix cache): rows advance through their own blocks, and the noise of a row comes from
  its own key, fold_in(fold_in(key(seed), crc32 of its prompt ids), k) for the k-th copy of
  that prompt in the request (k = 0, 1, ... in request order), never from its batch
  position: the same prompt gives the same tokens for the same seed whatever else is in the
  batch, and however `batch_size` chunks it. (MDM with one block or with the prefix cache
  shares one noise stream and the current block across the batch.)
- The seed makes a jax key; the per-step noise comes from XLA's RngBitGenerator (ThreeFry)
  seeded from it (categorical.random_words: faster to run and to compile than jax.random.bits
  in a loop). The same seed gives the same samples on the same backend.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.objectives.common import vocab_limit_of
from dllm_jax.sampling import ar, block, diffusion, interpolating
from dllm_jax.sampling.options import Options, resolve

INFILL_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")

log = logging.getLogger("dllm_jax")


@dataclasses.dataclass
class SampleResult:
    texts: list  # decoded generated text per row ([] from generate_tokens without a tokenizer)
    tokens: np.ndarray  # [B, N] generated ids, pad after the end
    lengths: np.ndarray  # [B] tokens kept per row (EOS excluded)
    nfe: int  # network calls for the whole batch
    seconds: float  # wall time of decoding (compilation excluded)
    tokens_per_sec: float
    stopped_at_eos: np.ndarray = None  # [B] bool
    compile_seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the process (all threads) during decoding (compilation excluded)
    sampler: str = ""
    decoded_positions: int = 0  # positions the decoder produced (numerator of tokens_per_sec)
    canvas: np.ndarray | None = None  # MDM: final [B, T] canvas (left-padded prompt + region), untruncated
    given: np.ndarray | None = None  # MDM: [B, T] positions the user supplied
    reveal_step: np.ndarray | None = None  # MDM: [B, T] step that revealed each position (-1 = given)
    history: np.ndarray | None = None  # MDM with trace=True: [steps + 1, B, T] canvas after each step
    options: Options | None = None


# ---------------------------------------------------------------- compiled-call cache
_COMPILED: dict = {}


def _call(fn, args: tuple, statics: dict):
    """Run jitted `fn` compiled ahead of time (cached): returns (outputs, (run s, compile s, run CPU s))."""
    leaves, treedef = jax.tree.flatten(args)
    sig = tuple((np.shape(x), str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype), getattr(x, "sharding", None)) for x in leaves)
    key = (fn, tuple(sorted(statics.items())), treedef, sig)
    compile_s = 0.0
    compiled = _COMPILED.get(key)
    if compiled is None:
        t0 = time.perf_counter()
        compiled = fn.lower(*args, **statics).compile()
        compile_s = time.perf_counter() - t0
        if len(_COMPILED) >= 64:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(compiled(*args))
    return out, (time.perf_counter() - t0, compile_s, time.process_time() - c0)


def _place(params):
    """Params on one device if they are replicated over several (see module docstring)."""
    leaves = jax.tree.leaves(params)
    shardings = [getattr(x, "sharding", None) for x in leaves]
    if all(s is not None and s.is_fully_replicated for s in shardings) and len(shardings[0].device_set) > 1:
        device = sorted(shardings[0].device_set, key=lambda d: d.id)[0]
        return jax.device_put(params, device), device
    if all(s is not None and len(s.device_set) == 1 for s in shardings):
        return params, next(iter(shardings[0].device_set))
    return params, None


def _put(x, device):
    return jax.device_put(x, device) if device is not None else jnp.asarray(x)


# ---------------------------------------------------------------- text helpers
def parse_infill(template: str, tokenizer) -> list[int]:
    """Ids of an infill template: text is kept, `[MASK]` is one token to fill, `[MASK:n]` n tokens."""
    ids, last = [], 0
    for m in INFILL_SPAN.finditer(template):
        ids += tokenizer.encode(template[last:m.start()])
        n = int(m.group(1) or 1)
        if n < 1:
            raise ConfigError(f"infill span {m.group(0)!r} must fill at least 1 token: write [MASK] or [MASK:n] with n >= 1")
        ids += [tokenizer.mask_id] * n
        last = m.end()
    ids += tokenizer.encode(template[last:])
    if tokenizer.mask_id not in ids:
        raise ConfigError(f"infill template {template!r} has no span to fill; mark gaps with [MASK] (one token) or [MASK:n] (n tokens)")
    return ids


def generate(model, params, tokenizer, prompts: Sequence[str], *, objective: str, sampler: str = "auto", max_new_tokens: int = 64,
             steps: int | None = None, block_length: int | None = None, threshold: float | None = None, cfg: float = 0.0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, infill: str | None = None,
             kv_cache: bool = True, prefix_cache: bool = False, eos_last: bool = True, schedule: str = "linear",
             batch_size: int | None = None, trace: bool = False, context_length: int | None = None, correction_steps: int = 0,
             correction_temperature: float = 0.1, process=None) -> SampleResult:
    """Generate one continuation per prompt (repeat a prompt for several samples).

    objective: the run's config.objective ('ar', 'mdm', 'block_diffusion'). sampler: 'auto', 'ar', or an MDM
    sampler ('ancestral', 'topk_confidence', 'random', 'margin', 'entropy', 'threshold'),
    see diffusion.py. steps: MDM steps over the whole region (default max_new_tokens).
    block_length: semi-autoregressive block size, divides the region (default: one block);
    for block diffusion the run's block size (block_diffusion.block_size; required).
    threshold: confidence threshold for 'threshold' (default 0.9). cfg: guidance weight w.
    temperature 0 = greedy. infill: a template such as "def f([MASK:4]):\\n    return x"
    appended after each prompt; its spans are filled (max_new_tokens is then the template's
    length). kv_cache: AR decoding with the KV cache (False = recompute every step).
    prefix_cache: MDM approximate prefix/suffix KV cache refreshed at every block start.
    eos_last: MDM scored samplers commit EOS only when nothing else is left. schedule: the
    run's mdm.schedule (ancestral reveal probabilities). batch_size: decode in chunks of
    this many rows (default: all at once). trace: MDM, keep the canvas after each step.
    context_length: the run's trained context (data.seq_len); a warning names both numbers
    when [EOS] + prompt + new tokens is longer (positions never trained: expect worse text).
    Uniform / gidd runs (interpolating.py): sampler 'ancestral' or 'renoise', `steps` over the
    whole region; correction_steps / correction_temperature: GIDD's self-correction after the
    last step; process: the run's noise process (`Objective.sample_defaults(config)['process']`;
    None = the objective's default settings, e.g. gidd.p_u=0.2).
    """
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, e.g. [prompt]; got a single string")
    prompts = list(prompts) or [""]
    template = parse_infill(infill, tokenizer) if infill else None
    res = generate_tokens(
        model, params, tokenizer, [tokenizer.encode(p) for p in prompts], objective=objective, sampler=sampler,
        max_new_tokens=max_new_tokens, steps=steps, block_length=block_length, threshold=threshold, cfg=cfg,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, infill_tokens=template, kv_cache=kv_cache,
        prefix_cache=prefix_cache, eos_last=eos_last, schedule=schedule, batch_size=batch_size, trace=trace,
        context_length=context_length, correction_steps=correction_steps, correction_temperature=correction_temperature,
        process=process)
    res.texts = [tokenizer.decode(row[:n]) for row, n in zip(res.tokens, res.lengths)]
    return res


def generate_tokens(model, params, ids, prompts: Sequence[Sequence[int]], *, objective: str, sampler: str = "auto",
                    max_new_tokens: int = 64, steps=None, block_length=None, threshold=None, cfg: float = 0.0,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                    infill_tokens: Sequence[int] | None = None, kv_cache: bool = True, prefix_cache: bool = False,
                    eos_last: bool = True, schedule: str = "linear", batch_size: int | None = None,
                    trace: bool = False, shared_blocks: bool = False, context_length: int | None = None,
                    correction_steps: int = 0, correction_temperature: float = 0.1, process=None) -> SampleResult:
    """Token-level `generate`: `ids` is anything with pad_id, eos_id and mask_id (a Tokenizer or
    objectives.TokenIds); prompts are lists of ids (no EOS needed, one is put in front);
    `infill_tokens` is a template of ids with mask_id where tokens are to be filled.
    `shared_blocks=True` (MDM semi-AR): the batch shares the current block and one noise
    stream, as before per-row progress (the baseline of bench/sample_speed.py)."""
    prompts = [list(map(int, p)) for p in prompts] or [[]]
    if infill_tokens is not None:
        infill_tokens = [int(t) for t in infill_tokens]
        max_new_tokens = len(infill_tokens)
    opts = resolve(objective=objective, sampler=sampler, max_new_tokens=max_new_tokens, steps=steps, block_length=block_length,
                   threshold=threshold, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, kv_cache=kv_cache,
                   prefix_cache=prefix_cache, eos_last=eos_last, schedule=schedule, infill=infill_tokens is not None,
                   correction_steps=correction_steps, correction_temperature=correction_temperature)
    opts = dataclasses.replace(opts, shared_blocks=bool(shared_blocks))
    from dllm_jax import objectives

    if objectives.get(objective).sampler_family == "interpolating":
        opts = dataclasses.replace(opts, process=process if process is not None else objectives.by_name(objective).process())
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1 (or None for one batch)")
    if ids.pad_id == ids.eos_id:
        raise ConfigError(f"pad_id == eos_id == {ids.eos_id}: padding needs an id of its own, or EOS could never be sampled "
                          "(use the tokenizer's ids: its pad_id is never EOS)")
    limit = vocab_limit_of(ids)
    rows_needed = max(ids.pad_id, ids.mask_id) + 1
    if rows_needed > model.cfg.vocab_size:
        raise ConfigError(f"the model has {model.cfg.vocab_size} embedding rows but pad_id={ids.pad_id} / mask_id={ids.mask_id} "
                          f"need {rows_needed}: build it with train_step.build_model(config, tokenizer.vocab_size, "
                          "tokenizer.pad_is_extra)")
    for p in prompts:
        bad = [t for t in p if not 0 <= t < limit or t == ids.mask_id]
        if bad:
            raise ConfigError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {limit}) or the mask id {ids.mask_id}; "
                              "[MASK] belongs in infill templates only")
    rows = [[ids.eos_id] + p for p in prompts]
    longest = max(len(r) for r in rows) + max_new_tokens
    if context_length is not None and longest > context_length:
        log.warning("[EOS] + the longest prompt (%d tokens) + %d new tokens = %d positions, longer than the %d the model "
                    "was trained on (data.seq_len): positions past %d were never trained, expect worse text; shorten the "
                    "prompt or max_new_tokens", longest - max_new_tokens, max_new_tokens, longest, context_length, context_length)
    params, device = _place(params)
    run = _RUNNERS[objectives.get(objective).sampler_family]
    key = jax.random.key(opts.seed)
    keys = row_keys(key, prompts)  # for the samplers with per-row progress (block diffusion, MDM semi-AR)
    if batch_size is None or batch_size >= len(rows):
        return run(model, params, device, ids, rows, opts, infill_tokens, key, trace, keys)
    parts = []
    for i, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # same shapes for every chunk: one compilation
        chunk_keys = jnp.concatenate([keys[start:start + n]] + [keys[start + n - 1:start + n]] * (batch_size - n))
        parts.append(_take(run(model, params, device, ids, chunk, opts, infill_tokens, jax.random.fold_in(key, i), trace, chunk_keys), n))
    return _concat(parts, ids.pad_id)


def row_keys(key, prompts: Sequence[Sequence[int]]):
    """One key per row, from the seed's key, the row's prompt and its copy index (see the
    module docstring): [len(prompts)] jax keys."""
    seen: dict = {}
    out = []
    for p in prompts:
        h = zlib.crc32(np.asarray(p, np.int64).tobytes())
        k = seen.get(h, 0)
        seen[h] = k + 1
        out.append(jax.random.fold_in(jax.random.fold_in(key, h), k))
    return jnp.stack(out)


# ---------------------------------------------------------------- AR
def _run_ar(model, params, device, ids, rows, opts: Options, infill_tokens, key, trace, row_keys=None) -> SampleResult:
    b, n = len(rows), opts.max_new_tokens
    row_len = np.array([len(r) for r in rows], np.int32)
    buf = np.full((b, int(row_len.max()) + n), ids.pad_id, np.int32)
    for i, r in enumerate(rows):
        buf[i, :len(r)] = r
    statics = dict(model=model, max_new=n, p0=int(row_len.min()), use_cache=opts.kv_cache, greedy=opts.temperature == 0.0,
                   top_k=opts.top_k, use_top_p=opts.top_p < 1.0, vocab_limit=vocab_limit_of(ids), eos_id=ids.eos_id, pad_id=ids.pad_id,
                   mask_id=ids.mask_id)
    args = (params, _put(buf, device), _put(row_len, device), _put(key, device), jnp.float32(opts.temperature), jnp.float32(opts.top_p))
    (out, produced, nfe), times = _call(ar.decode, args, statics)
    out, produced = np.asarray(out), np.asarray(produced)
    region = np.stack([out[i, row_len[i]:row_len[i] + n] for i in range(b)])
    return _finish(region, produced, int(nfe), times, int(produced.sum()), opts, ids, cut_at_eos=True)


# ---------------------------------------------------------------- MDM
def _left_padded_canvas(rows, n: int, ids, infill_tokens):
    """The diffusion samplers' canvas: prompts right-aligned at column p = the longest prompt
    (left padding with pad_id), then n generated positions holding [MASK] (or the infill
    template, whose non-mask ids are given). Returns (canvas [b, p+n] int32, given [b, p+n]
    bool, p, pad [b]: each row's left padding)."""
    b, p = len(rows), max(len(r) for r in rows)
    canvas = np.full((b, p + n), ids.pad_id, np.int32)
    given = np.zeros((b, p + n), bool)
    for i, r in enumerate(rows):
        canvas[i, p - len(r):p] = r
        given[i, p - len(r):p] = True
    template = np.full((n,), ids.mask_id, np.int32) if infill_tokens is None else np.asarray(infill_tokens, np.int32)
    canvas[:, p:] = template
    given[:, p:] = template != ids.mask_id
    return canvas, given, p, p - np.array([len(r) for r in rows])


def _run_mdm(model, params, device, ids, rows, opts: Options, infill_tokens, key, trace, row_keys=None) -> SampleResult:
    lengths = sorted({len(r) for r in rows})
    if opts.prefix_cache and len(lengths) > 1:
        # the cache path cannot mask left padding: decode each prompt length on its own
        groups = [[i for i, r in enumerate(rows) if len(r) == L] for L in lengths]
        parts = [_run_mdm(model, params, device, ids, [rows[i] for i in g], opts, infill_tokens, jax.random.fold_in(key, L), trace,
                          None if row_keys is None else row_keys[np.array(g)])
                 for g, L in zip(groups, lengths)]
        order = np.argsort(np.concatenate([np.array(g) for g in groups]), kind="stable")
        return _take(_concat(parts, ids.pad_id), None, order)
    b, n = len(rows), opts.max_new_tokens
    canvas, given, p, pad = _left_padded_canvas(rows, n, ids, infill_tokens)
    segment_ids = None
    if len(lengths) > 1:
        real = np.arange(p + n)[None, :] >= pad[:, None]  # 0 on the left padding
        segment_ids = _put(real.astype(np.int32), device)
    # semi-AR blocks without the prefix cache: rows advance on their own (diffusion.py, per_row)
    per_row = opts.block_length < n and not opts.prefix_cache and not opts.shared_blocks and row_keys is not None
    positions = _put(np.maximum(np.arange(p + n)[None, :] - pad[:, None], 0).astype(np.int32), device) if per_row else None
    plan = diffusion.Plan(
        kind=opts.sampler, gen_start=p, gen_len=n, block_len=opts.block_length,
        steps_per_block=opts.steps // (n // opts.block_length) if opts.steps else 0, prefix_cache=opts.prefix_cache,
        guided=opts.cfg != 0.0, greedy=opts.temperature == 0.0, top_k=opts.top_k, use_top_p=opts.top_p < 1.0,
        eos_last=opts.eos_last, schedule=opts.schedule, vocab_limit=vocab_limit_of(ids), eos_id=ids.eos_id, pad_id=ids.pad_id, trace=trace,
        per_row=per_row, mask_id=ids.mask_id)
    f32 = jnp.float32
    args = (params, _put(canvas, device), _put(given, device), segment_ids, _put(row_keys if per_row else key, device),
            f32(opts.temperature), f32(opts.top_p), f32(opts.threshold), f32(opts.cfg), positions)
    out, times = _call(diffusion.decode, args, dict(model=model, plan=plan))
    final = np.asarray(out["canvas"])
    region = final[:, p:]
    res = _finish(region, np.full((b,), n), int(out["nfe"]), times, b * n, opts, ids, cut_at_eos=infill_tokens is None)
    res.canvas, res.given, res.reveal_step = final, given, np.asarray(out["reveal_step"])
    if trace:
        res.history = np.asarray(out["history"])[: int(out["iterations"]) + 1]
    return res


# ---------------------------------------------------------------- block diffusion
def _run_block(model, params, device, ids, rows, opts: Options, infill_tokens, key, trace, keys=None) -> SampleResult:
    if trace:
        raise ConfigError("trace is not implemented for block-diffusion sampling")
    b, n, bl = len(rows), opts.max_new_tokens, opts.block_length
    row_len = np.array([len(r) for r in rows], np.int32)
    total = -(-(int(row_len.max()) + n) // bl) * bl
    canvas = np.full((b, total), ids.mask_id, np.int32)
    for i, r in enumerate(rows):
        canvas[i, :len(r)] = r
    blocks = -(-n // bl)
    plan = block.BlockPlan(
        kind=opts.sampler, block_len=bl, gen_len=n, steps_per_block=-(-opts.steps // blocks) if opts.steps else 0,
        kv_cache=opts.kv_cache, greedy=opts.temperature == 0.0, top_k=opts.top_k, use_top_p=opts.top_p < 1.0, eos_last=opts.eos_last,
        schedule=opts.schedule, vocab_limit=vocab_limit_of(ids), eos_id=ids.eos_id, pad_id=ids.pad_id, mask_id=ids.mask_id)
    f32 = jnp.float32
    args = (params, _put(canvas, device), _put(row_len, device), _put(keys, device), f32(opts.temperature), f32(opts.top_p),
            f32(opts.threshold))
    out, times = _call(block.decode, args, dict(model=model, plan=plan))
    final = np.asarray(out["canvas"])
    region = np.stack([final[i, row_len[i]:row_len[i] + n] for i in range(b)])
    filled = region != ids.mask_id
    produced = np.where(filled.all(axis=1), n, filled.argmin(axis=1)).astype(np.int32)  # a stopped row: up to its last block
    res = _finish(region, produced, int(out["nfe"]), times, int(filled.sum()), opts, ids, cut_at_eos=True)
    res.canvas, res.reveal_step = final, np.asarray(out["reveal_step"])
    res.given = np.arange(total)[None, :] < row_len[:, None]
    return res


# ---------------------------------------------------------------- uniform / gidd
def _run_interp(model, params, device, ids, rows, opts: Options, infill_tokens, key, trace, keys=None) -> SampleResult:
    from dllm_jax.objectives.interpolating import require_extra_mask

    require_extra_mask(vocab_limit_of(ids), ids.mask_id)
    if trace:
        raise ConfigError("trace is not implemented for uniform / gidd sampling (every position may change at every step)")
    b, n = len(rows), opts.max_new_tokens
    canvas, given, p, pad = _left_padded_canvas(rows, n, ids, infill_tokens)
    real = np.arange(p + n)[None, :] >= pad[:, None]  # segment 0 on the left padding
    positions = np.maximum(np.arange(p + n)[None, :] - pad[:, None], 0).astype(np.int32)
    plan = interpolating.Plan(kind=opts.sampler, process=opts.process, gen_start=p, steps=opts.steps, correction_steps=opts.correction_steps,
                              greedy=opts.temperature == 0.0, top_k=opts.top_k, use_top_p=opts.top_p < 1.0, vocab_limit=vocab_limit_of(ids),
                              pad_id=ids.pad_id)
    f32 = jnp.float32
    args = (params, _put(canvas, device), _put(given, device), _put(real.astype(np.int32), device), _put(positions, device),
            _put(keys, device), f32(opts.temperature), f32(opts.top_p), f32(opts.correction_temperature))
    out, times = _call(interpolating.decode, args, dict(model=model, plan=plan))
    final = np.asarray(out["canvas"])
    res = _finish(final[:, p:], np.full((b,), n), int(out["nfe"]), times, b * n, opts, ids, cut_at_eos=infill_tokens is None)
    res.canvas, res.given = final, given
    return res


_RUNNERS = {"ar": _run_ar, "mdm": _run_mdm, "block": _run_block, "interpolating": _run_interp}  # objective.sampler_family -> decoder


# ---------------------------------------------------------------- results
def _finish(region, produced, nfe, times, decoded, opts, ids, cut_at_eos: bool) -> SampleResult:
    seconds, compile_s, cpu_s = times
    b, n = region.shape
    idx = np.arange(n)[None, :]
    is_eos = (region == ids.eos_id) & (idx < produced[:, None])
    stopped = is_eos.any(axis=1) if cut_at_eos else np.zeros((b,), bool)
    lengths = np.where(stopped, is_eos.argmax(axis=1), produced).astype(np.int32)
    tokens = np.where(idx < lengths[:, None], region, ids.pad_id).astype(np.int32)
    return SampleResult(texts=[], tokens=tokens, lengths=lengths, nfe=nfe, seconds=seconds,
                        tokens_per_sec=decoded / max(seconds, 1e-9), stopped_at_eos=stopped, compile_seconds=compile_s, cpu_seconds=cpu_s,
                        sampler=opts.sampler, decoded_positions=decoded, options=opts)


_ROW_FIELDS = ("tokens", "lengths", "stopped_at_eos", "canvas", "given", "reveal_step")


def _take(res: SampleResult, n: int | None, order=None) -> SampleResult:
    """The first n rows (or rows in `order`) of a result."""
    sel = order if order is not None else slice(0, n)
    for f in _ROW_FIELDS:
        v = getattr(res, f)
        if v is not None:
            setattr(res, f, v[sel])
    if res.history is not None:
        res.history = res.history[:, sel]
    return res


def _concat(parts: list, pad_id: int) -> SampleResult:
    """Rows of several results in sequence; counts and times add up."""
    first = parts[0]
    out = dataclasses.replace(first)
    out.nfe = sum(p.nfe for p in parts)
    out.seconds = sum(p.seconds for p in parts)
    out.compile_seconds = sum(p.compile_seconds for p in parts)
    out.cpu_seconds = sum(p.cpu_seconds for p in parts)
    out.decoded_positions = sum(p.decoded_positions for p in parts)
    out.tokens_per_sec = out.decoded_positions / max(out.seconds, 1e-9)
    out.texts = sum((p.texts for p in parts), [])
    width = max(p.canvas.shape[1] for p in parts) if first.canvas is not None else 0
    for f in _ROW_FIELDS:
        vals = [getattr(p, f) for p in parts]
        if any(v is None for v in vals):
            setattr(out, f, None)
            continue
        if f in ("canvas", "given", "reveal_step"):
            fill = {"canvas": pad_id, "given": False, "reveal_step": -1}[f]
            vals = [np.pad(v, ((0, 0), (width - v.shape[1], 0)), constant_values=fill) for v in vals]  # left-pad prompts
        setattr(out, f, np.concatenate(vals, axis=0))
    out.history = None
    if all(p.history is not None for p in parts):  # pad to a common number of steps (last canvas repeated) and width
        steps = max(p.history.shape[0] for p in parts)
        out.history = np.concatenate([_pad_history(p.history, steps, width, pad_id) for p in parts], axis=1)
    return out


def _pad_history(h, steps: int, width: int, pad_id: int):
    h = np.concatenate([h, np.repeat(h[-1:], steps - h.shape[0], axis=0)], axis=0)
    return np.pad(h, ((0, 0), (0, 0), (width - h.shape[2], 0)), constant_values=pad_id)


__all__ = ["SampleResult", "generate", "generate_tokens", "parse_infill"]
