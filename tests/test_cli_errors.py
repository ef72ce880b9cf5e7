"""Bad input at the edges of the CLI: each is one `error:` line with exit status 2, no traceback."""
import os
import shutil

import pytest

from dllm_jax import config as config_lib
from dllm_jax.cli import main
from dllm_jax.errors import CheckpointError, ConfigError

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_a_workdir_under_a_file_is_one_error(tmp_path, capsys, corpus):
    paths, cache = corpus
    (tmp_path / "afile").write_text("x")
    rc = main(["train", "--config", os.path.join(EXPERIMENTS, "tiny.py"), "--workdir", str(tmp_path / "afile" / "run"),
               f"--config.data.paths={paths}", f"--config.data.cache_dir={cache}"])
    assert rc == 2
    _one_error_line(capsys, "afile")


@pytest.mark.parametrize("body,message", [
    ("def get_config():\n    raise RuntimeError('boom')\n", r"bad\.py:2: get_config\(\) raised RuntimeError: boom"),
    ("def get_config():\n    return 5\n", r"get_config\(\) returned a int, not a ConfigDict"),
])
def test_get_config_that_fails_names_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        config_lib.load_config(str(path))


@pytest.mark.parametrize("key,value", [("data.epochs", "1e20"), ("data.vocab_size", "1e9"), ("model.d_model", "1e30"),
                                       ("model.d_model", "1e19"), ("model.n_layers", "1e12"), ("model.d_ff", "1e25"),
                                       ("model.num_experts", "1e9"), ("model.head_dim", "1e18")])
def test_absurd_sizes_are_refused_up_front(key, value):
    with pytest.raises(ConfigError, match=rf"{key}=.* is out of range"):
        config_lib.load_config(os.path.join(EXPERIMENTS, "tiny.py"), [(key, value)])


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": float("nan")}, "temperature=nan must be a finite number"),
    ({"temperature": float("inf")}, "temperature=inf must be a finite number"),
    ({"cfg": float("nan")}, "cfg=nan must be a finite number"),
    ({"top_p": float("nan")}, "top_p=nan must be in"),
])
def test_sampling_rejects_non_finite_settings(kwargs, message):
    from dllm_jax.sampling.options import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(objective="mdm", **kwargs)


def test_url_without_its_filesystem_package_is_a_config_error():
    import importlib.util

    from dllm_jax import paths

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(ConfigError, match=r"gs://b/x.*not installed.*dllm_jax\[gcs\]"):
        paths.exists("gs://b/x")


def test_sample_or_eval_on_a_damaged_checkpoint_names_it(tmp_path, trained_runs):
    from dllm_jax.checkpoint import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_runs["ar"], run)
    ckpts = sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())
    newest = run / "checkpoints" / str(ckpts[-1])
    files = [os.path.join(r, f) for r, _, fs in os.walk(newest / "state") for f in fs if os.path.basename(r) == "d"]
    assert files
    for path in files:  # array data cut to half, as a full disk or a killed copy leaves it
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpts[-1]} in .* cannot be read .*--step"):
        load_run(str(run))
    assert load_run(str(run), step=ckpts[0]).step == ckpts[0]  # an intact one still loads


# ---------------------------------------------------------------- the program's last word (issue 25)
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _program(args, env=None, drop=(), max_file_bytes=None, timeout=900):
    """`python -m dllm_jax ARGS` as a user runs it (this checkout's package, conftest importable
    from config files, one CPU device); returns the CompletedProcess (bytes). `max_file_bytes`:
    files cannot grow past it (write() fails with EFBIG, as on a full disk), set by a launcher
    that then execs the program (limits and an ignored SIGXFSZ survive exec)."""
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update({"PYTHONPATH": TESTS + os.pathsep + ROOT, "XLA_FLAGS": "", **(env or {})})
    command = [sys.executable, "-m", "dllm_jax", *args]
    if max_file_bytes is not None:
        launcher = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
                    "os.execv(sys.executable, sys.argv[1:])")
        command = [sys.executable, "-c", launcher, *command]
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, timeout=timeout)


def _ends_with_its_error(proc, verb, needle):
    """Exit status 2, stderr's last non-empty line is the one `error:` line, no traceback anywhere."""
    err = proc.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err[-4000:]
    assert lines and lines[-1].startswith(f"dllm-jax {verb}: error: ") and needle in lines[-1], err[-4000:]
    assert sum(": error: " in line for line in lines) == 1 and "Traceback" not in err, err[-4000:]


def _config_file(tmp_path, corpus, **overrides):
    paths, cache = corpus
    extra = "".join(f", {k}={v!r}" for k, v in overrides.items())
    path = tmp_path / "cfg.py"
    path.write_text(f"from conftest import tiny_config\n\ndef get_config():\n    return tiny_config({paths!r}, {cache!r}, 'ar'{extra})\n")
    return str(path)


@pytest.mark.parametrize("case", ["diverged_with_tensorboard", "disk_full_during_save", "no_checkpoint_readable"])
def test_an_error_exit_ends_with_its_one_error_line(case, tmp_path, corpus, request):
    """Background threads (TensorBoard's writer, Orbax's save and read threads, Grain's
    prefetch) printed tracebacks after the error line, or before it; now the error line is the
    last thing the program says, and nothing saved is lost."""
    workdir = tmp_path / "run"
    if case == "diverged_with_tensorboard":
        cfg = _config_file(tmp_path, corpus, train__lr=1e30, train__tensorboard=True, train__eval_every=0)
        proc = _program(["train", "--config", cfg, "--workdir", str(workdir)])
        _ends_with_its_error(proc, "train", "training diverged at step")
        assert (workdir / "tensorboard").is_dir()
    elif case == "disk_full_during_save":
        cfg = _config_file(tmp_path, corpus, train__checkpoint_every=1, train__eval_every=0)
        # the tokenizer, token store, index and metrics fit in 20 kB files, a checkpoint's array data does not
        proc = _program(["train", "--config", cfg, "--workdir", str(workdir)], max_file_bytes=20_000)
        _ends_with_its_error(proc, "train", "saving checkpoint 1 failed")
    else:
        shutil.copytree(request.getfixturevalue("trained_runs")["ar"], workdir)
        os.remove(workdir / "DONE")
        damaged = [os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints") for f in fs if os.path.basename(r) == "d"]
        assert damaged
        for path in damaged:  # every checkpoint's array data cut short
            with open(path, "r+b") as f:
                f.truncate(10)
        steps = sorted(os.listdir(workdir / "checkpoints"))
        cfg = _config_file(tmp_path, corpus, data__epochs=4)  # the config trained_runs used
        proc = _program(["train", "--config", cfg, "--workdir", str(workdir)])
        _ends_with_its_error(proc, "train", "can be read")
        assert sorted(os.listdir(workdir / "checkpoints")) == steps  # nothing moved or deleted


# ---------------------------------------------------------------- text that is not UTF-8 (issue 25)
def test_a_prompt_that_is_not_utf8_on_the_command_line_is_one_error(tmp_path):
    # $'caf\xe9 ' from a Latin-1 terminal: Python decodes argv with surrogateescape
    proc = _program(["sample", "--workdir", str(tmp_path), "--prompt", b"caf\xe9 "])
    _ends_with_its_error(proc, "sample", "--prompt is not valid UTF-8 (byte 0xe9 at character 3 of b'caf\\xe9 ')")
    assert b"iconv" in proc.stderr


@pytest.mark.parametrize("argv,name", [
    (["sample", "--workdir", "x", "--prompt", "ok", "--prompt", "na\udcefve"], "--prompt"),
    (["sample", "--workdir", "x", "--infill", "def f([MASK]):\udc80"], "--infill"),
    (["eval", "--workdir", "x", "--task", "genppl", "--prompt", "\udcff"], "--prompt"),
])
def test_every_text_argument_that_reaches_a_tokenizer_is_checked(argv, name, capsys):
    assert main(argv) == 2
    _one_error_line(capsys, f"{name} is not valid UTF-8 (byte 0x", "iconv")


def test_tokenizers_name_text_that_is_not_utf8(trained_runs):
    from dllm_jax.data.tokenizer import load_tokenizer
    from dllm_jax.errors import DataError

    tok = load_tokenizer(os.path.join(trained_runs["ar"], "tokenizer.model"))
    assert tok.encode("caf") == tok.encode_batch(["caf"])[0]
    with pytest.raises(DataError, match=r"text 0 to tokenize is not valid UTF-8 \(byte 0xe9 at character 3"):
        tok.encode("caf\udce9")
    with pytest.raises(DataError, match=r"text 1 to tokenize is not valid UTF-8"):
        tok.encode_batch(["fine", "caf\udce9"])


# ---------------------------------------------------------------- no TPU noise without a TPU (issue 25)
def test_no_tpu_initialisation_noise_on_a_host_without_one(trained_runs):
    """With libtpu installed (the `tpu` extra, for `dllm-jax compile`) and JAX_PLATFORMS unset,
    JAX would load libtpu at its first device use, which prints 'could not determine TPU
    accelerator type' / 'unexpected worker hostname' on every command."""
    import importlib.util

    from dllm_jax.distributed import on_tpu_vm

    if importlib.util.find_spec("libtpu") is None or on_tpu_vm():
        pytest.skip("needs libtpu installed on a host without TPUs")
    for args in (["config", "--config", os.path.join(EXPERIMENTS, "tiny.py")],
                 ["sample", "--workdir", trained_runs["ar"], "--prompt", "The", "--max-new-tokens", "2"]):
        proc = _program(args, drop=("JAX_PLATFORMS",))
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, err[-3000:]
        assert not [line for line in err.splitlines() if "TPU" in line or "libtpu" in line or "InitGoogle" in line], err[-3000:]


# ---------------------------------------------------------------- warmup longer than the run (issue 25)
def test_warmup_not_shorter_than_the_run_is_refused(tmp_path, corpus):
    from conftest import tiny_config
    from dllm_jax.train import check_warmup, train

    paths, cache = corpus
    cfg = tiny_config(paths, cache)  # 16 steps from the data budget
    for warmup, refused in ((0, False), (15, False), (16, True), (17, True)):
        cfg.train.warmup_steps = warmup
        if refused:
            with pytest.raises(ConfigError, match=rf"train.warmup_steps={warmup} is not shorter than the run's 16 steps"):
                check_warmup(cfg.train, 16)
        else:
            check_warmup(cfg.train, 16)
    # where num_steps is known: derived from the data budget, or given
    with pytest.raises(ConfigError, match=r"warmup_steps=16 is not shorter than the run's 16 steps \(derived from the data budget"):
        train(tiny_config(paths, cache, train__warmup_steps=16), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"warmup_steps=5 is not shorter than the run's 5 steps \(train.num_steps\).*below 5"):
        train(tiny_config(paths, cache, train__warmup_steps=5, train__num_steps=5), str(tmp_path / "b"))


# ---------------------------------------------------------------- a model that cannot fit (issue 25)
def test_an_absurd_model_is_refused_before_it_is_allocated(tmp_path, corpus):
    from conftest import tiny_config
    from dllm_jax.train import train

    paths, cache = corpus
    with pytest.raises(ConfigError, match=r"model does not fit: training it \(model.d_model=1048576.*needs at least .* GiB "
                                          r".*more than this host's .* GiB of memory"):
        train(tiny_config(paths, cache, model__d_model=2**20), str(tmp_path / "run"))  # the largest d_model the range allows


def test_memory_estimate_is_the_state_jax_allocates(corpus):
    """params and optimiser state per device equal what init_state puts on a device
    (fsdp=2 x data=4: sharded and replicated leaves, and the activation share of the batch)."""
    import jax

    from conftest import tiny_config
    from dllm_jax import memory, optim, sharding, train_step

    paths, cache = corpus
    cfg = tiny_config(paths, cache, mesh__data=4, mesh__fsdp=2)
    mesh = sharding.make_mesh(dict(cfg.mesh))
    model = train_step.build_model(cfg, 320)
    tx = optim.make_optimizer(cfg.train, 16)
    est = memory.estimate(model, tx, mesh, cfg.data.seq_len, cfg.train.batch_size)
    state = train_step.init_state(model, tx, mesh, cfg.data.seq_len, 0)
    d0 = mesh.devices.flat[0]

    def on_d0(tree):
        return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.device == d0)

    assert est["params"] == est["grads"] == on_d0(state.params)
    assert est["opt_state"] == on_d0(state.opt_state)
    assert est["num_params"] == sum(x.size for x in jax.tree.leaves(state.params))
    rows = cfg.train.batch_size // 8  # the batch is split over data x fsdp
    assert est["activations"] == cfg.model.n_layers * rows * cfg.data.seq_len * cfg.model.d_model * 4
    assert est["total"] == est["params"] * 2 + est["opt_state"] + est["activations"]


# v5p HBM (aot.CHIPS) and the totals XLA compiled for these configs (docs/compile_reports.md, GiB per chip)
COMPILED = {"paper_1b": ("v5p:2x2x2", 8, 26.1), "paper_2b": ("v5p:2x2x2", 8, 30.8), "paper_4b": ("v5p:2x2x4", 16, 23.7),
            "paper_8b": ("v5p:2x2x4", 16, 34.9), "paper_moe": ("v5p:2x2x4", 16, 23.9)}


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(EXPERIMENTS) if f.endswith(".py")))
def test_every_experiment_passes_the_memory_check_on_its_hardware(name):
    """A lower bound, so never above what XLA compiles; the paper configs on their TPU slices
    (an AbstractMesh of that many chips), the CPU-scale ones on this host's devices."""
    import jax
    from jax.sharding import AbstractMesh

    from dllm_jax import aot, memory, optim, sharding, train_step

    cfg = config_lib.load_config(os.path.join(EXPERIMENTS, f"{name}.py"))
    model = train_step.build_model(cfg, cfg.data.vocab_size)
    tx = optim.make_optimizer(cfg.train, 1000)
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if name in COMPILED or name == "paper_grid":
        _, chips, compiled = COMPILED.get(name, COMPILED["paper_1b"])
        sizes = dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(dict(cfg.mesh), chips)))
        mesh = AbstractMesh(tuple(sizes[a] for a in sharding.DEVICE_ORDER), sharding.DEVICE_ORDER)
        est = memory.estimate(model, tx, mesh, cfg.data.seq_len, micro)
        assert est["total"] <= compiled * memory.GIB < aot.CHIPS["TPU v5"][0]
    else:
        mesh = sharding.make_mesh(dict(cfg.mesh))
        est = memory.estimate(model, tx, mesh, cfg.data.seq_len, micro)
        memory.check_fits(est, jax.devices(), model.cfg)
        assert est["total"] < 1 * memory.GIB


def test_names_that_are_not_utf8_are_one_error_before_any_work(tmp_path, capsys, corpus):
    """A workdir, output or corpus path whose name is Latin-1 bytes (legal on Linux; Python gives
    them as lone surrogates) cannot reach Orbax, tensorstore or SentencePiece: one error naming
    the argument or key, before anything is read or written."""
    paths, cache = corpus
    tiny = os.path.join(EXPERIMENTS, "tiny.py")
    bad = str(tmp_path / "caf\udce9")
    common = [f"--config.data.cache_dir={cache}", "--config.train.num_steps=4", "--config.train.warmup_steps=1"]
    assert main(["train", "--config", tiny, "--workdir", bad, f"--config.data.paths={paths}", *common]) == 2
    _one_error_line(capsys, "--workdir is not valid UTF-8 (byte 0xe9", "renamed")
    assert main(["train", "--config", tiny, "--workdir", str(tmp_path / "run"), f"--config.data.paths={bad}.txt", *common]) == 2
    _one_error_line(capsys, "data.paths is not valid UTF-8 (byte 0xe9", "rename")
    assert main(["prepare", "--config", tiny, "--output", str(tmp_path / "store"), "--in-process",
                 f"--config.data.paths={bad}.txt", f"--config.data.cache_dir={cache}"]) == 2
    _one_error_line(capsys, "data.paths is not valid UTF-8")
    assert not os.path.exists(bad) and not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "store")
