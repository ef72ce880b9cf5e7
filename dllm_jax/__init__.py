"""dllm_jax: JAX/Flax pretraining of masked-diffusion LMs and their autoregressive baselines."""

__version__ = "0.1.0"
