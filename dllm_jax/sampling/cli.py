"""`dllm-jax sample --workdir DIR ...`: load a run's latest checkpoint, generate, print text and speed."""

from __future__ import annotations

import json
import sys

from dllm_jax.errors import ConfigError
from dllm_jax.sampling.options import SAMPLERS

# free text that reaches the tokenizer: must be valid UTF-8 (cli.check_text_arguments)
TEXT_ARGUMENTS = ("prompt", "infill")


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="run directory written by `dllm-jax train`")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--prompt", action="append", default=None, help="prompt text; repeat for several prompts (default: empty = unconditional)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sampler", default="auto", help=f"auto | {' | '.join(SAMPLERS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="diffusion decoding steps over the whole output (default: --max-new-tokens; MDM: one token per step)")
    parser.add_argument("--block-length", type=int, default=None, help="MDM semi-autoregressive block size (divides --max-new-tokens)")
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold for --sampler threshold (default 0.9)")
    parser.add_argument("--prefix-cache", action="store_true", help="MDM: approximate KV cache refreshed at each block start")
    parser.add_argument("--no-kv-cache", action="store_true", help="AR: recompute the whole prefix every step (baseline)")
    parser.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance weight w (MDM)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infill", default=None, help='MDM: text after the prompt with gaps to fill: "[MASK]" = 1 token, "[MASK:n]" = n tokens')
    parser.add_argument("--correction-steps", type=int, default=0,
                        help="uniform / gidd runs: GIDD self-correction steps after sampling (each resamples one position per row)")
    parser.add_argument("--correction-temperature", type=float, default=0.1, help="uniform / gidd: temperature of the correction draws")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    from dllm_jax import objectives
    from dllm_jax.checkpoint import load_run
    from dllm_jax.sampling.api import generate

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples={args.num_samples} must be >= 1")
    run_ = load_run(args.workdir, step=args.step)
    objective = run_.config.objective
    defaults = objectives.build(run_.config).sample_defaults(run_.config)  # schedule, block size, noise process of the run
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num_samples)]
    res = generate(
        run_.model, run_.params, run_.tokenizer, prompts, objective=objective, sampler=args.sampler,
        max_new_tokens=args.max_new_tokens, steps=args.steps, block_length=args.block_length or defaults.get("block_length"),
        threshold=args.threshold,
        cfg=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, infill=args.infill,
        kv_cache=not args.no_kv_cache, prefix_cache=args.prefix_cache,
        schedule=defaults.get("schedule", "linear"), context_length=int(run_.config.data.seq_len),
        correction_steps=args.correction_steps, correction_temperature=args.correction_temperature, process=defaults.get("process"),
    )
    stats = {"objective": objective, "step": run_.step, "sampler": res.sampler, "nfe": res.nfe, "seconds": round(res.seconds, 4),
             "tokens_per_sec": round(res.tokens_per_sec, 1), "compile_seconds": round(res.compile_seconds, 2),
             "lengths": [int(n) for n in res.lengths]}
    if args.json:
        print(json.dumps({**stats, "prompts": prompts, "texts": res.texts}, indent=2))
        return 0
    for i, (prompt, text) in enumerate(zip(prompts, res.texts)):
        print(f"--- sample {i} ({int(res.lengths[i])} tokens{', stopped at EOS' if res.stopped_at_eos[i] else ''})")
        print(prompt + text)
    print(f"--- {objective} run at step {run_.step}, sampler {res.sampler}: NFE {res.nfe}, {res.tokens_per_sec:.1f} tokens/s, "
          f"wall {res.seconds:.3f} s (+ {res.compile_seconds:.1f} s compile)", file=sys.stderr)
    return 0
