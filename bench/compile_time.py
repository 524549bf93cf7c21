"""How long the train step takes to compile, with the layers scanned (one compiled block per
tower) and unrolled (every layer its own copy in the program).

    python bench/compile_time.py --config configs/clip_b16.py

Compiles the exact `train.py` step for the local devices from abstract inputs (nothing is
allocated, so clip_b16's global batch of 4096 compiles on a laptop). Reports trace+lower time and
XLA compile time separately, and XLA's FLOP count of the compiled program: for the scanned step
XLA counts the loop body once, for the unrolled one every layer (the unrolled count is the one
`step.py` cross-checks the analytic FLOPs against).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.step import parse_overrides  # noqa: E402
from bench.workload import load_config, train_flops  # noqa: E402


def measure(config_path: str, scan: bool = True, **overrides) -> dict:
    import jax

    from mmjax.training import sharding as shd
    from mmjax.training.setup import setup_training

    overrides = dict(overrides)
    if not scan:
        overrides.update({"model.image.scan": False, "model.text.scan": False})
    config = load_config(config_path, **overrides)
    mesh = shd.make_mesh(config.mesh)
    start = time.perf_counter()
    task, _, _, abstract_state, train_step = setup_training(config, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shd.batch_sharding(mesh))
             for k, v in task.example_batch(config, config.batch_size).items()}
    lowered = train_step.lower(abstract_state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "config": os.path.basename(config_path),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "scan": scan,
        "unroll": str(config.model.image.get("unroll", 1)) if scan else "-",
        "batch_size": config.batch_size,
        "devices": jax.device_count(),
        "lower_s": lower_s,
        "compile_s": compile_s,
        "flops_xla": float(cost.get("flops", float("nan"))),
        "flops_analytic": train_flops(config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--unrolled", action="store_true", help="compile with scan=False in both towers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    row = measure(args.config, not args.unrolled, **parse_overrides(args.set))
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['config']} ({'scanned, unroll ' + row['unroll'] if row['scan'] else 'scan=False'}, batch {row['batch_size']}): "
          f"trace+lower {row['lower_s']:.1f} s, compile {row['compile_s']:.1f} s; FLOPs/step "
          f"XLA {row['flops_xla'] / 1e12:.2f} T, analytic {row['flops_analytic'] / 1e12:.2f} T")


if __name__ == "__main__":
    main()
