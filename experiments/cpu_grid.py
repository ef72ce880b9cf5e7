"""The data-constrained study at CPU scale: AR vs MDM over unique tokens x epochs, one corpus.

The structure of the paper grid (experiments/paper_grid.py) shrunk to a laptop: every run
gets the same total budget B of training tokens; a run with U unique tokens repeats them
E = B / U times; both objectives share the architecture, data order, validation set and
cloze items. Defaults: B = 4.8M tokens, U in {1e5, 3e5, 1e6} -> 48, 16 and 5 epochs (U is
rounded up to whole batches: 100,352 / 301,056 / 1,001,472), a 0.6M-parameter model
(2 layers, d 128, vocab 1024, seq 128, batch 16), WSD schedule; validation loss and a
4-way cloze accuracy (480 passages of held-out text, 8-token continuations) 24 times per
run. 6 runs.

    dllm-jax sweep --config experiments/cpu_grid.py --root runs/cpu_grid
    dllm-jax report --root runs/cpu_grid

The corpus defaults to the Python standard library's own *.py files (1.84M tokens with this
tokenizer, split at blank lines); any text works, e.g. a natural-language file:

    dllm-jax sweep --config experiments/cpu_grid.py --root runs/shakespeare \\
        --config.data.paths=/path/to/tinyshakespeare.txt --grid budgets=3e4,1e5,2.5e5 --grid tokens=2.5e6

Grid parameters (--grid NAME=VALUE): `budgets` (unique tokens, comma-separated), `tokens`
(B), `objectives` (default ar,mdm; `--grid objectives=ar,mdm,block_diffusion` adds block
diffusion with blocks of `block_diffusion.block_size` = 16 tokens), `evals` (validations
per run). Run it without the 8-fake-device XLA
flag the test suite uses: on 2 cores one device is fastest.

Cost, measured on 2 uncontended cores (Intel Xeon, `taskset -c 0,1`, JAX 0.11): 0.20 s per
training step (10.3k tokens/s) for either objective; one evaluation with 256 cloze
passages took 12.5 s for the MDM (4 Monte Carlo samples per choice) and 3.1 s for AR, so
about 23 s and 6 s with 480; about 20 s of start-up per run. A point is ~2,400 steps and
25 evaluations: MDM ~18 min, AR ~11 min, the grid ~1.5 hours. On the 2-core AMD EPYC
development machine, shared with other jobs (load average ~9), one point took 35 minutes.
"""

from dllm_jax.config import default_config
from dllm_jax.data.sources import stdlib_corpus
from dllm_jax.study.grid import budget_epochs, parse_numbers, short_number


def get_config():
    c = default_config()
    c.objective = "mdm"
    c.seed = 0
    c.model.d_model = 128
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.d_ff = 384
    c.model.vocab_multiple = 8
    c.data.source = "text"
    c.data.paths = stdlib_corpus()
    c.data.text_split = "paragraph"  # works for one big text file as well as many files
    c.data.seq_len = 128
    c.block_diffusion.block_size = 16  # only read by objective=block_diffusion points
    c.data.vocab_size = 1024
    c.data.unique_tokens = 100_352  # the grid's smallest budget (49 batches) ...
    c.data.epochs = 48  # ... for its 4.8M-token total
    c.data.val_tokens = 32_768  # 256 validation rows: the cloze passages
    c.train.batch_size = 16
    c.train.lr = 3e-3
    c.train.min_lr_ratio = 0.1
    c.train.warmup_steps = 100
    c.train.schedule = "wsd"
    c.train.decay_fraction = 0.1
    c.train.log_every = 16
    c.train.eval_every = 98
    c.train.eval_batches = 16  # validation loss on all 256 rows
    c.train.checkpoint_every = 500
    c.train.progress = False
    c.eval.at_epoch_end = False  # a fixed number of evaluations per run (`evals`)
    c.eval.cloze_every = 98
    c.eval.cloze_examples = 480  # passages from the validation rows (fewer if there are fewer rows)
    c.eval.cloze_choices = 4
    # 8-token continuations: with the default 32 (seq_len // 4) the score of a choice is mostly
    # how predictable its own text is, and both objectives stayed within a few points of chance
    # (U = 1e5 trial runs, 256 passages: AR 0.31 after 10 epochs, MDM 0.30 after 31); scoring the
    # same checkpoints with 8-token continuations gave 0.48 and 0.41: the context decides
    c.eval.cloze_length = 8
    c.eval.mc_samples = 4
    return c


def get_grid(config, budgets="1e5,3e5,1e6", tokens="4.8e6", objectives="ar,mdm", evals="24"):
    per_step = config.train.batch_size * config.data.seq_len
    total = parse_numbers(tokens, "tokens")[0]
    n_evals = parse_numbers(evals, "evals")[0]
    points = {}
    for requested in parse_numbers(budgets, "budgets"):
        unique, epochs = budget_epochs(requested, total, per_step)
        every = max(1, (unique // per_step) * epochs // n_evals)
        for objective in [o.strip() for o in objectives.split(",") if o.strip()]:
            points[f"U{short_number(requested)}_{objective}"] = {
                "objective": objective, "data.unique_tokens": unique, "data.epochs": epochs,
                "train.eval_every": every, "eval.cloze_every": every,
            }
    return points
