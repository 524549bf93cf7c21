"""Freezing parameters: a tuple of regexes names the parameters that training leaves alone.

    config.freeze = ("^image_encoder/", "^image_projection/")    # LiT: lock the image tower

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") trains a text tower
to read the embedding space of an image tower that was trained before and is then *locked*: the
image features stay those of the pre-trained model, and only the text side (and the temperature)
learns to match them. Locking is also what makes it cheap: a frozen tower needs no optimizer state
and, when it sits at the input end of the network, no backward pass.

Every parameter has a name, the "/"-joined keys of its path in the parameter tree
("image_encoder/encoder/blocks/mlp/fc1/kernel"); a parameter is frozen when any pattern matches
its name with `re.search` (so "^" anchors at the start, as in big_vision's parameter-name rules).

How: `optax.multi_transform` splits the gradient tree by label and gives each part its own
transformation,

    "train"   -> the whole optimizer of `make_optimizer` (clipping, AdamW with weight decay,
                 skipping non-finite steps)
    "frozen"  -> optax.set_to_zero(): the update is 0 and θ + 0 = θ, bit for bit

and inside it each part sees *only its own* parameters (the others are replaced by an empty
`optax.MaskedNode`, a pytree node with no leaves). That one property gives three things:

  - No optimizer state for frozen parameters: Adam's m and v (two floats per parameter, twice the
    memory of the parameters themselves) exist only for trained ones.
  - No weight decay on them: decay is part of the AdamW update, which frozen parameters never get
    (a decayed "frozen" weight would slowly shrink towards zero).
  - Gradient clipping by the global norm of the *trained* gradients only: the clip is the first
    transformation inside the "train" part, so frozen gradients neither count in the norm nor
    shrink the others' updates.

Why no `jax.lax.stop_gradient`: `jax.grad` still defines the gradients of frozen parameters, but
when nothing reads them, XLA deletes their computation (dead-code elimination), and with it the
backward pass through a tower that nothing trainable lies below. That holds as long as nothing
else in the step reads all gradients — a global gradient norm over *every* parameter, logged as a
metric, keeps them alive; `trained_only(grads, patterns)` gives the tree such a metric should use.
Freezing thus stays a matter of the optimizer, and the model and loss need not know about it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

TRAIN = "train"
FROZEN = "frozen"


def as_patterns(patterns: str | Sequence[str] | None) -> tuple[str, ...]:
    """`config.freeze` as a tuple: None or () -> (), a single string -> (string,)."""
    if not patterns:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def param_names(params: Any) -> list[str]:
    """The "/"-joined path of every leaf, in tree order: ["image_encoder/.../kernel", ...]."""
    return [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]


def compile_patterns(names: Sequence[str], patterns: Sequence[str], field: str) -> list[re.Pattern]:
    """Each pattern compiled; a ValueError naming `field` for a pattern that matches none of `names`.

    A typo in a parameter-name pattern would otherwise change nothing without a word (train what
    was meant to be frozen, leave a learning rate as it was), so it stops the run at the start,
    with some real names to copy from.
    """
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{field} pattern {pattern!r} is not a valid regular expression: {e}") from e
        if not any(regex.search(name) for name in names):
            tops = sorted({name.split("/")[0] for name in names})
            raise ValueError(
                f"{field} pattern {pattern!r} matches no parameter. Parameter names are "
                f"'/'-joined paths such as {list(names[:3])} (top-level: {tops}); patterns are "
                "matched with re.search, e.g. '^image_encoder/'."
            )
        compiled.append(regex)
    return compiled


def freeze_labels(params: Any, patterns: str | Sequence[str] | None) -> Any:
    """A tree shaped like `params` holding "frozen" where a pattern matches the name, else "train".

    Raises a ValueError for a pattern that matches no parameter (`compile_patterns`).
    """
    names = param_names(params)
    compiled = compile_patterns(names, as_patterns(patterns), "config.freeze")
    labels = [FROZEN if any(r.search(name) for r in compiled) else TRAIN for name in names]
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def freeze_parameters(
    optimizer: optax.GradientTransformation, patterns: str | Sequence[str] | None
) -> optax.GradientTransformation:
    """`optimizer` for the parameters no pattern matches; zero updates and no state for the rest.

    Without patterns the optimizer is returned unchanged (its state keeps its usual structure, so
    checkpoints of runs without freezing are unaffected). The labels are computed from the
    parameter tree when the optimizer is initialised, which is where an unmatched pattern fails.
    """
    patterns = as_patterns(patterns)
    if not patterns:
        return optimizer
    return optax.multi_transform(
        {TRAIN: optimizer, FROZEN: optax.set_to_zero()},
        lambda params: freeze_labels(params, patterns),
    )


def trained_only(tree: Any, patterns: str | Sequence[str] | None) -> Any:
    """`tree` (parameters or gradients) with the frozen leaves replaced by empty `optax.MaskedNode`s.

    `optax.global_norm(trained_only(grads, config.freeze))` is the norm that clipping sees: the
    honest gradient norm to log, and one that lets XLA skip the frozen parameters' gradients.
    """
    labels = freeze_labels(tree, patterns)
    return jax.tree.map(lambda label, leaf: leaf if label == TRAIN else optax.MaskedNode(), labels, tree)
