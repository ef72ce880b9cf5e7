"""lm-evaluation-harness model `dllm_jax`: evaluate a dllm_jax checkpoint with any harness task.

    pip install 'dllm_jax[eval]'
    python -m dllm_jax.evaluation.harness --model dllm_jax --model_args workdir=DIR,mc_samples=32 \\
        --tasks hellaswag [--include_path MY_TASKS]

or from Python (importing this module registers the model name):

    import lm_eval, dllm_jax.evaluation.lm_eval_adapter
    lm_eval.simple_evaluate(model="dllm_jax", model_args="workdir=DIR", tasks=[...])

(`lm_eval --model dllm_jax` itself only finds the name when this module has been imported,
which the `harness` wrapper does.) This module imports without lm_eval; the model fails
only when constructed.

model_args: workdir (required), step, mc_samples (MDM draws per request, default the run's
eval.mc_samples), cfg (MDM classifier-free guidance weight), seed, batch_size, and for
generate_until: sampler, steps, block_length, threshold, temperature (default 0 = greedy
unless the task asks for sampling), top_k, top_p.

Ensembles: `workdir=A|B|C` (run directories separated by '|'; the harness splits model_args
at commas) scores the loglikelihood requests with the ensemble of those runs
(`likelihood.Scorer.for_models`: the mean of the members' probabilities, as `dllm-jax eval
--workdir A --workdir B`); `step` applies to every member (default: each one's latest), the
defaults (mc_samples, batch_size, max_length) come from the first member, and generate_until
(sampling) is refused for an ensemble.

Requests:
- loglikelihood: AR exact; MDM the LLaDA estimate (likelihood.py). is_greedy: AR, every
  answer token is the argmax; MDM, the same with the whole answer masked at once.
- loglikelihood_rolling: the text in rolling windows of the run's data.seq_len, from an
  EOS start; AR exact, MDM the sum of the windows' LLaDA bounds (an ELBO of the text).
- generate_until: `dllm_jax.sampling.generate_tokens` from the context's token ids (its
  left part dropped, on token ids, so that [EOS] + context + max_gen_toks fits data.seq_len;
  max_gen_toks is capped at data.seq_len - 1), cut at the first stop string.
Every request fits the trained context: loglikelihood pairs are cut on token ids by
`Scorer` (the context's left part, then the answer's, flagged `truncated`), rolling
windows are at most data.seq_len long, and generation is cut as above.
"""

from __future__ import annotations

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    HAVE_LM_EVAL = True
except ImportError:  # optional extra
    HAVE_LM_EVAL = False

    class LM:  # stand-in base so that this module imports without lm_eval
        def __init__(self):
            pass

    def register_model(*names):
        return lambda cls: cls


def _int_or(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default  # e.g. batch_size='auto'


@register_model("dllm_jax")
class DllmJaxLM(LM):
    def __init__(self, workdir: str = "", step=None, mc_samples=None, cfg: float = 0.0, seed: int = 0, batch_size=None,
                 sampler: str = "auto", steps=None, block_length=None, threshold=None, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, **unused):
        if not HAVE_LM_EVAL:
            raise ImportError("lm-evaluation-harness is not installed; install the extra: pip install 'dllm_jax[eval]'")
        super().__init__()
        from dllm_jax.checkpoint import load_run
        from dllm_jax.errors import ConfigError
        from dllm_jax.evaluation.likelihood import Scorer

        workdirs = [w.strip() for w in str(workdir or "").split("|")]
        if not all(workdirs):
            raise ConfigError(f"model_args workdir={workdir!r}: give a dllm_jax run directory, or several separated by '|' "
                              "(workdir=A|B: their ensemble)")
        step = None if step in (None, "") else int(step)
        self.members = [load_run(workdirs[0], step=step)]
        self.members += [load_run(w, step=step, mesh=self.members[0].mesh) for w in workdirs[1:]]
        self.run = self.members[0]
        cfg_e = self.run.config.eval
        self.mc_samples = _int_or(mc_samples, cfg_e.mc_samples)
        self.cfg_scale = float(cfg or 0.0)
        self.seed = int(seed)
        self.scorer = Scorer.for_models([m.model for m in self.members], [m.config for m in self.members],
                                        [m.tokenizer for m in self.members], names=workdirs,
                                        batch_size=_int_or(batch_size, cfg_e.batch_size), mesh=self.run.mesh)
        self.params = self.run.params if len(self.members) == 1 else tuple(m.params for m in self.members)
        self.gen = dict(sampler=sampler, steps=None if steps is None else int(steps),
                        block_length=None if block_length is None else int(block_length),
                        threshold=None if threshold is None else float(threshold), temperature=float(temperature),
                        top_k=int(top_k), top_p=float(top_p))

    @property
    def tokenizer_name(self) -> str:
        return f"dllm_jax-{self.run.tokenizer.fingerprint}"

    @property
    def max_length(self) -> int:
        return int(self.run.config.data.seq_len)

    # ------------------------------------------------------------------ scoring
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        from dllm_jax.evaluation.tasks import encode_pair

        pairs = [encode_pair(self.run.tokenizer, ctx, cont) for ctx, cont in (r.args for r in requests)]
        # an empty continuation has log-likelihood 0
        idx = [i for i, (_, cont) in enumerate(pairs) if cont]
        scores = self.scorer.loglikelihood(self.params, [pairs[i] for i in idx], mc_samples=self.mc_samples,
                                           seed=self.seed, cfg_scale=self.cfg_scale, greedy=True)
        out = [(0.0, True)] * len(pairs)
        for i, s in zip(idx, scores):
            out[i] = (float(s.logprob), bool(s.greedy))
        for r, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, o)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        from dllm_jax.evaluation.likelihood import rolling_windows

        tok = self.run.tokenizer
        pairs, owner = [], []
        for i, r in enumerate(requests):
            for pair in rolling_windows(tok.encode(r.args[0]), self.max_length, tok.eos_id):
                pairs.append(pair)
                owner.append(i)
        scores = self.scorer.loglikelihood(self.params, pairs, mc_samples=self.mc_samples, seed=self.seed)
        out = [0.0] * len(requests)
        for i, s in zip(owner, scores):
            out[i] += float(s.logprob)
        for r, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, o)
        return out

    # ------------------------------------------------------------------ generation
    def fit_context(self, ids, max_new: int) -> list:
        """The last context token ids that fit before `max_new` new tokens: the sampler puts
        one EOS in front, so [EOS] + context + new tokens is at most data.seq_len. The cut is
        on token ids (decoding a cut and re-encoding it can give more tokens than the room,
        e.g. a cut inside a multi-byte character becomes U+FFFD, three byte tokens)."""
        room = self.max_length - 1 - max_new
        return list(ids[-room:]) if room > 0 else []

    def generate_until(self, requests, disable_tqdm: bool = False):
        from dllm_jax import objectives
        from dllm_jax.sampling.api import generate_tokens

        if len(self.members) > 1:
            from dllm_jax.errors import ConfigError

            raise ConfigError(f"generate_until samples from one run, and model_args gave an ensemble of {len(self.members)}; "
                              "ensembles score loglikelihood tasks only: give one workdir for generation tasks")
        tok = self.run.tokenizer
        out = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 64))
            max_new = max(1, min(max_new, self.max_length - 1))
            opts = dict(self.gen)
            for key, value in objectives.build(self.run.config).sample_defaults(self.run.config).items():
                if opts.get(key) is None:  # the run's own settings (schedule, block size) unless given
                    opts[key] = value
            if "temperature" in kwargs:
                opts["temperature"] = float(kwargs["temperature"])
            if kwargs.get("do_sample") is False:
                opts["temperature"] = 0.0
            ids = self.fit_context(tok.encode(context), max_new)
            res = generate_tokens(self.run.model, self.run.params, tok, [ids], objective=self.run.config.objective,
                                  max_new_tokens=max_new, seed=self.seed, context_length=self.max_length, **opts)
            text = tok.decode(res.tokens[0][: int(res.lengths[0])])
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
            self.cache_hook.add_partial("generate_until", r.args, text)
        return out


__all__ = ["DllmJaxLM", "HAVE_LM_EVAL"]
