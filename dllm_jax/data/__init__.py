"""Data: sources -> tokenizer -> token store (prepare, Beam) -> per-run index -> Grain."""
from dllm_jax.data.pipeline import Dataset, build_dataset, num_train_steps, train_loader, val_batches
from dllm_jax.data.sources import load_documents, write_array_record
from dllm_jax.data.store import TokenStore
from dllm_jax.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "Dataset", "build_dataset", "num_train_steps", "train_loader", "val_batches",
    "load_documents", "write_array_record", "Tokenizer", "train_tokenizer", "TokenStore",
]
