"""The sampling benchmark's model: ~3.7M parameters, 256-token context, on the Python standard library.

`bench/sample_speed.py` trains one AR and one MDM run of this config (only the objective
differs) and measures every sampler on them. Bigger and longer-trained than tiny.py, so
that the MDM is confident enough for threshold decoding to reveal several tokens per step,
and with a context long enough for the block / prefix-cache regime of the reference
systems (LLaDA and Fast-dLLM decode 256+ tokens in blocks of 32). A 512-piece vocabulary
keeps the softmax cheap on CPU. About 40 minutes per objective on 2 CPU cores.
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
    c.data.seq_len = 256
    c.data.vocab_size = 512
    c.data.unique_tokens = 0  # all of it
    c.data.epochs = 1
    c.data.val_tokens = 65_536
    c.train.batch_size = 16
    c.train.lr = 2e-3
    c.train.warmup_steps = 50
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.eval_batches = 8
    c.train.checkpoint_every = 200
    return c
