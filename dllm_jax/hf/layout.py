"""Where each of our parameters lives in a Hugging Face Llama / Qwen checkpoint, or in a released
diffusion LM's (LLaDA, Dream, SDAR), and how its layout differs (torch Linear weights are
[out, in]; ours are [in, heads, head_dim] etc.).

Dream (DreamModel) and SDAR (SDARForCausalLM) use Qwen2's and Qwen3's tensor names; LLaDA
(LLaDAModelLM, GSAI-ML/LLaDA's modeling_llada.py, `LLaDALlamaBlock`) has its own:
model.transformer.wte / blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm,
ff_proj (the gate: silu(ff_proj(x)) * up_proj(x)), up_proj, ff_out (the down projection)} /
ln_f / ff_out (the output head, absent when weight_tying)."""

from __future__ import annotations

import jax
import numpy as np

from dllm_jax.errors import CheckpointError

FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    # released diffusion LMs (DLM_FAMILIES: the objective each becomes)
    "LLaDAModelLM": "llada",
    "DreamModel": "dream",
    "SDARForCausalLM": "sdar",
}
# released diffusion LMs: family -> (objective, model.shift_logits); SDAR also takes its
# config.json's block_size as block_diffusion.block_size
DLM_FAMILIES = {"llada": ("mdm", False), "dream": ("mdm", True), "sdar": ("block_diffusion", False)}
# architectures that are read nowhere, with the reason (named in the error)
REFUSED = {
    "LLaDAMoEModelLM": "LLaDA-MoE's router combines the raw top-k softmax probabilities (norm_topk_prob=false, 8 of 64 "
                       "experts) and its layers mix dense and expert MLPs of different widths, where dllm_jax's MoE renormalises "
                       "the top-k probabilities and has one MLP kind per model: its outputs would differ",
    "SDARMoeForCausalLM": "mixture-of-experts checkpoints are not imported (dllm_jax's MoE has no Hugging Face mapping); "
                          "use a dense SDAR model (SDARForCausalLM)",
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
LLADA_BLOCK_TENSORS = (
    ("attn_norm/scale", "attn_norm.weight", "id"),
    ("attn/wq", "q_proj.weight", "heads_in"),
    ("attn/wk", "k_proj.weight", "heads_in"),
    ("attn/wv", "v_proj.weight", "heads_in"),
    ("attn/wo", "attn_out.weight", "heads_out"),
    ("attn/bq", "q_proj.bias", "bias"),
    ("attn/bk", "k_proj.bias", "bias"),
    ("attn/bv", "v_proj.bias", "bias"),
    ("mlp_norm/scale", "ff_norm.weight", "id"),
    ("mlp/w_gate", "ff_proj.weight", "T"),
    ("mlp/w_up", "up_proj.weight", "T"),
    ("mlp/w_down", "ff_out.weight", "T"),
)
LLADA_TOP_TENSORS = (("embedding", "model.transformer.wte.weight", "id"), ("final_norm/scale", "model.transformer.ln_f.weight", "id"),
                     ("lm_head", "model.transformer.ff_out.weight", "T"))


def names_of(family: str) -> dict:
    """The tensor naming of a family: {'block': per-block table, 'top': top-level table, 'layer':
    prefix of layer i (format with i=...), 'embed': embedding name, 'head': output-head name}."""
    if family == "llada":
        return {"block": LLADA_BLOCK_TENSORS, "top": LLADA_TOP_TENSORS, "layer": "model.transformer.blocks.{i}.",
                "embed": "model.transformer.wte.weight", "head": "model.transformer.ff_out.weight"}
    return {"block": BLOCK_TENSORS, "top": TOP_TENSORS, "layer": "model.layers.{i}.", "embed": "model.embed_tokens.weight",
            "head": "lm_head.weight"}
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


def tensor_plan(param_paths, n_layers: int, family: str = "llama") -> dict:
    """Our parameter path -> (list of HF tensor names (one per layer for a stacked one), kind, stacked),
    in the tensor names of `family` (`names_of`)."""
    names = names_of(family)
    block = {sub: (suffix, kind) for sub, suffix, kind in names["block"]}
    top = {ours: (name, kind) for ours, name, kind in names["top"]}
    layer = names["layer"]
    plan = {}
    for path in param_paths:
        head, _, sub = path.partition("/")
        if path in top:
            plan[path] = ([top[path][0]], top[path][1], False)
        elif head == "layers" and sub in block:
            plan[path] = ([layer.format(i=i) + block[sub][0] for i in range(n_layers)], block[sub][1], True)
        elif head.startswith("layer_") and sub in block:
            plan[path] = ([layer.format(i=int(head[6:])) + block[sub][0]], block[sub][1], False)
        else:
            raise CheckpointError(
                f"parameter {path!r} has no Hugging Face counterpart (MoE layers cannot be exported or imported); "
                "only dense models (model.num_experts=0) map onto Llama / Qwen2 / Qwen3"
            )
    return plan


# ---------------------------------------------------------------- diffusion exports (dllm_jax's own transformers class)
# A non-AR run is exported with its own PyTorch modeling file (trust_remote_code): the Llama /
# Qwen tensor names above, config.json `model_type` DIFFUSION_MODEL_TYPE and `auto_map`; the
# two files under dllm_jax/hf/remote/ (package data) are copied verbatim next to the weights.
DIFFUSION_ARCH = "DllmJaxDiffusionLM"
DIFFUSION_MODEL_TYPE = "dllm_jax"
REMOTE_FILES = ("configuration_dllm_jax.py", "modeling_dllm_jax.py")
FAMILIES[DIFFUSION_ARCH] = DIFFUSION_MODEL_TYPE  # read back like Llama, QK-norm and biases from config keys (load.hf_model_settings)
AUTO_MAP = {"AutoConfig": "configuration_dllm_jax.DllmJaxConfig", "AutoModel": "modeling_dllm_jax.DllmJaxDiffusionLM",
            "AutoModelForMaskedLM": "modeling_dllm_jax.DllmJaxDiffusionLM"}
