"""`init.from_hf` / `init.from_workdir`: the config a new run takes from its source, its
initial parameters, and `dllm-jax import` (an HF checkpoint as a step-0 run)."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from dllm_jax import config as config_lib
from dllm_jax.errors import CheckpointError, ConfigError
from dllm_jax.hf.layout import ARCH_KEYS, DLM_FAMILIES, FAMILIES, _flat
from dllm_jax.hf.load import hf_family_of, hf_model_settings, load_hf_params, read_hf_config, refuse_hf_checkpoint_workdir

log = logging.getLogger("dllm_jax")

# ---------------------------------------------------------------- config resolution
def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _hf_values(hf_dir: str, config) -> dict:
    where = f"init.from_hf={hf_dir!r}"
    hf = read_hf_config(hf_dir)
    values = {f"model.{k}": v for k, v in hf_model_settings(hf, where).items()}
    ours = hf.get("dllm_jax") or {}
    if ours.get("vocab_multiple"):  # our export: the same embedding rows as the run it came from
        values["model.vocab_multiple"] = int(ours["vocab_multiple"])
    for key, name in (ours.get("tokenizer_names") or {}).items():  # our export: the run's data.eos_token / pad_token / mask_token
        if key in ("eos_token", "pad_token", "mask_token") and name:
            values[f"data.{key}"] = str(name)
    window = hf.get("sliding_window")
    if FAMILIES.get((hf.get("architectures") or [None])[0]) == "mistral" and window and config.data.seq_len > int(window):
        raise ConfigError(f"{where}: sliding_window={window} < data.seq_len={config.data.seq_len}; dllm_jax attention is full, so "
                          f"it equals Mistral's only for sequences <= {window}: set --config.data.seq_len={window} or less")
    # our export of a SentencePiece run has tokenizer.model (the run's tokenizer) and a tokenizer.json converted from it
    first = (ours.get("tokenizer_file") or "tokenizer.model",) if ours else ()
    family = hf_family_of(hf, where)
    if family in DLM_FAMILIES and not ours:  # a released diffusion LM: the objective it was trained with, its own [MASK]
        values.update(_dlm_values(hf, family, os.path.expanduser(hf_dir), where))
    values["data.tokenizer"] = _source_tokenizer(os.path.expanduser(hf_dir), where, config, values, first)
    if family in DLM_FAMILIES and not ours:
        values["data.mask_token"] = _mask_piece(hf, os.path.expanduser(hf_dir), values, config, where)
    return values


def _dlm_values(hf: dict, family: str, directory: str, where: str) -> dict:
    """The run settings a released diffusion LM was trained with: LLaDA -> MDM (bidirectional,
    no shift); Dream -> MDM with model.shift_logits (its output at i-1 predicts token i,
    modeling_dream / generation_utils' logits shift); SDAR -> block diffusion with its
    config.json's block_size (BD3-LM's [x_t ; x_0] training pattern, modeling_sdar.py)."""
    objective, shift = DLM_FAMILIES[family]
    values = {"objective": objective, "model.shift_logits": shift}
    if family == "sdar":
        size = hf.get("block_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CheckpointError(f"{where}: an SDAR config.json needs block_size (a positive integer: the block length it was "
                                  f"trained with), got {size!r}; restore it from the released config.json")
        values["block_diffusion.block_size"] = size
    return values


def _mask_piece(hf: dict, directory: str, values: dict, config, where: str) -> str:
    """The name of a released DLM's [MASK] token: the piece of config.json's `mask_token_id`
    (LLaDA 126336 '<|mdm_mask|>', Dream 151666 '<|mask|>'), else tokenizer_config.json's
    `mask_token` (SDAR's '<|MASK|>'). CheckpointError when neither names a special token."""
    import json

    from dllm_jax.data.tokenizer import load_tokenizer

    names = {k: values.get(f"data.{k}", config.data.get(k, "")) or None for k in ("eos_token", "pad_token")}
    tok = load_tokenizer(values["data.tokenizer"], **names)
    mask_id = hf.get("mask_token_id")
    if mask_id is not None and (isinstance(mask_id, bool) or not isinstance(mask_id, int)):
        raise CheckpointError(f"{where}: config.json's mask_token_id={mask_id!r} is not an integer token id; restore the released "
                              "config.json (LLaDA: 126336, Dream: 151666) or remove the key to use tokenizer_config.json's mask_token")
    if mask_id is not None:
        if not 0 <= mask_id < tok.vocab_size:
            raise CheckpointError(f"{where}: config.json's mask_token_id={mask_id} is not an id of its tokenizer ({tok.vocab_size} ids); "
                                  "use the tokenizer that belongs to this checkpoint")
        return tok.id_to_piece(mask_id)
    path = os.path.join(directory, "tokenizer_config.json")
    name = None
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                name = json.load(f).get("mask_token")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path!r} is not readable JSON ({e}); download it again") from e
        name = name.get("content") if isinstance(name, dict) else name
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where} names no mask token (config.json has no mask_token_id, tokenizer_config.json no mask_token); "
                              "a released diffusion LM was trained with one: restore the released config files")
    return name


def _source_tokenizer(directory: str, where: str, config, values: dict, first: tuple = ()) -> str:
    """The source's tokenizer file (the first of `first`, tokenizer.json, tokenizer.model that
    exists; or data.tokenizer, if it is the same tokenizer), both read with the EOS / pad names
    the new run will have (`values` from the source, else the config)."""
    from dllm_jax.data.tokenizer import load_tokenizer

    names = {k: values.get(f"data.{k}", config.data.get(k, "")) or None for k in ("eos_token", "pad_token", "mask_token")}

    candidates = tuple(first) + ("tokenizer.json", "tokenizer.model")
    path = next((os.path.join(directory, n) for n in candidates if os.path.isfile(os.path.join(directory, n))), None)
    if path is None:
        if config.data.tokenizer:
            return config.data.tokenizer
        raise CheckpointError(f"{where} has no tokenizer.json (or tokenizer.model); copy the checkpoint's tokenizer there, "
                              "or give it with --config.data.tokenizer=PATH")
    if config.data.tokenizer and config.data.tokenizer != path:
        if load_tokenizer(config.data.tokenizer, **names).fingerprint != load_tokenizer(path, **names).fingerprint:
            raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} is not the tokenizer of {where} ({path}); the embedding rows "
                              "belong to that tokenizer: drop --config.data.tokenizer")
        return config.data.tokenizer
    return path


def _workdir_values(workdir: str, config) -> dict:
    from dllm_jax.checkpoint import Checkpointer, checkpoint_dir

    where = f"init.from_workdir={workdir!r}"
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"{where} has no checkpoints/; point it at a trained dllm-jax run directory")
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        _, saved, _ = ckpt.restore_meta(None)
    finally:
        ckpt.close()
    model = config_lib.complete(saved).model
    values = {f"model.{k}": model[k] for k in ARCH_KEYS + ("vocab_multiple",)}
    saved_data = config_lib.complete(saved).data
    for key in ("eos_token", "pad_token", "mask_token"):  # the source's EOS / pad / mask choice: its embedding rows were trained with it
        values[f"data.{key}"] = saved_data.get(key, "")
    values["data.tokenizer"] = _source_tokenizer(os.path.abspath(workdir), where, config, values)
    return values


def resolve_init(config, explicit=(), saved: dict | None = None) -> None:
    """Set, in place, the `model.*` keys (and `data.tokenizer`; `data.eos_token` / `data.pad_token`
    when the source records them) that `init.from_hf` / `init.from_workdir` determine. `explicit`: keys the user set on the command line; one
    that disagrees with the source is a ConfigError. `saved`: the config of the checkpoint
    being resumed, whose `init.*` and architecture win (the source is not read again)."""
    if saved is not None:
        saved = config_lib.complete(saved)
        with config.init.unlocked():
            config.init.from_hf, config.init.from_workdir = saved.init.from_hf, saved.init.from_workdir
        if not (saved.init.from_hf or saved.init.from_workdir):
            return
        values = {f"model.{k}": saved.model[k] for k in ARCH_KEYS + ("vocab_multiple",)}
        if saved.data.get("mask_token", ""):  # a released diffusion LM's run: its [MASK] and what it was trained as
            values.update({"data.mask_token": saved.data.mask_token, "objective": saved.objective,
                           "model.shift_logits": saved.model.shift_logits, "block_diffusion.block_size": saved.block_diffusion.block_size})
    elif config.init.from_hf:
        values = _hf_values(config.init.from_hf, config)
    elif config.init.from_workdir:
        values = _workdir_values(config.init.from_workdir, config)
    else:
        return
    source = f"init.from_hf={config.init.from_hf!r}" if config.init.from_hf else f"init.from_workdir={config.init.from_workdir!r}"
    for key, value in values.items():
        current = _get(config, key)
        if key in explicit and current != value:
            raise ConfigError(f"--config.{key}={current!r} contradicts {source}, which has {key}={value!r}; the architecture comes "
                              f"from the checkpoint: drop --config.{key}")
        if current != value:
            config_lib.set_key(config, key, value)


def initial_params(config, model, abstract_params, mesh, tokenizer):
    """Parameters of a new run started from `init.*` (placed on `abstract_params`' shardings)."""
    if config.init.from_hf:
        return load_hf_params(config.init.from_hf, abstract_params, tokenizer.vocab_size)
    from dllm_jax.checkpoint import load_run

    src = load_run(config.init.from_workdir, mesh=mesh)
    if src.tokenizer.fingerprint != tokenizer.fingerprint:
        raise ConfigError(f"init.from_workdir={config.init.from_workdir!r} was trained with tokenizer {src.tokenizer.fingerprint}, "
                          f"this run uses {tokenizer.fingerprint}; drop --config.data.tokenizer")
    got, want = _flat(src.params), _flat(abstract_params)
    for path in sorted(set(got) | set(want)):
        if path not in got or path not in want or got[path].shape != want[path].shape:
            raise CheckpointError(f"init.from_workdir={config.init.from_workdir!r}: parameter {path!r} is "
                                  f"{getattr(got.get(path), 'shape', 'absent')} there and {getattr(want.get(path), 'shape', 'absent')} "
                                  "here; drop the --config.model.* overrides that change the architecture")
    log.info("initialised from %s step %d", config.init.from_workdir, src.step)
    return jax.tree.map(lambda x, s: jax.device_put(x, s.sharding), src.params, abstract_params)


def import_run(hf_dir: str, workdir: str, config=None, explicit=()) -> dict:
    """Write an HF checkpoint as a step-0 run in `workdir` (config, tokenizer, parameters,
    fresh optimizer), so `dllm-jax sample` / `eval` read it like a trained run, and
    `dllm-jax train --workdir` continues it. The objective, shift and the objective's
    `defining_keys` (the entry's `objective_config`, e.g. gidd.p_u) of a checkpoint written by
    `export_run` are taken from its config.json unless `config` sets them."""
    from dllm_jax import optim, sharding, train_step
    from dllm_jax.checkpoint import Checkpointer, checkpoint_dir
    from dllm_jax.data.tokenizer import load_tokenizer, tokenizer_names
    from flax import linen as nn

    if os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"{workdir!r} already holds a run; import into a new --workdir")
    refuse_hf_checkpoint_workdir(workdir)
    config = config_lib.default_config() if config is None else config
    config_lib.validate(config, data=False)  # the run's own settings (data.seq_len, train.*), before the checkpoint is read; a corpus is optional
    ours = read_hf_config(hf_dir).get("dllm_jax") or {}
    if ours.get("objective") and "objective" not in explicit:
        config.objective = ours["objective"]
    if "shift_logits" in ours and "model.shift_logits" not in explicit:
        config.model.shift_logits = bool(ours["shift_logits"])
    for key, value in (ours.get("objective_config") or {}).items():  # e.g. gidd.p_u: what the network learned to predict
        if key not in explicit:
            config_lib.set_key(config, key, value)
    with config.init.unlocked():
        config.init.from_hf = os.path.abspath(os.path.expanduser(hf_dir))
    resolve_init(config, explicit=explicit)
    config_lib.validate(config, data=False)  # and the model.* the checkpoint gave (heads, widths, RoPE base...), as train checks them
    tokenizer = load_tokenizer(config.data.tokenizer, **tokenizer_names(config.data))
    model = train_step.build_model(config, tokenizer.vocab_size, tokenizer.pad_is_extra)
    mesh = sharding.make_mesh(dict(config.mesh))
    tx = optim.make_optimizer(config.train, max(config.train.num_steps, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, config.data.seq_len)
        abstract = train_step.abstract_state(model, tx, mesh, config.data.seq_len)
        state = train_step.state_from_params(tx, initial_params(config, model, abstract.params, mesh, tokenizer), shardings)
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(0, state, None, config, tokenizer.model_bytes)
    ckpt.close()
    tokenizer.save(os.path.join(workdir, tokenizer.filename))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config_lib.to_json(config))
    from dllm_jax import objectives

    block = objectives.build(config).block_size
    return {"workdir": os.path.abspath(workdir), "objective": config.objective, "shift_logits": config.model.shift_logits,
            **({"block_size": int(block)} if block else {}), "mask_id": int(tokenizer.mask_id),
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))}
