"""`dllm-jax export`: a run as a Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files), in the transformers class that represents it exactly."""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.hf.layout import FAMILIES, _flat, tensor_plan, to_hf

log = logging.getLogger("dllm_jax")

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
    from dllm_jax import objectives

    obj = objectives.build(config)
    out["dllm_jax"] = {
        "objective": config.objective,
        # AR: causal; MDM: bidirectional; block diffusion: bidirectional within blocks of
        # `block_size`, causal over blocks (its training pattern, BD3-LM)
        "attention": "causal" if obj.causal else ("block_causal" if obj.block_size else "bidirectional"),
        "block_size": obj.block_size or None,
        "mask_token_id": tokenizer.mask_id,
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "shift_logits": shift,
        "vocab_multiple": int(config.model.get("vocab_multiple", 1)),
        "mdm_schedule": None if obj.causal else config.mdm.schedule,
        # what else defines the learned distribution (gidd: gidd.p_u, gidd.gamma, mdm.schedule); restored on import
        "objective_config": {key: _get(config, key) for key in obj.defining_keys},
        "step": step,
    }
    return out


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


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
    from dllm_jax import objectives

    if objectives.get(hf_cfg["dllm_jax"]["objective"]).mask_input:
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
