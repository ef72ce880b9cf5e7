"""Tests run on 8 simulated CPU devices; the flag must be set before JAX starts."""
import contextlib
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import random

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end test over ~20 s on 2 CPU cores (skip them with -m 'not slow')")


@contextlib.contextmanager
def compilation_cache(directory: str, min_compile_seconds: float):
    """JAX's persistent compilation cache in `directory` (this process only) while the block
    runs; the previous settings after it."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = {"jax_compilation_cache_dir": str(directory), "jax_persistent_cache_min_compile_time_secs": min_compile_seconds,
            "jax_persistent_cache_min_entry_size_bytes": 0}
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in keys.items():
        jax.config.update(k, v)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for the session (in this process only; child
    processes keep their own environment). Many tests train or evaluate the same tiny model,
    so their steps lower to identical programs: each is compiled once and later runs load the
    executable instead of recompiling it (same program, same executable: results are
    unchanged). Tracing and lowering still run every time. A test that points JAX at its own
    cache (tests/test_study.py) restores this one after it."""
    with compilation_cache(tmp_path_factory.mktemp("xla_cache"), 0.2):
        yield


_WORDS = (
    "the a river stone light over under green quiet old new small large city forest road house window door "
    "morning evening winter summer walks finds keeps brings holds sees makes takes gives and but then so "
    "because while after before with without into from near far always never often sometimes very"
).split()


def make_corpus(directory, num_files: int = 12, sentences: int = 60, seed: int = 0) -> str:
    """Write a small synthetic English-like corpus; returns a glob for data.paths."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for i in range(num_files):
        lines = []
        for _ in range(sentences):
            n = rng.randint(5, 12)
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".")
        with open(os.path.join(directory, f"doc{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(directory, "*.txt")


def tiny_config(paths: str, cache_dir: str, objective: str = "mdm", **overrides):
    """A complete run config small enough for a test (a few seconds per run on a CPU).
    `overrides` use double underscores for nesting: train__lr=1e-3."""
    from dllm_jax.config import default_config, set_key

    c = default_config()
    c.objective = objective
    c.model.d_model = 32
    c.model.n_layers = 2
    c.model.n_heads = 2
    c.model.d_ff = 64
    c.model.vocab_multiple = 8
    c.data.paths = paths
    c.data.cache_dir = cache_dir
    c.data.seq_len = 32
    c.data.vocab_size = 320
    c.data.val_tokens = 512
    c.data.unique_tokens = 8 * 32 * 8  # 8 batches
    c.data.epochs = 2
    c.train.batch_size = 8
    c.train.lr = 3e-3
    c.train.warmup_steps = 2
    c.train.log_every = 4
    c.train.eval_every = 8
    c.train.eval_batches = 2
    c.train.checkpoint_every = 8
    c.train.progress = False
    c.train.tensorboard = False
    c.train.async_checkpoint = False
    c.mesh.data = -1
    for key, value in overrides.items():
        set_key(c, key.replace("__", "."), value)
    return c


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(glob, cache_dir) of a small synthetic corpus shared by the whole session."""
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(str(root / "text")), str(root / "cache")


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, corpus):
    """Two tiny trained runs, {'ar': workdir, 'mdm': workdir}, trained once per session."""
    from dllm_jax.train import train

    paths, cache = corpus
    out = {}
    for objective in ("ar", "mdm"):
        workdir = str(tmp_path_factory.mktemp(f"run_{objective}"))
        train(tiny_config(paths, cache, objective, data__epochs=4), workdir)
        out[objective] = workdir
    return out
