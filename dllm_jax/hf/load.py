"""Reading a Hugging Face checkpoint directory: config.json -> `model.*`, and the safetensors
weights -> our parameters, placed shard by shard on the mesh (see `load_hf_params`)."""

from __future__ import annotations

import glob
import json
import os
from contextlib import ExitStack

import jax
import numpy as np

from dllm_jax.errors import CheckpointError, ConfigError
from dllm_jax.hf.layout import _IGNORED_SUFFIXES, FAMILIES, _flat, _unflat, hf_shape, tensor_plan, to_ours

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
