"""Orbax checkpoints: train state + Grain iterator state + resolved config + tokenizer, together.

Policy (Levanter-style, explicit and testable):
- a checkpoint every `train.checkpoint_every` steps, at the end, and on SIGTERM/SIGINT;
- keep the newest `train.keep_last`, plus every step divisible by `train.keep_every`;
- never save a state whose step produced a non-finite loss (the caller checks first).
Restoring takes target shardings, so a checkpoint saved on one mesh (e.g. 8 devices as
(2,2,2)) restores onto any other mesh or device count.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging

import grain
import orbax.checkpoint as ocp

from dllm_jax import config as config_lib
from dllm_jax import paths
from dllm_jax.errors import CheckpointError, DllmError


def checkpoint_dir(workdir: str) -> str:
    """``WORKDIR/checkpoints`` (local, made absolute, or a gs:// URL: Orbax writes to both)."""
    return paths.join(paths.absolute(workdir), "checkpoints")


class _QuietReadOnly(logging.Filter):
    """Orbax logs a warning every time a checkpoint folder is opened read-only, as sampling
    and evaluation always do; that is expected here, so drop it."""

    def filter(self, record):
        return "read only" not in record.getMessage() and "read_only=True" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietReadOnly())


class Checkpointer:
    def __init__(self, workdir: str, *, keep_last: int = 2, keep_every: int = 0, async_save: bool = True, read_only: bool = False):
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep_last, keep_period=keep_every or None, enable_async_checkpointing=async_save, create=True
            )
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            paths.epath_path(self.directory),
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "tokenizer": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_iterator, config, tokenizer_bytes: bytes) -> None:
        items = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(json.loads(config_lib.to_json(config))),
            "tokenizer": ocp.args.JsonSave({"model_b64": base64.b64encode(tokenizer_bytes).decode("ascii")}),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_meta(self, step: int | None = None) -> tuple[int, dict, bytes]:
        """(step, config dict, tokenizer bytes) of a checkpoint, without touching arrays."""
        step = self._step(step)
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
        return step, out["config"], base64.b64decode(out["tokenizer"]["model_b64"])

    def restore(self, step: int | None, abstract_state, data_iterator=None):
        """Restore the train state onto `abstract_state`'s shardings (any mesh) and, if given,
        the data iterator in place."""
        step = self._step(step)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"]

    def _step(self, step):
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint in {self.directory}; train first: dllm-jax train --config ... --workdir {paths.dirname(self.directory)}")
        elif step not in self.all_steps():
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}")
        return step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


@dataclasses.dataclass
class LoadedRun:
    """A trained run in memory: what sampling and evaluation need."""

    config: object  # ml_collections.ConfigDict
    tokenizer: object  # dllm_jax.data.tokenizer.Tokenizer
    model: object  # dllm_jax.models.Transformer
    params: object
    step: int
    mesh: object


def load_run(workdir: str, step: int | None = None, mesh=None) -> LoadedRun:
    """Load a run's config, tokenizer, model and parameters from its latest (or given) checkpoint.

    Parameters are restored replicated over `mesh` (default: all local devices on the
    data axis) unless the config's mesh says otherwise."""
    from dllm_jax import sharding, train_step, optim
    from dllm_jax.data.tokenizer import tokenizer_from_bytes, tokenizer_names

    if not paths.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"{workdir!r} has no checkpoints/ folder; is it a dllm-jax run directory? Train with: dllm-jax train --config ... --workdir {workdir}")
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        wanted = step
        try:
            step, cfg_dict, tok_bytes = ckpt.restore_meta(step)
            config = config_lib.complete(cfg_dict)
            tokenizer = tokenizer_from_bytes(tok_bytes, **tokenizer_names(config.data))
            if mesh is None:
                mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
            model = train_step.build_model(config, tokenizer.vocab_size, tokenizer.pad_is_extra)
            tx = optim.make_optimizer(config.train, max(config.train.num_steps, 1))
            target = train_step.abstract_state(model, tx, mesh, config.data.seq_len)
            state = ckpt.restore(step, target)
        except DllmError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint (truncated array file, unreadable metadata)
            shown = step if step is not None else wanted
            others = [s for s in ckpt.all_steps() if s != shown]
            raise CheckpointError(
                f"checkpoint {shown} in {checkpoint_dir(workdir)} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                + (f"pass --step with another checkpoint ({', '.join(map(str, others))}), or " if others else "")
                + f"rerun `dllm-jax train` on {workdir}, which sets unreadable checkpoints aside and resumes from the newest readable one"
            ) from None
    finally:
        ckpt.close()
    return LoadedRun(config=config, tokenizer=tokenizer, model=model, params=state.params, step=step, mesh=mesh)


__all__ = ["Checkpointer", "LoadedRun", "load_run", "checkpoint_dir"]
