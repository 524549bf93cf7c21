"""Running a compiled function over a whole split in fixed-size batches."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def batched_apply(fn: Callable, *inputs: np.ndarray, batch_size: int) -> Any:
    """fn(*chunks) over equal-length `inputs` in fixed-size batches, outputs concatenated.

    The last batch is padded by repeating its last row (and the padding's outputs dropped), so a
    jitted `fn` compiles once. `fn` returns an array or a tuple/dict of arrays, batch-first.
    """
    outputs = []
    num = len(inputs[0])
    for start in range(0, num, batch_size):
        chunks = [x[start : start + batch_size] for x in inputs]
        pad = batch_size - len(chunks[0])
        if pad:
            chunks = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunks]
        out = jax.device_get(fn(*chunks))
        outputs.append(jax.tree.map(lambda o: np.asarray(o)[: batch_size - pad], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
