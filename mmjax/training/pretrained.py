"""Starting parameter subtrees from another run's checkpoint (LiT's pre-trained image tower).

    config.init_from = ml_collections.ConfigDict(dict(
        workdir="runs/clip_tiny",                          # the run to take weights from
        subtrees=("image_encoder", "image_projection"),    # "/"-joined paths into the params
    ))

A freshly initialised state gets those subtrees replaced by the arrays saved in the latest
checkpoint of `workdir` (or `step`, if given); everything else (the text tower, the temperature,
the optimizer state) keeps its fresh initialisation. This is big_vision's `model_init` for a
pre-trained tower, written for Orbax checkpoints of this trainer.

Only when a run starts from scratch: the training loop calls `init_fn` (which loads these weights)
only when the run folder holds no checkpoint. A resumed run restores its own checkpoint, which
already contains the loaded weights (and, for parameters that are not frozen, what training made
of them); loading again would undo that training, and the pre-trained run need not exist anymore.

Reading: only the named subtrees are read from disk (Orbax's partial restore skips the other
arrays, the optimizer state included), and each array is placed directly with the sharding that
this run's layout gives it, so a tower too large for one device is never gathered on one. The
shapes are checked first, from the checkpoint's metadata, and a mismatch (another model size in
the config) names the parameter and both shapes before any array is read. Dtypes are converted to
this run's. The arrays read are checked against the checksums saved with them, so a damaged
pre-trained checkpoint is named rather than trained from. Text weights are only meaningful with the tokenizer they were trained with: loading a
text tower needs the same data config (the tokenizer is built deterministically from it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from mmjax.training.checkpoint import CheckpointDamaged, Checkpointer, checksum_problem


def _subtree(tree: Mapping, path: str, what: str) -> Any:
    """tree["a"]["b"] for path "a/b"; an error that lists the keys available where it failed."""
    node = tree
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            keys = sorted(node) if isinstance(node, Mapping) else []
            raise ValueError(
                f"config.init_from.subtrees names {path!r}, but {what} has no {key!r} there; "
                f"the keys at that level are {keys}"
            )
        node = node[key]
    return node


def _with_subtree(tree: Mapping, path: str, value: Any) -> dict:
    """A copy of `tree` (nested dicts) with the subtree at `path` replaced by `value`."""
    key, _, rest = path.partition("/")
    copy = dict(tree)
    copy[key] = _with_subtree(tree[key], rest, value) if rest else value
    return copy


def _nested(path: str, value: Any) -> dict:
    """{"a": {"b": value}} for path "a/b"."""
    for key in reversed(path.split("/")):
        value = {key: value}
    return value


def _merge(a: dict, b: dict) -> dict:
    """Union of two nested dicts whose leaves do not overlap."""
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _merge(merged[key], value) if key in merged and isinstance(value, dict) else value
    return merged


def _flat_shapes(tree: Any, prefix: str) -> dict[str, tuple]:
    """{"<prefix>/<path>": shape} for every leaf of `tree` ({"<prefix>": shape} for a single leaf)."""
    return {
        "/".join(filter(None, (prefix, jax.tree_util.keystr(path, simple=True, separator="/")))): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_pretrained_shapes(saved_shapes: dict[str, tuple], abstract_params: Mapping, subtrees: Sequence[str]) -> None:
    """Every parameter under `subtrees` must be in the checkpoint with this model's shape, and the
    checkpoint must hold nothing under them that this model lacks.

    `saved_shapes` is `Checkpointer.saved_state_shapes`: {"params/a/b/kernel": shape}.
    """
    for subtree in subtrees:
        prefix = f"params/{subtree}"
        expected = _flat_shapes(_subtree(abstract_params, subtree, "the model built from this config"), prefix)
        saved = {
            name: shape for name, shape in saved_shapes.items()
            if name == prefix or name.startswith(prefix + "/")
        }
        if not saved:
            tops = sorted({name.split("/")[1] for name in saved_shapes if name.startswith("params/")})
            raise ValueError(
                f"config.init_from.subtrees names {subtree!r}, which the checkpoint does not hold; "
                f"its top-level parameters are {tops}"
            )
        for name in sorted(set(saved) | set(expected)):
            if saved.get(name) != expected.get(name):
                raise ValueError(
                    f"pre-trained checkpoint does not match the model: parameter {name} has shape "
                    f"{saved.get(name)} in the checkpoint but {expected.get(name)} in the model built "
                    "from this config (None = absent). Give the towers named in "
                    "config.init_from.subtrees the config of the run they come from."
                )


def load_pretrained(
    params: Mapping,
    abstract_params: Mapping,
    workdir: str,
    subtrees: Sequence[str],
    step: int | None = None,
) -> dict:
    """`params` with each subtree in `subtrees` replaced by the one saved in `workdir`'s checkpoint.

    Args:
      params: the freshly initialised parameters (nested dicts of arrays).
      abstract_params: the same tree of `jax.ShapeDtypeStruct`s carrying this run's shardings
        (`abstract_state.params` from `setup_training`): shapes to check, and where to put arrays.
      workdir: the run folder of the pre-trained run (its checkpoints are in workdir/checkpoints).
      subtrees: "/"-joined paths into the parameter tree, e.g. ("image_encoder", "image_projection").
      step: the checkpoint to read; the latest complete one if None.
    """
    if isinstance(subtrees, str):
        subtrees = (subtrees,)
    if not subtrees:
        raise ValueError("config.init_from.subtrees is empty: name the parameter subtrees to load, "
                         "e.g. ('image_encoder', 'image_projection')")
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"config.init_from.workdir={workdir!r} has no checkpoints folder: train that run first "
            f"(python train.py --config <its config> --workdir {workdir})"
        )
    checkpointer = Checkpointer(directory)  # read only: unfinished saves are left alone
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"no complete checkpoint in {checkpointer.directory}: let that run reach its first "
                "checkpoint (or finish) before starting from it"
            )
        check_pretrained_shapes(checkpointer.saved_state_shapes(step), abstract_params, subtrees)
        saved_dtypes = checkpointer.saved_state_dtypes(step)
        checksums = checkpointer.saved_fingerprints(step)
    finally:
        checkpointer.close()

    # Partial restore: the item names only the wanted arrays, with this run's shardings and dtypes.
    wanted = {}
    for subtree in subtrees:
        wanted = _merge(wanted, _nested(subtree, _subtree(abstract_params, subtree, "the model")))
    item = {"params": wanted}
    with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(
            os.path.join(checkpointer.directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )["params"]
    # The loaded arrays must have the values that were saved (see `checkpoint.fingerprints`);
    # arrays converted to another dtype for this run are not compared.
    problem = checksum_problem(restored, checksums or {}, prefix="params/", saved_dtypes=saved_dtypes)
    if problem is not None:
        raise CheckpointDamaged(checkpointer.directory, step, f"{problem} (read for config.init_from)")
    for subtree in subtrees:
        params = _with_subtree(params, subtree, _subtree(restored, subtree, "the checkpoint"))
    return params
