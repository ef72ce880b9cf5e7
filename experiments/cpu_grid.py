"""The data-constrained study at CPU scale: AR vs MDM over unique tokens U x epochs, one corpus.

The structure of the paper grid (experiments/paper_grid.py) shrunk to 2 CPU cores: every run
gets the same total budget B of training tokens; a run with U unique tokens repeats them
E = B / U times; both objectives share the architecture, data order, validation set and
downstream items. Defaults: B = 1.0M tokens, U in {8k, 16k, 32k, 64k, 128k} -> 122, 61, 31,
15 and 8 epochs (U is rounded up to whole batches), 10 runs.

    dllm-jax sweep --config experiments/cpu_grid.py --root runs/cpu_grid --config.data.paths=CORPUS.txt
    dllm-jax report --root runs/cpu_grid

Why these choices (see the README's study section for the measurements behind them):
- Small U, many epochs. The study's crossover comes earlier the fewer unique tokens there
  are (field notes: U = 0.5B -> ~30 epochs, 1.5B -> ~55). At 2 cores the only way to reach
  the regime where AR has long overfitted is a tiny U: AR's validation loss bottoms out
  after ~6-8 epochs at U = 16k here, the MDM's keeps falling for ~100.
- A 2.3M-parameter model (4 layers, d 192, vocab 1024, seq 64, batch 32): the study and
  Prabhudesai et al. find that the MDM's advantage under repetition grows with model size
  while AR's best loss does not (pilot at U = 16k: AR's best validation NLL 4.74 with 0.7M
  parameters, 4.77 with 2.3M); larger models do not fit the 90-minute budget.
- The downstream task (`eval.cloze_*`): next-token multiple choice on held-out text (the
  true next token of a held-out passage against the tokens at the same place in three other
  passages), 2,500 items, so the binomial standard error is <= 0.01. One-token choices make
  both objectives' scores exact (AR: the next-token distribution; MDM: the distribution at a
  [MASK] in that place, LLaDA's exact single-token case), with no Monte Carlo noise to
  handicap the MDM, and cost one forward pass per item for both (Scorer reads all choices
  from one pass), so it can be computed at every checkpoint.
  `--config.eval.cloze_context=both` swaps in the two-sided
  form (a one-token blank with text on both sides, also exact for both; the AR then needs one
  pass per choice, so its evaluations cost ~4x); `dllm-jax eval --task cloze --step all` with
  the same flag scores it on the checkpoints of a finished grid.
- Evaluation at log-spaced epochs (`eval.at_epochs`: 1, 2, 4, ... x sqrt(2) up to E, and the
  end), each with a checkpoint: AR peaks within a few epochs, the MDM much later, and a
  constant interval would either miss AR's peak or spend the budget on the MDM's plateau.
- WSD schedule (the study's): constant LR then a 10% decay, so a run's final loss is that of
  a finished schedule at its own (U, E), the point the R* fit needs.

Grid parameters (--grid NAME=VALUE): `budgets` (U, comma-separated), `tokens` (B),
`objectives` (the series, default ar,mdm; `ar,mdm,block_diffusion` adds block diffusion with
blocks of `block_diffusion.block_size` = 16; an entry may carry overrides,
`mdm+mdm.t_proposal=beta` or `gidd+gidd.p_u=0.1`: `dllm_jax.study.grid.series_specs`),
`members` and `ensemble` (K-member ensembles of the series listed, default every series:
`series_points`; the sweep scores them, the report names them '<series>-ensemble'),
`eval_ratio` (spacing of the log-spaced evaluations), `eval_from` (the first epoch evaluated,
default 1: the log-spaced evaluations before it are dropped; the end is always evaluated, cloze
included: a point left with none, e.g. at 1 epoch, lists its last epoch. For
objectives scored by Monte Carlo, `uniform` and `gidd`, each cloze evaluation costs ~7 min on 2
cores against ~10 s for AR and MDM; their best values fall late, so e.g. `eval_from=45` keeps
the evaluations at 45.3, 64, 90.5 and 122 epochs of the U = 8k point),
and the tuning axis (`dllm_jax.study.grid.tuning_variants`): `weight_decays` (e.g.
0.1,0.8,3.2: "AR tuned" is the best of a weight-decay sweep at each U, Kim, Kotha et al.
arXiv:2509.14786), `mir_weights` (e.g. 0,0.4: AR with masked-input regularisation on top,
Xu et al. arXiv:2606.06888) and `tune` (the objectives swept, default ar). The point at the
base weight decay (0.1) without MIR keeps its name, e.g. U8000_ar; the others are
U8000_ar_wd0.8, U8000_ar_wd0.8_mir0.4, ...; `dllm-jax report` compares the MDM with AR's
strongest series at each budget ('ar-tuned', the best variant there).
Smaller budgets get smaller evaluation and checkpoint costs (`scaled_costs`): below the
reference B0 = 1e6 tokens, with s = B / B0, the cloze task has round(2,500 x s) items (at
least 100), the warmup round(50 x s) steps (the run is s times as long; overrides of
`eval.cloze_examples` or `train.warmup_steps` are kept as given), and only every k-th
log-spaced evaluation is kept, k = ceil(1 / s) (always the first, at epoch 1; the end is
always evaluated): evaluation and checkpoints (one per evaluation, plus the end) then cost a
share of the run that does not grow as B shrinks. At B >= B0 nothing changes. The smoke test
(2 points, 1e5 tokens; 231 s on 2 cores shared at load average ~10):

    dllm-jax sweep --config experiments/cpu_grid.py --root runs/smoke --grid tokens=1e5 --grid budgets=8e3

Run it without the 8-fake-device XLA flag the test suite uses: on 2 cores one device is
fastest.
"""

import math

from dllm_jax.config import default_config
from dllm_jax.errors import ConfigError
from dllm_jax.data.sources import stdlib_corpus
from dllm_jax.study.grid import budget_epochs, parse_numbers, series_points, short_number


def get_config():
    c = default_config()
    c.objective = "mdm"
    c.seed = 0
    c.model.d_model = 192
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.d_ff = 576
    c.model.vocab_multiple = 8
    c.data.source = "text"
    c.data.paths = stdlib_corpus()  # a corpus that is always there; give a natural-language file with data.paths
    c.data.text_split = "paragraph"  # works for one big text file as well as many files
    c.data.seq_len = 64
    c.block_diffusion.block_size = 16  # only read by objective=block_diffusion points
    c.data.vocab_size = 1024
    c.data.unique_tokens = 8192  # the grid's smallest budget ...
    c.data.epochs = 125  # ... for its 1.0M-token total
    c.data.val_tokens = 163_840  # 2,560 held-out rows of 64 tokens: the downstream items
    c.train.batch_size = 32
    c.train.lr = 3e-3
    c.train.min_lr_ratio = 0.1
    c.train.warmup_steps = 50
    c.train.schedule = "wsd"
    c.train.decay_fraction = 0.1
    c.train.log_every = 20
    c.train.eval_every = 0  # evaluations at eval.at_epochs (set per point by get_grid) and at the end
    c.train.eval_batches = 8  # validation loss on 256 held-out rows
    c.train.checkpoint_every = 100_000  # checkpoints at the evaluations
    c.train.keep_last = 100  # keep them all (2.3M parameters: ~28 MB each)
    c.train.progress = False
    c.eval.at_epoch_end = False
    c.eval.cloze_examples = 2500  # binomial standard error <= 0.01
    c.eval.cloze_choices = 4
    c.eval.cloze_length = 1  # next-token multiple choice: exact scores for both objectives
    c.eval.batch_size = 256
    return c


def eval_epochs(epochs: float, ratio: float = math.sqrt(2)) -> str:
    """'1,1.41,2,...' up to (not including) `epochs`: log-spaced evaluation points."""
    out, k = [], 0
    while float(f"{ratio ** k:.3g}") < epochs:
        if f"{ratio ** k:.3g}" not in out[-1:]:  # distinct after rounding to 3 digits
            out.append(f"{ratio ** k:.3g}")
        k += 1
    return ",".join(out)


REFERENCE_TOKENS = 1_000_000  # B0: the budget the evaluation costs above are set for
FILE_CLOZE_EXAMPLES = 2500  # get_config()'s eval.cloze_examples (an override of it is kept)
FILE_WARMUP_STEPS = 50  # get_config()'s train.warmup_steps (an override of it is kept)


def scaled_costs(config, total: int) -> tuple[dict, int]:
    """(point overrides, k) for a token budget `total` below REFERENCE_TOKENS, s = total /
    REFERENCE_TOKENS: the cloze items x s (at least 100) and the warmup x s (at least 1 step;
    the run is s times as long) unless eval.cloze_examples / train.warmup_steps were
    overridden, and k = ceil(1 / s): keep every k-th log-spaced evaluation. ({}, 1) at or
    above the reference budget."""
    if total >= REFERENCE_TOKENS:
        return {}, 1
    scale = total / REFERENCE_TOKENS
    out = {}
    items = max(100, round(FILE_CLOZE_EXAMPLES * scale))
    if config.eval.cloze_examples == FILE_CLOZE_EXAMPLES and items != FILE_CLOZE_EXAMPLES:
        out["eval.cloze_examples"] = items
    warmup = max(1, round(FILE_WARMUP_STEPS * scale))
    if config.train.warmup_steps == FILE_WARMUP_STEPS and warmup != FILE_WARMUP_STEPS:
        out["train.warmup_steps"] = warmup
    return out, math.ceil(1 / scale)


def get_grid(config, budgets="8e3,1.6e4,3.2e4,6.4e4,1.28e5", tokens="1e6", objectives="ar,mdm", eval_ratio="1.4142",
             weight_decays="", mir_weights="", tune="ar", members="1", ensemble="", eval_from="1"):
    per_step = config.train.batch_size * config.data.seq_len
    totals = parse_numbers(tokens, "tokens")
    if len(totals) != 1:
        raise ConfigError(f"--grid tokens={tokens!r} must be one number (the training tokens of every run), e.g. tokens=1e6")
    total = totals[0]
    try:
        ratio = float(eval_ratio)
    except ValueError:
        ratio = 0.0
    if not 1.01 <= ratio < 100.0:  # closer to 1, the 3-digit epochs repeat (and the list grows without bound)
        raise ConfigError(f"--grid eval_ratio={eval_ratio!r} must be a number in [1.01, 100), e.g. 1.4142 (evaluations at 1, 1.41, 2, ... epochs)")
    try:
        first = float(eval_from)
    except ValueError:
        first = float("nan")
    if not 0.0 < first < float("inf"):
        raise ConfigError(f"--grid eval_from={eval_from!r} must be a positive number of epochs, e.g. eval_from=45 "
                          "(no log-spaced evaluation before epoch 45; the end is always evaluated)")
    runs = series_points(config, objectives, weight_decays, mir_weights, tune, members, ensemble)
    costs, every = scaled_costs(config, total)
    points, seen = {}, {}
    for requested in parse_numbers(budgets, "budgets"):
        unique, epochs = budget_epochs(requested, total, per_step)
        if unique >= total:
            rounded = f" (rounded up to whole batches of {per_step} tokens: U={unique})" if unique != requested else ""
            raise ConfigError(f"--grid budgets: U={requested:g}{rounded} is not below tokens={total:g}: every run trains on "
                              "`tokens` tokens, so U must be smaller to be repeated; lower the budget or raise --grid tokens")
        if unique in seen:
            raise ConfigError(f"--grid budgets: {seen[unique]:g} and {requested:g} both round up to U={unique} "
                              f"(whole batches of {per_step} tokens): the same run twice; drop one")
        if epochs > 10**6:
            raise ConfigError(f"--grid tokens={tokens}: U={unique} would be repeated {epochs:.3g} times (at most 1e6 epochs); "
                              "lower tokens or raise the budgets")
        seen[unique] = requested
        at_epochs = ",".join(e for e in eval_epochs(epochs, ratio).split(",")[::every] if e and float(e) >= first)
        # none left (1 epoch, or eval_from past the last): the end alone, named, so that it scores the cloze task too
        at_epochs = at_epochs or f"{epochs}"
        for suffix, overrides in runs:
            points[f"U{short_number(requested)}{suffix}"] = {
                "data.unique_tokens": unique, "data.epochs": epochs,
                "eval.at_epochs": at_epochs, **costs, **overrides,
            }
    return points
