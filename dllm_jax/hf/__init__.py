"""Hugging Face interop: start a run from a transformers checkpoint or from another run, and
export a run as a transformers checkpoint.

Import (`--config.init.from_hf=DIR`): DIR is a local Hugging Face model directory
(config.json, model.safetensors or sharded model-0000X-of-0000Y.safetensors with
model.safetensors.index.json, tokenizer.json) of one of `FAMILIES`. `resolve_init` maps
its config.json onto `model.*` and its tokenizer onto `data.tokenizer`; `load_hf_params`
reads the weights with the `safetensors` library and places them on the mesh.
`SafetensorsReader` refuses (CheckpointError) a directory with both layouts and any
disagreement between the index and the shards; `hf_model_settings` reads the RoPE base where
transformers 5 does (refusing values that disagree), and `load_hf_params` refuses a tied
config whose stored lm_head.weight differs from the embedding (transformers 4 and 5 disagree
on that model).

Released diffusion LMs (`layout.DLM_FAMILIES`): LLaDA (`LLaDAModelLM`, its own tensor
names, `layout.names_of`), Dream (`DreamModel`: Qwen2's names and q/k/v biases) and SDAR
(`SDARForCausalLM`: Qwen3's) are read too, and set what they were trained as: LLaDA ->
objective 'mdm'; Dream -> 'mdm' with model.shift_logits; SDAR -> 'block_diffusion' with its
config.json's block_size; and `data.mask_token`, the piece of their own [MASK] (config.json's
mask_token_id, else tokenizer_config.json's mask_token), which sits inside the vocabulary:
the objectives, samplers and scorers exclude it with the ids past the vocabulary
(`objectives.common.real_ids`). LLaDA-MoE is refused (`layout.REFUSED`: its router does not
renormalise the top-k probabilities as ours does). docs/huggingface.md lists what differs
from the authors' training recipes.

All families use the same rotary convention as `dllm_jax.models.transformer.rope`: the
rotate-half form on the two halves of each head (not interleaved pairs), with frequencies
base^(-2i/head_dim); HF's checkpoints are already stored for it (its conversion script
permutes Meta's original interleaved q/k weights), so q/k weights are copied unpermuted.

Vocabulary: our embedding has `model_vocab_rows(tokenizer vocab, ..., pad_is_extra)` rows
(the tokenizer's ids, then [MASK] = tokenizer vocab size, then [PAD] = vocab size + 1 when
the tokenizer has no pad token (Llama 3, Qwen2), then padding to `model.vocab_multiple`).
Rows of real tokens are copied (a released DLM's in-vocabulary [MASK] row too); the extra
[MASK], [PAD] and padding rows (and the matching output-head columns) are set to the mean of
the copied real rows, a neutral start that the adaptation learns from (they are never
predicted: the loss and samplers exclude ids >= the tokenizer's vocabulary size and the mask id). EOS is a real token: its row is copied, and the run trains and samples it.
A checkpoint written by `export_run` (one with a `dllm_jax` entry) has every row it holds
copied, so export-then-import is exact; it also records the run's `data.eos_token` /
`data.pad_token` / `data.mask_token` (`tokenizer_names`), which the import sets again. Its config.json has the
run's EOS as `eos_token_id` and its pad piece as `pad_token_id` (null when the run padded
with the extra id, which no token of the exported tokenizer has).

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
the tokenizer files (for a SentencePiece run also a tokenizer.json built without protobuf:
`dllm_jax.hf.spm_json`), staged and then moved into OUT, where the files of an earlier
checkpoint that the export does not write are removed. An AR run's class is the HF family
that represents our model exactly: `LlamaForCausalLM` (no QK-norm, no biases), `Qwen2ForCausalLM` (q/k/v biases) or
`Qwen3ForCausalLM` (QK-norm: Qwen3 applies a per-head RMSNorm with a learned scale to q
and k after the projections and before RoPE, exactly as our `qk_norm`); MoE models are
refused. A diffusion run (MDM, block diffusion, uniform, GIDD) is written as
`DllmJaxDiffusionLM`, model_type 'dllm_jax': the same tensor names, plus the modeling file
dllm_jax/hf/remote/modeling_dllm_jax.py and its configuration file (package data, copied
verbatim; config.json's `auto_map` points at them, loaded with trust_remote_code=True), whose
forward runs the run's attention pattern (bidirectional, or block-causal for block diffusion)
and shift, and whose `generate` is our MDM / block-diffusion sampler (same tokens at
temperature 0 for the deterministic samplers; docs/huggingface.md). config.json also has a
`dllm_jax` entry: objective, mask id, attention pattern ('causal' for AR, 'bidirectional'
for MDM, 'block_causal' for block diffusion), shift, tokenizer vocabulary, and
`objective_config`: the run's values of the objective's `defining_keys` (e.g. gidd.p_u,
mdm.schedule, block_diffusion.block_size), which `import_run` restores; `dllm-jax import`
reads both kinds of export back (import -> export -> import is bitwise).
"""

from dllm_jax.hf.export import export_config, export_params, export_run, hf_family
from dllm_jax.hf.init import import_run, initial_params, resolve_init
from dllm_jax.hf.layout import ARCH_KEYS, FAMILIES, _flat, tensor_plan, to_hf, to_ours
from dllm_jax.hf.load import SafetensorsReader, hf_model_settings, holds_hf_checkpoint, load_hf_params, read_hf_config, refuse_hf_checkpoint_workdir

__all__ = ["FAMILIES", "ARCH_KEYS", "resolve_init", "load_hf_params", "initial_params", "export_run", "import_run", "hf_family",
           "hf_model_settings", "export_config", "export_params", "read_hf_config", "holds_hf_checkpoint", "refuse_hf_checkpoint_workdir", "SafetensorsReader", "tensor_plan", "to_hf", "to_ours"]
