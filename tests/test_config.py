"""Configs: files, overrides with types, and clear errors for bad keys and values."""

import os

import pytest

from dllm_jax import config as C
from dllm_jax.cli import main
from dllm_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.py")


def test_tiny_experiment_has_the_public_keys():
    cfg = C.load_config(TINY)
    for key in ("objective", "seed", "data.source", "data.paths", "data.seq_len", "data.unique_tokens", "data.epochs",
                "mesh.data", "mesh.fsdp", "mesh.tensor"):
        node = cfg
        for part in key.split("."):
            node = node[part]
    assert cfg.objective in ("ar", "mdm") and cfg.data.source == "text"


def test_overrides_are_parsed_to_the_existing_type():
    cfg = C.load_config(TINY, [("train.lr", "1e-4"), ("data.unique_tokens", "1e6"), ("model.qk_norm", "false"),
                               ("objective", "ar"), ("mesh.data", "-1")])
    assert cfg.train.lr == 1e-4 and cfg.data.unique_tokens == 1_000_000 and isinstance(cfg.data.unique_tokens, int)
    assert cfg.model.qk_norm is False and cfg.objective == "ar"


def test_parse_overrides_accepts_both_spellings():
    overrides, rest = C.parse_overrides(["train", "--config.train.lr=0.1", "--config.seed", "3", "--workdir", "x"])
    assert overrides == [("train.lr", "0.1"), ("seed", "3")] and rest == ["train", "--workdir", "x"]


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*train\.lr"):
        C.load_config(TINY, [("train.lrr", "1")])


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("objective", "gpt", r"objective='gpt' is not one of \['ar', 'mdm', 'block_diffusion'\]"),
        ("train.lr", "fast", r"train\.lr.*'fast'.*float"),
        ("data.epochs", "0", r"data\.epochs=0 must be > 0"),
        ("mdm.schedule", "square", r"mdm\.schedule='square'"),
        ("train.grad_accum", "3", r"grad_accum=3 must divide train\.batch_size=16"),
        ("model.n_kv_heads", "3", r"n_kv_heads=3 must divide model\.n_heads=4"),
        ("mesh.fsdp", "0", r"mesh\.fsdp=0"),
        ("data.source", "csv", r"data\.source='csv'"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        C.load_config(TINY, [(key, value)])


def test_experiment_file_with_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from dllm_jax.config import default_config\n"
                    "def get_config():\n    c = default_config()\n    c.train.unknown_knob = 1\n    return c\n")
    with pytest.raises(ConfigError, match="unknown_knob"):
        C.load_config(str(path))


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config("/nonexistent/exp.py")


def test_json_round_trip():
    cfg = C.load_config(TINY, [("seed", "7")])
    assert C.from_json(C.to_json(cfg)).to_dict() == cfg.to_dict()


def test_cli_reports_config_errors_cleanly(capsys):
    code = main(["train", "--config", TINY, "--workdir", "/tmp/unused", "--config.train.bogus=1"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'train.bogus'" in err and "Traceback" not in err


def test_cli_config_verb_prints_resolved_config(capsys):
    assert main(["config", "--config", TINY, "--config.objective=ar"]) == 0
    assert '"objective": "ar"' in capsys.readouterr().out


def test_sampling_benchmark_config_fits_the_benchmark_defaults():
    """bench/sample_speed.py decodes --prompt-tokens + --max-new-tokens in blocks of --block-length
    with the runs of experiments/sample_bench.py: that must fit the trained context."""
    bench = C.import_experiment(os.path.join(ROOT, "bench", "sample_speed.py"), required=("build_parser",), what="benchmark")
    defaults = bench.build_parser().parse_args([])
    cfg = C.load_config(defaults.config)
    assert defaults.config.endswith(os.path.join("experiments", "sample_bench.py"))
    assert cfg.objective == "mdm" and cfg.data.unique_tokens == 0
    assert defaults.prompt_tokens + defaults.max_new_tokens <= cfg.data.seq_len
    assert defaults.max_new_tokens % defaults.block_length == 0
