"""Demo config: a ~1M-parameter model on the Python standard library's own source code.

Every machine with Python has this corpus, so `make demo` needs no download. About two
minutes per objective on 2 shared CPU cores (the README's demo timing). Switch objective with
--config.objective=ar.
"""

from dllm_jax.config import default_config
from dllm_jax.data.sources import stdlib_corpus


def get_config():
    c = default_config()
    c.objective = "mdm"
    c.seed = 0
    c.model.d_model = 128
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.d_ff = 384
    c.data.source = "text"
    c.data.paths = stdlib_corpus()
    c.data.seq_len = 128
    c.data.vocab_size = 1024
    c.data.unique_tokens = 400_000
    c.data.epochs = 1
    c.data.val_tokens = 32_768
    c.train.batch_size = 16
    c.train.lr = 3e-3
    c.train.warmup_steps = 20
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 8
    c.train.checkpoint_every = 100
    return c


