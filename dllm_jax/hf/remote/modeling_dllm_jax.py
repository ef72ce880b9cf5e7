"""A dllm_jax diffusion language model in PyTorch, for transformers (trust_remote_code=True).

Written by `dllm-jax export` for runs whose objective is not autoregressive (MDM, block
diffusion, uniform-state, GIDD); copied verbatim from dllm_jax/hf/remote/ (package data). The
network is dllm_jax.models.transformer.Transformer: token embedding, pre-RMSNorm blocks with
RoPE (rotate-half on the two halves of each head, frequencies theta^(-2i/head_dim)), optional
per-head q/k RMSNorm before RoPE and q/k/v biases, grouped-query attention, SwiGLU MLP, final
RMSNorm, untied or tied output head; tensor names are those of Llama / Qwen checkpoints.

    model = AutoModel.from_pretrained(dir, trust_remote_code=True, dtype=torch.float32)
    logits = model(input_ids).logits                      # the run's attention pattern and shift
    out = model.generate(input_ids, max_new_tokens=32)    # diffusion sampling, see `generate`

`forward` uses the run's attention pattern: bidirectional (MDM, uniform, GIDD), or block-causal
for block diffusion (position q sees k iff k // block_size <= q // block_size, blocks counted
from position 0: the clean half of BD3-LM's training pattern, what its sampler runs). With
`shift_logits` the output at position i is computed from the hidden state at i - 1 (position 0
keeps its own). Logits cover every embedding row ([MASK] and padding rows included).

`generate` is dllm_jax's sampler (dllm_jax/sampling/diffusion.py for MDM, block.py for block
diffusion) re-implemented here; at temperature 0 with a deterministic sampler
('topk_confidence', 'margin', 'entropy', 'threshold') it gives dllm-jax sample's tokens. The
'random' and 'ancestral' orders and temperature > 0 draw from torch's generator: the same
distributions, not the same tokens as dllm_jax's JAX noise. Ids never generated (dllm_jax's
rule, objectives.common.real_ids): ids >= config.vocab_limit (the tokenizer's vocabulary size),
config.mask_token_id (the extra id vocab_limit for runs trained by dllm_jax, or a piece below
it for an imported LLaDA / Dream / SDAR, whose real special tokens may lie above it) and
config.dllm_pad_token_id.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from transformers.utils import ModelOutput

from .configuration_dllm_jax import DllmJaxConfig

NEG = -1e30  # logit of an excluded id (finite, as dllm_jax.sampling.categorical.NEG)
SAMPLERS = ("topk_confidence", "margin", "entropy", "random", "ancestral", "threshold")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope(x, positions, base):
    """Rotary embedding on [B, L, H, D] at integer positions [B, L] (rotate-half form)."""
    half = x.shape[-1] // 2
    freqs = torch.pow(torch.tensor(float(base), dtype=torch.float32, device=x.device),
                      -torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = positions[..., None].float() * freqs
    sin, cos = torch.sin(angles)[:, :, None, :], torch.cos(angles)[:, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, k, d, dm = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        self.h, self.k, self.d, self.base = h, k, d, config.rope_theta
        self.q_proj = nn.Linear(dm, h * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(dm, k * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(dm, k * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(h * d, dm, bias=False)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(d, config.rms_norm_eps), RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, positions, mask, cache=None, write_at=None):
        """x [B, L, dm]; mask bool [B or 1, 1, L, Lk] (True = attend). `cache` (k, v), each
        [B, T, kv_heads, head_dim]: the new keys / values are written at slots `write_at`
        [B, L] (in place: the caller passes clones for a throw-away query) and the queries
        attend over all T slots."""
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.h, self.d)
        key = self.k_proj(x).view(b, length, self.k, self.d)
        value = self.v_proj(x).view(b, length, self.k, self.d)
        if self.q_norm is not None:
            q, key = self.q_norm(q), self.k_norm(key)
        q, key = rope(q, positions, self.base), rope(key, positions, self.base)
        if cache is not None:
            ck, cv = cache
            rows = torch.arange(b, device=x.device)[:, None]
            ck[rows, write_at] = key.to(ck.dtype)
            cv[rows, write_at] = value.to(cv.dtype)
            key, value = ck, cv
        rep = self.h // self.k
        q, key, value = q.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if rep > 1:
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, key.to(q.dtype), value.to(q.dtype), attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, mask, cache=None, write_at=None):
        x = x + self.self_attn(self.input_layernorm(x), positions, mask, cache, write_at)
        return x + self.mlp(self.post_attention_layernorm(x))


class DllmJaxPreTrainedModel(PreTrainedModel):
    config_class = DllmJaxConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class DllmJaxModel(DllmJaxPreTrainedModel):
    """The decoder stack: ids [B, L] -> final-normed hidden states [B, L, hidden_size]."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids, positions, mask, cache=None, write_at=None):
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, mask, None if cache is None else cache[i], write_at)
        return self.norm(x)


def _segment_mask(seg):
    """bool [B, 1, L, L]: q sees k iff they have the same segment id (dllm_jax's segment ids)."""
    return (seg[:, :, None] == seg[:, None, :])[:, None]


def _block_causal(length, block_size, device):
    blk = torch.arange(length, device=device) // block_size
    return (blk[None, :] <= blk[:, None])[None, None]


def _excluded(logits, vocab_limit, mask_id, pad_id):
    """Logits (float32) with the ids that are never generated set to NEG: ids >= vocab_limit
    (the extra [MASK], padding rows), mask_id (also a piece below vocab_limit: a released
    DLM's own [MASK]) and pad_id (dllm_jax.sampling.categorical.exclude_ids)."""
    ids = torch.arange(logits.shape[-1], device=logits.device)
    drop = (ids >= vocab_limit) | (ids == mask_id) | (ids == pad_id)
    return torch.where(drop, torch.full_like(logits, NEG, dtype=torch.float32), logits.float())


def _check_options(sampler, steps, threshold, temperature, top_k, top_p, block_length):
    """ValueError for a setting dllm-jax sample refuses too (dllm_jax.sampling.options.resolve)."""
    if sampler != "threshold" and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 (each step reveals tokens; 0 would return [MASK] ids)")
    if sampler == "threshold" and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy)")
    if int(top_k) < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 = off)")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 = off)")
    if block_length is not None and int(block_length) < 1:
        raise ValueError(f"block_length={block_length} must be >= 1 (or None for the default)")


def _filter(logits, temperature, top_k, top_p):
    """Temperature, top-k, nucleus top-p, as dllm_jax.sampling.categorical.filter_logits."""
    logits = logits / torch.tensor(max(float(temperature), 1e-6), dtype=torch.float32, device=logits.device)
    neg = torch.tensor(NEG, dtype=logits.dtype, device=logits.device)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = torch.where(logits < kth, neg, logits)
    if top_p < 1.0:
        srt = torch.sort(logits, dim=-1, descending=True).values
        probs = torch.softmax(srt, dim=-1)
        keep = (torch.cumsum(probs, dim=-1) - probs) < top_p
        cutoff = torch.where(keep, srt, torch.full_like(srt, math.inf)).min(dim=-1, keepdim=True).values
        logits = torch.where(logits < cutoff, neg, logits)
    return logits


def _draw(filt, greedy, generator):
    if greedy:
        return filt.argmax(dim=-1)
    u = torch.rand(filt.shape, generator=generator, device=filt.device, dtype=torch.float64).clamp_(min=1e-300)
    return (filt.double() - torch.log(-torch.log(u))).argmax(dim=-1)


def _mask_prob(t, schedule):
    return t if schedule == "linear" else math.cos(0.5 * math.pi * (1.0 - t))


def _reveal(kind, step, steps_per_block, masked, x0, probs, order_u, threshold, eos_id, eos_last, schedule):
    """bool [B, B_l]: which masked positions to reveal (dllm_jax.sampling.diffusion._reveal).
    `step` [B] each row's step in its block; ties rank the earlier position first."""
    if kind == "ancestral":
        q = []
        for s in step.tolist():
            p_t, p_s = _mask_prob(1.0 - s / steps_per_block, schedule), _mask_prob(1.0 - (s + 1) / steps_per_block, schedule)
            q.append(1.0 if s + 1 >= steps_per_block else (p_t - p_s) / max(p_t, 1e-12))
        return masked & (order_u < torch.tensor(q, dtype=torch.float32, device=masked.device)[:, None])
    conf = probs.gather(-1, x0[..., None])[..., 0]
    if kind in ("topk_confidence", "threshold"):
        score = conf
    elif kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        score = top2[..., 0] - top2[..., 1]
    elif kind == "entropy":
        score = (probs * torch.log(probs.clamp(min=1e-30))).sum(-1)
    else:  # random
        score = order_u
    is_eos = x0 == eos_id
    if eos_last:
        score = torch.where(is_eos, score - 1e6, score)
    score = torch.where(masked, score, torch.full_like(score, -math.inf))
    if kind == "threshold":
        best = F.one_hot(score.argmax(dim=1), masked.shape[1]).bool()
        confident = conf >= threshold
        if eos_last:
            confident = confident & ~is_eos
        return masked & (confident | best)
    left = masked.sum(dim=1, keepdim=True)
    steps_left = (steps_per_block - step[:, None]).clamp(min=1)
    k = (left + steps_left - 1) // steps_left
    rank = torch.argsort(torch.argsort(-score, dim=1, stable=True), dim=1, stable=True)
    return masked & (rank < k)


@dataclass
class DllmJaxDiffusionOutput(ModelOutput):
    """`generate(..., return_dict_in_generate=True)`: sequences [B, P + N] (prompt as given, then
    the generated tokens, `pad_token_id` after the first EOS); tokens [B, N] (the generated
    region only, dllm_jax's `SampleResult.tokens`: dllm_pad_token_id after the end); lengths [B]
    (tokens kept, EOS excluded); stopped_at_eos [B]; nfe (network calls for the batch)."""

    sequences: torch.LongTensor = None
    tokens: torch.LongTensor = None
    lengths: torch.LongTensor = None
    stopped_at_eos: torch.BoolTensor = None
    nfe: int = None


class DllmJaxDiffusionLM(DllmJaxPreTrainedModel):
    """The diffusion LM: `forward` -> logits with the run's attention pattern and shift;
    `generate` -> diffusion sampling (see the module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        self.model = DllmJaxModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def _head(self, hidden):
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return (hidden @ weight.T.to(hidden.dtype)).float()

    def _pattern(self, length, device):
        if self.config.attention == "block_causal":
            return _block_causal(length, int(self.config.block_size), device)
        return None

    def _logits(self, input_ids, positions, mask):
        hidden = self.model(input_ids, positions, mask)
        if self.config.shift_logits:
            hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        return self._head(hidden)

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kwargs):
        """input_ids [B, L] -> MaskedLMOutput(logits [B, L, vocab_size] float32).

        attention_mask [B, L] (optional, 1 = token, 0 = padding) acts as dllm_jax's segment ids:
        tokens attend to tokens, padding to padding; ANDed with the run's pattern.
        position_ids [B, L]: RoPE positions (default 0..L-1). labels are not used (the
        diffusion losses live in dllm_jax)."""
        b, length = input_ids.shape
        device = input_ids.device
        positions = position_ids if position_ids is not None else torch.arange(length, device=device).expand(b, length)
        mask = self._pattern(length, device)
        if attention_mask is not None:
            seg = _segment_mask(attention_mask.long())
            mask = seg if mask is None else mask & seg
        return MaskedLMOutput(logits=self._logits(input_ids, positions, mask))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=None, steps=None, block_length=None, sampler=None,
                 threshold=None, eos_last=None, temperature=None, top_k=0, top_p=1.0, generator=None, prepend_eos=True,
                 pad_token_id=None, return_dict_in_generate=False, **kwargs):
        """Diffusion sampling, dllm_jax's `generate_tokens` (the defaults are config.generation_defaults).

        input_ids: LongTensor [B, P] (or a list of id lists; None = one empty prompt); with
            attention_mask [B, P] (1 = token, 0 = padding, left or right) the padding is dropped.
            Ids must be real tokens: < config.vocab_limit and not config.mask_token_id.
        prepend_eos: put config.eos_token_id in front of every prompt, as dllm-jax sample does
            (the document separator of the packed training data; an empty prompt = a new
            document). Not part of the returned sequences.
        max_new_tokens: N, positions to generate (default 64).
        sampler: 'topk_confidence' (default), 'margin', 'entropy', 'random', 'ancestral',
            'threshold' (dllm_jax/sampling/diffusion.py).
        steps: decoding steps over the whole region (default N; not for 'threshold'). MDM: a
            multiple of the number of blocks; block diffusion: ceil(steps / blocks) per block.
        block_length: MDM semi-autoregressive block (divides N; default N = one block); block
            diffusion: the run's block_size (default), blocks aligned to the row start.
        threshold: 'threshold' sampler's confidence tau (default 0.9).
        eos_last: a candidate EOS is committed only when nothing else is left (default True).
        temperature: 0 (default) = greedy; > 0 draws with torch's `generator`.
        top_k, top_p: filters of the candidate draw (0 / 1.0 = off).
        pad_token_id: fills `sequences` after the first EOS (default config.pad_token_id, else EOS).
        return_dict_in_generate: return a DllmJaxDiffusionOutput instead of `sequences`.

        Returns sequences LongTensor [B, P + N]: the prompt as given, then the generated
        tokens up to and including the first EOS, pad_token_id after it. Block diffusion
        stops a row at the first finished block holding an EOS. The run's KV cache for block
        diffusion is exact; MDM recomputes the whole canvas each step (no prefix cache, no
        classifier-free guidance, no infilling: use dllm-jax sample for those)."""
        cfg = self.config
        d = dict(cfg.generation_defaults or {})
        family = {"mdm": "mdm", "block_diffusion": "block"}.get(cfg.objective)
        if family is None:
            raise NotImplementedError(f"generate for objective={cfg.objective!r} is not implemented here; import the checkpoint "
                                      "(dllm-jax import --hf DIR --workdir W) and use dllm-jax sample --workdir W")
        n = int(max_new_tokens if max_new_tokens is not None else d.get("max_new_tokens", 64))
        sampler = sampler or d.get("sampler") or ("threshold" if threshold is not None else "topk_confidence")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}; choose one of {SAMPLERS}")
        temperature = float(d.get("temperature", 0.0) if temperature is None else temperature)
        eos_last = bool(d.get("eos_last", True) if eos_last is None else eos_last)
        if sampler == "threshold":
            if steps is not None:
                raise ValueError("steps does not apply to sampler 'threshold'")
            threshold, steps = float(0.9 if threshold is None else threshold), 0
        else:
            if threshold is not None:
                raise ValueError(f"threshold applies to sampler 'threshold' only, not {sampler!r}")
            steps, threshold = int(n if steps is None else steps), 0.0
        if n < 1:
            raise ValueError(f"max_new_tokens={n} must be >= 1")
        _check_options(sampler, steps, threshold, temperature, top_k, top_p, block_length)
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; give [batch, prompt length] (e.g. input_ids[None] for one prompt)")
        device = self.model.embed_tokens.weight.device
        rows = self._prompt_rows(input_ids, attention_mask, prepend_eos)
        opts = dict(sampler=sampler, steps=steps, threshold=threshold, eos_last=eos_last, temperature=temperature,
                    top_k=int(top_k), top_p=float(top_p), generator=generator, device=device)
        if family == "mdm":
            bl = int(block_length or d.get("block_length") or n)
            if n % bl:
                raise ValueError(f"block_length={bl} must divide max_new_tokens={n}")
            if steps and steps % (n // bl):
                raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n // bl})")
            region, produced, nfe = self._generate_mdm(rows, n, bl, **opts)
        else:
            bl = int(block_length or d.get("block_length") or cfg.block_size)
            region, produced, nfe = self._generate_block(rows, n, bl, **opts)
        eos, ours_pad = cfg.eos_token_id, cfg.dllm_pad_token_id
        idx = torch.arange(n, device=device)[None, :]
        is_eos = (region == eos) & (idx < produced[:, None])
        stopped = is_eos.any(dim=1)
        lengths = torch.where(stopped, is_eos.int().argmax(dim=1), produced)
        tokens = torch.where(idx < lengths[:, None], region, torch.full_like(region, ours_pad))
        hf_pad = getattr(cfg, "pad_token_id", None)
        fill = pad_token_id if pad_token_id is not None else (hf_pad if hf_pad is not None else eos)
        keep = (idx < lengths[:, None]) | ((idx == lengths[:, None]) & stopped[:, None])
        generated = torch.where(keep, region, torch.full_like(region, fill))
        prompt = self._as_tensor(input_ids, device)
        sequences = torch.cat([prompt, generated], dim=1)
        if not return_dict_in_generate:
            return sequences
        return DllmJaxDiffusionOutput(sequences=sequences, tokens=tokens, lengths=lengths, stopped_at_eos=stopped, nfe=nfe)

    def _as_tensor(self, input_ids, device):
        if input_ids is None:
            return torch.zeros((1, 0), dtype=torch.long, device=device)
        if isinstance(input_ids, torch.Tensor):
            return input_ids.to(device).long()
        width = max(len(r) for r in input_ids)
        pad = getattr(self.config, "pad_token_id", None)
        pad = self.config.eos_token_id if pad is None else pad
        return torch.tensor([[pad] * (width - len(r)) + list(r) for r in input_ids], dtype=torch.long, device=device)

    def _prompt_rows(self, input_ids, attention_mask, prepend_eos):
        if input_ids is None:
            prompts = [[]]
        elif isinstance(input_ids, torch.Tensor):
            ids = input_ids.tolist()
            keep = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in ids]
            prompts = [[t for t, m in zip(r, k) if m] for r, k in zip(ids, keep)]
        else:
            prompts = [list(map(int, r)) for r in input_ids]
        limit, mask_id = int(self.config.vocab_limit), self.config.mask_token_id
        for p in prompts:
            bad = [t for t in p if not 0 <= t < limit or t == mask_id]
            if bad:
                raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {limit}) or the mask id {mask_id} "
                                 "(no infilling here: use dllm-jax sample)")
        return [([self.config.eos_token_id] if prepend_eos else []) + p for p in prompts]

    def _candidates(self, logits, masked, step, steps_per_block, sampler, threshold, eos_last, temperature, top_k, top_p, generator):
        """(x0 [B, B_l], reveal [B, B_l]) for one step on block logits [B, B_l, V]."""
        cfg = self.config
        lg = _excluded(logits, int(cfg.vocab_limit), cfg.mask_token_id, cfg.dllm_pad_token_id)
        probs = torch.softmax(lg, dim=-1)
        x0 = _draw(_filter(lg, temperature, top_k, top_p), temperature == 0.0, generator)
        order_u = torch.rand(masked.shape, generator=generator, device=masked.device)
        reveal = _reveal(sampler, step, steps_per_block, masked, x0, probs, order_u, threshold, cfg.eos_token_id, eos_last,
                         cfg.schedule)
        return x0, reveal

    def _generate_mdm(self, rows, n, bl, sampler, steps, threshold, eos_last, temperature, top_k, top_p, generator, device):
        """dllm_jax.sampling.diffusion.decode (no CFG, no prefix cache), as api._run_mdm lays it out:
        prompts right-aligned at column P (left padding: pad id, its own segment), region [P, P + N)."""
        cfg = self.config
        mask_id, pad_id = cfg.mask_token_id, cfg.dllm_pad_token_id
        b, p = len(rows), max(len(r) for r in rows)
        total, nb = p + n, n // bl
        x = torch.full((b, total), pad_id, dtype=torch.long, device=device)
        pad = torch.tensor([p - len(r) for r in rows], device=device)
        for i, r in enumerate(rows):
            x[i, p - len(r):p] = torch.tensor(r, dtype=torch.long, device=device)
        x[:, p:] = mask_id
        cols = torch.arange(total, device=device)
        mask = _segment_mask((cols[None, :] >= pad[:, None]).long()) if len(set(map(len, rows))) > 1 else None
        per_row = bl < n  # rows advance through their own blocks, RoPE positions from their own first token
        positions = (cols[None, :] - pad[:, None]).clamp(min=0) if per_row else cols.expand(b, total)
        spb = steps // nb if steps else 0
        max_iters = n if sampler == "threshold" else nb * spb
        offs = torch.arange(bl, device=device)[None, :]
        rows_idx = torch.arange(b, device=device)[:, None]

        def next_block(x, j):
            has_mask = (x[:, p:] == mask_id).view(b, nb, bl).any(dim=2)
            blocks = torch.arange(nb, device=device)[None, :]
            if per_row:
                cand = has_mask & (blocks >= j[:, None])
                return torch.where(cand.any(dim=1), cand.int().argmax(dim=1), torch.full_like(j, nb))
            cand = has_mask.any(dim=0, keepdim=True) & (blocks >= j[:1, None])
            first = cand.int().argmax(dim=1) if bool(cand.any()) else torch.full((1,), nb, device=device)
            return first.expand(b).clone()

        block = next_block(x, torch.zeros(b, dtype=torch.long, device=device))
        step = torch.zeros(b, dtype=torch.long, device=device)
        logits, dirty, nfe = None, True, 0
        for _ in range(max_iters):
            if not bool((block < nb).any()):
                break
            idx = p + block.clamp(max=nb - 1)[:, None] * bl + offs  # [B, B_l]
            if dirty:
                full = self._logits(x, positions, mask)
                logits, nfe = full[rows_idx, idx], nfe + 1
            xb = x[rows_idx, idx]
            masked = xb == mask_id
            x0, reveal = self._candidates(logits, masked, step, spb, sampler, threshold, eos_last, temperature, top_k, top_p,
                                          generator)
            x[rows_idx, idx] = torch.where(reveal, x0, xb)
            nj = next_block(x, block)
            new_block = nj != block
            step = torch.where(new_block, torch.zeros_like(step), step + 1)
            dirty = bool(reveal.any() or new_block.any())
            block = nj
        return x[:, p:], torch.full((b,), n, device=device), nfe

    def _generate_block(self, rows, n, bl, sampler, steps, threshold, eos_last, temperature, top_k, top_p, generator, device):
        """dllm_jax.sampling.block.decode with its exact KV cache, as api._run_block lays it out:
        each row [EOS] + prompt from position 0, [MASK] after it, blocks of `bl` from the row
        start; a row's finished block is run once more to write its keys / values."""
        cfg = self.config
        if cfg.shift_logits:
            raise ValueError("block-diffusion decoding with a KV cache cannot apply shift_logits")
        mask_id = cfg.mask_token_id
        b = len(rows)
        row_len = torch.tensor([len(r) for r in rows], device=device)
        total = -(-(int(row_len.max()) + n) // bl) * bl
        n_blocks = total // bl
        x = torch.full((b, total), mask_id, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            x[i, :len(r)] = torch.tensor(r, dtype=torch.long, device=device)
        gen_end = row_len + n
        blocks = -(-n // bl)
        spb = -(-steps // blocks) if steps else 0
        max_iters = (blocks + 1) * (bl if sampler == "threshold" else max(spb, 1))
        offs = torch.arange(bl, device=device)[None, :]
        rows_idx = torch.arange(b, device=device)[:, None]
        slots = torch.arange(total, device=device)
        dtype = self.model.embed_tokens.weight.dtype
        shape = (b, total, cfg.num_key_value_heads, cfg.head_dim)
        cache = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                 for _ in range(cfg.num_hidden_layers)]
        # prefill: the whole canvas under the block-causal pattern (slots past a row's first block are rewritten before use)
        self.model(x, slots.expand(b, total), _block_causal(total, bl, device), cache, slots.expand(b, total))
        nfe = 1

        def block_call(xb, idx, cache):
            valid = slots[None, :] < (idx[:, :1] + bl)  # cached slots before the block, and the block itself
            hidden = self.model(xb, idx, valid[:, None, None, :], cache, idx)
            return self._head(hidden)

        blk = torch.div(row_len, bl, rounding_mode="floor")
        step = torch.zeros(b, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        logits, dirty = None, True
        for _ in range(max_iters):
            if bool(done.all()):
                break
            idx = blk.clamp(max=n_blocks - 1)[:, None] * bl + offs
            if dirty:
                logits = block_call(x[rows_idx, idx], idx, [(k.clone(), v.clone()) for k, v in cache])
                nfe += 1
            xb = x[rows_idx, idx]
            masked = (xb == mask_id) & ~done[:, None]
            x0, reveal = self._candidates(logits, masked, step, spb, sampler, threshold, eos_last, temperature, top_k, top_p,
                                          generator)
            xb = torch.where(reveal, x0, xb)
            x[rows_idx, idx] = xb
            finished = ~done & ~(xb == mask_id).any(dim=1)
            if bool(finished.any()):
                block_call(xb, idx, cache)  # commit: write the finished blocks' keys / values
                nfe += 1
            in_region = (idx >= row_len[:, None]) & (idx < gen_end[:, None])
            eos = ((xb == cfg.eos_token_id) & in_region).any(dim=1)
            new_blk = torch.where(finished, blk.clamp(max=n_blocks - 1) + 1, blk)
            done = done | (finished & (eos | (new_blk * bl >= gen_end)))
            step = torch.where(finished, torch.zeros_like(step), step + 1)
            dirty = bool(reveal.any() or finished.any())
            blk = new_blk
        region = torch.stack([x[i, int(row_len[i]):int(row_len[i]) + n] for i in range(b)])
        filled = region != mask_id
        produced = torch.where(filled.all(dim=1), torch.full_like(row_len, n), filled.int().argmin(dim=1))
        return region, produced, nfe


__all__ = ["DllmJaxDiffusionLM", "DllmJaxModel", "DllmJaxPreTrainedModel", "DllmJaxDiffusionOutput"]
