"""Generation from trained runs: AR decoding with a KV cache and masked-diffusion samplers.

    from dllm_jax.sampling import generate, SampleResult
    res = generate(model, params, tokenizer, ["def main("], objective="mdm", sampler="threshold",
                   max_new_tokens=64, block_length=16, prefix_cache=True)
    res.texts, res.tokens, res.lengths, res.nfe, res.seconds, res.tokens_per_sec

`generate_tokens` is the same on token ids. Layout: categorical.py (tail-exact draws and
logit filters), ar.py (AR loop), diffusion.py (MDM loop, all samplers), block.py (block
diffusion), interpolating.py (uniform-state / GIDD: ancestral, renoise, self-correction), options.py (names
and argument checks), api.py (batching, timing, results), cli.py (`dllm-jax sample`).
"""

from dllm_jax.sampling.api import SampleResult, generate, generate_tokens, parse_infill
from dllm_jax.sampling.options import AR_SAMPLERS, MDM_SAMPLERS, SAMPLERS

__all__ = ["SampleResult", "generate", "generate_tokens", "parse_infill", "SAMPLERS", "AR_SAMPLERS", "MDM_SAMPLERS"]
