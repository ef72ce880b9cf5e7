"""Experiment configs: ml_collections files with `get_config()`, `--config.KEY=VALUE` overrides.

Every experiment starts from `default_config()`, so every run has every key below and a
typo in an override or an experiment file is an error, not a silently ignored setting.
`validate()` checks values and says how to fix a bad one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import sys
import traceback

import ml_collections

from dllm_jax.errors import ConfigError

SOURCES = ("text", "jsonl", "parquet", "tfds", "array_record")
SCHEDULES = ("cosine", "wsd", "constant")
MASK_SCHEDULES = ("linear", "cosine")
WEIGHTINGS = ("elbo", "realized")
T_PROPOSALS = ("uniform", "beta", "logit_normal")  # = objectives.time_proposal.PROPOSALS (tested)
T_PROPOSAL_MODES = ("recipe", "importance")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "minimal")
DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
    """All keys a run has, with their defaults. Experiments override a subset."""
    c = ml_collections.ConfigDict()
    c.objective = "mdm"  # 'ar' (next-token), 'mdm' (absorbing-state masked diffusion), 'block_diffusion' (BD3-LM), 'uniform' (uniform-state diffusion, UDLM/DUO) or 'gidd' (GIDD mask + uniform hybrid)
    c.seed = 0  # fixes init, data order and masks

    c.model = ml_collections.ConfigDict()
    c.model.d_model = 256  # width
    c.model.n_layers = 4  # transformer blocks
    c.model.n_heads = 4  # attention (query) heads
    c.model.n_kv_heads = 0  # 0 = n_heads (no GQA)
    c.model.head_dim = 0  # 0 = d_model // n_heads
    c.model.d_ff = 0  # 0 = SwiGLU default: 8/3 * d_model rounded up to a multiple of 64
    c.model.rope_base = 10000.0  # RoPE base frequency
    c.model.norm_eps = 1e-6  # RMSNorm epsilon
    c.model.qk_norm = True  # RMSNorm on queries and keys per head
    c.model.attention_bias = False  # biases on the q/k/v projections (Qwen2 checkpoints)
    c.model.tie_embeddings = False  # output head = embedding transposed (checkpoints with tie_word_embeddings)
    c.model.shift_logits = False  # MDM only: position i-1's output predicts token i, reusing an AR head (Dream, DiffuLLaMA)
    c.model.init_std = 0.02  # normal init std (output projections scaled by 1/sqrt(2 n_layers))
    c.model.dtype = "float32"  # compute dtype; parameters are always float32
    c.model.scan_layers = True  # nn.scan over blocks (fast compiles, stacked params)
    c.model.remat = "none"  # one of REMAT_POLICIES
    c.model.dropout = 0.0  # residual dropout (the AR regularisation ablation)
    c.model.attention_impl = "auto"  # 'auto' (TPU: splash, GPU: cudnn if bf16/fp16, else xla), 'xla', 'cudnn' or 'splash' (Pallas TPU kernel; seq_len a multiple of 128)
    c.model.vocab_multiple = 128  # model vocab rows = tokenizer vocab + 1 ([MASK]) (+ 1 [PAD] if it has no pad token), rounded up
    c.model.num_experts = 0  # 0 = dense SwiGLU MLP; > 0 = token-choice top-k MoE MLP in every block
    c.model.experts_per_token = 2  # top-k experts per token (MoE)
    c.model.capacity_factor = 1.25  # MoE expert capacity = factor * tokens * k / experts (per device); 0 = dropless
    c.model.router_aux_weight = 0.01  # weight of the MoE load-balancing loss added to the train loss
    c.model.loss_chunk = 0  # 0 = plain loss; > 0 = the loss over chunks of this many positions (no [B, L, V] logits)

    c.mdm = ml_collections.ConfigDict()
    c.mdm.schedule = "linear"  # masking schedule alpha(t): 'linear' (mask prob t) or 'cosine' (uniform / gidd: their time warp tau = p(t))
    c.mdm.eps = 1e-3  # t ~ U(eps, 1) (uniform / gidd: U(eps, 1 - eps))
    c.mdm.antithetic = True  # stratified t across the batch (every diffusion objective)
    c.mdm.weighting = "elbo"  # 'elbo': CE/p(t); 'realized': CE/(realised masked fraction), as the study's code
    c.mdm.random_length_prob = 0.01  # fraction of steps trained at a random shorter length
    c.mdm.anneal_steps = 0  # > 0: attention annealed from causal to bidirectional over this many steps (DiffuLLaMA); 0 = off
    c.mdm.t_proposal = "uniform"  # training t (MDM and block diffusion): 'uniform' (U(eps, 1)), 'beta' (Beta(t_beta_a, t_beta_b)) or 'logit_normal' (sigmoid of N(t_logit_mu, t_logit_sigma^2)), mapped onto [eps, 1); validation and eval always draw uniformly
    c.mdm.t_proposal_mode = "recipe"  # 'recipe': loss weighted as usual (a reweighted ELBO, Hong et al. 2026); 'importance': loss x p_uniform(t)/q(t) (an unbiased ELBO); the logged `elbo` is importance-weighted either way
    c.mdm.t_beta_a = 2.0  # t_proposal='beta': shape a > 0 (a, b > 1: bell-shaped)
    c.mdm.t_beta_b = 2.0  # t_proposal='beta': shape b > 0
    c.mdm.t_logit_mu = 0.0  # t_proposal='logit_normal': mean of logit(s)
    c.mdm.t_logit_sigma = 1.0  # t_proposal='logit_normal': standard deviation of logit(s), > 0

    c.block_diffusion = ml_collections.ConfigDict()  # objective='block_diffusion' (noise settings: the mdm group)
    c.block_diffusion.block_size = 16  # tokens per block; divides data.seq_len (= seq_len: MDM; 1: AR)
    c.block_diffusion.grow_steps = 0  # > 0: AR-to-block-diffusion (NBDiff): block size doubles 1, 2, 4, ..., block_size in equal phases over this many steps; 0 = off
    c.block_diffusion.ar_loss_weight = 0.0  # > 0: NBDiff's auxiliary next-token loss on the clean half (weight; `loss` stays the NELBO)

    c.gidd = ml_collections.ConfigDict()  # objective='gidd' (time draws and schedule: the mdm group)
    c.gidd.p_u = 0.2  # uniform-noise proportion in [0, 1): the share of tokens that are uniform noise at the schedule's midpoint tau = 1/2 (0 = the MDM)
    c.gidd.gamma = 1.0  # mixing exponent in (0, 2]: uniform share c / (1 + c), c = B (tau (1 - tau))^(gamma/2), B = 2^gamma p_u / (1 - p_u)
    c.gidd.weighting = "elbo"  # training weight: 'elbo', 'clip' (ELBO weight clipped to [min, max]) or 'dynamic' (GIDD's reference weighting)
    c.gidd.min_weight = 0.0  # lower clip of 'clip' / 'dynamic'
    c.gidd.max_weight = 2.0  # upper clip of 'clip' / 'dynamic' (GIDD: 2)

    c.ar = ml_collections.ConfigDict()
    c.ar.input_mask_rate = 0.0  # AR regularisation ablation: replace this fraction of inputs by [MASK]
    c.ar.mir_weight = 0.0  # > 0: masked-input regularisation (Xu et al. 2026, dc_pretrain): + this weight x next-token loss of a masked copy of each row (one more pass); 0 = off
    c.ar.mir_rate = 0.5  # MIR: each row's masking rate r ~ U(ar.mir_rate_min, ar.mir_rate) (dc_pretrain: U(0, 0.5))
    c.ar.mir_rate_min = 0.0  # MIR: lower end of the rate's range (= ar.mir_rate: a fixed rate)
    c.ar.mir_prefix = 8  # MIR: the first this many positions of a row are never masked (dc_pretrain's ltr_length)

    c.data = ml_collections.ConfigDict()
    c.data.source = "text"  # 'text', 'jsonl', 'parquet' (files; .gz/.bz2/.xz/.zst read directly), 'tfds' or 'array_record'
    c.data.paths = ""  # file sources: one string of comma-separated globs (local or gs://...; ** recurses)
    c.data.text_split = "file"  # text: 'file' | 'paragraph' | 'line' (one file under 'file' is split at blank lines)
    c.data.tfds_name = ""  # e.g. 'lm1b', 'tiny_shakespeare' (prepared in the TFDS data dir)
    c.data.tfds_split = "train"  # TFDS split to read documents from
    c.data.tfds_data_dir = ""  # '' = TFDS default (~/tensorflow_datasets)
    c.data.text_key = "text"  # field (JSONL), column (Parquet) or feature (TFDS) holding the text
    c.data.seq_len = 128  # tokens per packed training sequence
    c.data.unique_tokens = 0  # U: unique training tokens (rounded down to whole batches); 0 = all available
    c.data.epochs = 1  # E: passes over the unique tokens (each sequence is seen exactly E times)
    c.data.val_tokens = 16384  # held-out validation tokens (whole documents, taken before the training budget)
    c.data.tokenizer = ""  # path to a SentencePiece model; '' = train one into the workdir
    c.data.vocab_size = 1024  # pieces of a tokenizer trained here (>= 512 recommended)
    c.data.tokenizer_type = "unigram"  # 'unigram' or 'bpe' (SentencePiece)
    c.data.split_special_tokens = True  # True: special-token strings in corpus text (e.g. '</s>') are text, as transformers' split_special_tokens; False: they become their ids
    c.data.eos_token = ""  # the special token that ends every document (a real, trained token); '' = the tokenizer's own
    c.data.pad_token = ""  # the special token used for padding only (never EOS); '' = the tokenizer's own, else an extra id
    c.data.mask_token = ""  # the special token that is [MASK] (a released diffusion LM's own, set by init.from_hf); '' = an extra id past the vocabulary
    c.data.store = ""  # a token store made by `dllm-jax prepare` to train from; '' = prepare the source into data.cache_dir
    c.data.cache_dir = ""  # where sources are prepared into token stores; '' = $DLLM_JAX_CACHE or ~/.cache/dllm_jax
    c.data.max_docs = 0  # use only the first N documents of the source (0 = all)
    c.data.document_attention = False  # True: attention does not cross document boundaries (EOS)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global, in sequences
    c.train.grad_accum = 1  # micro-batches per step (same update, less memory)
    c.train.num_steps = 0  # 0 = U * E / (batch_size * seq_len)
    c.train.lr = 3e-3  # peak learning rate (AdamW)
    c.train.min_lr_ratio = 0.1  # final LR = lr * min_lr_ratio (cosine and WSD)
    c.train.warmup_steps = 100  # linear warmup from 0; must be shorter than the run (train refuses warmup >= its steps)
    c.train.schedule = "cosine"  # 'cosine', 'wsd' (warmup-stable-decay) or 'constant'
    c.train.decay_fraction = 0.2  # WSD: final fraction of steps spent decaying
    c.train.b1 = 0.9  # AdamW beta1
    c.train.b2 = 0.95  # AdamW beta2
    c.train.member_seed = 0  # ensemble member: > 0 draws another init, dropout / noise and data order (never which tokens are U or validation); the members of an ensemble differ only in it
    c.train.weight_decay = 0.1  # decoupled, on weight matrices and embeddings (not norms)
    c.train.clip_norm = 1.0  # global gradient-norm clipping
    c.train.log_every = 10  # steps per metrics record (averaged over the window)
    c.train.eval_every = 100  # 0 = only at the end
    c.train.eval_batches = 8  # validation batches per evaluation (0 = the whole split)
    c.train.checkpoint_every = 200  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    c.train.keep_last = 2  # newest checkpoints kept
    c.train.keep_every = 0  # 0 = keep no extra periodic checkpoints
    c.train.async_checkpoint = True  # write checkpoints in the background
    c.train.progress = True  # progress bar on a terminal (off a terminal, or False: one plain line per log record and evaluation)
    c.train.profile_steps = ""  # e.g. '10,15': a jax.profiler trace of steps 10 to 15 into <workdir>/profile/ ('' = none; '12' = one step)
    c.train.tensorboard = True  # TensorBoard event files in <workdir>/tensorboard
    c.train.wandb_project = ""  # Weights & Biases project to log to ('' = none; pip install 'dllm_jax[wandb]'; WANDB_MODE=offline works)

    c.eval = ml_collections.ConfigDict()  # evaluation during training and defaults of `dllm-jax eval`
    c.eval.at_epoch_end = True  # also validate (and cloze, when on) at the end of every epoch
    c.eval.cloze_every = 0  # steps between cloze evaluations (validation-text multiple choice); 0 = off
    c.eval.at_epochs = ""  # e.g. '1,2,4,8': at the first step at or after these epochs validate, score the cloze task and checkpoint (kept subject to train.keep_last; '' = none)
    c.eval.cloze_examples = 64  # cloze items (passages); 0 = every validation row
    c.eval.cloze_choices = 4  # choices per cloze item (1 true + distractors)
    c.eval.cloze_length = 0  # tokens in each choice; 0 = data.seq_len // 4
    c.eval.cloze_context = "left"  # 'left': the choice ends the passage; 'both': a one-token blank inside it, text on both sides (needs cloze_length=1; AR and MDM)
    c.eval.mc_samples = 16  # diffusion Monte Carlo samples per choice (LLaDA / answer ELBO) or per sequence (ELBO)
    c.eval.batch_size = 64  # rows per scoring batch
    c.eval.val_draws = 4  # diffusion: (t, noise) draws per validation row in training-time validation (Monte Carlo ELBO)

    c.init = ml_collections.ConfigDict()  # start a NEW run from existing weights (ignored on resume: the run's checkpoint wins)
    c.init.from_hf = ""  # local Hugging Face checkpoint dir (Llama/Mistral/Qwen2/Qwen3): sets model.*, weights, tokenizer
    c.init.from_workdir = ""  # a dllm-jax run dir: its latest params (fresh optimizer, step 0), model.* and tokenizer

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = fill with the remaining devices (of each slice: these four sizes are per slice)
    c.mesh.fsdp = 1  # fully-sharded data parallelism (parameters split over it)
    c.mesh.tensor = 1  # tensor parallelism (heads, MLP, vocab)
    c.mesh.expert = 1  # expert parallelism (MoE weights are split over it; it also shards the batch)
    # several slices joined over DCN (docs/pods.md): the four sizes above are per slice (ICI); these spread the data / fsdp axis over slices
    c.mesh.dcn_data = -1  # slices along the data axis (-1 = every slice not on dcn_fsdp; dcn_data * dcn_fsdp = the number of slices)
    c.mesh.dcn_fsdp = 1  # slices along the fsdp axis (parameters all-gathered over DCN: slow; prefer dcn_data)
    c.mesh.num_slices = 0  # 0 = the devices' slice_index (TPU) or one slice; N on devices without one (CPU, GPU) = N contiguous simulated slices
    return c


# ---------------------------------------------------------------- value ranges
@dataclasses.dataclass(frozen=True)
class Rule:
    """The values a key accepts: 'int' / 'float' in [lo, hi] (open ends where said; floats
    must be finite), 'bool', 'str', 'choice' (one of `choices`) or 'mesh' (-1 or >= 1)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind in ("bool", "str"):
            return f"a {self.kind}"
        if self.kind == "mesh":
            return "a positive integer or -1 (fill with the remaining devices)"
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.lo is None and self.hi is None:
            return what
        num = (lambda v: f"{int(v):,}") if self.kind == "int" else (lambda v: f"{v:g}")
        if self.hi is None:
            return f"{what} {'>' if self.lo_open else '>='} {num(self.lo)}"
        return f"{what} in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"

    def accepts(self, value) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind in ("int", "mesh") and not isinstance(value, int):
            return False
        if self.kind == "mesh":
            return value == -1 or value >= 1
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


def _int(lo, hi=None):
    return Rule("int", lo, hi)


def _float(lo, hi=None, lo_open=False, hi_open=False):
    return Rule("float", lo, hi, lo_open, hi_open)


def _one_of(*choices):
    return Rule("choice", choices=tuple(choices))


BOOL, STR, MESH = Rule("bool"), Rule("str"), Rule("mesh")
FINITE = Rule("float")  # any finite number
UNIT = _float(0.0, 1.0)  # [0, 1]
HALF_OPEN_UNIT = _float(0.0, 1.0, hi_open=True)  # [0, 1)
POSITIVE = _float(0.0, lo_open=True)  # (0, inf)

# Every key of `default_config()` and the values it accepts, checked up front by `validate()`
# (tests/test_config.py checks that no key is missing here).
RULES = {
    "objective": STR,  # one of the registered objectives (dllm_jax.objectives.names()), checked in validate()
    "seed": _int(0, 2**31 - 1),
    # upper bounds far above any real model (the largest have d_model ~ 2^14, d_ff ~ 2^16, ~128 layers): a
    # mistyped size is refused here, before JAX sees a number it cannot represent; the memory check
    # (dllm_jax/memory.py) refuses what is representable but does not fit
    "model.d_model": _int(1, 1 << 20), "model.n_layers": _int(1, 1 << 14), "model.n_heads": _int(1, 1 << 14),
    "model.n_kv_heads": _int(0, 1 << 14), "model.head_dim": _int(0, 1 << 16), "model.d_ff": _int(0, 1 << 24), "model.rope_base": POSITIVE, "model.norm_eps": POSITIVE,
    "model.qk_norm": BOOL, "model.init_std": POSITIVE, "model.dtype": _one_of(*DTYPES), "model.scan_layers": BOOL,
    "model.remat": _one_of(*REMAT_POLICIES), "model.dropout": HALF_OPEN_UNIT, "model.attention_impl": _one_of("auto", "xla", "cudnn", "splash"),
    "model.vocab_multiple": _int(1, 1 << 20), "model.num_experts": _int(0, 1 << 16), "model.experts_per_token": _int(1, 1 << 16),
    "model.capacity_factor": _float(0.0), "model.router_aux_weight": _float(0.0), "model.loss_chunk": _int(0),
    "model.attention_bias": BOOL, "model.tie_embeddings": BOOL, "model.shift_logits": BOOL, "mdm.anneal_steps": _int(0),
    "init.from_hf": STR, "init.from_workdir": STR,
    "mdm.schedule": _one_of(*MASK_SCHEDULES), "mdm.eps": _float(0.0, 1.0, lo_open=True, hi_open=True),
    "mdm.antithetic": BOOL, "mdm.weighting": _one_of(*WEIGHTINGS), "mdm.random_length_prob": UNIT,
    "mdm.t_proposal": _one_of(*T_PROPOSALS), "mdm.t_proposal_mode": _one_of(*T_PROPOSAL_MODES),
    "mdm.t_beta_a": POSITIVE, "mdm.t_beta_b": POSITIVE, "mdm.t_logit_mu": FINITE, "mdm.t_logit_sigma": POSITIVE,
    "ar.input_mask_rate": HALF_OPEN_UNIT, "ar.mir_weight": _float(0.0), "ar.mir_rate": UNIT, "ar.mir_rate_min": UNIT,
    "ar.mir_prefix": _int(0), "block_diffusion.block_size": _int(1),
    "block_diffusion.grow_steps": _int(0), "block_diffusion.ar_loss_weight": _float(0.0),
    "gidd.p_u": HALF_OPEN_UNIT, "gidd.gamma": _float(0.0, 2.0, lo_open=True), "gidd.weighting": _one_of("elbo", "clip", "dynamic"),
    "gidd.min_weight": _float(0.0), "gidd.max_weight": POSITIVE,
    "data.source": _one_of(*SOURCES), "data.paths": STR, "data.text_split": _one_of("file", "paragraph", "line"),
    "data.tfds_name": STR, "data.tfds_split": STR, "data.tfds_data_dir": STR, "data.text_key": STR,
    "data.seq_len": _int(2), "data.unique_tokens": _int(0), "data.epochs": _int(1, 10**6), "data.val_tokens": _int(0),
    "data.tokenizer": STR, "data.vocab_size": _int(1, 1 << 20), "data.tokenizer_type": _one_of("unigram", "bpe"), "data.split_special_tokens": BOOL,
    "data.eos_token": STR, "data.pad_token": STR, "data.mask_token": STR,
    "data.cache_dir": STR, "data.store": STR, "data.max_docs": _int(0), "data.document_attention": BOOL,
    "train.batch_size": _int(1), "train.grad_accum": _int(1), "train.num_steps": _int(0), "train.lr": POSITIVE,
    "train.min_lr_ratio": UNIT, "train.warmup_steps": _int(0), "train.schedule": _one_of(*SCHEDULES),
    "train.decay_fraction": _float(0.0, 1.0, lo_open=True), "train.b1": HALF_OPEN_UNIT, "train.b2": HALF_OPEN_UNIT,
    "train.weight_decay": _float(0.0), "train.member_seed": _int(0, 2**31 - 1), "train.clip_norm": POSITIVE, "train.log_every": _int(1), "train.eval_every": _int(0),
    "train.eval_batches": _int(0), "train.checkpoint_every": _int(1), "train.keep_last": _int(1), "train.keep_every": _int(0),
    "train.async_checkpoint": BOOL, "train.progress": BOOL, "train.tensorboard": BOOL, "train.profile_steps": STR, "train.wandb_project": STR,
    "eval.at_epoch_end": BOOL, "eval.at_epochs": STR, "eval.cloze_every": _int(0), "eval.cloze_examples": _int(0), "eval.cloze_choices": _int(2),
    "eval.cloze_length": _int(0), "eval.cloze_context": _one_of("left", "both"), "eval.mc_samples": _int(1), "eval.batch_size": _int(1), "eval.val_draws": _int(1),
    "mesh.data": MESH, "mesh.fsdp": MESH, "mesh.tensor": MESH, "mesh.expert": MESH,
    "mesh.dcn_data": MESH, "mesh.dcn_fsdp": MESH, "mesh.num_slices": _int(0, 1 << 16),
}

# ---------------------------------------------------------------- what may change on one run
# Keys that say only HOW a run is computed, logged, checkpointed and evaluated, or WHERE its
# data is read from, never WHAT it learns (a trailing '.' is a whole group). They may differ
# between a run's workdir and the command resuming it (`train`) or evaluating it (`eval`),
# and they never name a series in a sweep report (`study.runs`).
HOW_KEYS = ("model.remat", "model.loss_chunk", "model.attention_impl", "train.grad_accum",
            "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_last",
            "train.keep_every", "train.async_checkpoint", "train.progress", "train.tensorboard", "train.profile_steps", "train.wandb_project",
            "data.cache_dir", "data.paths", "data.store", "data.tfds_data_dir", "data.tokenizer", "eval.", "mesh.")
# Optimiser settings to change after a divergence ("lower train.lr or raise train.warmup_steps,
# then rerun"): changeable on resume, where the remaining steps use the new values. They do
# name a series in a sweep (an LR sweep varies them on purpose).
RECOVERY_KEYS = ("train.lr", "train.warmup_steps", "train.clip_norm")
# The run's length: may GROW on resume, of an unfinished or a finished run (an extension, with
# its optimiser state; `train` refuses a shorter run). Batches 1..N keep their data (the loader's
# order is per global step, each epoch a shuffle seeded by (seed, epoch)); the LR schedule is
# that of the new total from the current step on (`dllm_jax.train.check_run_length`). They name
# a series in a sweep (a longer run is another point).
EXTEND_KEYS = ("train.num_steps", "data.epochs")
# Where a NEW run takes its first weights from: ignored once the run has a checkpoint (which
# wins), so they may differ on resume; they do name a series (from scratch vs adapted).
INIT_KEYS = ("init.",)


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def how_key(key: str) -> bool:
    """True if `key` (dotted) changes how a run is computed or logged, not what it learns."""
    return _matches(key, HOW_KEYS)


def resume_changeable(key: str) -> bool:
    """True if `key` may differ between a run's checkpoint and the command resuming it."""
    return _matches(key, HOW_KEYS + RECOVERY_KEYS + EXTEND_KEYS + INIT_KEYS)


def check_ranges(cfg: ml_collections.ConfigDict) -> None:
    """Every key's value against `RULES`; ConfigError naming the key, the value and the fix."""
    from dllm_jax.files import not_utf8

    defaults = flatten(default_config().to_dict())
    for key, value in flatten(cfg.to_dict()).items():
        where = not_utf8(value) if isinstance(value, str) else None
        if where is not None:  # e.g. a file name in Latin-1 bytes, given on a UTF-8 command line
            raise ConfigError(f"{key} is not valid UTF-8 ({where}); give UTF-8 text, and rename a file or folder "
                              "whose name is not UTF-8 (e.g. `convmv -f latin1 -t utf8 --notest NAME`)")
        rule = RULES.get(key)
        if rule is not None and not rule.accepts(value):
            raise ConfigError(
                f"{key}={value!r} is out of range: it must be {rule.describe()}. "
                f"Set --config.{key}=VALUE (or fix the experiment file); the default is {defaults[key]!r}"
            )


def _parse_value(key: str, raw: str, current):
    """Parse `raw` as the type of the value it replaces."""
    try:
        if isinstance(current, bool):
            low = raw.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            value = float(raw) if any(ch in raw for ch in ".eE") else int(raw)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(raw)
            return int(value)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"--config.{key}={raw!r}: expected a {type(current).__name__} like {current!r}"
        ) from None


def _lookup_error(cfg, path: str) -> ConfigError:
    keys = []

    def walk(node, prefix):
        for k, v in node.items():
            full = f"{prefix}{k}"
            keys.append(full)
            if isinstance(v, ml_collections.ConfigDict):
                walk(v, full + ".")

    walk(cfg, "")
    close = difflib.get_close_matches(path, keys, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run `dllm-jax config --config FILE` to list the keys."
    return ConfigError(f"unknown config key {path!r}.{hint}")


def set_key(cfg: ml_collections.ConfigDict, path: str, raw) -> None:
    """Set `cfg.<path>` from a string (parsed to the existing type) or a Python value."""
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise _lookup_error(cfg, path)
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], ml_collections.ConfigDict):
        raise _lookup_error(cfg, path)
    current = node[parts[-1]]
    value = _parse_value(path, raw, current) if isinstance(raw, str) else raw
    with node.unlocked():
        node[parts[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split `--config.KEY=VALUE` / `--config.KEY VALUE` out of argv. Returns (overrides, rest)."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(argv):
                key, value = body, argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{arg} needs a value: write {arg}=VALUE")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def _merge(base: ml_collections.ConfigDict, user: ml_collections.ConfigDict, prefix="") -> None:
    """Copy `user` onto `base`; keys unknown to `base` are errors."""
    for key, value in user.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise _lookup_error(base, path)
        if isinstance(value, ml_collections.ConfigDict):
            if not isinstance(base[key], ml_collections.ConfigDict):
                raise ConfigError(f"config key {path!r} is a value, not a group")
            _merge(base[key], value, path + ".")
        else:
            try:
                with base.unlocked():
                    base[key] = value
            except TypeError:
                raise ConfigError(f"{path}={value!r} is a {type(value).__name__}; it must be a {type(base[key]).__name__} "
                                  f"like the default {base[key]!r}: fix the experiment file") from None


def complete(user: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
    """`default_config()` with `user` merged on top (unknown keys are errors)."""
    cfg = default_config()
    if isinstance(user, dict):
        user = ml_collections.ConfigDict(user)
    _merge(cfg, user)
    return cfg


def import_experiment(path: str, required: tuple[str, ...] = ("get_config",), what: str = "config file"):
    """Import an experiment (or grid) file as a module; ConfigError if it is missing or lacks
    one of the `required` functions."""
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is a directory; give an experiment file in it (e.g. experiments/tiny.py)")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist; check the path given (--config, --flops-config; e.g. experiments/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"dllm_experiment_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:  # not a .py file: Python has no loader for it
        raise ConfigError(f"{what} {path!r} is not a Python file (.py); give an experiment file such as experiments/tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # also a file that is not UTF-8 (Python reads source as UTF-8)
        where = f"{path}:{e.lineno}" if e.lineno else path
        fix = ("save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8), or declare its encoding in a `# -*- coding: ... -*-` first line"
               if "utf-8" in str(e.msg).lower() or "unicode" in str(e.msg).lower() or "non-utf-8" in str(e.msg).lower()
               else "fix the Python syntax there")
        raise ConfigError(f"{what} {where}: cannot be read as Python ({e.msg}); {fix}") from None
    except Exception as e:  # noqa: BLE001 - the file's own code failed while importing
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f"{path}:{frames[-1].lineno}" if frames else path
        raise ConfigError(f"{what} {where}: importing it raised {type(e).__name__}: {e}") from None
    missing = [name for name in required if not hasattr(module, name)]
    if missing:
        raise ConfigError(f"{what} {path!r} has no {missing[0]}() function; it must define {', '.join(f'{r}()' for r in required)}")
    return module


def config_from_module(module, overrides: list[tuple[str, str]] | None = None) -> ml_collections.ConfigDict:
    """`module.get_config()` filled with the defaults, with the overrides applied, validated."""
    path = getattr(module, "__file__", None) or getattr(module, "__name__", "the experiment")
    try:
        user = module.get_config()
    except Exception as e:  # noqa: BLE001 - the experiment's own code failed
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(str(path))]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        raise ConfigError(f"config file {where}: get_config() raised {type(e).__name__}: {e}") from None
    if not isinstance(user, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config file {path}: get_config() returned a {type(user).__name__}, not a ConfigDict; "
                          "return dllm_jax.config.default_config() with your changes")
    cfg = complete(user)
    for key, value in overrides or []:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def load_config(path: str, overrides: list[tuple[str, str]] | None = None) -> ml_collections.ConfigDict:
    """Load an experiment file (`get_config()`), fill defaults, apply overrides, validate."""
    return config_from_module(import_experiment(path), overrides)


def validate(cfg: ml_collections.ConfigDict, data: bool = True) -> None:
    """Check values (the objective against the registry, each key's range from `RULES`, then the
    rules between keys); raise ConfigError naming the key, the value and the fix. `data=False`:
    the run reads no corpus (an import without one, `eval` on a task file), so data.paths may
    be empty."""
    from dllm_jax import objectives  # the registry of objectives

    if cfg.objective not in objectives.names():
        raise ConfigError(f"objective={cfg.objective!r} is not one of {list(objectives.names())}; "
                          f"set --config.objective to one of them")
    check_ranges(cfg)
    m = cfg.model
    n_kv = m.n_kv_heads or m.n_heads
    if m.n_heads % n_kv:
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}")
    if not m.head_dim and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; set model.head_dim")
    if m.attention_impl == "splash" and cfg.data.seq_len % 128:
        raise ConfigError(f"model.attention_impl='splash' tiles the sequence in blocks of 128, but data.seq_len={cfg.data.seq_len}; "
                          f"set data.seq_len to a multiple of 128 (e.g. {128 * -(-cfg.data.seq_len // 128)}) or model.attention_impl='auto'")
    if m.num_experts and not 1 <= m.experts_per_token <= m.num_experts:
        raise ConfigError(f"model.experts_per_token={m.experts_per_token} must be in [1, model.num_experts={m.num_experts}]")
    if m.num_experts and cfg.mesh.expert > 1 and m.num_experts % cfg.mesh.expert:
        raise ConfigError(
            f"model.num_experts={m.num_experts} is not divisible by mesh.expert={cfg.mesh.expert}; "
            "each device of the expert axis holds num_experts / mesh.expert experts: pick sizes that divide"
        )
    if (m.shift_logits or cfg.mdm.anneal_steps) and not objectives.build(cfg).ar_adaptation:
        raise ConfigError("model.shift_logits and mdm.anneal_steps adapt an AR model to masked diffusion: they need objective='mdm' "
                          f"(objective={cfg.objective!r}); drop them or set --config.objective=mdm "
                          "(block diffusion adapts with block_diffusion.grow_steps and block_diffusion.ar_loss_weight)")
    d = cfg.data
    if data and d.source in ("text", "jsonl", "parquet", "array_record") and not d.paths and not d.store:
        raise ConfigError(f"data.source={d.source!r} needs data.paths (comma-separated globs), e.g. --config.data.paths='corpus/*.txt'")
    if d.source == "tfds" and not d.tfds_name and not d.store:
        raise ConfigError("data.source='tfds' needs data.tfds_name, e.g. --config.data.tfds_name=lm1b")
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.grad_accum={t.grad_accum} must divide train.batch_size={t.batch_size}")
    parse_profile_steps(t.profile_steps)
    e = cfg.eval
    parse_epochs(e.at_epochs)
    if e.cloze_length >= d.seq_len:
        raise ConfigError(f"eval.cloze_length={e.cloze_length} must be < data.seq_len={d.seq_len} (0 = seq_len // 4)")
    if e.cloze_context == "both" and e.cloze_length != 1:
        raise ConfigError(f"eval.cloze_context='both' scores a one-token blank: set eval.cloze_length=1 (got {e.cloze_length})")
    if e.cloze_context == "both" and objectives.build(cfg).pair_estimator not in ("ar", "llada"):
        raise ConfigError(f"eval.cloze_context='both' scores AR and MDM runs, not objective={cfg.objective!r}; use "
                          "eval.cloze_context='left'")
    if cfg.ar.mir_weight > 0 and objectives.build(cfg).network_copies == 1:  # an objective without MIR would ignore it
        raise ConfigError(f"ar.mir_weight={cfg.ar.mir_weight} is masked-input regularisation of an AR run, and objective={cfg.objective!r}; "
                          "set --config.objective=ar or drop ar.mir_weight (0 = off)")
    if cfg.mdm.t_proposal != "uniform" and not objectives.build(cfg).time_proposals:  # it would be ignored
        raise ConfigError(f"mdm.t_proposal={cfg.mdm.t_proposal!r} is a proposal over the masking time t of an MDM or block-diffusion "
                          f"run, and objective={cfg.objective!r} does not read it; set --config.objective=mdm (or block_diffusion) "
                          "or drop mdm.t_proposal (default 'uniform')")
    if cfg.init.from_hf and cfg.init.from_workdir:
        raise ConfigError("init.from_hf and init.from_workdir are both set; a run starts from one of them: drop the other")
    objectives.build(cfg).validate(cfg)


def parse_epochs(text: str) -> list[float]:
    """`eval.at_epochs` as sorted distinct floats; ConfigError for anything but positive finite numbers."""
    out = set()
    if not str(text or "").strip():
        return []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"eval.at_epochs={text!r} has an empty entry (two commas, or one at an end); give e.g. '1,2,4,8' ('' = none)")
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"eval.at_epochs={text!r}: {part!r} is not a positive number of epochs; give e.g. '1,2,4,8' ('' = none)")
        out.add(value)
    return sorted(out)


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """`train.profile_steps` as (first, last) steps, 1-based and inclusive ('10,15' -> (10, 15);
    '12' -> (12, 12)), or None for ''; ConfigError for anything else."""
    text = str(text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    fix = "give FIRST,LAST steps such as '10,15' (or one step, '12'; '' = no profile)"
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"train.profile_steps={text!r} is not a step range; {fix}")
    first, last = int(parts[0]), int(parts[-1])
    if first < 1 or last < first:
        raise ConfigError(f"train.profile_steps={text!r}: steps count from 1 and the last must not come before the first; {fix}")
    return first, last


def flatten(d: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    return complete(json.loads(text))
