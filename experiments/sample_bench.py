"""The sampling benchmark's model: 4.0M parameters (d_model 256, 4 layers), 128-token context.

`bench/sample_speed.py` trains one AR and one MDM run of this config (only the objective
differs) and measures every sampler on them. Bigger and longer-trained than tiny.py (12
epochs of the standard library's top-level modules, ~22M tokens) so that the comparison is
not made on an untrained MDM. A few minutes per objective on one GPU; about 2 hours per
objective on 2 CPU cores (one epoch on CPU gives a degenerate MDM: measured, not used).
"""

from dllm_jax.config import default_config
from dllm_jax.data.sources import stdlib_corpus


def get_config():
    c = default_config()
    c.objective = "mdm"
    c.seed = 0
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.d_ff = 768
    c.data.source = "text"
    c.data.paths = stdlib_corpus()
    c.data.seq_len = 128
    c.data.vocab_size = 1024
    c.data.unique_tokens = 0  # all of it
    c.data.epochs = 12
    c.data.val_tokens = 32_768
    c.train.batch_size = 32
    c.train.lr = 2e-3
    c.train.warmup_steps = 20
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.train.eval_batches = 8
    c.train.checkpoint_every = 1000
    return c
