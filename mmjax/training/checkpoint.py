"""Checkpoints with Orbax: the train state, the data iterator's position and the config, together.

    workdir/checkpoints/<step>/state    the TrainState (params, optimizer state, step, rng)
                               /data    the grain iterator state (which examples come next)
                               /config  the resolved config, as JSON

Saving the data position with the state is what makes a resume *exact*: the run continues with the
batch it would have seen, not with a reshuffled epoch. Saves are asynchronous (training goes on
while the files are written) and atomic: Orbax writes into a temporary directory
(`<step>.orbax-checkpoint-tmp-<time>`) and renames it to `<step>` when complete, so a crash or a
`kill -9` during a save leaves the previous checkpoint untouched, and an unfinished one is never
picked up as "latest" (only complete `<step>` folders count). The training loop's checkpointer
also deletes such leftovers when it starts; an evaluation opened beside a running training must
not, or it would delete the save in flight. Only `keep` checkpoints are kept.

Restoring takes the *abstract* state (shapes, dtypes and shardings, from `jax.eval_shape`), so the
arrays come back directly onto the mesh with the shardings the train step expects. If the saved
parameters do not match the model being restored (a changed config), the error names the first
mismatched parameter and both shapes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, data iterator, config) under `directory`."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True, delete_unfinished: bool = False):
        """`delete_unfinished` removes the temporary folders of saves that a crash interrupted."""
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=delete_unfinished,
            ),
            # Naming the handlers up front lets a fresh manager read a checkpoint's metadata
            # (shapes, for the compatibility check) before anything is restored.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any, config_json: str, force: bool = False) -> bool:
        """Starts saving; returns at once (async). Call `wait()` before the process exits."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(json.loads(config_json)),
            ),
            force=force,
        )

    def restore(self, abstract_state: Any, data_iterator: Any | None, step: int | None = None) -> Any:
        """Restores the state (with the shardings in `abstract_state`) and, in place, the iterator."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        check_compatible(self.saved_state_shapes(step), abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def saved_state_shapes(self, step: int) -> dict[str, tuple]:
        """{"params/a/b/kernel": shape} of the state saved at `step` (from metadata, no arrays read)."""
        metadata = self.manager.item_metadata(step)["state"]
        if metadata is None:
            raise FileNotFoundError(f"checkpoint {step} in {self.directory} has no readable state")
        return {
            _path_name(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(metadata)
            if hasattr(leaf, "shape")
        }

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _path_name(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def check_compatible(saved_shapes: dict[str, tuple], abstract_state: Any) -> None:
    """Raises a ValueError naming the first parameter whose presence or shape differs, or the first
    optimizer-state entry present on one side only."""
    expected = {
        _path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)
    }
    for name in sorted(set(saved_shapes) | set(expected)):
        if not name.startswith("params/"):
            continue
        saved, wanted = saved_shapes.get(name), expected.get(name)
        if saved != wanted:
            raise ValueError(
                f"checkpoint does not match the model: parameter {name} has shape {saved} in the "
                f"checkpoint but {wanted} in the model built from the config (None = absent). "
                "Use the config the checkpoint was trained with, or a new --workdir."
            )
    # The optimizer state's structure follows the optimizer settings: gradient clipping on or off,
    # skipping of non-finite steps (which wraps the whole state) change it.
    saved_opt = {name for name in saved_shapes if name.startswith("opt_state/")}
    wanted_opt = {name for name in expected if name.startswith("opt_state/")}
    if saved_opt != wanted_opt:
        name = sorted(saved_opt ^ wanted_opt)[0]
        where = "checkpoint" if name in saved_opt else "optimizer built from the config"
        raise ValueError(
            f"checkpoint does not match the optimizer: {name} is only in the {where}. Resume with "
            "the optimizer settings the checkpoint was trained with (config.optimizer."
            "skip_nonfinite_steps and grad_clip_norm, config.freeze), or use a new --workdir."
        )
