"""Experiment configs: ml_collections files with `get_config()`, `--config.KEY=VALUE` overrides.

Every experiment starts from `default_config()`, so every run has every key below and a
typo in an override or an experiment file is an error, not a silently ignored setting.
`validate()` checks values and says how to fix a bad one.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys

import ml_collections

from dllm_jax.errors import ConfigError

OBJECTIVES = ("ar", "mdm")
SOURCES = ("text", "tfds", "array_record")
SCHEDULES = ("cosine", "wsd", "constant")
MASK_SCHEDULES = ("linear", "cosine")
WEIGHTINGS = ("elbo", "realized")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "minimal")
DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
    """All keys a run has, with their defaults. Experiments override a subset."""
    c = ml_collections.ConfigDict()
    c.objective = "mdm"  # 'ar' (next-token) or 'mdm' (absorbing-state masked diffusion)
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
    c.model.init_std = 0.02  # normal init std (output projections scaled by 1/sqrt(2 n_layers))
    c.model.dtype = "float32"  # compute dtype; parameters are always float32
    c.model.scan_layers = True  # nn.scan over blocks (fast compiles, stacked params)
    c.model.remat = "none"  # one of REMAT_POLICIES
    c.model.dropout = 0.0  # residual dropout (the AR regularisation ablation)
    c.model.attention_impl = "xla"  # 'xla' or 'cudnn' (jax.nn.dot_product_attention)
    c.model.vocab_multiple = 128  # model vocab rows = tokenizer vocab + 1 ([MASK]), rounded up
    c.model.num_experts = 0  # 0 = dense SwiGLU MLP; > 0 = token-choice top-k MoE MLP in every block
    c.model.experts_per_token = 2  # top-k experts per token (MoE)
    c.model.capacity_factor = 1.25  # MoE expert capacity = factor * tokens * k / experts (per device); 0 = dropless
    c.model.router_aux_weight = 0.01  # weight of the MoE load-balancing loss added to the train loss
    c.model.loss_chunk = 0  # 0 = plain loss; > 0 = cross-entropy over chunks of this many positions (no [B, L, V] logits)

    c.mdm = ml_collections.ConfigDict()
    c.mdm.schedule = "linear"  # masking schedule alpha(t): 'linear' (mask prob t) or 'cosine'
    c.mdm.eps = 1e-3  # t ~ U(eps, 1)
    c.mdm.antithetic = True  # stratified t across the batch
    c.mdm.weighting = "elbo"  # 'elbo': CE/p(t); 'realized': CE/(realised masked fraction), as the study's code
    c.mdm.random_length_prob = 0.01  # fraction of steps trained at a random shorter length

    c.ar = ml_collections.ConfigDict()
    c.ar.input_mask_rate = 0.0  # AR regularisation ablation: replace this fraction of inputs by [MASK]

    c.data = ml_collections.ConfigDict()
    c.data.source = "text"  # 'text' (files), 'tfds' (tfds.data_source) or 'array_record'
    c.data.paths = ""  # 'text' / 'array_record': one string of comma-separated globs
    c.data.text_split = "file"  # 'file' | 'paragraph' | 'line'
    c.data.tfds_name = ""  # e.g. 'lm1b', 'tiny_shakespeare' (prepared in the TFDS data dir)
    c.data.tfds_split = "train"  # TFDS split to read documents from
    c.data.tfds_data_dir = ""  # '' = TFDS default (~/tensorflow_datasets)
    c.data.text_key = "text"  # feature holding the text in TFDS examples
    c.data.seq_len = 128  # tokens per packed training sequence
    c.data.unique_tokens = 0  # U: unique training tokens (rounded down to whole batches); 0 = all available
    c.data.epochs = 1  # E: passes over the unique tokens (each sequence is seen exactly E times)
    c.data.val_tokens = 16384  # held-out validation tokens (whole documents, taken before the training budget)
    c.data.tokenizer = ""  # path to a SentencePiece model; '' = train one into the workdir
    c.data.vocab_size = 1024  # pieces of a tokenizer trained here (>= 512 recommended)
    c.data.tokenizer_type = "unigram"  # 'unigram' or 'bpe' (SentencePiece)
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
    c.train.warmup_steps = 100  # linear warmup from 0
    c.train.schedule = "cosine"  # 'cosine', 'wsd' (warmup-stable-decay) or 'constant'
    c.train.decay_fraction = 0.2  # WSD: final fraction of steps spent decaying
    c.train.b1 = 0.9  # AdamW beta1
    c.train.b2 = 0.95  # AdamW beta2
    c.train.weight_decay = 0.1  # decoupled, on weight matrices and embeddings (not norms)
    c.train.clip_norm = 1.0  # global gradient-norm clipping
    c.train.log_every = 10  # steps per metrics record (averaged over the window)
    c.train.eval_every = 100  # 0 = only at the end
    c.train.eval_batches = 8  # validation batches per evaluation (0 = the whole split)
    c.train.checkpoint_every = 200  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    c.train.keep_last = 2  # newest checkpoints kept
    c.train.keep_every = 0  # 0 = keep no extra periodic checkpoints
    c.train.async_checkpoint = True  # write checkpoints in the background
    c.train.progress = True  # progress bar
    c.train.tensorboard = True  # TensorBoard event files in <workdir>/tensorboard

    c.eval = ml_collections.ConfigDict()  # evaluation during training and defaults of `dllm-jax eval`
    c.eval.at_epoch_end = True  # also validate (and cloze, when on) at the end of every epoch
    c.eval.cloze_every = 0  # steps between cloze evaluations (validation-text multiple choice); 0 = off
    c.eval.cloze_examples = 64  # cloze items (passages); 0 = every validation row
    c.eval.cloze_choices = 4  # choices per cloze item (1 true + distractors)
    c.eval.cloze_length = 0  # tokens in each choice; 0 = data.seq_len // 4
    c.eval.mc_samples = 16  # MDM Monte Carlo samples per choice (LLaDA estimator) or per sequence (ELBO)
    c.eval.batch_size = 64  # rows per scoring batch
    c.eval.val_draws = 4  # MDM: (t, mask) draws per validation row in training-time validation (Monte Carlo ELBO)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = fill with the remaining devices
    c.mesh.fsdp = 1  # fully-sharded data parallelism (parameters split over it)
    c.mesh.tensor = 1  # tensor parallelism (heads, MLP, vocab)
    c.mesh.expert = 1  # expert parallelism (MoE weights are split over it; it also shards the batch)
    return c


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
            with base.unlocked():
                base[key] = value


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
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist; check the --config path (e.g. experiments/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"dllm_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    missing = [name for name in required if not hasattr(module, name)]
    if missing:
        raise ConfigError(f"{what} {path!r} has no {missing[0]}() function; it must define {', '.join(f'{r}()' for r in required)}")
    return module


def config_from_module(module, overrides: list[tuple[str, str]] | None = None) -> ml_collections.ConfigDict:
    """`module.get_config()` filled with the defaults, with the overrides applied, validated."""
    cfg = complete(module.get_config())
    for key, value in overrides or []:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def load_config(path: str, overrides: list[tuple[str, str]] | None = None) -> ml_collections.ConfigDict:
    """Load an experiment file (`get_config()`), fill defaults, apply overrides, validate."""
    return config_from_module(import_experiment(path), overrides)


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")


def _positive(name, value, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Check values; raise ConfigError naming the key, the value and the fix."""
    _choice("objective", cfg.objective, OBJECTIVES)
    m = cfg.model
    for key in ("d_model", "n_layers", "n_heads"):
        _positive(f"model.{key}", m[key])
    n_kv = m.n_kv_heads or m.n_heads
    if m.n_heads % n_kv:
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}")
    if not m.head_dim and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; set model.head_dim")
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.remat", m.remat, REMAT_POLICIES)
    _choice("model.attention_impl", m.attention_impl, ("xla", "cudnn"))
    for key in ("num_experts", "capacity_factor", "router_aux_weight", "loss_chunk"):
        _positive(f"model.{key}", m[key], allow_zero=True)
    if m.num_experts and not 1 <= m.experts_per_token <= m.num_experts:
        raise ConfigError(f"model.experts_per_token={m.experts_per_token} must be in [1, model.num_experts={m.num_experts}]")
    if m.num_experts and cfg.mesh.expert > 1 and m.num_experts % cfg.mesh.expert:
        raise ConfigError(
            f"model.num_experts={m.num_experts} is not divisible by mesh.expert={cfg.mesh.expert}; "
            "each device of the expert axis holds num_experts / mesh.expert experts: pick sizes that divide"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
    _choice("mdm.schedule", cfg.mdm.schedule, MASK_SCHEDULES)
    _choice("mdm.weighting", cfg.mdm.weighting, WEIGHTINGS)
    if not 0.0 < cfg.mdm.eps < 1.0:
        raise ConfigError(f"mdm.eps={cfg.mdm.eps} must be in (0, 1)")
    if not 0.0 <= cfg.mdm.random_length_prob <= 1.0:
        raise ConfigError(f"mdm.random_length_prob={cfg.mdm.random_length_prob} must be in [0, 1]")
    if not 0.0 <= cfg.ar.input_mask_rate < 1.0:
        raise ConfigError(f"ar.input_mask_rate={cfg.ar.input_mask_rate} must be in [0, 1)")
    d = cfg.data
    _choice("data.source", d.source, SOURCES)
    _choice("data.text_split", d.text_split, ("file", "paragraph", "line"))
    if d.source in ("text", "array_record") and not d.paths and not d.store:
        raise ConfigError(f"data.source={d.source!r} needs data.paths (comma-separated globs), e.g. --config.data.paths='corpus/*.txt'")
    if d.source == "tfds" and not d.tfds_name and not d.store:
        raise ConfigError("data.source='tfds' needs data.tfds_name, e.g. --config.data.tfds_name=lm1b")
    _positive("data.seq_len", d.seq_len)
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len={d.seq_len} must be >= 2")
    _positive("data.unique_tokens", d.unique_tokens, allow_zero=True)
    _positive("data.epochs", d.epochs)
    _positive("data.val_tokens", d.val_tokens, allow_zero=True)
    t = cfg.train
    _positive("train.batch_size", t.batch_size)
    _positive("train.grad_accum", t.grad_accum)
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.grad_accum={t.grad_accum} must divide train.batch_size={t.batch_size}")
    _positive("train.num_steps", t.num_steps, allow_zero=True)
    _positive("train.lr", t.lr)
    _choice("train.schedule", t.schedule, SCHEDULES)
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    if not 0.0 < t.decay_fraction <= 1.0:
        raise ConfigError(f"train.decay_fraction={t.decay_fraction} must be in (0, 1]")
    for key in ("log_every", "checkpoint_every", "keep_last"):
        _positive(f"train.{key}", t[key])
    for key in ("eval_every", "eval_batches", "keep_every", "warmup_steps"):
        _positive(f"train.{key}", t[key], allow_zero=True)
    e = cfg.eval
    for key in ("cloze_every", "cloze_examples", "cloze_length"):
        _positive(f"eval.{key}", e[key], allow_zero=True)
    for key in ("mc_samples", "batch_size", "val_draws"):
        _positive(f"eval.{key}", e[key])
    if e.cloze_choices < 2:
        raise ConfigError(f"eval.cloze_choices={e.cloze_choices} must be >= 2 (the true continuation and at least one distractor)")
    if e.cloze_length >= d.seq_len:
        raise ConfigError(f"eval.cloze_length={e.cloze_length} must be < data.seq_len={d.seq_len} (0 = seq_len // 4)")
    for axis in ("data", "fsdp", "tensor", "expert"):
        if cfg.mesh[axis] == 0 or cfg.mesh[axis] < -1:
            raise ConfigError(f"mesh.{axis}={cfg.mesh[axis]} must be a positive size or -1 (fill)")


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
