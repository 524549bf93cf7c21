"""Checkpoints with Orbax: the train state, the data iterator's position and the config, together.

    workdir/checkpoints/<step>/state      the TrainState (params, optimizer state, step, rng)
                               /data       the grain iterator state (which examples come next)
                               /config     the resolved config, as JSON
                               /integrity  a checksum of every array of the state, as JSON

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

A complete checkpoint can still be damaged later: a file truncated or overwritten on disk, a bad
copy between buckets. A restore checks, in order, and raises `CheckpointDamaged` (naming the step
and what is wrong) when any check fails:
  1. Orbax's metadata can be read (the tree structure, shapes and dtypes of the saved arrays);
  2. every array can be read back (TensorStore reports truncated and missing files here);
  3. every restored array has the shape and dtype that the metadata and the model expect;
  4. its values have the checksum that was computed on the device when it was saved. Orbax keeps
     no checksum of the values, and a flipped bit in an uncompressed chunk reads back without an
     error; `fingerprints` is a 32-bit hash of each array's bits and positions, computed by one
     small jitted reduction over the (sharded) arrays, so it costs no transfer to the host (on a
     CPU, where the arrays are in host memory already, by NumPy: the same hash, no compile).
The training loop then falls back to the newest intact checkpoint and moves the damaged one aside
(`move_aside`, never deleted); `eval.py` names the intact steps instead.

A save that fails (a full disk, a quota, a permission) raises `CheckpointSaveFailed` naming the
folder, the space a checkpoint of this run takes and the space that is free.
"""

from __future__ import annotations

import datetime
import errno
import glob
import json
import os
import shutil
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

DAMAGED_FOLDER = "damaged_checkpoints"  # beside checkpoints/: where damaged steps are moved


class CheckpointDamaged(RuntimeError):
    """A complete checkpoint that cannot be read back as it was written."""

    def __init__(self, directory: str, step: int, reason: str):
        self.directory, self.step, self.reason = directory, step, reason
        super().__init__(f"checkpoint {step} in {directory} is damaged: {reason}")


class CheckpointSaveFailed(RuntimeError):
    """Writing a checkpoint failed for lack of space or permission; the message says what to do."""


class Checkpointer:
    """Saves and restores (state, data iterator, config) under `directory`."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True, delete_unfinished: bool = False,
                 abstract_state: Any = None):
        """`delete_unfinished` removes the temporary folders of saves that a crash interrupted.
        `abstract_state` (the state's shapes, dtypes and shardings), when given, lets a failed save
        size a checkpoint and check the ones that remain."""
        self.directory = os.path.abspath(directory)
        self.abstract_state = abstract_state
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=delete_unfinished,
            ),
            # Naming the handlers up front lets a fresh manager read a checkpoint's metadata
            # (shapes, for the compatibility check) before anything is restored.
            item_handlers={
                "state": state_handler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "integrity": ocp.JsonCheckpointHandler(),
            },
        )
        self._saving: int | None = None  # the step of the save that may still be in flight

    @property
    def damaged_directory(self) -> str:
        """Where `move_aside` puts damaged checkpoints: `<run>/damaged_checkpoints`."""
        return os.path.join(os.path.dirname(self.directory), DAMAGED_FOLDER)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, config_json: str, force: bool = False) -> bool:
        """Starts saving; returns at once (async). Call `wait()` before the process exits.

        A failed save of an earlier step surfaces here (Orbax reports it when the next one starts):
        for lack of space or permission, as `CheckpointSaveFailed`.
        """
        integrity = {"fingerprints": fingerprints(state)}
        try:
            started = self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(data_iterator),
                    config=ocp.args.JsonSave(json.loads(config_json)),
                    integrity=ocp.args.JsonSave(integrity),
                ),
                force=force,
            )
        except Exception as error:
            self._raise_if_storage_error(error, self._saving if self._saving is not None else step)
            raise
        self._saving = step
        return started

    def restore(self, abstract_state: Any, data_iterator: Any | None, step: int | None = None) -> Any:
        """Restores the state (with the shardings in `abstract_state`) and, in place, the iterator.

        Raises ValueError if the checkpoint was written by another model or optimizer (the message
        names the difference), CheckpointDamaged if it cannot be read back as it was written.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            saved = self._saved_state_metadata(step)
        except Exception as error:
            raise CheckpointDamaged(self.directory, step, f"its metadata cannot be read ({_first_line(error)})")
        check_compatible({name: shape for name, (shape, _) in saved.items()}, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        checked = os.path.isdir(os.path.join(self.directory, str(step), "integrity"))
        if checked:  # checkpoints written before checksums existed are checked for shapes only
            items["integrity"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            raise CheckpointDamaged(self.directory, step, f"reading it failed ({_first_line(error)})")
        state = restored["state"]
        problem = _shape_problem(state, abstract_state, saved)
        if problem is None and checked:
            problem = checksum_problem(state, restored["integrity"].get("fingerprints", {}))
        if problem is not None:
            raise CheckpointDamaged(self.directory, step, problem)
        return state

    def restore_newest_intact(self, abstract_state: Any, data_iterator: Any | None,
                              fallback: bool = True) -> tuple[int, Any, list[CheckpointDamaged]]:
        """Restores the newest checkpoint that passes every check.

        With `fallback`, damaged newer checkpoints are moved aside (see `move_aside`) and the next
        older one is tried; without, the first damage is raised. If none is intact, nothing is
        moved and the damage of the newest is raised, with the others' steps.

        Returns (step, state, the damage found in the newer checkpoints, newest first).
        """
        damaged: list[CheckpointDamaged] = []
        for step in reversed(self.all_steps()):
            damage = None
            try:
                state = self.restore(abstract_state, data_iterator, step)
            except CheckpointDamaged as error:
                damage = error
            # Every process must take the same checkpoint (their shards make one state).
            if not _everyone(damage is None) and damage is None:
                damage = CheckpointDamaged(self.directory, step, "another process of this run could not read it")
            if damage is None:
                for earlier in damaged:
                    self.move_aside(earlier.step)
                return step, state, damaged
            if not fallback:
                raise damage
            damaged.append(damage)
        if not damaged:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        others = ", ".join(str(d.step) for d in damaged[1:])
        raise CheckpointDamaged(
            self.directory, damaged[0].step,
            f"{damaged[0].reason}; no older checkpoint is intact either ({others or 'there is none'})",
        )

    def intact_steps(self, abstract_state: Any, steps: list[int] | None = None) -> list[int]:
        """The steps among `steps` (default: all) that restore and pass every check, newest first."""
        intact = []
        for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
            try:
                self.restore(abstract_state, None, step)
            except CheckpointDamaged:
                continue
            intact.append(step)
        return intact

    def move_aside(self, step: int) -> str:
        """Moves a damaged checkpoint to `<run>/damaged_checkpoints/<step>.<time>/`; returns that path.

        Kept, not deleted: it may be repaired, copied again from elsewhere, or inspected. Process 0
        moves it; every process then sees the checkpoints without it.
        """
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        target = os.path.join(self.damaged_directory, f"{step}.{stamp}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"mmjax checkpoint {step} moved aside")
        self.manager.reload()
        return target

    def saved_state_shapes(self, step: int) -> dict[str, tuple]:
        """{"params/a/b/kernel": shape} of the state saved at `step` (from metadata, no arrays read)."""
        return {name: shape for name, (shape, _) in self._saved_state_metadata(step).items()}

    def saved_state_dtypes(self, step: int) -> dict[str, Any]:
        """{"params/a/b/kernel": dtype} of the state saved at `step` (from metadata)."""
        return {name: dtype for name, (_, dtype) in self._saved_state_metadata(step).items()}

    def saved_fingerprints(self, step: int) -> dict[str, int] | None:
        """The checksums saved with checkpoint `step` (None for a checkpoint written without them)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "integrity")):
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))
        return restored["integrity"].get("fingerprints", {})

    def _saved_state_metadata(self, step: int) -> dict[str, tuple[tuple, Any]]:
        metadata = self.manager.item_metadata(step)["state"]
        if metadata is None:
            raise FileNotFoundError(f"checkpoint {step} in {self.directory} has no readable state")
        return {
            _path_name(path): (tuple(leaf.shape), getattr(leaf, "dtype", None))
            for path, leaf in jax.tree_util.tree_leaves_with_path(metadata)
            if hasattr(leaf, "shape")
        }

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        """Waits for the save in flight (a failure to write it raises CheckpointSaveFailed)."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            if self._saving is not None:
                self._raise_if_storage_error(error, self._saving)
            raise

    def close(self) -> None:
        self.manager.close()

    def _raise_if_storage_error(self, error: BaseException, step: int) -> None:
        """Turns a failure to write (space, quota, permission, read-only) into CheckpointSaveFailed,
        whose message says how much space a checkpoint takes, how much is free, and which
        checkpoint the next run will resume from (checked now, so that the user knows before
        freeing space whether the run can go on)."""
        reason = storage_error(error)
        if reason is None:
            return
        # The unfinished save's files take space too: they go (the next run would delete them).
        for unfinished in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(unfinished, ignore_errors=True)
        self._saving = None
        free = shutil.disk_usage(self.directory).free if os.path.isdir(self.directory) else 0
        self.manager.reload()
        previous = [s for s in self.all_steps() if s != step]
        # The last complete checkpoint's size on disk, or its arrays and Orbax's metadata (about
        # a quarter more for a small state, measured) when this was the first save.
        size = (_folder_bytes(os.path.join(self.directory, str(previous[-1]))) if previous
                else int(1.25 * _tree_bytes(self.abstract_state)) + 2**17)
        message = (f"saving checkpoint {step} into {self.directory} failed: {reason}. A checkpoint of this "
                   f"run takes about {_megabytes(size)}; {_megabytes(free)} are free there. Free space (or fix "
                   "the permission) and run the same command again, or train into another --workdir.")
        if self.abstract_state is not None:
            reader = Checkpointer(self.directory, async_save=False)
            try:
                intact = reader.intact_steps(self.abstract_state, previous)
            finally:
                reader.close()
            message += (f" It will resume from checkpoint {intact[0]}, checked intact." if intact else
                        " No intact checkpoint is left: it will start from scratch.")
        raise CheckpointSaveFailed(message) from error


def state_handler() -> ocp.StandardCheckpointHandler:
    """Orbax's handler of the train state, writing each array from one replica when one process
    holds every replica.

    Orbax's default on CPU and TPU is replica-parallel writing: every replicated array is cut into
    one slice per replica (device), each written by the host that holds it. That spreads the bytes
    over the hosts of a multi-host job; in a single process all replicas sit in one host's memory,
    and the cutting costs a compiled slice per array shape and replica (10.7 s of an 11.8 s save
    of the CoCa test's state on the 8-device test mesh, measured). Orbax turns it off on GPUs for
    the same reason. The files written are the same either way.
    """
    handler = ocp.StandardCheckpointHandler()
    if jax.process_count() > 1:
        return handler
    from orbax.checkpoint import type_handlers
    from orbax.checkpoint._src.metadata import array_metadata_store

    registry = type_handlers.create_type_handler_registry(*[
        (ty, type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=array_metadata_store.Store())
         if ty is jax.Array else type_handlers.get_type_handler(ty))
        for ty in type_handlers.supported_types()
    ])
    # StandardCheckpointHandler has no registry argument; it delegates to this PyTree handler.
    # The arguments are StandardCheckpointHandler's defaults for it.
    handler._impl = ocp.PyTreeCheckpointHandler(  # noqa: SLF001
        save_concurrent_gb=96, restore_concurrent_gb=96, use_ocdbt=True, type_handler_registry=registry)
    return handler


def fingerprints(tree: Any) -> dict[str, int]:
    """{"params/a/b/kernel": hash} for every array of `tree`: a 32-bit hash of its bits and positions.

    For an array x with n elements, bits(x_i) its i-th element's bits (row-major) as uint32:

        hash(x) = sum_i mix(bits(x_i) * 0x9E3779B1 + i * 0x85EBCA77)   (mod 2^32)

    where `mix` is Murmur3's finaliser, so a flipped bit or two swapped elements changes the hash
    (a random corruption goes unnoticed with probability 2^-32). A sum of integers modulo 2^32 is
    exact in any order, so the hash does not depend on how the array is sharded or reduced.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays = [leaf for _, leaf in leaves]
    if all(_in_host_memory(x) for x in arrays):
        # On a CPU backend the jitted form would cost a compile per state structure (2.8 s for the
        # CoCa test's state, measured) to run the same few integer operations NumPy runs.
        hashes = [fingerprint_on_host(np.asarray(jax.random.key_data(x) if _is_key(x) else x)) for x in arrays]
    else:
        hashes = jax.device_get(_fingerprint_arrays(arrays))
    return {_path_name(path): int(value) for (path, _), value in zip(leaves, hashes)}


def fingerprint_on_host(x: np.ndarray) -> int:
    """`fingerprints`' hash of one NumPy array, computed by NumPy (uint32 arithmetic wraps mod 2^32)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        bits = x.astype(np.uint32)
    elif x.dtype.itemsize == 8:  # two uint32 words per element, low word first (as XLA's bitcast)
        bits = x.view(np.uint32).reshape(*x.shape, 2)
    else:
        bits = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint32)
    index = (np.arange(bits.size, dtype=np.uint64) % 2**32).astype(np.uint32).reshape(bits.shape)
    with np.errstate(over="ignore"):
        h = bits * np.uint32(0x9E3779B1) + index * np.uint32(0x85EBCA77)
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
        h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
    return int(np.sum(h, dtype=np.uint32))


def _in_host_memory(x: Any) -> bool:
    """A jax.Array whose every shard is on a CPU device of this process (or a NumPy value)."""
    if not isinstance(x, jax.Array):
        return True
    return x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@jax.jit
def _fingerprint_arrays(arrays: list[jax.Array]) -> list[jax.Array]:
    return [_fingerprint(x) for x in arrays]


def _fingerprint(x: jax.Array) -> jax.Array:
    bits = _as_uint32(x)
    # The row-major index of every element, from iotas: a reshape to one axis could gather a
    # sharded array onto one device.
    index = jnp.zeros(bits.shape, jnp.uint32)
    for axis in range(bits.ndim):
        stride = int(np.prod(bits.shape[axis + 1:], dtype=np.int64)) % 2**32
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
    h = bits * jnp.uint32(0x9E3779B1) + index * jnp.uint32(0x85EBCA77)
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return jnp.sum(h, dtype=jnp.uint32)


def _as_uint32(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
    if unsigned is None:  # 8-byte types: two uint32 words per element
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _shape_problem(state: Any, abstract_state: Any, saved: dict[str, tuple[tuple, Any]]) -> str | None:
    """What is wrong with the restored arrays' shapes and dtypes, or None."""
    restored = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(state)}
    for path, wanted in jax.tree_util.tree_leaves_with_path(abstract_state):
        name = _path_name(path)
        leaf = restored.get(name)
        if leaf is None:
            return f"{name} is missing from the restored state"
        if tuple(leaf.shape) != tuple(wanted.shape) or leaf.dtype != wanted.dtype:
            return (f"{name} came back as {leaf.dtype}{list(leaf.shape)}, not the "
                    f"{wanted.dtype}{list(wanted.shape)} that the model expects")
        saved_shape, saved_dtype = saved.get(name, (tuple(wanted.shape), None))
        if saved_dtype is not None and np.dtype(saved_dtype) != np.dtype(wanted.dtype):
            return f"{name} was saved as {saved_dtype} but the model expects {wanted.dtype}"
    return None


def checksum_problem(tree: Any, saved: dict[str, int], prefix: str = "",
                     saved_dtypes: dict[str, Any] | None = None) -> str | None:
    """Names the first array of `tree` whose values do not have the checksum saved for it, or None.

    `saved` maps names (`prefix` + the array's path in `tree`) to `fingerprints`; arrays without a
    saved checksum are not checked, nor, given `saved_dtypes`, arrays restored in another dtype.
    """
    dtypes = {_path_name(path): leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    for name, value in fingerprints(tree).items():
        full = prefix + name
        if full not in saved:
            continue
        if saved_dtypes is not None and np.dtype(saved_dtypes.get(full, dtypes[name])) != np.dtype(dtypes[name]):
            continue
        if int(saved[full]) != value:
            return f"the values of {full} do not match the checksum written with them"
    return None


def _everyone(ok: bool) -> bool:
    """Whether every process of the run got `ok` (True in a single process: it is the only one)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                   errno.EROFS: "the filesystem is read-only"}
_STORAGE_MESSAGES = {"no space left": errno.ENOSPC, "disk quota": errno.EDQUOT, "permission denied": errno.EACCES,
                     "read-only file system": errno.EROFS}


def storage_error(error: BaseException | str | None) -> str | None:
    """The storage problem behind `error` (walking its causes), or None for any other error.

    Orbax and TensorStore re-raise an OSError of the filesystem as their own exception types with
    the OS message in the text ("... [OS error 28: No space left on device]"), so both the errno and
    the text are read. A string is read as an error message.
    """
    if isinstance(error, str):
        error = OSError(error)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[error.errno]
        text = str(error).lower()
        for pattern, number in _STORAGE_MESSAGES.items():
            if pattern in text:
                return _STORAGE_ERRNOS[number]
        error = error.__cause__ or error.__context__
    return None


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The message of the innermost exception behind `error`, on one line: Orbax wraps TensorStore's
    precise message ('OUT_OF_RANGE: Error reading "params.w/0.0" ... byte range ... not valid')
    in a generic one."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


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
