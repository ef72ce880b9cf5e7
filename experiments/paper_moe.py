"""The study's MoE at paper scale: 8B total / 1B active parameters (dllm_jax.study.paper).

20 layers, d 2048, 32 experts of width 1920, top-2 routing, expert-parallel over mesh.expert=8.
One run: MDM on U = 1B unique tokens for a 96B-token budget; --config.objective=ar for AR.
Needs the MoE keys (model.num_experts, ...); an installation without them says so.
"""

from dllm_jax.study.paper import paper_config


def get_config():
    return paper_config("moe_8b_a1b", "mdm", unique_tokens=1_000_000_000)
