"""Hugging Face interop: start a run from a transformers checkpoint or from another run, and
export a run as a transformers checkpoint.

Import (`--config.init.from_hf=DIR`): DIR is a local Hugging Face model directory
(config.json, model.safetensors or sharded model-0000X-of-0000Y.safetensors with
model.safetensors.index.json, tokenizer.json) of one of `FAMILIES`. `resolve_init` maps
its config.json onto `model.*` and its tokenizer onto `data.tokenizer`; `load_hf_params`
reads the weights with the `safetensors` library and places them on the mesh.

Both families use the same rotary convention as `dllm_jax.models.transformer.rope`: the
rotate-half form on the two halves of each head (not interleaved pairs), with frequencies
base^(-2i/head_dim); HF's checkpoints are already stored for it (its conversion script
permutes Meta's original interleaved q/k weights), so q/k weights are copied unpermuted.

Vocabulary: our embedding has `model_vocab_rows(tokenizer vocab)` rows (the tokenizer's
ids, then [MASK] = tokenizer vocab size, then padding to `model.vocab_multiple`). Rows of
real tokens are copied; [MASK] and padding rows (and the matching output-head columns)
are set to the mean of the copied real rows, a neutral start that the adaptation learns
from (padding rows are never predicted: the loss and samplers exclude ids >= mask id).
A checkpoint written by `export_run` records its mask id, and then every row it holds is
copied, so export-then-import is exact.

Streaming: every parameter is built with `jax.make_array_from_callback` on its target
`NamedSharding`; the callback reads, per layer, only the tensors the addressable shards
need (one per-layer matrix at a time) and the embedding / head row ranges a shard holds,
so no host holds the whole model, and a multi-host run reads only its own layers' and
rows' tensors. Not streamed: a shard that splits a matrix still reads that layer's whole
matrix before slicing it, and the mean of the real embedding rows is computed by reading
the embedding in chunks of rows.

`--config.init.from_workdir=DIR` does the same from one of our runs: `model.*` and the
tokenizer from its saved config, parameters from its latest checkpoint (restored straight
onto the new run's shardings by Orbax), optimizer state fresh, step 0.

Both only start a NEW run: when the workdir already has a checkpoint the run resumes from
it and `init.*` is ignored (the saved run's `init.*` and model settings are kept).

Export (`dllm-jax export --workdir DIR --output OUT [--step N]`, `export_run`): config.json,
model.safetensors (float32, one file, gathered to the host: export is not streamed) and
the tokenizer files. The class is the HF family that represents our model exactly:
`LlamaForCausalLM` (no QK-norm, no biases), `Qwen2ForCausalLM` (q/k/v biases) or
`Qwen3ForCausalLM` (QK-norm: Qwen3 applies a per-head RMSNorm with a learned scale to q
and k after the projections and before RoPE, exactly as our `qk_norm`); MoE models are
refused. config.json also has a `dllm_jax` entry: objective, mask id, attention pattern
('causal' for AR, 'bidirectional' for MDM), shift, tokenizer vocabulary; an MDM export
has the AR class's weights layout but must be run with bidirectional attention.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from contextlib import ExitStack

import jax
import numpy as np

from dllm_jax import config as config_lib
from dllm_jax.errors import CheckpointError, ConfigError

log = logging.getLogger("dllm_jax")

FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# model.* keys fixed by the architecture of the checkpoint a run starts from
ARCH_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "rope_base", "norm_eps", "qk_norm",
             "attention_bias", "tie_embeddings", "num_experts", "experts_per_token")
# our per-block parameter (path inside a block) -> HF tensor suffix, layout transform
BLOCK_TENSORS = (
    ("attn_norm/scale", "input_layernorm.weight", "id"),
    ("attn/wq", "self_attn.q_proj.weight", "heads_in"),
    ("attn/wk", "self_attn.k_proj.weight", "heads_in"),
    ("attn/wv", "self_attn.v_proj.weight", "heads_in"),
    ("attn/wo", "self_attn.o_proj.weight", "heads_out"),
    ("attn/bq", "self_attn.q_proj.bias", "bias"),
    ("attn/bk", "self_attn.k_proj.bias", "bias"),
    ("attn/bv", "self_attn.v_proj.bias", "bias"),
    ("attn/q_norm/scale", "self_attn.q_norm.weight", "id"),
    ("attn/k_norm/scale", "self_attn.k_norm.weight", "id"),
    ("mlp_norm/scale", "post_attention_layernorm.weight", "id"),
    ("mlp/w_gate", "mlp.gate_proj.weight", "T"),
    ("mlp/w_up", "mlp.up_proj.weight", "T"),
    ("mlp/w_down", "mlp.down_proj.weight", "T"),
)
TOP_TENSORS = (("embedding", "model.embed_tokens.weight", "id"), ("final_norm/scale", "model.norm.weight", "id"),
               ("lm_head", "lm_head.weight", "T"))
# tensors some checkpoints carry that hold nothing to load (RoPE tables are recomputed)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------- layouts
def to_ours(w: np.ndarray, kind: str, shape) -> np.ndarray:
    """An HF tensor (torch Linear layout: [out, in]) in our layout of `shape`."""
    if kind in ("heads_in", "heads_out", "T"):
        w = w.T
    return w.reshape(shape)


def to_hf(x: np.ndarray, kind: str) -> np.ndarray:
    """Our parameter in HF's layout: q/k/v [d, H, hd] -> [H*hd, d]; o [H, hd, d] -> [d, H*hd]."""
    if kind == "heads_in":
        return x.reshape(x.shape[0], -1).T
    if kind == "heads_out":
        return x.reshape(-1, x.shape[-1]).T
    if kind == "bias":
        return x.reshape(-1)
    return x.T if kind == "T" else x


def hf_shape(kind: str, shape) -> tuple:
    """The HF tensor shape that maps onto our `shape`."""
    n = int(np.prod(shape))
    if kind == "heads_in":
        return (n // shape[0], shape[0])
    if kind == "heads_out":
        return (shape[-1], n // shape[-1])
    if kind == "bias":
        return (n,)
    return tuple(reversed(shape)) if kind == "T" else tuple(shape)


def _flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _unflat(flat: dict) -> dict:
    out = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def tensor_plan(param_paths, n_layers: int) -> dict:
    """Our parameter path -> (list of HF tensor names (one per layer for a stacked one), kind, stacked)."""
    block = {sub: (suffix, kind) for sub, suffix, kind in BLOCK_TENSORS}
    top = {ours: (name, kind) for ours, name, kind in TOP_TENSORS}
    plan = {}
    for path in param_paths:
        head, _, sub = path.partition("/")
        if path in top:
            plan[path] = ([top[path][0]], top[path][1], False)
        elif head == "layers" and sub in block:
            plan[path] = ([f"model.layers.{i}.{block[sub][0]}" for i in range(n_layers)], block[sub][1], True)
        elif head.startswith("layer_") and sub in block:
            plan[path] = ([f"model.layers.{int(head[6:])}.{block[sub][0]}"], block[sub][1], False)
        else:
            raise CheckpointError(
                f"parameter {path!r} has no Hugging Face counterpart (MoE layers cannot be exported or imported); "
                "only dense models (model.num_experts=0) map onto Llama / Qwen2 / Qwen3"
            )
    return plan


# ---------------------------------------------------------------- reading HF directories
def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(os.path.expanduser(hf_dir), "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"init.from_hf={hf_dir!r} has no config.json; point it at a local Hugging Face model directory "
                              "(config.json + *.safetensors + tokenizer.json), e.g. one written by huggingface-cli download")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _rope_theta(hf: dict, where: str) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"{where}: rope_type={rope_type!r} (RoPE scaling) is not supported; dllm_jax's RoPE is the plain "
                          "(default) one. Use a checkpoint without rope_scaling / rope_parameters.rope_type")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def hf_model_settings(hf: dict, where: str) -> dict:
    """`model.*` values of a Hugging Face config.json (a dict); ConfigError/CheckpointError
    when the architecture cannot be represented exactly."""
    arch = (hf.get("architectures") or [None])[0]
    if arch not in FAMILIES:
        raise CheckpointError(f"{where}: architecture {arch!r} is not supported; init.from_hf reads {sorted(FAMILIES)} "
                              "checkpoints (convert others with transformers first)")
    family = FAMILIES[arch]
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act!r}; dllm_jax's MLP is SwiGLU (silu); this checkpoint cannot be represented")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{where}: mlp_bias=true is not supported (dllm_jax's MLP has no biases)")
    bias = bool(hf.get("attention_bias", False))
    if family in ("llama", "mistral", "qwen3") and bias:
        raise ConfigError(f"{where}: attention_bias=true ({arch} then also has an output-projection bias) is not supported; "
                          "only Qwen2's q/k/v biases are")
    if family == "qwen2":
        bias = True
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported (dllm_jax attention is full); use a checkpoint without it")
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or d // heads)
    return {
        "d_model": d,
        "n_layers": int(hf["num_hidden_layers"]),
        "n_heads": heads,
        "n_kv_heads": 0 if kv == heads else kv,
        "head_dim": 0 if head_dim * heads == d else head_dim,
        "d_ff": int(hf["intermediate_size"]),
        "rope_base": _rope_theta(hf, where),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "qk_norm": family == "qwen3",
        "attention_bias": bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "num_experts": 0,
        "experts_per_token": 2,
    }


class SafetensorsReader:
    """Tensors of an HF directory by name, read with `safetensors.safe_open` (numpy), one
    tensor or row range at a time; shapes without reading data."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self.dir = os.path.expanduser(hf_dir)
        index = os.path.join(self.dir, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.dir, "*.safetensors")))
            weight_map = None
        if not files:
            raise CheckpointError(f"{self.dir!r} has no *.safetensors files; download the safetensors weights "
                                  "(PyTorch .bin checkpoints are not read: convert them with transformers' save_pretrained)")
        self._stack = ExitStack()
        self._files = {}
        for name in files:
            path = os.path.join(self.dir, name)
            if not os.path.isfile(path):
                raise CheckpointError(f"{index!r} lists {name!r}, which is missing from {self.dir!r}; the download is incomplete")
            self._files[name] = self._stack.enter_context(safe_open(path, framework="numpy"))
        if weight_map is None:
            weight_map = {k: name for name, f in self._files.items() for k in f.keys()}
        self.weight_map = weight_map

    def names(self) -> set:
        return set(self.weight_map)

    def shape(self, name: str) -> tuple:
        return tuple(self._files[self.weight_map[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self._files[self.weight_map[name]].get_tensor(name), dtype=np.float32)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._files[self.weight_map[name]].get_slice(name)[start:stop], dtype=np.float32)

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _indices(index_slice: slice, n: int) -> range:
    return range(*index_slice.indices(n))


def load_hf_params(hf_dir: str, abstract_params, tokenizer_vocab: int, chunk_rows: int = 8192):
    """Parameters for `abstract_params` (ShapeDtypeStructs with shardings: the model's
    params) from an HF directory, each placed on its sharding as it is read.

    Raises CheckpointError naming the tensor when one is missing, unexpected or of the wrong
    shape (the checkpoint does not match its config.json or our mapping)."""
    hf = read_hf_config(hf_dir)
    n_layers = int(hf["num_hidden_layers"])
    flat = _flat(abstract_params)
    plan = tensor_plan(flat, n_layers)
    with SafetensorsReader(hf_dir) as reader:
        present = reader.names()
        needed = {n for names, _, _ in plan.values() for n in names}
        missing = sorted(needed - present)
        if missing:
            raise CheckpointError(f"{hf_dir!r}: tensor {missing[0]!r} is missing ({len(missing)} missing in all); the checkpoint "
                                  "does not match its config.json (architecture / attention_bias / tie_word_embeddings / num_hidden_layers)")
        tied = "lm_head" not in flat
        extra = sorted(n for n in present - needed if not n.endswith(_IGNORED_SUFFIXES) and not (tied and n == "lm_head.weight"))
        if extra:
            raise CheckpointError(f"{hf_dir!r}: unexpected tensor {extra[0]!r} ({len(extra)} in all) that dllm_jax's model has no "
                                  "place for; the checkpoint's config.json does not describe it (e.g. biases, a different family)")
        vocab_name = "model.embed_tokens.weight"
        hf_rows = reader.shape(vocab_name)[0]
        if tokenizer_vocab > hf_rows:
            raise CheckpointError(f"{hf_dir!r}: the tokenizer has {tokenizer_vocab} ids but {vocab_name} only {hf_rows} rows; "
                                  "use the tokenizer that belongs to this checkpoint")
        exported = (hf.get("dllm_jax") or {}).get("mask_token_id") == tokenizer_vocab
        n_real = min(tokenizer_vocab, hf_rows)
        n_copy = hf_rows if exported else n_real
        means = {}

        def row_mean(name):
            if name not in means:
                total = None
                for a in range(0, n_real, chunk_rows):
                    s = reader.rows(name, a, min(a + chunk_rows, n_real)).sum(axis=0, dtype=np.float64)
                    total = s if total is None else total + s
                means[name] = (total / max(n_real, 1)).astype(np.float32)
            return means[name]

        def vocab_rows(name, rows: range) -> np.ndarray:
            """HF rows `rows` ([n, d]); rows past what is copied are the mean of the real rows."""
            stop = min(rows.stop, n_copy)
            parts = [reader.rows(name, rows.start, stop)] if stop > rows.start else []
            fill = len(rows) - max(stop - rows.start, 0)
            if fill:
                parts.append(np.broadcast_to(row_mean(name), (fill, reader.shape(name)[1])))
            return np.concatenate(parts, axis=0)

        out = {}
        for path, struct in flat.items():
            names, kind, stacked = plan[path]
            inner = struct.shape[1:] if stacked else struct.shape
            if path in ("embedding", "lm_head"):
                want = (reader.shape(names[0])[0], struct.shape[1] if path == "embedding" else struct.shape[0])
            else:
                want = hf_shape(kind, inner)
            for n in names:
                if reader.shape(n) != want:
                    raise CheckpointError(f"{hf_dir!r}: tensor {n!r} has shape {list(reader.shape(n))}, expected {list(want)} for "
                                          f"parameter {path!r}; config.json and weights disagree, or a --config.model.* override changed the shape")
            cache = {}

            def callback(index, struct=struct, path=path, names=names, kind=kind, stacked=stacked, inner=inner, cache=cache):
                key = tuple((s.start, s.stop) for s in index)
                if key in cache:
                    return cache[key]
                if path == "embedding":
                    value = vocab_rows(names[0], _indices(index[0], struct.shape[0]))[:, index[1]]
                elif path == "lm_head":
                    value = vocab_rows(names[0], _indices(index[1], struct.shape[1])).T[index[0]]
                elif stacked:
                    layers = _indices(index[0], struct.shape[0])
                    value = np.stack([to_ours(reader.get(names[i]), kind, inner)[index[1:]] for i in layers])
                else:
                    value = to_ours(reader.get(names[0]), kind, inner)[index]
                cache[key] = value = np.ascontiguousarray(value, dtype=np.float32)
                return value

            out[path] = jax.make_array_from_callback(struct.shape, struct.sharding, callback)
            cache.clear()
    return _unflat(out)


# ---------------------------------------------------------------- config resolution
def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _hf_values(hf_dir: str, config) -> dict:
    where = f"init.from_hf={hf_dir!r}"
    hf = read_hf_config(hf_dir)
    values = {f"model.{k}": v for k, v in hf_model_settings(hf, where).items()}
    if (hf.get("dllm_jax") or {}).get("vocab_multiple"):  # our export: the same embedding rows as the run it came from
        values["model.vocab_multiple"] = int(hf["dllm_jax"]["vocab_multiple"])
    window = hf.get("sliding_window")
    if FAMILIES.get((hf.get("architectures") or [None])[0]) == "mistral" and window and config.data.seq_len > int(window):
        raise ConfigError(f"{where}: sliding_window={window} < data.seq_len={config.data.seq_len}; dllm_jax attention is full, so "
                          f"it equals Mistral's only for sequences <= {window}: set --config.data.seq_len={window} or less")
    values["data.tokenizer"] = _source_tokenizer(os.path.expanduser(hf_dir), where, config)
    return values


def _source_tokenizer(directory: str, where: str, config) -> str:
    from dllm_jax.data.tokenizer import load_tokenizer

    path = next((os.path.join(directory, n) for n in ("tokenizer.json", "tokenizer.model") if os.path.isfile(os.path.join(directory, n))), None)
    if path is None:
        if config.data.tokenizer:
            return config.data.tokenizer
        raise CheckpointError(f"{where} has no tokenizer.json (or tokenizer.model); copy the checkpoint's tokenizer there, "
                              "or give it with --config.data.tokenizer=PATH")
    if config.data.tokenizer and config.data.tokenizer != path:
        if load_tokenizer(config.data.tokenizer).fingerprint != load_tokenizer(path).fingerprint:
            raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} is not the tokenizer of {where} ({path}); the embedding rows "
                              "belong to that tokenizer: drop --config.data.tokenizer")
        return config.data.tokenizer
    return path


def _workdir_values(workdir: str, config) -> dict:
    from dllm_jax.checkpoint import Checkpointer, checkpoint_dir

    where = f"init.from_workdir={workdir!r}"
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"{where} has no checkpoints/; point it at a trained dllm-jax run directory")
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        _, saved, _ = ckpt.restore_meta(None)
    finally:
        ckpt.close()
    model = config_lib.complete(saved).model
    values = {f"model.{k}": model[k] for k in ARCH_KEYS + ("vocab_multiple",)}
    values["data.tokenizer"] = _source_tokenizer(os.path.abspath(workdir), where, config)
    return values


def resolve_init(config, explicit=(), saved: dict | None = None) -> None:
    """Set, in place, the `model.*` keys (and `data.tokenizer`) that `init.from_hf` /
    `init.from_workdir` determine. `explicit`: keys the user set on the command line; one
    that disagrees with the source is a ConfigError. `saved`: the config of the checkpoint
    being resumed, whose `init.*` and architecture win (the source is not read again)."""
    if saved is not None:
        saved = config_lib.complete(saved)
        with config.init.unlocked():
            config.init.from_hf, config.init.from_workdir = saved.init.from_hf, saved.init.from_workdir
        if not (saved.init.from_hf or saved.init.from_workdir):
            return
        values = {f"model.{k}": saved.model[k] for k in ARCH_KEYS + ("vocab_multiple",)}
    elif config.init.from_hf:
        values = _hf_values(config.init.from_hf, config)
    elif config.init.from_workdir:
        values = _workdir_values(config.init.from_workdir, config)
    else:
        return
    source = f"init.from_hf={config.init.from_hf!r}" if config.init.from_hf else f"init.from_workdir={config.init.from_workdir!r}"
    for key, value in values.items():
        current = _get(config, key)
        if key in explicit and current != value:
            raise ConfigError(f"--config.{key}={current!r} contradicts {source}, which has {key}={value!r}; the architecture comes "
                              f"from the checkpoint: drop --config.{key}")
        if current != value:
            config_lib.set_key(config, key, value)


def initial_params(config, model, abstract_params, mesh, tokenizer):
    """Parameters of a new run started from `init.*` (placed on `abstract_params`' shardings)."""
    if config.init.from_hf:
        return load_hf_params(config.init.from_hf, abstract_params, tokenizer.vocab_size)
    from dllm_jax.checkpoint import load_run

    src = load_run(config.init.from_workdir, mesh=mesh)
    if src.tokenizer.fingerprint != tokenizer.fingerprint:
        raise ConfigError(f"init.from_workdir={config.init.from_workdir!r} was trained with tokenizer {src.tokenizer.fingerprint}, "
                          f"this run uses {tokenizer.fingerprint}; drop --config.data.tokenizer")
    got, want = _flat(src.params), _flat(abstract_params)
    for path in sorted(set(got) | set(want)):
        if path not in got or path not in want or got[path].shape != want[path].shape:
            raise CheckpointError(f"init.from_workdir={config.init.from_workdir!r}: parameter {path!r} is "
                                  f"{getattr(got.get(path), 'shape', 'absent')} there and {getattr(want.get(path), 'shape', 'absent')} "
                                  "here; drop the --config.model.* overrides that change the architecture")
    log.info("initialised from %s step %d", config.init.from_workdir, src.step)
    return jax.tree.map(lambda x, s: jax.device_put(x, s.sharding), src.params, abstract_params)


# ---------------------------------------------------------------- export
def hf_family(model_cfg) -> str:
    """The transformers class that represents our model exactly; ConfigError if none does."""
    if model_cfg.num_experts:
        raise ConfigError("MoE runs (model.num_experts > 0) cannot be exported: no transformers class has this router")
    if model_cfg.qk_norm and model_cfg.attention_bias:
        raise ConfigError("model.qk_norm with model.attention_bias has no exact transformers class (Qwen3's bias includes o_proj)")
    if model_cfg.qk_norm:
        return "Qwen3ForCausalLM"
    return "Qwen2ForCausalLM" if model_cfg.attention_bias else "LlamaForCausalLM"


def export_config(config, model_cfg, tokenizer, step: int) -> dict:
    """config.json of an exported run (transformers keys plus a `dllm_jax` entry)."""
    arch = hf_family(model_cfg)
    family = FAMILIES[arch]
    out = {
        "architectures": [arch],
        "model_type": family,
        "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.d_model,
        "intermediate_size": model_cfg.ffn_size,
        "num_hidden_layers": model_cfg.n_layers,
        "num_attention_heads": model_cfg.n_heads,
        "num_key_value_heads": model_cfg.kv_heads,
        "head_dim": model_cfg.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": max(int(config.data.seq_len), 2048),
        "rms_norm_eps": model_cfg.norm_eps,
        "rope_theta": model_cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": model_cfg.rope_base},
        "tie_word_embeddings": model_cfg.tie_embeddings,
        "attention_bias": bool(model_cfg.attention_bias) if family != "qwen2" else True,
        "attention_dropout": 0.0,
        "initializer_range": model_cfg.init_std,
        "bos_token_id": tokenizer.bos_id if tokenizer.bos_id >= 0 else None,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
    }
    if family == "llama":
        out["mlp_bias"] = False
    if family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=model_cfg.n_layers)
    shift = bool(config.model.get("shift_logits", False))
    out["dllm_jax"] = {
        "objective": config.objective,
        "attention": "causal" if config.objective == "ar" else "bidirectional",
        "mask_token_id": tokenizer.mask_id,
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "shift_logits": shift,
        "vocab_multiple": int(config.model.get("vocab_multiple", 1)),
        "mdm_schedule": config.mdm.schedule if config.objective == "mdm" else None,
        "step": step,
    }
    return out


def _write_tokenizer(tokenizer, out_dir: str, hf_cfg: dict) -> list[str]:
    """tokenizer.json (+ tokenizer_config.json) for a Hugging Face tokenizer; tokenizer.model +
    tokenizer_config.json (LlamaTokenizer) for a SentencePiece one."""
    special = {"eos_token": tokenizer.id_to_piece(tokenizer.eos_id), "pad_token": tokenizer.id_to_piece(tokenizer.pad_id)}
    if tokenizer.kind == "hf":
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
        files = ["tokenizer.json"]
    else:  # + tokenizer.json when transformers can convert it (see _spm_tokenizer_json)
        tokenizer.save(os.path.join(out_dir, "tokenizer.model"))
        unk = tokenizer.id_to_piece(tokenizer.unk_id) if tokenizer.unk_id >= 0 else None
        # transformers 5's LlamaTokenizer re-reads a .model as BPE and encodes our unigram models
        # differently; TokenizersBackend builds the tokenizer from the proto's own settings
        tok_cfg = {"tokenizer_class": "TokenizersBackend", "add_bos_token": False, "add_eos_token": False,
                   "unk_token": unk, "bos_token": None, **special}
        files = ["tokenizer.model"]
    if hf_cfg["dllm_jax"]["objective"] == "mdm":
        tok_cfg["mask_token_id"] = tokenizer.mask_id  # one past the tokenizer: not a piece of it
    tok_cfg["model_max_length"] = hf_cfg["max_position_embeddings"]
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=2)
    files.append("tokenizer_config.json")
    if tokenizer.kind != "hf" and _spm_tokenizer_json(out_dir, tokenizer):
        files.append("tokenizer.json")  # readable by any transformers version, without protobuf
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tok_cfg, f, indent=2)
    return files


# texts on which a converted tokenizer must encode exactly as SentencePiece
_PROBES = ("The river runs under the old stone bridge.", "def main(x):\n    return  x\t# ok\n\n", "  Ünïcode ☃, ok?")


def _spm_tokenizer_json(out_dir: str, tokenizer) -> bool:
    """Also write tokenizer.json: transformers' own conversion of tokenizer.model (it needs
    transformers and protobuf >= 7), kept only if it encodes `_PROBES` exactly as
    SentencePiece. Then readers need neither sentencepiece nor protobuf."""
    try:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(out_dir)
        same = all(tok.encode(t, add_special_tokens=False) == tokenizer.encode(t) for t in _PROBES)
    except Exception as e:  # transformers absent, or it cannot parse the proto (protobuf < 7)
        log.info("tokenizer.json not written (transformers could not convert tokenizer.model: %s)", str(e)[:200])
        return False
    if not same:
        log.warning("tokenizer.json not written: transformers' conversion of tokenizer.model encodes differently")
        return False
    tok.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    return True


def export_params(params, model_cfg) -> dict:
    """HF tensor name -> float32 numpy array, from our parameter tree."""
    flat = _flat(params)
    plan = tensor_plan(flat, model_cfg.n_layers)
    tensors = {}
    for path, value in flat.items():
        names, kind, stacked = plan[path]
        host = np.asarray(jax.device_get(value), dtype=np.float32)
        layers = list(host) if stacked else [host]
        for name, layer in zip(names, layers):
            tensors[name] = np.ascontiguousarray(to_hf(layer, kind))
    return tensors


def export_run(workdir: str, output: str, step: int | None = None) -> dict:
    """Write run `workdir` (latest or `step` checkpoint) as a Hugging Face checkpoint in `output`.
    Returns {'output', 'architecture', 'step', 'files'}."""
    from safetensors.numpy import save_file

    from dllm_jax.checkpoint import load_run

    run = load_run(workdir, step=step)
    model_cfg = run.model.cfg
    hf_cfg = export_config(run.config, model_cfg, run.tokenizer, run.step)
    tensors = export_params(run.params, model_cfg)
    os.makedirs(output, exist_ok=True)
    tmp = os.path.join(output, ".model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(output, "model.safetensors"))
    with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2)
    gen = {"eos_token_id": run.tokenizer.eos_id, "pad_token_id": run.tokenizer.pad_id}
    if run.tokenizer.bos_id >= 0:
        gen["bos_token_id"] = run.tokenizer.bos_id
    with open(os.path.join(output, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=2)
    files = ["config.json", "generation_config.json", "model.safetensors"] + _write_tokenizer(run.tokenizer, output, hf_cfg)
    return {"output": os.path.abspath(output), "architecture": hf_cfg["architectures"][0], "step": run.step, "files": files}


def import_run(hf_dir: str, workdir: str, config=None, explicit=()) -> dict:
    """Write an HF checkpoint as a step-0 run in `workdir` (config, tokenizer, parameters,
    fresh optimizer), so `dllm-jax sample` / `eval` read it like a trained run, and
    `dllm-jax train --workdir` continues it. The objective and shift of a checkpoint
    written by `export_run` are taken from its config.json unless `config` sets them."""
    from dllm_jax import optim, sharding, train_step
    from dllm_jax.checkpoint import Checkpointer, checkpoint_dir
    from dllm_jax.data.tokenizer import load_tokenizer
    from flax import linen as nn

    if os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"{workdir!r} already holds a run; import into a new --workdir")
    config = config_lib.default_config() if config is None else config
    ours = read_hf_config(hf_dir).get("dllm_jax") or {}
    if ours.get("objective") and "objective" not in explicit:
        config.objective = ours["objective"]
    if "shift_logits" in ours and "model.shift_logits" not in explicit:
        config.model.shift_logits = bool(ours["shift_logits"])
    with config.init.unlocked():
        config.init.from_hf = os.path.abspath(os.path.expanduser(hf_dir))
    resolve_init(config, explicit=explicit)
    tokenizer = load_tokenizer(config.data.tokenizer)
    model = train_step.build_model(config, tokenizer.vocab_size)
    mesh = sharding.make_mesh(dict(config.mesh))
    tx = optim.make_optimizer(config.train, max(config.train.num_steps, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, config.data.seq_len)
        abstract = train_step.abstract_state(model, tx, mesh, config.data.seq_len)
        state = train_step.state_from_params(tx, initial_params(config, model, abstract.params, mesh, tokenizer), shardings)
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(0, state, None, config, tokenizer.model_bytes)
    ckpt.close()
    tokenizer.save(os.path.join(workdir, tokenizer.filename))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config_lib.to_json(config))
    return {"workdir": os.path.abspath(workdir), "objective": config.objective, "shift_logits": config.model.shift_logits,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))}


# ---------------------------------------------------------------- CLI: dllm-jax export / import
def add_export_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained dllm-jax run directory")
    parser.add_argument("--output", required=True, help="directory to write the Hugging Face checkpoint into")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def add_import_arguments(parser) -> None:
    parser.add_argument("--hf", required=True, help="local Hugging Face checkpoint directory (Llama / Mistral / Qwen2 / Qwen3)")
    parser.add_argument("--workdir", required=True, help="new run directory to write the step-0 checkpoint into")
    parser.add_argument("--config", default=None, help="optional experiment file (default: the library defaults)")
    parser.epilog = "Override keys with --config.KEY=VALUE (e.g. --config.objective=mdm --config.model.shift_logits=true)"


def run_import(args) -> int:
    config = config_lib.load_config(args.config, []) if args.config else config_lib.default_config()
    for key, value in args.overrides:
        config_lib.set_key(config, key, value)
    print(json.dumps(import_run(args.hf, args.workdir, config, explicit={k for k, _ in args.overrides}), indent=2))
    return 0


def run_export(args) -> int:
    if os.path.isdir(args.output) and os.listdir(args.output) and not os.path.isfile(os.path.join(args.output, "config.json")):
        raise ConfigError(f"--output {args.output!r} exists and is not an exported checkpoint; give a new or empty directory")
    info = export_run(args.workdir, args.output, args.step)
    print(json.dumps(info, indent=2))
    return 0


__all__ = ["FAMILIES", "ARCH_KEYS", "resolve_init", "load_hf_params", "initial_params", "export_run", "import_run", "hf_family", "hf_model_settings"]
