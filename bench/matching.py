"""Set matching per training step: the JAX Hungarian solver against a callback to SciPy.

    python bench/matching.py
    python bench/matching.py --batch 64 256 --targets 4 --predictions 36 64

What a DETR-style loss pays every step to match its targets (4 ground-truth boxes per image,
padded: each image has 1 to 4 real ones) to its predictions (one per ViT patch token: 36 for a
6 x 6 grid, 64 for 8 x 8), for a batch of images, all under `jax.jit`:

jax        `batched_linear_sum_assignment` (mmjax/linear_assignment.py), vmapped over the batch
callback   `scipy_linear_sum_assignment_callback`: `jax.pure_callback` to
           `scipy.optimize.linear_sum_assignment`, one matrix after another on the host
scipy      the same SciPy loop called from Python on NumPy arrays, no JAX around it: how much of
           the callback's time is SciPy's own

Times are medians over repeats after a warm-up call, the three taken in turn so that a busy
machine slows all of them alike. Both solvers are checked to reach the same total cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_summary  # noqa: E402


def random_problem(batch: int, targets: int, predictions: int, seed: int = 0):
    """Costs [batch, targets, predictions] in [0, 10) (DETR's class + L1 + GIoU costs are of that
    order) and valid_rows [batch, targets] with 1 to `targets` real targets per image."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0.0, 10.0, (batch, targets, predictions)).astype(np.float32)
    valid_rows = np.arange(targets) < rng.integers(1, targets + 1, (batch, 1))
    return cost, valid_rows


def measure(batch: int, targets: int, predictions: int, repeats: int = 50) -> dict:
    import jax
    import jax.numpy as jnp

    from mmjax.linear_assignment import (
        _scipy_row_to_col,
        batched_linear_sum_assignment,
        scipy_linear_sum_assignment_callback,
    )

    cost, valid_rows = random_problem(batch, targets, predictions)
    # SciPy solves the same problem: padding rows of constant cost, as the JAX solver gives them
    padded_cost = np.where(valid_rows[:, :, None], cost, 0.0).astype(np.float32)
    cost_dev, valid_dev, padded_dev = map(jnp.asarray, (cost, valid_rows, padded_cost))
    ours = jax.jit(batched_linear_sum_assignment)
    callback = jax.jit(scipy_linear_sum_assignment_callback)
    runs = {
        "jax": lambda: ours(cost_dev, valid_dev).row_to_col.block_until_ready(),
        "callback": lambda: callback(padded_dev).block_until_ready(),
        "scipy": lambda: _scipy_row_to_col(padded_cost),
    }
    results = {name: np.asarray(run()) for name, run in runs.items()}  # compile / warm up
    def total(row_to_col):  # Σ over the valid rows of each image of their matched costs
        matched = np.take_along_axis(cost, np.maximum(row_to_col, 0)[:, :, None], axis=2)[:, :, 0]
        return float(np.where(valid_rows, matched, 0.0).sum())

    totals = {name: total(row_to_col) for name, row_to_col in results.items()}
    assert abs(totals["jax"] - totals["callback"]) < 1e-3 * batch, totals
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    row = {"batch": batch, "targets": targets, "predictions": predictions, "repeats": repeats}
    for name, seconds in times.items():
        row[f"{name}_ms"] = 1e3 * float(np.median(seconds))
    row["cpu"] = cpu_summary()
    row["devices"] = [str(d) for d in jax.local_devices()]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--predictions", type=int, nargs="+", default=[36, 64])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(b, args.targets, p, args.repeats) for b in args.batch for p in args.predictions]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{rows[0]['cpu']}; {len(rows[0]['devices'])} device(s); median of {args.repeats} runs")
    print(f"{'batch':>6} {'targets x predictions':>22} {'jax ms':>8} {'callback ms':>12} {'scipy ms':>9} "
          f"{'callback / jax':>15}")
    for row in rows:
        shape = f"{row['targets']} x {row['predictions']}"
        print(f"{row['batch']:>6} {shape:>22} {row['jax_ms']:>8.3f} {row['callback_ms']:>12.3f} "
              f"{row['scipy_ms']:>9.3f} {row['callback_ms'] / row['jax_ms']:>15.2f}")


if __name__ == "__main__":
    main()
