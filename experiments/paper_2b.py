"""The study's 2B dense model at paper scale (see dllm_jax.study.paper for the shape and setup).

One run: MDM on U = 1B unique tokens for a 96B-token budget (96 epochs). Switch objective with
--config.objective=ar; set data.unique_tokens (and data.epochs, train.num_steps) for other
budgets, or run the whole study with experiments/paper_grid.py. Needs $DLLM_DATA (ArrayRecord
text and a GPT-NeoX SentencePiece model); check memory first with `dllm-jax compile`.
"""

from dllm_jax.study.paper import paper_config


def get_config():
    return paper_config("2b", "mdm", unique_tokens=1_000_000_000)
