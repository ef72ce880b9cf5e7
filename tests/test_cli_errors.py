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


@pytest.mark.parametrize("key,value", [("data.epochs", "1e20"), ("data.vocab_size", "1e9")])
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
