"""`dllm-jax export`: a run as a Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files), in the transformers class that represents it exactly."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile

import jax
import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.hf.layout import AUTO_MAP, DIFFUSION_ARCH, DIFFUSION_MODEL_TYPE, FAMILIES, REMOTE_FILES, _flat, tensor_plan, to_hf

log = logging.getLogger("dllm_jax")

# ---------------------------------------------------------------- export
def hf_family(model_cfg, causal: bool = True) -> str:
    """The transformers class that represents our model exactly; ConfigError if none does.
    `causal=False` (a diffusion run): `DIFFUSION_ARCH`, our own modeling file, which runs the
    run's attention pattern and has every combination of QK-norm and q/k/v biases."""
    if model_cfg.num_experts:
        raise ConfigError("MoE runs (model.num_experts > 0) cannot be exported: no transformers class has this router")
    if not causal:
        return DIFFUSION_ARCH
    if model_cfg.qk_norm and model_cfg.attention_bias:
        raise ConfigError("model.qk_norm with model.attention_bias has no exact transformers class (Qwen3's bias includes o_proj)")
    if model_cfg.qk_norm:
        return "Qwen3ForCausalLM"
    return "Qwen2ForCausalLM" if model_cfg.attention_bias else "LlamaForCausalLM"


def _hf_pad_id(tokenizer):
    """The pad id transformers may see: the tokenizer's pad piece, or None when padding is the
    extra id past [MASK] (no token of the exported tokenizer; never EOS, which the model emits)."""
    return None if getattr(tokenizer, "pad_is_extra", False) else tokenizer.pad_id


def export_config(config, model_cfg, tokenizer, step: int) -> dict:
    """config.json of an exported run (transformers keys plus a `dllm_jax` entry). `eos_token_id`
    is the run's EOS (the document separator it learnt to emit); `pad_token_id` its pad piece,
    or null when the run padded with the extra id (recorded as `dllm_jax.pad_token_id`).
    A diffusion run (not `objective.causal`) gets `model_type` 'dllm_jax', `auto_map` to the
    modeling file export_run copies, and the keys its config class reads (`_diffusion_keys`)."""
    from dllm_jax import objectives

    obj = objectives.build(config)
    arch = hf_family(model_cfg, obj.causal)
    family = FAMILIES.get(arch, DIFFUSION_MODEL_TYPE)
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
        "pad_token_id": _hf_pad_id(tokenizer),
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
    }
    if family == "llama":
        out["mlp_bias"] = False
    if family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=model_cfg.n_layers)
    shift = bool(config.model.get("shift_logits", False))
    if family == DIFFUSION_MODEL_TYPE:
        out.update(_diffusion_keys(config, model_cfg, tokenizer, obj, shift))
    out["dllm_jax"] = {
        "objective": config.objective,
        # AR: causal; MDM: bidirectional; block diffusion: bidirectional within blocks of
        # `block_size`, causal over blocks (its training pattern, BD3-LM)
        "attention": "causal" if obj.causal else ("block_causal" if obj.block_size else "bidirectional"),
        "block_size": obj.block_size or None,
        "mask_token_id": tokenizer.mask_id,
        "pad_token_id": tokenizer.pad_id,  # our padding id (an embedding row past [MASK] when the tokenizer has no pad piece)
        # the run's data.eos_token / data.pad_token / data.mask_token (set again on import)
        "tokenizer_names": {**getattr(tokenizer, "overrides", {}), **getattr(tokenizer, "mask_names", {})},
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "tokenizer_file": getattr(tokenizer, "filename", None),  # the run's own tokenizer (import reads it, not a converted tokenizer.json)
        "shift_logits": shift,
        "vocab_multiple": int(config.model.get("vocab_multiple", 1)),
        "mdm_schedule": None if obj.causal else config.mdm.schedule,
        # what else defines the learned distribution (gidd: gidd.p_u, gidd.gamma, mdm.schedule); restored on import
        "objective_config": {key: _get(config, key) for key in obj.defining_keys},
        "step": step,
    }
    return out


def _diffusion_keys(config, model_cfg, tokenizer, obj, shift: bool) -> dict:
    """config.json keys of a diffusion export read by configuration_dllm_jax.DllmJaxConfig:
    the architecture switches the Llama / Qwen classes express by their class (QK-norm, q/k/v
    biases), the attention pattern, the ids the samplers need, and `generate`'s defaults:
    `vocab_limit` is the tokenizer's vocabulary size and `mask_token_id` the [MASK] id, which
    is `vocab_limit` for our runs or a piece below it for an imported released DLM (LLaDA's
    126336 under <|eot_id|> 126348): the modeling file never generates ids >= vocab_limit,
    the mask id or `dllm_pad_token_id` (`objectives.common.real_ids`, the samplers' rule);
    dllm-jax sample's (the objective's default sampler, steps = max_new_tokens, one block for
    MDM and the run's block size for block diffusion, EOS last), except temperature 0 (greedy:
    the setting at which the modeling file reproduces our tokens)."""
    return {
        "auto_map": dict(AUTO_MAP),
        "qk_norm": bool(model_cfg.qk_norm),
        "attention_bias": bool(model_cfg.attention_bias),
        "objective": config.objective,
        "attention": "block_causal" if obj.block_size else "bidirectional",
        "block_size": obj.block_size or None,
        "vocab_limit": int(tokenizer.vocab_size),
        "mask_token_id": tokenizer.mask_id,
        "dllm_pad_token_id": tokenizer.pad_id,
        "shift_logits": shift,
        "schedule": config.mdm.schedule,
        "generation_defaults": {"sampler": obj.default_sampler, "max_new_tokens": 64, "steps": None,
                                "block_length": obj.block_size or None, "threshold": None, "eos_last": True, "temperature": 0.0},
    }


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _write_tokenizer(tokenizer, out_dir: str, hf_cfg: dict) -> list[str]:
    """tokenizer.json (+ tokenizer_config.json) for a Hugging Face tokenizer; tokenizer.model +
    tokenizer_config.json, and tokenizer.json when `_spm_tokenizer_json` can write it, for a
    SentencePiece one. Returns the file names written."""
    special = {"eos_token": tokenizer.id_to_piece(tokenizer.eos_id)}
    if _hf_pad_id(tokenizer) is not None:  # else no pad token: "[PAD]" is no piece of the exported tokenizer
        special["pad_token"] = tokenizer.id_to_piece(tokenizer.pad_id)
    if tokenizer.kind == "hf":
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
        files = ["tokenizer.json"]
    else:  # + tokenizer.json when it can be converted exactly (see _spm_tokenizer_json)
        tokenizer.save(os.path.join(out_dir, "tokenizer.model"))
        unk = tokenizer.id_to_piece(tokenizer.unk_id) if tokenizer.unk_id >= 0 else None
        # transformers 5's LlamaTokenizer re-reads a .model as BPE and encodes our unigram models
        # differently; TokenizersBackend builds the tokenizer from the proto's own settings
        tok_cfg = {"tokenizer_class": "TokenizersBackend", "add_bos_token": False, "add_eos_token": False,
                   "unk_token": unk, "bos_token": None, **special}
        files = ["tokenizer.model"]
    from dllm_jax import objectives

    if objectives.get(hf_cfg["dllm_jax"]["objective"]).mask_input:
        tok_cfg["mask_token_id"] = tokenizer.mask_id  # one past the tokenizer (our runs), or a released DLM's own piece
        if tokenizer.mask_id < tokenizer.vocab_size:
            tok_cfg["mask_token"] = tokenizer.id_to_piece(tokenizer.mask_id)
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


# texts on which a converted tokenizer must encode exactly as SentencePiece (see `_probes`)
_PROBES = ("The river runs under the old stone bridge.", "def main(x):\n    return  x\t# ok\n\n", "  Ünïcode ☃, ok?",
           "emoji 😀 and 日本語 outside the vocabulary\n")


def _probes(tokenizer) -> list[str]:
    """`_PROBES`, a literal '▁' when our tokenizer keeps it (a model trained by dllm_jax
    encodes it as its UTF-8 byte pieces; the tokenizer.json must then too), and the strings
    of the special pieces between text."""
    probes = list(_PROBES)
    if tokenizer.keeps_u2581:
        probes.append("a\u2581b \u2581\u2581 c\u2581")
    probes += [f"x{piece}y {piece}" for piece in tokenizer.special_pieces()]
    return probes


def _spm_tokenizer_json(out_dir: str, tokenizer) -> bool:
    """Also write tokenizer.json for a SentencePiece tokenizer, so readers need neither
    sentencepiece nor protobuf. A model with dllm_jax's text handling (every model its trainer
    writes) is converted by `dllm_jax.hf.spm_json` with the `tokenizers` package only (no
    protobuf); others by transformers' converter (needs transformers and protobuf >= 7).
    Kept only if it encodes `_probes` exactly as our tokenizer with
    `split_special_tokens=False` (special-piece strings map to their ids, as transformers'
    tokenizers do by default); else not written, with a log line."""
    from dllm_jax.hf.spm_json import spm_tokenizer_json

    try:
        text, why = spm_tokenizer_json(tokenizer.model_bytes)
    except ImportError:
        text, why = None, "the tokenizers package is not installed"
    if text is not None:
        from tokenizers import Tokenizer

        backend, how = Tokenizer.from_str(text), "dllm_jax's conversion"
    else:
        try:  # transformers' own converter, for models not trained by dllm_jax
            import transformers

            backend, how = transformers.AutoTokenizer.from_pretrained(out_dir).backend_tokenizer, "transformers' conversion"
        except Exception as e:  # transformers absent, or it cannot parse the proto (protobuf < 7)
            log.info("tokenizer.json not written (%s; transformers could not convert tokenizer.model: %s)", why, str(e)[:200])
            return False
    for probe in _probes(tokenizer):
        if backend.encode(probe, add_special_tokens=False).ids != tokenizer.encode(probe, split_special_tokens=False):
            log.warning("tokenizer.json not written: %s of tokenizer.model encodes %r differently", how, probe)
            return False
    backend.save(os.path.join(out_dir, "tokenizer.json"))
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


# files of a Hugging Face checkpoint directory that an export replaces or that readers would
# take instead of what it writes (weights, configs, tokenizer files); other files are kept
_HF_FILES = frozenset({*REMOTE_FILES,
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "tf_model.h5", "tf_model.h5.index.json", "flax_model.msgpack",
    "flax_model.msgpack.index.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json"})
_HF_SHARD = re.compile(r"^(model|pytorch_model|tf_model|flax_model)-\d+-of-\d+\.(safetensors|bin|h5|msgpack)$")


def _check_output(output: str) -> None:
    """An export goes into a new or empty directory, or over an earlier Hugging Face
    checkpoint (its config.json is a transformers config: it has `model_type` or
    `architectures`); ConfigError otherwise, e.g. for a dllm-jax run directory (nothing is
    read or deleted)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output!r} is a file; give a new or empty directory")
    if not os.path.isdir(output) or not os.listdir(output):
        return
    from dllm_jax.hf.load import holds_hf_checkpoint

    if not holds_hf_checkpoint(output):
        raise ConfigError(f"--output {output!r} exists and is not a Hugging Face checkpoint (no transformers config.json, or it "
                          "holds a dllm-jax run); give a new or empty directory")


def export_run(workdir: str, output: str, step: int | None = None) -> dict:
    """Write run `workdir` (latest or `step` checkpoint) as a Hugging Face checkpoint in `output`.
    Returns {'output', 'architecture', 'step', 'files', 'removed'}.

    `output` is new, empty, or holds an earlier Hugging Face checkpoint (`_check_output`;
    else ConfigError before anything is read or written). Everything is first written to a
    staging directory inside `output`, then moved in (config.json last); only then are the
    earlier checkpoint's files that this export does not write removed (`_HF_FILES`, e.g.
    an older sharded model-0000X-of-0000Y.safetensors + index, or a tokenizer.json that
    readers would prefer to the new tokenizer.model), listed in 'removed' and logged. Other
    files (a README, ...) are kept. A failure before the move leaves `output` as it was."""
    from safetensors.numpy import save_file

    from dllm_jax.checkpoint import load_run

    _check_output(output)
    run = load_run(workdir, step=step)
    model_cfg = run.model.cfg
    hf_cfg = export_config(run.config, model_cfg, run.tokenizer, run.step)
    tensors = export_params(run.params, model_cfg)
    os.makedirs(output, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".dllm_jax_export-", dir=output)
    try:
        save_file(tensors, os.path.join(stage, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(stage, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_cfg, f, indent=2)
        gen = {"eos_token_id": run.tokenizer.eos_id}
        if _hf_pad_id(run.tokenizer) is not None:
            gen["pad_token_id"] = _hf_pad_id(run.tokenizer)
        if run.tokenizer.bos_id >= 0:
            gen["bos_token_id"] = run.tokenizer.bos_id
        with open(os.path.join(stage, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(gen, f, indent=2)
        files = ["config.json", "generation_config.json", "model.safetensors"] + _write_tokenizer(run.tokenizer, stage, hf_cfg)
        if hf_cfg["architectures"][0] == DIFFUSION_ARCH:  # its own modeling file (package data), copied verbatim
            for name in REMOTE_FILES:
                shutil.copyfile(os.path.join(os.path.dirname(__file__), "remote", name), os.path.join(stage, name))
            files += list(REMOTE_FILES)
        stale = sorted(n for n in os.listdir(output) if (n in _HF_FILES or _HF_SHARD.match(n)) and n not in files
                       and os.path.isfile(os.path.join(output, n)))
        for name in sorted(files, key=lambda n: n == "config.json"):  # config.json last: the checkpoint is complete
            os.replace(os.path.join(stage, name), os.path.join(output, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for name in stale:
        os.remove(os.path.join(output, name))
    if stale:
        log.warning("export: removed %d file(s) of the earlier checkpoint in %s that this export does not write: %s",
                    len(stale), output, ", ".join(stale))
    return {"output": os.path.abspath(output), "architecture": hf_cfg["architectures"][0], "step": run.step, "files": files,
            "removed": stale}
