"""Configuration of a dllm_jax diffusion language model exported for transformers.

Written by `dllm-jax export` next to modeling_dllm_jax.py (both are package data of dllm_jax,
copied verbatim); loaded with `AutoConfig.from_pretrained(dir, trust_remote_code=True)`.
Needs transformers only (not torch)."""

from transformers import PretrainedConfig


class DllmJaxConfig(PretrainedConfig):
    """A pre-norm decoder (RMSNorm, RoPE rotate-half, optional per-head q/k RMSNorm and q/k/v
    biases, SwiGLU MLP, optional tied head) trained by dllm_jax as a diffusion LM.

    Diffusion-specific fields:
        objective: the run's objective ('mdm', 'block_diffusion', 'uniform', 'gidd').
        attention: 'bidirectional' (MDM, uniform, gidd) or 'block_causal' (block diffusion:
            position q sees k iff k // block_size <= q // block_size).
        block_size: block diffusion's block (None otherwise).
        vocab_limit: the tokenizer's vocabulary size: ids >= vocab_limit are no tokens
            (the extra [MASK] and padding rows); None (exports before this key) =
            mask_token_id, the rule of runs whose [MASK] is the extra id.
        mask_token_id: the [MASK] id: vocab_limit (our runs: no piece of the tokenizer), or a
            piece below it (a released diffusion LM imported into dllm_jax: LLaDA's
            <|mdm_mask|> 126336, with real tokens such as <|eot_id|> 126348 above it).
            Never generated and not allowed in prompts; ids >= vocab_limit neither.
        dllm_pad_token_id: the padding id the samplers use (the tokenizer's pad piece, or
            the extra id past [MASK] when the tokenizer has none); never generated.
        shift_logits: the output at position i comes from the hidden state at i - 1
            (position 0 keeps its own; Dream / DiffuLLaMA AR-to-diffusion adaptation).
        schedule: the masking schedule ('linear' / 'cosine'; the 'ancestral' sampler's
            reveal probabilities).
        generation_defaults: defaults of `generate` (sampler, steps, block_length,
            threshold, eos_last, temperature, max_new_tokens).
    """

    model_type = "dllm_jax"

    def __init__(self, vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, qk_norm=True,
                 attention_bias=False, tie_word_embeddings=False, hidden_act="silu", max_position_embeddings=2048,
                 initializer_range=0.02, objective="mdm", attention="bidirectional", block_size=None, mask_token_id=None, vocab_limit=None,
                 dllm_pad_token_id=None, shift_logits=False, schedule="linear", generation_defaults=None, bos_token_id=None,
                 eos_token_id=None, pad_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.qk_norm = qk_norm
        self.attention_bias = attention_bias  # biases on q/k/v only (never on the output projection)
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.objective = objective
        self.attention = attention
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        self.vocab_limit = vocab_limit if vocab_limit is not None else (mask_token_id if mask_token_id is not None else vocab_size)
        if mask_token_id is not None and not 0 <= mask_token_id <= self.vocab_limit:
            raise ValueError(f"mask_token_id={mask_token_id} must be in [0, vocab_limit={self.vocab_limit}]: the extra id "
                             "vocab_limit or a piece of the tokenizer")
        self.dllm_pad_token_id = dllm_pad_token_id
        self.shift_logits = shift_logits
        self.schedule = schedule
        self.generation_defaults = dict(generation_defaults or {})
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        # set after the base class, which (depending on the transformers version) may or may not keep them
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
