"""Train-step speed of a config: compile time, step time, examples/s, FLOPs, MFU, peak memory.

    python bench/step.py --config configs/clip_s16.py --steps 10
    python bench/step.py --config configs/clip_tiny.py --set batch_size=512 --json

Builds the exact step `train.py` runs (`setup_training`: sharded state, donated buffers, the
config's loss and optimizer) on all local devices, feeds it one random batch already on the
devices (so only the step is timed; the loader is `input_pipeline.py`'s business), and times each
step to completion. Reported time is the median over `--steps` steps after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.workload import load_config, random_batch, speed_row, time_steps  # noqa: E402


def parse_overrides(items: list[str]) -> dict:
    """["batch_size=16", "data.image_size=112"] -> {"batch_size": 16, "data.image_size": 112}."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set batch_size=16")
        try:
            out[key] = json.loads(value)  # numbers, true/false, "quoted strings"
        except json.JSONDecodeError:
            out[key] = value  # a bare string: data.data_dir=data
    return out


def measure(config_path: str, steps: int = 10, warmup: int = 2, **overrides) -> dict:
    """Times the config's train step; returns one row of measurements (see `main`)."""
    import jax

    from mmjax.training import sharding as shd
    from mmjax.training.setup import setup_training
    from mmjax.training.state import count_params

    config = load_config(config_path, **overrides)
    mesh = shd.make_mesh(config.mesh)
    task, _, init_fn, abstract_state, train_step = setup_training(config, mesh)
    batch = jax.device_put(random_batch(config), shd.batch_sharding(mesh))

    start = time.perf_counter()
    compiled = train_step.lower(abstract_state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()

    state = init_fn()

    def one_step() -> float:
        nonlocal state
        state, metrics = train_step(state, batch)
        return float(metrics["loss"])  # waits for the step (and its donated outputs)

    times = time_steps(one_step, steps, warmup, config_path)
    row = {
        **speed_row("mmjax", config_path, config, overrides, times),
        "devices": jax.device_count(),
        "parameters": count_params(abstract_state.params),
        "image_size": config.data.image_size,
        "text_len": config.data.text_len,
        "compile_s": compile_s,
        "flops_xla": float(cost.get("flops", float("nan"))),
        # What the compiled program holds at its peak (arguments + outputs + temporaries, XLA's
        # plan), and the process's peak resident memory (everything, Python included).
        "peak_bytes_xla": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                              + memory.temp_size_in_bytes - memory.alias_size_in_bytes),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    return rate_xla_flops_without_a_formula(row)


def rate_xla_flops_without_a_formula(row: dict) -> dict:
    """For a model with no analytic FLOP count (NaN; a VQ-VAE's convolutions), the row's FLOP
    rate from XLA's count instead: the compiled SPMD program is one device's, so its count times
    the devices is the step's."""
    if math.isnan(row["flops_analytic"]):
        row["flops_per_s"] = row["flops_xla"] * row["devices"] / row["step_s"]
    return row


def split_cpu_host_like_train(config_path: str, cpu_devices: int, overrides: dict) -> None:
    """Splits JAX's CPU backend into devices as `train.py --cpu_devices` does (default: one per
    core, fitted to the batch), so the benchmarks time the step that training runs. A device
    count forced in XLA_FLAGS (bench/runner.py's `devices`) wins."""
    from mmjax.training.host_devices import split_for_config

    split_for_config(load_config(config_path, **overrides), cpu_devices)


def step_cli(measure_fn, description: str, describe, jax_step: bool = True) -> None:
    """The command line of the step benchmarks (this one and peer.py): --config, --steps,
    --warmup, --set KEY=VALUE, --json, and for mmjax's step (`jax_step`) --cpu_devices; prints
    `describe(row, args)` or the row as JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. batch_size=16 or data.image_size=112")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    if jax_step:
        parser.add_argument("--cpu_devices", type=int, default=-1,
                            help="as train.py's: -1 one per core, 1 one device over every core")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    if jax_step:
        split_cpu_host_like_train(args.config, args.cpu_devices, overrides)
    row = measure_fn(args.config, args.steps, args.warmup, **overrides)
    print(json.dumps(row) if args.json else describe(row, args))


def describe(row: dict, args: argparse.Namespace) -> str:
    analytic = ("no analytic count" if math.isnan(row["flops_analytic"])
                else f"analytic {row['flops_analytic'] / 1e9:.1f} GFLOP/step")
    return (f"{row['config']} batch {row['batch_size']} on {row['devices']} device(s): "
            f"{row['parameters'] / 1e6:.1f} M params, compile {row['compile_s']:.1f} s, "
            f"step {row['step_s'] * 1e3:.0f} ms (median of {args.steps}), "
            f"{row['examples_per_s']:.1f} ex/s, {row['flops_per_s'] / 1e9:.1f} GFLOP/s "
            f"({analytic}, XLA {row['flops_xla'] / 1e9:.1f} per device)")


if __name__ == "__main__":
    step_cli(measure, __doc__.splitlines()[0], describe)
