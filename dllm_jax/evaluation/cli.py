"""`dllm-jax eval --workdir DIR --task TASK ...`: evaluate a checkpoint, print and save JSON.

Tasks:
  val        validation NLL (AR, exact) or ELBO (MDM, --mc-samples stratified draws per row)
  cloze      multiple choice built from the run's validation text (see cloze.py)
  jsonl      a generic multiple-choice file (--data FILE), see tasks.py
  hellaswag  a HellaSwag jsonl file (--data FILE)
  mmlu       MMLU CSV / JSONL / a directory of CSVs (--data PATH)
  genppl     samples from the run scored by an AR reference run (--reference-workdir)

Results go to --output, by default <workdir>/eval/<task>[-<data file stem>]_step<step>.json;
`--step all` evaluates every saved checkpoint in turn (e.g. a new task on all the checkpoints
a study run kept at its `eval.at_epochs`), one file each
(the step in the name keeps evaluations of several checkpoints apart). Cloze results are named
`cloze-len<K>[-both][-<C>way]-n<N>_step<step>.json` (`cloze_file_stem`): K tokens per choice,
the two-sided task, C choices (omitted for 4), N items scored, so evaluations with another task
or item count do not overwrite each other; files from before the item count was in the name
(`cloze-len<K>[-both]_step<step>.json`) are read too (`parse_cloze_file_name`; `dllm-jax
report --cloze-from eval` reads both). Cloze makes at most one item per validation row: asking
for more (eval.cloze_examples or --limit) scores every row and says so in a warning with both
numbers (decided: a warning, not an error, as training-time cloze caps the same way; the
result records `items_requested`). Defaults of
--mc-samples, --batch-size and the cloze settings come from the run's `eval.*` config.
`--config.KEY=VALUE` may change the keys that do not change what the run learnt
(`dllm_jax.config.HOW_KEYS`: where the data is, the eval.* keys, how the model is computed);
nothing that would change the model.

Ensembles: `--workdir A --workdir B ...` (K >= 2 runs) evaluates the ensemble of the runs on
every scoring task (val, cloze, jsonl, hellaswag, mmlu): one model whose predictive
distribution is the mean of the members' probabilities (`likelihood.Scorer.for_models`: for AR
the log of the mean next-token probability, for an MDM the ELBO / LLaDA estimate of the
averaged denoiser, every member under the same masks). Decisions: the members must share
tokenizer, objective, data.seq_len and estimator settings (else one `error:` line); `--step N`
takes step N of every member, the default each member's latest, and `--step all` is refused;
validation rows, cloze passages, the seed and the eval.* defaults come from the first member;
genppl (sampling) takes one run. The result names the members (`ensemble`: workdir and step of
each; `workdir` / `step` are the first member's) and goes by default to
<first workdir>/eval/ensemble/<task>-<K>runs-<hash of the members>_step<first member's step>.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time

from dllm_jax import config as config_lib
from dllm_jax import paths
from dllm_jax.errors import ConfigError

TASKS = ("val", "cloze", "jsonl", "hellaswag", "mmlu", "genppl")
CORPUS_TASKS = ("val", "cloze")  # the tasks that read the run's own validation split (data.paths)
FILE_TASKS = ("jsonl", "hellaswag", "mmlu")
DEFAULT_CLOZE_CHOICES = 4  # left out of cloze file names
_CLOZE_FILE = re.compile(r"^(cloze-len(\d+)(-both)?(?:-(\d+)way)?)(?:-n(\d+))?_step(\d+)\.json$")

log = logging.getLogger("dllm_jax")


def cloze_task_name(cloze: dict) -> str:
    """The task part of a cloze result's file name, from its `cloze` record {'choices', 'length'
    (tokens per choice), 'context'}: 'cloze-len<K>[-both][-<C>way]' (C left out when 4)."""
    choices = int(cloze.get("choices", DEFAULT_CLOZE_CHOICES))
    return (f"cloze-len{int(cloze['length'])}" + ("-both" if cloze.get("context") == "both" else "")
            + (f"-{choices}way" if choices != DEFAULT_CLOZE_CHOICES else ""))


def cloze_file_stem(cloze: dict, n_items: int) -> str:
    """'cloze-len<K>[-both][-<C>way]-n<N>': the default file name of a cloze result before '_step<S>.json'."""
    return f"{cloze_task_name(cloze)}-n{int(n_items)}"


def parse_cloze_file_name(name: str) -> dict | None:
    """{'task', 'length', 'context', 'choices', 'n' (None in names from before the item count),
    'step'} of a default cloze result file name (new and old forms), else None."""
    m = _CLOZE_FILE.match(name)
    if m is None:
        return None
    task, length, both, choices, n, step = m.groups()
    return {"task": task, "length": int(length), "context": "both" if both else "left",
            "choices": int(choices) if choices else DEFAULT_CLOZE_CHOICES, "n": int(n) if n else None, "step": int(step)}

# free text that reaches the tokenizer: must be valid UTF-8 (cli.check_text_arguments)
TEXT_ARGUMENTS = ("prompt",)


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, action="append",
                        help="a trained run directory; repeat it (--workdir A --workdir B ...) to evaluate the ensemble of "
                             "those runs (the mean of their probabilities)")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to evaluate")
    parser.add_argument("--data", default=None, help="task file (jsonl, hellaswag) or file/folder (mmlu)")
    parser.add_argument("--step", default=None,
                        help="checkpoint step (default: latest), or 'all': every saved checkpoint in step order, one JSON each")
    parser.add_argument("--mc-samples", type=int, default=None, help="MDM Monte Carlo samples per choice or sequence (default: eval.mc_samples)")
    parser.add_argument("--cfg", type=float, default=0.0, help="MDM multiple choice: classifier-free guidance weight w (0 = off)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first K items / validation rows / cloze passages")
    parser.add_argument("--output", default=None, help="JSON file to write (default: <workdir>/eval/<task>_step<N>.json; cloze: "
                        "cloze-len<K>[-both][-<C>way]-n<items>_step<N>.json)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the Monte Carlo draws (and of generation); default: the run's seed, the draws of its training-time validation")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per scoring batch (default: eval.batch_size)")
    parser.add_argument("--items", action="store_true", help="also save per-item predictions and log-likelihoods")
    g = parser.add_argument_group("genppl")
    g.add_argument("--reference-workdir", default=None, help="an AR run that scores the samples")
    g.add_argument("--reference-step", type=int, default=None)
    g.add_argument("--num-samples", type=int, default=16)
    g.add_argument("--prompt", default="", help="prompt of every sample (default: none, unconditional)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--sampler", default="auto")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--block-length", type=int, default=None)
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--correction-steps", type=int, default=0,
                   help="uniform / gidd runs: GIDD self-correction steps after sampling (as dllm-jax sample)")
    g.add_argument("--correction-temperature", type=float, default=0.1, help="uniform / gidd: temperature of the correction draws")


def _check_overrides(overrides) -> None:
    for key, _ in overrides or []:
        if not config_lib.how_key(key):
            raise ConfigError(f"--config.{key} cannot change at evaluation (it is fixed by the checkpoint); "
                              f"eval accepts only {', '.join(k + '*' if k.endswith('.') else k for k in config_lib.HOW_KEYS)}")


def _apply_overrides(config, overrides, data: bool = True) -> None:
    """The --config.KEY overrides (how-keys only), then the config's checks; `data=False` for tasks
    that read no corpus (task files, genppl): a run imported without one evaluates on them."""
    for key, value in overrides or []:
        config_lib.set_key(config, key, value)
    config_lib.validate(config, data=data)


def _positive(name, value):
    if value is not None and value < 1:
        raise ConfigError(f"{name}={value} must be >= 1")


def _workdirs(args) -> list:
    """The --workdir values as a list (one string: a single run)."""
    w = args.workdir
    return [w] if isinstance(w, str) else list(w)


def _load_members(args, workdirs):
    """The runs of an ensemble (each at --step N, or its latest), on the first run's mesh."""
    from dllm_jax.checkpoint import load_run

    runs = [load_run(workdirs[0], step=args.step)]
    for w in workdirs[1:]:
        runs.append(load_run(w, step=args.step, mesh=runs[0].mesh))
    return runs


def evaluate_run(args, reuse: dict | None = None) -> tuple[dict, str]:
    """(results, default output name) for parsed `args`. `reuse`: a dict kept across calls for
    several checkpoints of one run (`--step all`): the Scorer (its compiled functions) is reused
    while the config is the same, so each further checkpoint costs its restore and scoring only.
    Several --workdir: the ensemble of those runs (module docstring)."""
    from dllm_jax.evaluation import cloze, likelihood, multiple_choice, tasks

    for name in ("--mc-samples", "--limit", "--batch-size"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.task in FILE_TASKS and not args.data:
        raise ConfigError(f"--task {args.task} needs --data PATH (the task file)")
    _check_overrides(getattr(args, "overrides", None))
    if args.task == "genppl" and not args.reference_workdir:
        raise ConfigError("--task genppl needs --reference-workdir DIR (an AR run that scores the samples)")
    workdirs = _workdirs(args)
    if len(workdirs) > 1 and args.task == "genppl":
        raise ConfigError(f"--task genppl samples from one run; give one --workdir (got {len(workdirs)}: ensembles are scored on "
                          "val, cloze, jsonl, hellaswag and mmlu)")
    items = tasks.read_task(args.data, args.task) if args.task in FILE_TASKS else None  # bad files fail before loading

    members = _load_members(args, workdirs)
    run = members[0]
    for member in members:
        _apply_overrides(member.config, getattr(args, "overrides", None), data=args.task in CORPUS_TASKS)
    config = run.config
    e = config.eval
    if args.seed is None:
        args.seed = int(config.seed)
    mc = args.mc_samples or e.mc_samples
    batch = args.batch_size or e.batch_size
    head = {"task": args.task, "workdir": paths.absolute(workdirs[0]), "step": run.step, "objective": config.objective}
    name = args.task
    if len(members) > 1:
        head["ensemble"] = [{"workdir": paths.absolute(w), "step": m.step} for w, m in zip(workdirs, members)]

    if args.task == "genppl":
        from dllm_jax.checkpoint import load_run as load_reference
        from dllm_jax.evaluation.genppl import evaluate_generation

        reference = load_reference(args.reference_workdir, step=args.reference_step)
        res = evaluate_generation(run, reference, num_samples=args.num_samples, prompt=args.prompt,
                                  max_new_tokens=args.max_new_tokens, sampler=args.sampler, steps=args.steps,
                                  block_length=args.block_length, threshold=args.threshold, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=batch,
                                  correction_steps=args.correction_steps, correction_temperature=args.correction_temperature)
        return {**head, "reference_workdir": paths.absolute(args.reference_workdir), **res}, name

    key = (config_lib.to_json(config), batch)
    if len(members) > 1:
        scorer = likelihood.Scorer.for_models([m.model for m in members], [m.config for m in members], [m.tokenizer for m in members],
                                              names=workdirs, batch_size=batch, mesh=run.mesh)
        params = tuple(m.params for m in members)
    elif reuse is not None and reuse.get("key") == key:
        scorer, params = reuse["scorer"], run.params
    else:
        scorer, params = likelihood.Scorer.for_model(run.model, config, run.tokenizer, batch_size=batch, mesh=run.mesh), run.params
        if reuse is not None:
            reuse.update(key=key, scorer=scorer)
    if args.task in ("val", "cloze"):
        from dllm_jax.data.pipeline import build_dataset

        dataset = build_dataset(config, workdirs[0])
        if dataset.tokenizer.fingerprint != run.tokenizer.fingerprint:
            raise ConfigError(f"the data pipeline gave tokenizer {dataset.tokenizer.fingerprint}, not the checkpoint's "
                              f"{run.tokenizer.fingerprint}; check data.tokenizer / the workdir's tokenizer.model")
        val = dataset.val
        if len(val) == 0:
            raise ConfigError(f"the run has no validation rows (data.val_tokens={config.data.val_tokens}); nothing to evaluate")
        if args.task == "val":
            rows = val[: args.limit] if args.limit else val
            return {**head, **scorer.sequence_nll(params, rows, mc_samples=mc, seed=args.seed)}, _output_name(name, head)
        asked = int(args.limit or e.cloze_examples)
        token_items = cloze.build_cloze(val, run.tokenizer, n_examples=asked,
                                        n_choices=e.cloze_choices, length=e.cloze_length, seed=config.seed,
                                        context=e.cloze_context)
        if asked > len(token_items) and (reuse is None or not reuse.get("warned_cap")):
            what = f"--limit {args.limit}" if args.limit else f"eval.cloze_examples={e.cloze_examples}"
            log.warning("cloze: %s asks for %d items but the run has %d validation rows (at most one item per row): "
                        "scoring %d items (the file name and the result's n say so)", what, asked, len(val), len(token_items))
            if reuse is not None:
                reuse["warned_cap"] = True
        head["cloze"] = {"choices": e.cloze_choices, "length": cloze.continuation_length(config.data.seq_len, e.cloze_length),
                         "context": e.cloze_context}
        head["items_requested"] = asked  # 0: every validation row
        # evaluations with other choice lengths, contexts, choice counts or item counts are kept apart
        name = cloze_file_stem(head["cloze"], len(token_items))
    else:
        if args.limit:
            items = items[: args.limit]
        token_items = tasks.tokenize_items(items, run.tokenizer)
        head["data"] = paths.absolute(args.data)
        name = f"{args.task}-{os.path.splitext(os.path.basename(args.data.rstrip('/')))[0]}" if args.task == "jsonl" else args.task
    res = multiple_choice.score_items(scorer, params, token_items, mc_samples=mc, seed=args.seed,
                                      cfg_scale=args.cfg, keep_items=args.items)
    return {**head, **res}, _output_name(name, head)


def _output_name(name: str, head: dict) -> str:
    """The output name: `name` for one run; for an ensemble 'ensemble/<name>-<K>runs-<hash>'
    (the hash of the members' workdirs and steps keeps different ensembles apart)."""
    members = head.get("ensemble")
    if not members:
        return name
    digest = hashlib.sha1("\n".join(f"{m['workdir']}@{m['step']}" for m in members).encode("utf-8")).hexdigest()[:8]
    return f"ensemble/{name}-{len(members)}runs-{digest}"


def _steps(args) -> list:
    """The checkpoint steps `--step` asks for: [None] (latest), [N], or every saved one ('all')."""
    if args.step is None:
        return [None]
    text = str(args.step).strip()
    if text == "all" and len(_workdirs(args)) > 1:
        raise ConfigError("--step all scores the checkpoints of one run; an ensemble (several --workdir) takes --step N "
                          "(that step of every member) or no --step (each member's latest)")
    if text == "all":
        from dllm_jax.checkpoint import Checkpointer, checkpoint_dir

        if args.output:
            raise ConfigError("--output names one file; with --step all each checkpoint's result goes to "
                              "<workdir>/eval/<task>_step<N>.json: drop --output")
        workdir = _workdirs(args)[0]
        if not paths.isdir(checkpoint_dir(workdir)):
            raise ConfigError(f"--step all: {workdir!r} has no checkpoints/ folder; is it a dllm-jax run directory? "
                              f"Train with: dllm-jax train --config ... --workdir {workdir}")
        steps = sorted(Checkpointer(workdir, read_only=True).all_steps())
        if not steps:
            raise ConfigError(f"--step all: {workdir!r} has no saved checkpoints")
        return steps
    if not text.isdigit():
        raise ConfigError(f"--step={args.step!r} must be a checkpoint step (an integer >= 0) or 'all'")
    return [int(text)]


def run(args) -> int:
    reuse: dict = {}
    for step in _steps(args):
        t0 = time.perf_counter()
        args.step = step
        results, name = evaluate_run(args, reuse)
        results["seconds"] = round(time.perf_counter() - t0, 2)
        path = args.output or paths.join(paths.expand(_workdirs(args)[0]), "eval", f"{name}_step{results['step']}.json")
        paths.makedirs(paths.dirname(paths.absolute(path)))
        paths.write_text(path, json.dumps(results, indent=2))
        shown = {k: v for k, v in results.items() if k != "items"}
        print(json.dumps(shown, indent=2))
        print(f"saved {path}")
    return 0


__all__ = ["add_arguments", "run", "evaluate_run", "TASKS", "cloze_task_name", "cloze_file_stem", "parse_cloze_file_name"]
