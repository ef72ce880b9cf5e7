"""Reading a Hugging Face checkpoint directory: config.json -> `model.*`, and the safetensors
weights -> our parameters, placed shard by shard on the mesh (see `load_hf_params`)."""

from __future__ import annotations

import glob
import json
import os
import re
from contextlib import ExitStack

import jax
import numpy as np

from dllm_jax.errors import CheckpointError, ConfigError
from dllm_jax.hf.layout import _IGNORED_SUFFIXES, FAMILIES, REFUSED, _flat, _unflat, hf_shape, names_of, tensor_plan, to_ours

# ---------------------------------------------------------------- reading HF directories
def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(os.path.expanduser(hf_dir), "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"init.from_hf={hf_dir!r} has no config.json; point it at a local Hugging Face model directory "
                              "(config.json + *.safetensors + tokenizer.json), e.g. one written by huggingface-cli download")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}: {e}); restore the checkpoint's config.json "
                              "(e.g. download it again)") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} holds a JSON {type(hf).__name__}, not an object of settings; restore the checkpoint's config.json")
    arch = hf.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise CheckpointError(f"{path}: architectures={arch!r} must be a list of class names, e.g. [\"LlamaForCausalLM\"]")
    return hf


def holds_hf_checkpoint(directory: str) -> bool:
    """Whether `directory` holds a Hugging Face checkpoint and no dllm-jax run: a transformers
    config.json (a JSON object with `model_type` or `architectures`) and no checkpoints/."""
    from dllm_jax import paths

    if not paths.exists(paths.join(directory, "config.json")) or paths.isdir(paths.join(directory, "checkpoints")):
        return False
    try:
        hf = json.loads(paths.read_text(paths.join(directory, "config.json")))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(hf, dict) and ("model_type" in hf or "architectures" in hf)


def refuse_hf_checkpoint_workdir(workdir: str) -> None:
    """ConfigError when a run would be written into a Hugging Face checkpoint's directory (its
    config.json would be overwritten: the checkpoint could no longer be imported)."""
    if holds_hf_checkpoint(workdir):
        raise ConfigError(f"--workdir {workdir!r} holds a Hugging Face checkpoint (a transformers config.json); a run there would "
                          "overwrite it. Give a new --workdir (import it with: dllm-jax import --hf DIR --workdir NEW_DIR)")


def _rope_theta(hf: dict, where: str) -> float:
    """The RoPE base of a config.json, read as transformers 5 reads it
    (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`): the RoPE dict is the legacy
    `rope_scaling` when it is non-empty, else `rope_parameters`; the base is that dict's
    `rope_theta`, else the top-level `rope_theta`, else 10000. transformers 4 read only the
    top-level `rope_theta`, so a config.json that gives the base in several places with
    different values is ambiguous: ConfigError naming them. A RoPE type other than 'default'
    (scaling), or per-layer RoPE dicts, are refused (ConfigError)."""
    legacy, params = hf.get("rope_scaling"), hf.get("rope_parameters")
    for name, value in (("rope_scaling", legacy), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}={value!r} is not a JSON object; fix config.json")
    chosen = legacy or params or {}
    if any(isinstance(v, dict) for v in chosen.values()):
        raise ConfigError(f"{where}: per-layer RoPE parameters ({sorted(chosen)}) are not supported; dllm_jax has one RoPE for all layers")
    rope_type = chosen.get("rope_type", chosen.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{where}: rope_type={rope_type!r} (RoPE scaling) is not supported; dllm_jax's RoPE is the plain "
                          "(default) one. Use a checkpoint without rope_scaling / rope_parameters.rope_type")
    def number(name, value):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name}={value!r} is not a number; fix config.json") from None

    given = {name: number(f"{name}.rope_theta", d["rope_theta"]) for name, d in (("rope_scaling", legacy), ("rope_parameters", params))
             if d and d.get("rope_theta") is not None}
    if hf.get("rope_theta") is not None:
        given["rope_theta"] = number("rope_theta", hf["rope_theta"])
    chosen_name = "rope_scaling" if legacy else "rope_parameters"
    theta = given[chosen_name] if chosen.get("rope_theta") is not None else given.get("rope_theta", 10000.0)
    if len(set(given.values())) > 1:
        shown = ", ".join(f"{k if k == 'rope_theta' else k + '.rope_theta'}={v:g}" for k, v in given.items())
        raise ConfigError(f"{where}: config.json gives the RoPE base {len(given)} times with different values ({shown}); "
                          f"transformers 5 uses {theta:g}, transformers 4 the top-level rope_theta: make them agree in config.json")
    return theta


def hf_family_of(hf: dict, where: str) -> str:
    """The family (`layout.FAMILIES` value) of a config.json; CheckpointError for another architecture."""
    arch = (hf.get("architectures") or [None])[0]
    if arch in REFUSED:
        raise CheckpointError(f"{where}: architecture {arch!r} cannot be imported: {REFUSED[arch]}")
    if arch not in FAMILIES:
        raise CheckpointError(f"{where}: architecture {arch!r} is not supported; init.from_hf reads {sorted(FAMILIES)} "
                              "checkpoints (convert others with transformers first)")
    return FAMILIES[arch]


def _llada_settings(hf: dict, where: str) -> dict:
    """`model.*` of a LLaDA config.json (GSAI-ML/LLaDA's configuration_llada.py fields): the
    `LLaDALlamaBlock` (pre-RMSNorm, q/k/v/out projections, SwiGLU silu(ff_proj x) * up_proj x,
    RoPE over head_dim = d_model / n_heads in the rotate-half form) is our block exactly;
    every option that changes it is refused (ConfigError naming it)."""
    def need(key, ok, default, why):
        value = hf.get(key, default)
        if not ok(value):
            raise ConfigError(f"{where}: {key}={value!r} is not supported ({why}); this LLaDA checkpoint cannot be represented exactly")

    need("block_type", lambda v: v == "llama", "llama", "only LLaDA's 'llama' block (separate q/k/v and gate/up projections) is read")
    need("block_group_size", lambda v: v in (None, 1), 1, "grouped blocks store their tensors under block_groups")
    need("activation_type", lambda v: v == "silu", "silu", "dllm_jax's MLP is silu(gate) * up")
    need("layer_norm_type", lambda v: v == "rms", "rms", "dllm_jax's norms are RMSNorm with a scale")
    need("layer_norm_with_affine", lambda v: v in (None, True), True, "dllm_jax's RMSNorm has a learned scale")
    need("bias_for_layer_norm", lambda v: not v, False, "dllm_jax's norms have no bias")
    need("include_bias", lambda v: not v, False, "only q/k/v biases (include_qkv_bias) are supported")
    need("attention_layer_norm", lambda v: not v, False,
         "LLaDA's q/k norm spans the whole projection; dllm_jax's qk_norm is per head (Qwen3)")
    need("alibi", lambda v: not v, False, "dllm_jax uses RoPE")
    need("rope", lambda v: v in (None, True), True, "dllm_jax uses RoPE")
    need("input_emb_norm", lambda v: not v, False, "the embedding is not scaled by sqrt(d_model) in dllm_jax")
    need("scale_logits", lambda v: not v, False, "the logits are not scaled by 1/sqrt(d_model) in dllm_jax")
    need("clip_qkv", lambda v: v is None, None, "q/k/v are not clipped in dllm_jax")
    d, heads = int(hf["d_model"]), int(hf["n_heads"])
    kv = 1 if hf.get("multi_query_attention") else int(hf.get("n_kv_heads") or heads)
    ffn = hf.get("mlp_hidden_size") or int(hf.get("mlp_ratio", 4)) * d
    return {
        "d_model": d,
        "n_layers": int(hf["n_layers"]),
        "n_heads": heads,
        "n_kv_heads": 0 if kv == heads else kv,
        "head_dim": 0,
        "d_ff": int(ffn),
        "rope_base": _rope_theta(hf, where),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-5)),
        "qk_norm": False,
        "attention_bias": bool(hf.get("include_qkv_bias", False)),
        "tie_embeddings": bool(hf.get("weight_tying", False)),
        "num_experts": 0,
        "experts_per_token": 2,
    }


def n_layers_of(hf: dict) -> int:
    """Number of layers in a config.json (LLaDA: n_layers; the others: num_hidden_layers)."""
    return int(hf["n_layers"] if "n_layers" in hf and "num_hidden_layers" not in hf else hf["num_hidden_layers"])


def hf_model_settings(hf: dict, where: str) -> dict:
    """`model.*` values of a Hugging Face config.json (a dict); ConfigError/CheckpointError
    when the architecture cannot be represented exactly. Dream is Qwen2's architecture (its
    q/k/v always have biases, o_proj none, whatever attention_bias says; modeling_dream.py),
    SDAR Qwen3's (per-head q/k RMSNorm; modeling_sdar.py); LLaDA: `_llada_settings`."""
    family = hf_family_of(hf, where)
    if family == "llada":
        return _llada_settings(hf, where)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act!r}; dllm_jax's MLP is SwiGLU (silu); this checkpoint cannot be represented")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{where}: mlp_bias=true is not supported (dllm_jax's MLP has no biases)")
    if family == "dllm_jax":  # our diffusion export (layout.DIFFUSION_ARCH): QK-norm and q/k/v biases are config keys
        return _diffusion_settings(hf, where)
    bias = bool(hf.get("attention_bias", False))
    if family in ("llama", "mistral", "qwen3", "sdar") and bias:
        arch = hf["architectures"][0]
        raise ConfigError(f"{where}: attention_bias=true ({arch} then also has an output-projection bias) is not supported; "
                          "only Qwen2's q/k/v biases are")
    if family in ("qwen2", "dream"):
        bias = True
    if family in ("qwen2", "qwen3", "dream", "sdar") and hf.get("use_sliding_window"):
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
        "qk_norm": family in ("qwen3", "sdar"),
        "attention_bias": bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "num_experts": 0,
        "experts_per_token": 2,
    }


def _diffusion_settings(hf: dict, where: str) -> dict:
    """`model.*` values of a config.json written for `DIFFUSION_ARCH` (dllm_jax's own modeling
    file): the Llama keys plus `qk_norm` and `attention_bias` (q/k/v biases only)."""
    from dllm_jax.hf.layout import DIFFUSION_ARCH, DIFFUSION_MODEL_TYPE

    if hf.get("model_type") != DIFFUSION_MODEL_TYPE:
        raise CheckpointError(f"{where}: architecture {DIFFUSION_ARCH!r} with model_type={hf.get('model_type')!r}; "
                              f"a dllm_jax diffusion export has model_type={DIFFUSION_MODEL_TYPE!r}: export it again")
    for key in ("qk_norm", "attention_bias"):
        if not isinstance(hf.get(key), bool):
            raise ConfigError(f"{where}: {key}={hf.get(key)!r} must be true or false in a dllm_jax diffusion export's config.json")
    settings = hf_model_settings({**hf, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False}, where)
    settings.update(qk_norm=hf["qk_norm"], attention_bias=hf["attention_bias"])
    return settings


def _read_index(path: str) -> dict:
    """The `weight_map` of a model.safetensors.index.json; CheckpointError when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        ok = isinstance(weight_map, dict) and all(isinstance(k, str) and isinstance(v, str) and v == os.path.basename(v)
                                                  for k, v in weight_map.items())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path!r} is not a readable safetensors index ({type(e).__name__}: {e}); download it again") from e
    if not ok or not weight_map:
        raise CheckpointError(f"{path!r}: weight_map must map tensor names to shard file names in the same directory; download it again")
    return weight_map


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")


class SafetensorsReader:
    """Tensors of an HF directory by name, read with `safetensors.safe_open` (numpy), one
    tensor or row range at a time; shapes without reading data.

    The weights are `model.safetensors`, or the shards listed by
    `model.safetensors.index.json` (the two layouts transformers reads; other *.safetensors
    files, e.g. Mistral's consolidated.safetensors, are not weights of the model and are
    ignored, as transformers does). CheckpointError, before any tensor is read, when the
    directory holds no weights, or both layouts (transformers would read model.safetensors,
    an index-based reader the shards: e.g. an export into a directory holding an older
    sharded checkpoint), or when the index and the shards disagree in any way: a listed
    shard is missing or unreadable, a tensor is not in the shard the index names, a shard
    holds a tensor the index does not map to it, or a `model-*-of-*.safetensors` shard
    beside the index is not listed by it."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self.dir = os.path.expanduser(hf_dir)
        index, single = os.path.join(self.dir, INDEX_FILE), os.path.join(self.dir, SINGLE_FILE)
        shards = sorted(n for n in os.listdir(self.dir) if _SHARD.match(n)) if os.path.isdir(self.dir) else []
        if os.path.isfile(index) and os.path.isfile(single):
            raise CheckpointError(f"{self.dir!r} holds two checkpoints: {SINGLE_FILE} and the sharded {INDEX_FILE} "
                                  f"({len(shards)} shards); transformers reads {SINGLE_FILE}, so they may be different models "
                                  "(e.g. an export written over an older checkpoint): delete the stale one")
        if os.path.isfile(index):
            weight_map = _read_index(index)
            files = sorted(set(weight_map.values()))
            unlisted = [n for n in shards if n not in files]
            if unlisted:
                raise CheckpointError(f"{self.dir!r}: shard {unlisted[0]!r} is not listed by {INDEX_FILE} ({len(unlisted)} unlisted "
                                      "in all); it is left from another checkpoint: delete it, or restore the index that lists it")
        elif os.path.isfile(single):
            if shards:
                raise CheckpointError(f"{self.dir!r} holds {SINGLE_FILE} and shards such as {shards[0]!r} of another checkpoint; "
                                      "delete the stale ones")
            files, weight_map = [SINGLE_FILE], None
        else:
            others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.dir, "*.safetensors")))
            if shards:
                hint = f"has shards ({shards[0]!r}...) but no {INDEX_FILE}; download the index too"
            elif others:
                hint = f"has no {SINGLE_FILE} (only {others}, which transformers does not read as the model's weights)"
            else:
                hint = ("has no model.safetensors; download the safetensors weights (PyTorch .bin checkpoints are not read: "
                        "convert them with transformers' save_pretrained)")
            raise CheckpointError(f"{self.dir!r} {hint}")
        self._stack = ExitStack()
        self._files = {}
        try:
            for name in files:
                path = os.path.join(self.dir, name)
                if not os.path.isfile(path):
                    raise CheckpointError(f"{index!r} lists {name!r}, which is missing from {self.dir!r}; the download is incomplete")
                try:
                    self._files[name] = self._stack.enter_context(safe_open(path, framework="numpy"))
                except Exception as e:  # safetensors.SafetensorError: not a safetensors file, truncated header...
                    raise CheckpointError(f"{path!r} is not a readable safetensors file ({e}); download it again") from e
            if weight_map is None:
                weight_map = {k: SINGLE_FILE for k in self._files[SINGLE_FILE].keys()}
            else:
                self._check_index(weight_map)
        except BaseException:
            self._stack.close()
            raise
        self.weight_map = weight_map

    def _check_index(self, weight_map: dict) -> None:
        held = {name: set(f.keys()) for name, f in self._files.items()}
        for tensor, name in sorted(weight_map.items()):
            if tensor not in held[name]:
                where = [n for n, keys in held.items() if tensor in keys]
                found = f"it is in {where[0]!r}" if where else "no shard holds it"
                raise CheckpointError(f"{INDEX_FILE} in {self.dir!r} maps tensor {tensor!r} to shard {name!r}, which does not hold it "
                                      f"({found}); the index and the shards are of different checkpoints: download them again")
        for name, keys in sorted(held.items()):
            extra = sorted(k for k in keys if weight_map.get(k) != name)
            if extra:
                other = weight_map.get(extra[0])
                said = f"maps it to {other!r}" if other else "does not list it"
                raise CheckpointError(f"shard {name!r} in {self.dir!r} holds tensor {extra[0]!r} ({len(extra)} such in all), but "
                                      f"{INDEX_FILE} {said}; the index and the shards are of different checkpoints: download them again")

    def names(self) -> set:
        return set(self.weight_map)

    def shape(self, name: str) -> tuple:
        return tuple(self._files[self.weight_map[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._read(name, lambda f: f.get_tensor(name))

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._read(name, lambda f: f.get_slice(name)[start:stop])

    def _read(self, name: str, read) -> np.ndarray:
        file = self.weight_map[name]
        try:
            return np.asarray(read(self._files[file]), dtype=np.float32)
        except Exception as e:  # safetensors.SafetensorError: truncated or corrupt data
            raise CheckpointError(f"cannot read tensor {name!r} from {os.path.join(self.dir, file)!r} ({e}); download it again") from e

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_tied_head(reader: SafetensorsReader, hf_dir: str, chunk_rows: int, head: str = "lm_head.weight",
                     emb: str = "model.embed_tokens.weight") -> None:
    """A tied config (tie_word_embeddings=true) whose checkpoint also holds `lm_head.weight`:
    fine when it equals the embedding bit for bit (torch .bin conversions store both); else
    CheckpointError naming both tensors and the largest difference, because transformers
    versions disagree on which head that model has (transformers 5 keeps the stored
    lm_head.weight, untied, with a warning; 4.x from 4.54 overwrites it with the embedding),
    so no choice here is "what transformers does". Compared in chunks of rows."""
    shapes = reader.shape(head), reader.shape(emb)
    if shapes[0] != shapes[1]:
        raise CheckpointError(f"{hf_dir!r}: config.json has tie_word_embeddings=true, but {head!r} {list(shapes[0])} and {emb!r} "
                              f"{list(shapes[1])} differ in shape; set tie_word_embeddings=false in config.json if {head} is the head")
    worst = 0.0
    for a in range(0, shapes[1][0], chunk_rows):
        b = min(a + chunk_rows, shapes[1][0])
        diff = np.abs(reader.rows(head, a, b) - reader.rows(emb, a, b))
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
    if worst > 0:
        raise CheckpointError(f"{hf_dir!r}: config.json has tie_word_embeddings=true, but the checkpoint's {head!r} differs from "
                              f"{emb!r} (max |difference| {worst:.4g}); transformers 5 then uses {head} (untied) and transformers 4 "
                              f"the embedding, so the model is ambiguous: set tie_word_embeddings=false in config.json to use {head}, "
                              f"or remove {head} from the checkpoint to tie the head to the embedding")


def _indices(index_slice: slice, n: int) -> range:
    return range(*index_slice.indices(n))


def load_hf_params(hf_dir: str, abstract_params, tokenizer_vocab: int, chunk_rows: int = 8192):
    """Parameters for `abstract_params` (ShapeDtypeStructs with shardings: the model's
    params) from an HF directory, each placed on its sharding as it is read.

    Raises CheckpointError naming the tensor when one is missing, unexpected or of the wrong
    shape (the checkpoint does not match its config.json or our mapping)."""
    hf = read_hf_config(hf_dir)
    family = hf_family_of(hf, f"init.from_hf={hf_dir!r}")
    names = names_of(family)
    n_layers = n_layers_of(hf)
    flat = _flat(abstract_params)
    plan = tensor_plan(flat, n_layers, family)
    with SafetensorsReader(hf_dir) as reader:
        present = reader.names()
        needed = {n for names, _, _ in plan.values() for n in names}
        missing = sorted(needed - present)
        if missing:
            raise CheckpointError(f"{hf_dir!r}: tensor {missing[0]!r} is missing ({len(missing)} missing in all); the checkpoint "
                                  "does not match its config.json (architecture / attention_bias / tie_word_embeddings / num_hidden_layers)")
        tied = "lm_head" not in flat
        head_name = names["head"]
        extra = sorted(n for n in present - needed if not n.endswith(_IGNORED_SUFFIXES) and not (tied and n == head_name))
        if extra:
            raise CheckpointError(f"{hf_dir!r}: unexpected tensor {extra[0]!r} ({len(extra)} in all) that dllm_jax's model has no "
                                  "place for; the checkpoint's config.json does not describe it (e.g. biases, a different family)")
        if tied and head_name in present:
            _check_tied_head(reader, hf_dir, chunk_rows, head_name, names["embed"])
        vocab_name = names["embed"]
        hf_rows = reader.shape(vocab_name)[0]
        if tokenizer_vocab > hf_rows:
            raise CheckpointError(f"{hf_dir!r}: the tokenizer has {tokenizer_vocab} ids but {vocab_name} only {hf_rows} rows; "
                                  "use the tokenizer that belongs to this checkpoint")
        exported = bool(hf.get("dllm_jax"))  # our export: every row it holds is one of the run's (its [MASK] / [PAD] rows too)
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
