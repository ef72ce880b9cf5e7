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
    flat, defaults = C.flatten(cfg.to_dict()), C.flatten(C.default_config().to_dict())
    assert set(flat) == set(defaults)  # every key, none extra
    for key in ("objective", "seed", "data.source", "data.paths", "data.seq_len", "data.unique_tokens", "data.epochs",
                "mesh.data", "mesh.fsdp", "mesh.tensor"):
        assert type(flat[key]) is type(defaults[key]), key
    # what experiments/tiny.py sets, read back through the loader
    assert (cfg.objective, cfg.data.source, cfg.data.seq_len, cfg.train.batch_size) == ("mdm", "text", 128, 16)
    assert cfg.data.paths.endswith(".py") or "*" in cfg.data.paths or "," in cfg.data.paths  # the stdlib corpus
    assert cfg.mesh.data == -1 and cfg.mesh.fsdp == 1 and cfg.model.d_model == 128


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
        ("objective", "gpt", r"objective='gpt' is not one of \['ar', 'mdm', 'block_diffusion', 'uniform', 'gidd'\]"),
        ("train.lr", "fast", r"train\.lr.*'fast'.*float"),
        ("data.epochs", "0", r"data\.epochs=0 is out of range: it must be an integer in \[1, 1,000,000\]"),
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


def test_every_key_declares_its_range():
    assert set(C.RULES) == set(C.flatten(C.default_config().to_dict()))
    for key, value in C.flatten(C.default_config().to_dict()).items():
        assert C.RULES[key].accepts(value), key  # the defaults are in range


# one bad value of every kind of range (int >= 0 / >= 1 / >= 2 / bounded, finite float > 0 /
# >= 0 / [0, 1] / [0, 1) / (0, 1) / (0, 1], mesh size, enum, bool)
BAD_VALUES = [
    ("seed", "-1", "an integer in [0, 2,147,483,647]"),
    ("seed", str(2**31), "an integer in [0, 2,147,483,647]"),
    ("data.unique_tokens", "-1", "an integer >= 0"),
    ("train.batch_size", "0", "an integer >= 1"),
    ("data.seq_len", "1", "an integer >= 2"),
    ("eval.cloze_choices", "1", "an integer >= 2"),
    ("train.warmup_steps", "-5", "an integer >= 0"),
    ("train.lr", "nan", "a finite number > 0"),
    ("train.lr", "inf", "a finite number > 0"),
    ("train.lr", "0", "a finite number > 0"),
    ("train.clip_norm", "-1", "a finite number > 0"),
    ("model.init_std", "0", "a finite number > 0"),
    ("model.norm_eps", "nan", "a finite number > 0"),
    ("train.weight_decay", "-0.1", "a finite number >= 0"),
    ("model.capacity_factor", "inf", "a finite number >= 0"),
    ("train.min_lr_ratio", "1.5", "a finite number in [0, 1]"),
    ("mdm.random_length_prob", "nan", "a finite number in [0, 1]"),
    ("model.dropout", "1", "a finite number in [0, 1)"),
    ("train.b2", "1.0", "a finite number in [0, 1)"),
    ("ar.input_mask_rate", "-0.1", "a finite number in [0, 1)"),
    ("mdm.eps", "0", "a finite number in (0, 1)"),
    ("mdm.eps", "1", "a finite number in (0, 1)"),
    ("train.decay_fraction", "0", "a finite number in (0, 1]"),
    ("mesh.data", "-2", "a positive integer or -1"),
    ("mesh.tensor", "0", "a positive integer or -1"),
    ("model.remat", "everything", "one of ['none', 'full'"),
    ("data.tokenizer_type", "wordpiece", "one of ['unigram', 'bpe']"),
]


@pytest.mark.parametrize("key,value,kind", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_out_of_range_values_are_rejected_up_front(key, value, kind):
    with pytest.raises(ConfigError) as e:
        C.load_config(TINY, [(key, value)])
    msg = str(e.value)
    assert msg.startswith(f"{key}=") and "is out of range: it must be " + kind in msg
    assert f"--config.{key}=VALUE" in msg and "the default is" in msg


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", "3e-3", "train.lr='3e-3' is a str; it must be a float like the default 0.003"),
    ("model.d_model", 256.5, "model.d_model=256.5 is a float; it must be a int"),
    ("model.qk_norm", "yes", "model.qk_norm='yes' is a str; it must be a bool"),
])
def test_wrong_types_in_an_experiment_file_are_rejected(tmp_path, key, value, message):
    path = tmp_path / "typed.py"
    group, name = key.split(".")
    path.write_text(f"def get_config():\n    return {{'data': {{'paths': 'x/*.txt'}}, {group!r}: {{{name!r}: {value!r}}}}}\n")
    with pytest.raises(ConfigError) as e:
        C.load_config(str(path))
    assert str(e.value).startswith(message)


def test_cli_rejects_a_bad_seed_before_touching_data(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n")
    workdir = tmp_path / "w"
    code = main(["train", "--config", TINY, "--workdir", str(workdir), f"--config.data.paths={corpus}", "--config.seed=-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "error: seed=-1 is out of range" in err and "Traceback" not in err
    assert not (workdir / "tokenizer.model").exists()


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


@pytest.mark.parametrize("content,message", [
    ("NAME = 'Caf\u00e9'\ndef get_config():\n    return {}\n".encode("latin-1"), r"exp\.py:1: cannot be read as Python .*save it as UTF-8"),
    (b"def get_config(:\n    return {}\n", r"exp\.py:1: cannot be read as Python .*fix the Python syntax"),
    (b"import os\nx = 1 / 0\ndef get_config():\n    return {}\n", r"exp\.py:2: importing it raised ZeroDivisionError"),
])
def test_unreadable_experiment_files_name_file_line_and_fix(tmp_path, capsys, content, message):
    path = tmp_path / "exp.py"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        C.load_config(str(path))
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
