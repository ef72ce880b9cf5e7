"""The training loop: data -> mesh -> state (fresh or resumed) -> jitted steps -> metrics,
validation and checkpoints, with clean handling of preemption and divergence.

`train(config, workdir)` is what `dllm-jax train` runs. Pointing it at a workdir that has a
checkpoint resumes from the latest one and continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
from flax import linen as nn

from dllm_jax import config as config_lib
from dllm_jax import paths
from dllm_jax import distributed, flops, hf, memory, objectives, optim, sharding, train_step
from dllm_jax import rng as rng_lib
from dllm_jax.checkpoint import Checkpointer
from dllm_jax.errors import CheckpointError, ConfigError, TrainingDivergedError
from dllm_jax.metrics import MetricsWriter, Progress, StepTimer, read_metrics, require_wandb, resume_totals

log = logging.getLogger("dllm_jax")

DONE_FILE = "DONE"
RUN_LABEL_ENV = "DLLM_JAX_RUN_LABEL"  # the progress lines' prefix (`dllm-jax sweep` sets 'point i/N NAME')


def _data_location(config) -> str:
    d = config["data"] if isinstance(config, dict) else config.data
    return f"data.store={d['store']!r}" if d.get("store") else f"data.paths={d.get('paths')!r}"


def _check_same_data(workdir: str, saved_config, config, fingerprint: str) -> None:
    """data.paths / data.store may change on resume (the same data, moved) only if the content is
    the same: ConfigError when the store's content fingerprint differs from the one the run
    recorded in data_stats.json (runs without one are not checked)."""
    path = paths.join(workdir, "data_stats.json")
    old = json.loads(paths.read_text(path)).get("data_fingerprint") if paths.exists(path) else None
    if old and old != fingerprint:
        raise ConfigError(
            f"resume with other data: {_data_location(config)} holds other content (fingerprint "
            f"{fingerprint}) than this run was trained on ({_data_location(saved_config)}, fingerprint {old}); "
            "data locations may change on resume only if the data is the same. Point them back at that data, "
            "or use a new workdir to train on this data."
        )


def config_differences(saved: dict, config, changeable=config_lib.resume_changeable) -> list:
    """[(key, saved value, new value)] of the flat keys where `config` differs from the `saved`
    config dict, other than those `changeable(key)` allows; keys added to the library after the
    run was saved take their defaults."""
    old, new = config_lib.flatten(config_lib.complete(saved).to_dict()), config_lib.flatten(config.to_dict())
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not changeable(k)]


def check_warmup(train_cfg, num_steps: int) -> None:
    """ConfigError when `train.warmup_steps` is not shorter than the run (`num_steps`, given
    or derived from the data budget): the learning rate would never reach `train.lr` and the
    schedule (cosine or WSD) would never decay; `optim.lr_schedule` would silently cap it.
    Decided (issue 25): refuse rather than warn, since a sweep point's final loss would then
    not be that of a finished schedule. warmup_steps = 0 is always accepted."""
    warmup = int(train_cfg.warmup_steps)
    if warmup and warmup >= num_steps:
        source = ("train.num_steps" if train_cfg.num_steps else
                  "derived from the data budget: data.unique_tokens x data.epochs / (train.batch_size x data.seq_len)")
        raise ConfigError(
            f"train.warmup_steps={warmup} is not shorter than the run's {num_steps} steps ({source}): the learning rate "
            f"would never reach train.lr={train_cfg.lr} and the {train_cfg.schedule!r} schedule would never decay. "
            f"Set --config.train.warmup_steps below {num_steps} (e.g. {max(num_steps // 10, 1) if num_steps > 1 else 0}), "
            "or train longer"
        )


def check_resume_compatible(saved: dict, config, changeable=config_lib.resume_changeable) -> None:
    """ConfigError unless `config` differs from the `saved` one only in keys `changeable(key)`
    allows (default: what may change on resume, decided in the config schema). Keys added to
    the library after the run was saved take their defaults."""
    diffs = config_differences(saved, config, changeable)
    if diffs:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
        raise ConfigError(
            f"the workdir holds a run with a different config ({shown}); resuming would mix two experiments. "
            "Use a new --workdir, or rerun with the saved values (see config.json in the workdir). "
            "Only the keys in dllm_jax.config.HOW_KEYS, RECOVERY_KEYS and EXTEND_KEYS (a longer run) may change on resume."
        )


def run_length(config, steps_per_epoch: int) -> int:
    """A run's optimiser steps: `train.num_steps`, or (0) `data.epochs` x `steps_per_epoch`."""
    return int(config.train.num_steps) or int(steps_per_epoch) * int(config.data.epochs)


def check_run_length(saved: dict, config, steps_per_epoch: int, resume_step: int) -> tuple[int, int]:
    """(saved length, new length) in steps of a run resumed at `resume_step`; ConfigError when
    `config` makes it shorter than the `saved` config did. Decided (issue 27): a run's length
    (`train.num_steps`, or `data.epochs` that derives it) may grow on resume, finished or not:
    an extension. It continues with its optimiser state; batches 1..N are those it trained on
    (the loader's order is per global step, see `data.pipeline.train_loader`) and the new
    steps read on, into further epochs' shuffles; the LR schedule is that of the NEW total,
    evaluated from the current step on (constant: no change; cosine/WSD: the LR may jump back
    up, which `train` warns about when by more than 2x). A shorter run is refused: its schedule
    would have decayed earlier than the steps already trained."""
    old, new = run_length(config_lib.complete(saved), steps_per_epoch), run_length(config, steps_per_epoch)
    if new < old:
        raise ConfigError(
            f"train.num_steps={config.train.num_steps} / data.epochs={config.data.epochs} give this run {new} steps, fewer than the "
            f"{old} it was started with (it is at step {resume_step}); a run may be extended on resume, not shortened. Rerun with "
            "the saved values (config.json in the workdir) or more steps, or use a new --workdir"
        )
    return old, new


def _read_done(workdir: str) -> dict | None:
    path = paths.join(workdir, DONE_FILE)
    if not paths.exists(path):
        return None
    try:
        return json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return None


def _already_finished(workdir: str, resume_step: int, saved: dict, config) -> dict | None:
    """The DONE summary when the run in `workdir` finished at `resume_step` and `config` asks
    for no more steps (after printing one line saying so, and how to extend); else None."""
    done = _read_done(workdir)
    if not done or done.get("step") != resume_step or not done.get("steps_per_epoch"):
        return None
    _, new = check_run_length(saved, config, done["steps_per_epoch"], resume_step)
    if new != resume_step:
        return None
    epochs = "" if config.train.num_steps else f" or --config.data.epochs=E (E > {config.data.epochs})"  # num_steps wins over epochs
    print(f"{workdir} already finished at step {resume_step} (DONE); nothing to do. To train on from its checkpoint, rerun with "
          f"more steps: --config.train.num_steps=M (M > {resume_step}){epochs}", flush=True)
    return {**done, "already_finished": True}


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _mean_records(metric_list) -> dict:
    host = jax.device_get(metric_list)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"}


def evaluate(scorer, params, val: np.ndarray, batch_size: int, num_batches: int, objective, draws: int = 1, seed: int = 0) -> dict:
    """Validation over the rows of the first `num_batches` whole batches (0 = all). The one
    estimator of `dllm-jax eval --task val` (`Scorer.sequence_nll`): the exact NLL for AR; for
    the diffusion objectives the Monte Carlo ELBO with `draws` stratified (t, mask) draws per
    row from `seed`, fixed across the run so that successive validations are comparable.
    `objective`: an Objective (or its name); its `val_record` names the record's keys."""
    from dllm_jax.data.pipeline import val_batches

    batches = val_batches(val, batch_size)  # whole batches (warns when there is none)
    if num_batches:
        batches = batches[:num_batches]
    if not batches:
        return {}
    obj = objective if isinstance(objective, objectives.Objective) else objectives.by_name(objective)
    res = scorer.sequence_nll(params, np.concatenate(batches), mc_samples=1 if obj.exact_likelihood else draws, seed=seed)
    rec = obj.val_record({"loss": res["nats_per_token"], "masked_ce": res.get("masked_ce")})
    return {k: float(v) for k, v in rec.items() if v is not None}


def train(config, workdir: str, stop_after: int | None = None, *, clock=time.perf_counter) -> dict:
    """Train (or resume) the run in `workdir`. Returns the final summary (also written to
    DONE), with `timing`: the run's `*_seconds_total` (see `metrics.StepTimer`).

    A finished run (DONE) rerun with the same length returns its DONE summary with
    `already_finished: True` after printing one line, and writes nothing. A longer
    `train.num_steps` / `data.epochs` extends it (or an unfinished run): see `check_run_length`.

    `stop_after`: run at most this many steps in this call, then checkpoint and return (the
    schedule still spans `num_steps`; rerun to continue). For time-sliced jobs and tests.
    `clock`: the timer's clock (seconds; tests inject one).

    When an error ends the run (a DllmError such as a divergence or a failed save, or any
    other exception), what it opened is closed before the error leaves: the Grain iterator
    (its prefetch threads), the TensorBoard writer (its writer thread), the progress bar and
    the Orbax manager (waiting for its background writes). Their own errors then are only
    logged at DEBUG: the error that ended the run is the one reported, and no thread of the
    run is left to print at interpreter shutdown."""
    opened: list = []  # close() of what the run opened, in order
    try:
        return _train(config, workdir, stop_after, opened, clock)
    except BaseException:
        for close in reversed(opened):
            try:
                close()
            except Exception as e:  # noqa: BLE001 - already failing: the first error is the one to report
                log.debug("closing after an error: %s", _short(e))
        raise


def _train(config, workdir: str, stop_after, opened: list, clock) -> dict:
    from dllm_jax.data.pipeline import LOADER_READ_OPTIONS, build_dataset, train_loader
    from dllm_jax.data.pipeline import workdir_tokenizer_path
    from dllm_jax.data.tokenizer import load_tokenizer, tokenizer_from_bytes, tokenizer_names

    distributed.initialize()  # multi-process runs: from the environment, before devices are touched
    config_lib.validate(config)
    if config.train.wandb_project and jax.process_index() == 0:
        require_wandb(config.train.wandb_project)  # before any data or compile work
    workdir = paths.absolute(workdir)
    hf.refuse_hf_checkpoint_workdir(workdir)
    paths.makedirs(workdir)
    tcfg = config.train
    ckpt = Checkpointer(workdir, keep_last=tcfg.keep_last, keep_every=tcfg.keep_every, async_save=tcfg.async_checkpoint)
    opened.append(ckpt.close)
    resume_step, saved = _newest_readable_meta(ckpt)
    config = config_lib.complete(config.to_dict())  # a copy: init.* resolution below fills model.* keys
    if resume_step is not None:
        saved_config, saved_tokenizer = saved
        hf.resolve_init(config, saved=saved_config)  # resuming: the run's own checkpoint wins over init.*
        check_resume_compatible(saved_config, config)
        done = _already_finished(workdir, resume_step, saved_config, config)
        if done is not None:
            ckpt.close()
            return done
        saved_tok = tokenizer_from_bytes(saved_tokenizer, **tokenizer_names(config_lib.complete(saved_config).data))
        if config.data.tokenizer:
            given = load_tokenizer(config.data.tokenizer, **tokenizer_names(config.data))
            if given.fingerprint != saved_tok.fingerprint:
                raise ConfigError(
                    f"tokenizer mismatch: data.tokenizer={config.data.tokenizer!r} (fingerprint {given.fingerprint}) is not the "
                    f"tokenizer this run was trained with ({saved_tok.fingerprint}); drop --config.data.tokenizer to resume, or use a new workdir"
                )
        tok_path = workdir_tokenizer_path(workdir, saved_tok)
        if not paths.exists(tok_path) and jax.process_index() == 0:
            saved_tok.save(tok_path)
    else:
        hf.resolve_init(config)  # a new run from init.from_hf / init.from_workdir: architecture and tokenizer
    config_lib.validate(config)

    same_data = (lambda store: _check_same_data(workdir, saved_config, config, store.content_fingerprint)) if resume_step is not None else None
    dataset = build_dataset(config, workdir, check_store=same_data)
    tokenizer = dataset.tokenizer
    if resume_step is not None and tokenizer.fingerprint != saved_tok.fingerprint:
        raise ConfigError(f"tokenizer mismatch: the data pipeline gave tokenizer {tokenizer.fingerprint} but the checkpoint has {saved_tok.fingerprint}")
    stats = dataset.stats
    num_steps = tcfg.num_steps or stats["num_steps"]
    check_warmup(tcfg, num_steps)
    seq_len, batch_size = config.data.seq_len, tcfg.batch_size
    steps_per_epoch = max(stats["train_sequences"] // batch_size, 1)
    extended = check_run_length(saved_config, config, steps_per_epoch, resume_step) if resume_step is not None else None

    mesh = sharding.make_mesh(dict(config.mesh))
    batch_shards = sharding.batch_shards(mesh)
    if batch_size % batch_shards:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the batch-sharding mesh axes data*fsdp*expert="
            f"{batch_shards}; pick a batch size that is a multiple of it"
        )
    if (batch_size // tcfg.grad_accum) % batch_shards:
        log.warning("micro-batch %d does not divide over data*fsdp*expert=%d devices; XLA will replicate", batch_size // tcfg.grad_accum, batch_shards)
    model = train_step.build_model(config, tokenizer.vocab_size, tokenizer.pad_is_extra)
    tx = optim.make_optimizer(tcfg, num_steps)
    # refuse a model that cannot fit before anything is allocated (a lower bound, see memory.py)
    memory.check_fits(memory.estimate(model, tx, mesh, seq_len, max(batch_size // tcfg.grad_accum, 1)),
                      [d for d in mesh.devices.flat if d.process_index == jax.process_index()], model.cfg)
    lr_fn = optim.lr_schedule(tcfg, num_steps)
    ids = train_step.token_ids(tokenizer)

    # each process reads only the rows of every global batch that its devices hold
    shard_index, shard_count = distributed.data_shard(mesh, batch_size)
    # long enough for num_steps (train.num_steps may exceed data.epochs' steps): later epochs are further shuffles
    loader = train_loader(dataset.train, global_batch=batch_size, epochs=max(config.data.epochs, -(-num_steps // steps_per_epoch)),
                          seed=rng_lib.data_order_seed(config.seed, config.train.member_seed),
                          process_index=shard_index, process_count=shard_count)
    data_iter = iter(loader.to_iter_dataset(LOADER_READ_OPTIONS))  # prefetch threads read ahead from the store
    if hasattr(data_iter, "close"):
        opened.append(data_iter.close)

    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "config.json"), config_lib.to_json(config))
        paths.write_text(paths.join(workdir, "data_stats.json"), json.dumps(stats, indent=2))

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, seq_len)
        if resume_step is not None:
            state, resume_step = _restore_newest_readable(ckpt, resume_step, train_step.abstract_state(model, tx, mesh, seq_len), data_iter)
            if int(state.step) != resume_step:
                raise CheckpointError(f"checkpoint {resume_step} holds state step {int(state.step)}; the checkpoint is inconsistent")
            log.info("resumed from step %d in %s", resume_step, workdir)
        elif config.init.from_hf or config.init.from_workdir:
            abstract = train_step.abstract_state(model, tx, mesh, seq_len)
            params = hf.initial_params(config, model, abstract.params, mesh, tokenizer)
            state = train_step.state_from_params(tx, params, shardings)
            log.info("new run initialised from %s", config.init.from_hf or config.init.from_workdir)
        else:
            state = train_step.init_state(model, tx, mesh, seq_len, rng_lib.run_key(config.seed, config.train.member_seed))
        step_fn = train_step.make_train_step(model, tx, config, ids, mesh, shardings, lr_fn)
        from dllm_jax.evaluation.likelihood import Scorer

        val_scorer = Scorer.for_model(model, config, tokenizer, batch_size=config.eval.batch_size, mesh=mesh)
        cloze = None
        # steps that end an epoch listed in eval.at_epochs: validation, cloze and a checkpoint
        # (the first step at or after the epoch asked for: never earlier)
        at_step = {e: max(1, math.ceil(e * steps_per_epoch - 1e-9)) for e in config_lib.parse_epochs(config.eval.at_epochs)}
        past = [e for e, s in at_step.items() if s > num_steps]
        if past:
            log.warning("eval.at_epochs: %s lie past the end of this run (%d steps = %.4g epochs); ignored",
                        ", ".join(f"{e:g}" for e in past), num_steps, num_steps / steps_per_epoch)
        eval_steps = {s for s in at_step.values() if s <= num_steps}
        if config.eval.cloze_every or eval_steps:
            from dllm_jax.evaluation.periodic import ClozeEvaluator

            cloze = ClozeEvaluator(model, config, tokenizer, dataset.val, mesh)
        start = int(state.step)
        if extended and extended[0] != num_steps:
            _note_extension(saved_config, extended[0], num_steps, start, lr_fn, workdir)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        objective = objectives.build(config)
        flops_per_token = objective.train_flops_per_token(model.cfg, seq_len)
        # num_steps last: the run's steps (train.num_steps wins over the data's derived count in stats)
        summary = {"params": n_params, "flops_per_token": flops_per_token, **stats, "num_steps": num_steps}
        if jax.process_index() == 0:
            paths.write_text(paths.join(workdir, "run.json"), json.dumps(summary, indent=2))

        writer = MetricsWriter(workdir, resume_step=start, tensorboard=tcfg.tensorboard, wandb_project=tcfg.wandb_project,
                               run_config=config.to_dict())
        opened.append(writer.close)
        bar = Progress(num_steps, start, tcfg.progress, desc=os.environ.get(RUN_LABEL_ENV) or f"{config.objective} {paths.basename(workdir)}")
        opened.append(bar.close)
        tokens_per_step = batch_size * seq_len
        last_good = resume_step
        profile = config_lib.parse_profile_steps(tcfg.profile_steps)
        if profile and (profile[0] > num_steps or profile[1] <= start):
            log.warning("train.profile_steps=%r lies outside the steps this call trains (%d-%d): no trace is written",
                        tcfg.profile_steps, start + 1, num_steps)
        timer = StepTimer(clock, totals=resume_totals(read_metrics(workdir)) if start else None, extra_kinds=("profile",) if profile else ())
        device_kind, num_devices = jax.devices()[0].device_kind, jax.device_count()
        if flops.peak_flops_per_chip(device_kind) is None:
            log.info("no MFU in the training records: no peak FLOP/s is known for device kind %r (dllm_jax.flops); "
                     "they give model TFLOP/s per chip (per device here) only", device_kind)
        window = []
        prev = None

        def settle():  # wait for the steps dispatched so far, so that their time is not charged to what follows
            if prev is not None:
                jax.block_until_ready(prev[1])

        profiler = _Profiler(profile, paths.join(workdir, "profile"), timer, settle)

        def do_eval(step, with_cloze=True):
            settle()
            with timer.pause("eval") as took:
                rec = evaluate(val_scorer, state.params, dataset.val, batch_size, tcfg.eval_batches, objective,
                               objective.val_draws(config), seed=config.seed)
                if rec:
                    rec = {"step": step, "epoch": step / steps_per_epoch, "tokens_seen": step * tokens_per_step, **rec}
                    if cloze is not None and with_cloze:
                        rec.update(cloze(state.params))
            if rec:
                rec["eval_seconds"] = took.seconds
                writer.write(rec, prefix="val/")
                extra = "".join(f" {k} {rec[k]:.4f}" for k in ("cloze_acc",) if isinstance(rec.get(k), float))
                bar.write(f"step {step}/{num_steps} val_loss {rec['val_loss']:.4f}{extra} (evaluation {took.seconds:.1f} s)")
            return rec

        def save(step):
            nonlocal last_good
            settle()
            # a background save's failure surfaces at the next save: _SaveErrors tells which from the disk
            with _SaveErrors(ckpt, step, pending=last_good), timer.pause("checkpoint"):
                ckpt.save(step, state, data_iter, config, tokenizer.model_bytes)
            last_good = step

        def finish():  # waits for a background save: its I/O errors surface here
            with _SaveErrors(ckpt, last_good, pending=last_good), timer.pause("checkpoint"):
                ckpt.close()

        def diverged(step, metrics):
            ckpt.wait()
            where = f"the last good checkpoint is step {last_good} in {ckpt.directory}" if last_good is not None else "no checkpoint was saved yet"
            raise TrainingDivergedError(
                f"training diverged at step {step}: loss={float(metrics['loss'])}, grad norm={float(metrics['grad_norm'])}; stopping. "
                f"{where}. Lower train.lr (now {tcfg.lr}) or raise train.warmup_steps, then rerun to resume from it."
            )

        last_val = {}
        with _StopSignal() as stop, profiler:
            step = start
            while step < num_steps:
                profiler.before(step + 1)
                compiling = step == start  # a process's first step compiles the train step: timed as compilation
                with timer.pause("compile") if compiling else contextlib.nullcontext():
                    batch = next(data_iter)
                    state, metrics = step_fn(state, sharding.global_batch(mesh, batch, batch_size))
                    if compiling:
                        jax.block_until_ready(metrics)
                timer.count_step(timed=not compiling)
                step += 1
                if prev is not None and not bool(prev[1]["finite"]):  # one step behind: keeps dispatch async
                    diverged(*prev)
                prev = (step, metrics)
                window.append(metrics)
                at_log = step % tcfg.log_every == 0 or step == num_steps
                if stop_after is not None and step - start >= stop_after and not stop.received:
                    stop.received = f"stop_after={stop_after}"
                stopping = stop.received  # read once: a signal arriving later in this step is handled at the next
                scheduled = step in eval_steps
                at_ckpt = step % tcfg.checkpoint_every == 0 or step == num_steps or bool(stopping) or scheduled
                if (at_log or at_ckpt) and not bool(metrics["finite"]):
                    diverged(step, metrics)
                profiler.after(step)
                if at_log:
                    rec = _mean_records(window)  # device_get: waits for the window's last step before the clock is read
                    rec = {"step": step, **rec, **_speed(timer.window(), tokens_per_step, flops_per_token, device_kind, num_devices),
                           "epoch": step / steps_per_epoch, "tokens_seen": step * tokens_per_step}
                    writer.write(rec, prefix="train/")
                    bar.update(len(window), step=step, loss=rec["loss"], tokens_per_sec=rec.get("tokens_per_sec"), mfu=rec.get("mfu"),
                               lr=rec.get("lr"), epoch=rec["epoch"], elapsed=timer.elapsed(), eta=timer.eta(num_steps - step))
                    window = []
                epoch_end = config.eval.at_epoch_end and step % steps_per_epoch == 0
                cloze_now = cloze is not None and bool(config.eval.cloze_every) and step % config.eval.cloze_every == 0
                cloze_now = cloze_now or scheduled
                if (tcfg.eval_every and step % tcfg.eval_every == 0 or epoch_end or cloze_now) and step != num_steps:
                    last_val = do_eval(step, with_cloze=epoch_end or cloze_now)
                if at_ckpt:
                    save(step)
                if stopping and step < num_steps:
                    finish()
                    bar.close()
                    writer.close()
                    msg = f"stopped ({stopping}) at step {step}: checkpoint saved in {ckpt.directory}; rerun the same command to resume"
                    log.warning(msg)
                    print(msg, flush=True)
                    return {**summary, "interrupted": True, "step": step}
            if start < num_steps or not last_val:
                last_val = do_eval(num_steps)
            finish()
            bar.close()
            writer.close()
            timer.window()  # the final evaluation and checkpoint into the totals

    final_train = [r for r in _read_train_records(workdir) if "loss" in r]
    summary.update({"step": num_steps, "final": {"train_loss": final_train[-1]["loss"] if final_train else None, **last_val},
                    "timing": {k: round(v, 3) for k, v in timer.totals.items()}})
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, DONE_FILE), json.dumps(summary, indent=2))
    return summary


def _note_extension(saved_config: dict, old_steps: int, num_steps: int, start: int, lr_fn, workdir: str) -> None:
    """Log an extension from `old_steps` to `num_steps` at step `start`, warn when the schedule
    of the new total moves the LR by more than 2x from what the run's last step used, and drop
    the DONE file of a finished run (it is finished again at the new end)."""
    saved_train = config_lib.complete(saved_config).train
    before = float(optim.lr_schedule(saved_train, old_steps)(max(start - 1, 0)))
    after = float(lr_fn(start))
    log.info("extending the run from %d to %d steps at step %d (LR %.3g -> %.3g)", old_steps, num_steps, start, before, after)
    if min(before, after) > 0 and max(before, after) / min(before, after) > 2:
        log.warning("extending from %d to %d steps: the %r schedule of %d steps gives LR %.3g at step %d, where the run's last step "
                    "used %.3g (x%.1f); an extension follows the schedule of its new total from the current step on "
                    "(a 'constant' schedule continues unchanged)", old_steps, num_steps, saved_train.schedule, num_steps, after,
                    start + 1, before, after / before)
    if jax.process_index() == 0 and paths.exists(paths.join(workdir, DONE_FILE)):
        paths.remove(paths.join(workdir, DONE_FILE))


def _speed(timing: dict, tokens_per_step: int, flops_per_token: float, device_kind: str, num_devices: int) -> dict:
    """A training record's speed fields from a `StepTimer.window()`: tokens/s of the optimiser
    steps alone, model TFLOP/s per chip and MFU (`flops.utilisation`; none where the chip's
    peak is unknown, e.g. CPUs), then the window's timing. A window that timed no step (only
    the compiling one) has no speed fields."""
    out = {}
    if timing.get("step_seconds"):
        out["tokens_per_sec"] = tokens_per_step / timing["step_seconds"]
        out.update(flops.utilisation(flops_per_token, out["tokens_per_sec"], device_kind, num_devices))
    return {**out, **timing}


class _Profiler:
    """`train.profile_steps` = (first, last): a `jax.profiler` trace of those steps (1-based,
    inclusive) into `directory` (TensorBoard's profile plugin or Perfetto read it). A resumed
    run past `first` traces from its first step; starting and stopping the trace (which writes
    it) are timed as 'profile', not as steps. A trace that cannot be started or written is a
    warning: training goes on."""

    def __init__(self, steps, directory: str, timer: StepTimer, settle):
        self.steps, self.directory, self.timer, self.settle = steps, directory, timer, settle
        self.active = self.done = False

    def before(self, step: int) -> None:
        if self.steps and not (self.active or self.done) and self.steps[0] <= step <= self.steps[1]:
            self.settle()
            with self.timer.pause("profile"):
                try:
                    jax.profiler.start_trace(self.directory)
                    self.active, self.first = True, step
                except Exception as e:  # noqa: BLE001 - profiling must not stop training
                    self.done = True
                    log.warning("train.profile_steps: the profiler did not start (%s); training goes on without a trace", _short(e))

    def after(self, step: int) -> None:
        if self.active:
            self.last = step
            if step >= self.steps[1]:
                self.stop(step)

    def stop(self, step: int | None = None) -> None:
        if not self.active:
            return
        self.settle()
        self.active, self.done = False, True
        with self.timer.pause("profile"):
            try:
                jax.profiler.stop_trace()
            except Exception as e:  # noqa: BLE001
                log.warning("train.profile_steps: writing the trace to %s failed (%s); training goes on", self.directory, _short(e))
                return
        last = step if step is not None else getattr(self, "last", self.first)
        log.info("profile of steps %d-%d written to %s", self.first, last, self.directory)

    def __enter__(self):
        return self

    def __exit__(self, *exc):  # a run that stops (or fails) inside the range still writes its trace
        self.stop()
        return False


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _newest_readable_meta(ckpt: Checkpointer):
    """(step, (config dict, tokenizer bytes)) of the newest checkpoint whose metadata reads,
    or (None, None) when there is none. Unreadable newer ones are named in a warning and kept."""
    failed = []
    for step in sorted(ckpt.all_steps(), reverse=True):
        try:
            _, saved_config, saved_tokenizer = ckpt.restore_meta(step)
        except Exception as e:  # noqa: BLE001 - any read failure: try the previous checkpoint
            failed.append((step, e))
            log.warning("checkpoint %d in %s cannot be read (%s); it is kept, trying the previous one", step, ckpt.directory, _short(e))
            continue
        if failed:
            log.warning("checkpoint(s) %s set aside in %s", ", ".join(str(f) for f, _ in failed), _set_aside(ckpt, [f for f, _ in failed]))
        return step, (saved_config, saved_tokenizer)
    if failed:
        raise _unreadable(ckpt, failed)
    return None, None


def _unreadable(ckpt: Checkpointer, failed) -> CheckpointError:
    """The error when no checkpoint can be read (the manager is closed: the run stops here)."""
    try:
        ckpt.close()
    except Exception:  # noqa: BLE001 - already failing; the message below is what matters
        pass
    folders = " ".join(paths.join(ckpt.directory, str(s)) for s, _ in failed)
    detail = "; ".join(f"step {s}: {_short(e)}" for s, e in failed)
    return CheckpointError(
        f"no checkpoint in {ckpt.directory} can be read ({detail}). Nothing was deleted. To start this run again from "
        f"step 0 in this workdir, move or remove {folders}; or train in a new --workdir"
    )


def _restore_newest_readable(ckpt: Checkpointer, step: int, abstract_state, data_iter):
    """(state, step) from the newest checkpoint at or before `step` that restores. A damaged
    one (e.g. a truncated array file) is named in a warning, kept, and the previous one used."""
    failed = []
    for s in sorted((x for x in ckpt.all_steps() if x <= step), reverse=True):
        try:
            state = _restore(ckpt, s, abstract_state, data_iter)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: fall back to the previous one
            failed.append((s, e))
            continue
        if failed:
            kept = _set_aside(ckpt, [f for f, _ in failed])
            msg = (f"checkpoint {', '.join(str(f) for f, _ in failed)} in {ckpt.directory} cannot be read "
                   f"({'; '.join(_short(e) for _, e in failed)}); it is kept, not deleted, in {kept}. Resuming from "
                   f"step {s}, the newest readable checkpoint")
            log.warning(msg)
            print(f"warning: {msg}", flush=True)
        return state, s
    raise _unreadable(ckpt, failed)


def _set_aside(ckpt: Checkpointer, steps) -> str:
    """Move unreadable checkpoint folders to <workdir>/checkpoints_unreadable/ (never delete
    them): out of the way of the keep_last rotation and of the run's later saves at the same
    step. Returns that folder."""
    kept = paths.join(paths.dirname(ckpt.directory), "checkpoints_unreadable")
    if jax.process_index() == 0:
        paths.makedirs(kept)
        for step in steps:
            target = paths.join(kept, str(step))
            n = 1
            while paths.exists(target):
                target, n = paths.join(kept, f"{step}.{n}"), n + 1
            paths.rename(paths.join(ckpt.directory, str(step)), target)
    if jax.process_count() > 1:  # the others wait for the move before re-listing the steps
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dllm_jax_set_aside_checkpoints")
    ckpt.manager.reload()
    return kept


def _previous(ckpt: Checkpointer, step):
    """The newest checkpoint before `step` (None if none)."""
    older = [s for s in ckpt.all_steps() if step is None or s < step]
    return max(older) if older else None


class _SaveErrors:
    """Turns any failure while writing checkpoint `step` (disk full, permissions, a lost
    mount) into one CheckpointError naming the checkpoint that failed and the newest one that
    is complete on disk. Saves run in the background, so a failure of the previous save
    (`pending`) surfaces while the next one starts: whichever of the two is not a finished
    checkpoint on disk (Orbax lists only finalised steps, not `*.orbax-checkpoint-tmp`
    folders) is the one named. Before raising it waits (at most `join_s` seconds) for the
    threads started during the save: a failed write does not stop Orbax's other writer
    threads, which would otherwise go on (and print) while the process reports the error."""

    join_s = 60.0

    def __init__(self, ckpt: Checkpointer, step, pending=None):
        self.ckpt, self.step, self.pending = ckpt, step, pending

    def __enter__(self):
        self._threads = set(threading.enumerate())
        return self

    def _finished(self) -> list[int]:
        try:
            self.ckpt.manager.reload()
            return sorted(self.ckpt.all_steps())
        except Exception:  # noqa: BLE001 - the disk is failing: nothing can be said to be complete
            return []

    def __exit__(self, kind, error, tb):
        if error is None or not isinstance(error, Exception) or isinstance(error, CheckpointError):
            return False
        deadline = time.monotonic() + self.join_s
        for thread in set(threading.enumerate()) - self._threads:
            if thread is not threading.current_thread():
                try:
                    thread.join(max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - Orbax's threads re-raise their own failure on join
                    pass
        finished = self._finished()
        failed = self.pending if self.pending is not None and self.pending not in finished else self.step
        good = max((s for s in finished if failed is None or s < failed), default=None)
        where = (f"the last good checkpoint is step {good} in {self.ckpt.directory}" if good is not None
                 else "no checkpoint was saved before it")
        raise CheckpointError(f"saving checkpoint {failed} failed ({_short(error)}); {where}. "
                              "Fix the cause (e.g. free disk space) and rerun the same command to resume"
                              + (" from it" if good is not None else " (it starts again from step 0)")) from None


def _restore(ckpt: Checkpointer, step: int, abstract_state, data_iter):
    """Train state onto this run's mesh, and the data iterator to global step `step`.

    Element s of the loader is global batch s whatever the process count, so the
    iterator's position is the step. The saved Grain state is used when this process
    count wrote one; after a change of process count (its file for this count does not
    exist) the position is set from the step directly."""
    data_file = paths.join(ckpt.directory, str(step), "data", f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    same_count = paths.exists(data_file)
    state = ckpt.restore(step, abstract_state, data_iter if same_count else None)
    if not same_count:
        log.info("checkpoint %d was written by another number of processes; data position set from the step", step)
        data_iter.set_state({"next_index": step})
    position = data_iter.get_state().get("next_index")
    if position != step:
        raise CheckpointError(f"checkpoint {step} holds data iterator position {position}, not {step}; the checkpoint is inconsistent")
    return state


def _read_train_records(workdir):
    from dllm_jax.metrics import read_metrics

    return [r for r in read_metrics(workdir) if "val_loss" not in r]
