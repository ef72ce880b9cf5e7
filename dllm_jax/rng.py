"""Named random streams: one key stream per random quantity.

With JAX's default (threefry) keys, `jax.random.split(k, n)[i] == jax.random.fold_in(k, i)`,
so two quantities derived as `fold_in(k, 0)` and `split(k)[0]` (or `fold_in(k, i)` for a
sample index i that happens to equal another quantity's index) get the SAME random bits:
e.g. an MDM time draw t and the mask uniforms u of one sample, which masks position 0
whenever t is small (field notes section 7). Every random quantity in the library therefore
takes its key from `stream(root, name)`, a distinct name per quantity, and only then folds
in a step, row or sample index.
"""

from __future__ import annotations

import zlib

import jax

# the quantities drawn from a run's seed (names are part of the random numbers: do not rename)
INIT = "init"  # parameter initialisation
TRAIN = "train"  # per-step training randomness (fold_in step), split into masks/t/length and dropout
TRAIN_MIR_RATE = "train/mir_rate"  # AR with MIR: each row's masking rate of the masked copy, under the step's key
TRAIN_MIR_MASK = "train/mir_mask"  # AR with MIR: the masked copy's per-position uniforms, under the step's key
TRAIN_ANNEAL = "train/anneal"  # AR-to-MDM attention annealing: which future pairs open, under the step's key
EVAL_TIME = "eval/time"  # MDM ELBO: t of each (row, draw)
EVAL_MASK = "eval/mask"  # MDM ELBO and LLaDA: per-position mask uniforms of each (row, draw)
EVAL_LENGTH = "eval/length"  # LLaDA: number of masked answer tokens l of each (pair, draw)
EVAL_BLOCK_TIME = "eval/block_time"  # block diffusion ELBO: per-block time shifts of each (row, draw)
EVAL_NOISE = "eval/noise"  # uniform / gidd ELBO: the uniform noise ids of each (row, draw)
MEMBER = "member"  # an ensemble member's own root key (train.member_seed > 0)


def stream(key, name: str):
    """The key of stream `name` under `key` (a typed jax PRNG key, or an int seed)."""
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        key = jax.random.key(key)  # an int seed (also traced, inside jit)
    return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


def run_key(seed: int, member: int = 0):
    """The root key of a run's model randomness (init, per-step masks / t / dropout):
    `key(seed)` for member 0 (every run before `train.member_seed` existed), else
    `fold_in(stream(seed, MEMBER), member)`. Members of an ensemble share `seed`, so they share
    the data split (which tokens are U and validation: `config.seed` alone fixes it)."""
    root = jax.random.key(int(seed))
    return root if not member else jax.random.fold_in(stream(root, MEMBER), int(member))


def data_order_seed(seed: int, member: int = 0) -> int:
    """The seed of the training loader's per-epoch shuffles: `seed` for member 0, else an int
    derived from (seed, member) (numpy SeedSequence), so each ensemble member sees U in its own order."""
    if not member:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0] & 0x7FFFFFFF)


__all__ = ["stream", "run_key", "data_order_seed", "MEMBER", "INIT", "TRAIN", "TRAIN_MIR_RATE", "TRAIN_MIR_MASK", "TRAIN_ANNEAL", "EVAL_TIME", "EVAL_MASK", "EVAL_LENGTH",
           "EVAL_BLOCK_TIME", "EVAL_NOISE"]
