"""Where a train step's time goes: XLA's per-operation trace of one step, grouped.

    python bench/profile_step.py --config configs/clip_s16.py

Runs the `train.py` step a few times, then once under `jax.profiler` (a Perfetto trace), and
adds up the time of every compiled operation (XLA:CPU runs each as a "thunk"), grouped as

  matmul           fusions that contain a dot (the attention and MLP projections, their
                   gradients, Q·Kᵀ and A·V); their FLOP rate per shape is listed too
  scan bookkeeping zero-filled stacks, dynamic slices and updates, copies and transposes: the
                   per-layer activations `nn.scan` saves for the backward pass, and layout changes
  elementwise      every other fusion: LayerNorm, softmax, GELU, the loss, Adam

The step is the one `train.py` runs, on the same CPU devices (default: one per core, each running
its share of the batch; the shapes listed are one device's). Thunks of the cores overlap, so the
sums exceed the step's wall time; the shares are what matters.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.step import parse_overrides, split_cpu_host_like_train  # noqa: E402
from bench.workload import load_config, random_batch  # noqa: E402

BOOKKEEPING = ("dynamic-update-slice", "dynamic-slice", "broadcast", "copy", "transpose", "while",
               "concatenate", "slice")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",")] if text else []


def hlo_dots(hlo: str) -> dict[str, tuple[float, str]]:
    """{instruction name: (FLOPs per call, "out [M, N] K=k")} for every dot or convolution, or
    fusion holding them, of the compiled module's text: 2 · (output elements) · (contracted
    size) each."""
    shapes = dict(re.findall(r"%(\S+) = \w+\[([\d,]*)\]", hlo))
    computations = {m.group(1): m.group(2) for m in re.finditer(
        r"^(?:ENTRY )?%(\S+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.S | re.M)}
    fused = set(re.findall(r" fusion\(.*?calls=%([\w.\-]+)", hlo))

    def dots_in(lines) -> tuple[float, str]:
        flops, desc = 0.0, ""
        for line in lines:
            c = re.search(r"= \w+\[([\d,]*)\]\S* convolution\(%[\w.\-]+, %([\w.\-]+)\).*?"
                          r"dim_labels=\w+_(\w+)->", line)
            if c:  # a convolution (ConvStem): 2 · output elements · kernel elements per output feature
                rhs = _dims(shapes.get(c.group(2), ""))
                per_output = np.prod(rhs) // rhs[c.group(3).index("o")]
                flops += 2.0 * np.prod(_dims(c.group(1))) * per_output
                desc = f"convolution out {_dims(c.group(1))}"
                continue
            d = re.search(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\).*?"
                          r"lhs_contracting_dims=\{([\d,]*)\}", line)
            if not d:
                continue
            lhs = _dims(shapes.get(d.group(2), ""))
            k = int(np.prod([lhs[axis] for axis in _dims(d.group(4))]))
            flops += 2.0 * np.prod(_dims(d.group(1))) * k
            desc = f"out {_dims(d.group(1))} K={k}"
        return flops, desc

    out = {}
    for name, body in computations.items():
        if name in fused:  # counted through the fusion instruction that calls it
            continue
        for line in body.splitlines():
            m = re.match(r"\s*(?:ROOT )?%(\S+) = .*? (fusion|dot|convolution)\(", line)
            if not m:
                continue
            if m.group(2) == "fusion":
                called = re.search(r"calls=%([\w.\-]+)", line)
                flops, desc = dots_in(computations.get(called.group(1), "").splitlines()) if called else (0.0, "")
            else:
                flops, desc = dots_in([line])
            if flops:
                out[m.group(1)] = (float(flops), desc)
    return out


def measure(config_path: str, warmup: int = 2, **overrides) -> dict:
    import jax

    from mmjax.training import sharding as shd
    from mmjax.training.setup import setup_training

    config = load_config(config_path, **overrides)
    mesh = shd.make_mesh(config.mesh)
    _, _, init_fn, abstract_state, train_step = setup_training(config, mesh)
    batch = jax.device_put(random_batch(config), shd.batch_sharding(mesh))
    dots = hlo_dots(train_step.lower(abstract_state, batch).compile().as_text())
    state = init_fn()
    for _ in range(warmup):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            state, metrics = train_step(state, batch)
            jax.block_until_ready(state)
        path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    seconds, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Slinky", "Pjit")):
            seconds[e["name"]] += e.get("dur", 0) / 1e6
            calls[e["name"]] += 1
    groups = collections.Counter()
    matmuls = collections.defaultdict(lambda: [0.0, 0.0, 0])  # desc -> [seconds, flops, calls]
    for name, s in seconds.items():
        if name in dots:
            groups["matmul"] += s
            flops, desc = dots[name]
            entry = matmuls[desc]
            entry[0] += s
            entry[1] += flops * calls[name]
            entry[2] += calls[name]
        elif any(word in name for word in BOOKKEEPING):
            groups["scan bookkeeping"] += s
        else:
            groups["elementwise"] += s
    top = sorted(matmuls.items(), key=lambda kv: -kv[1][0])[:12]
    return {
        "config": os.path.basename(config_path),
        "overrides": overrides,
        "batch_size": config.batch_size,
        "groups_s": dict(groups),
        "matmul_flops_per_s": sum(v[1] for v in matmuls.values()) / max(groups["matmul"], 1e-9),
        "top_matmuls": [{"shape": d, "seconds": v[0], "calls": v[2], "flops_per_s": v[1] / v[0]}
                        for d, v in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu_devices", type=int, default=-1,
                        help="as train.py's: -1 one per core, 1 one device over every core")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    split_cpu_host_like_train(args.config, args.cpu_devices, overrides)
    row = measure(args.config, **overrides)
    if args.json:
        print(json.dumps(row))
        return
    total = sum(row["groups_s"].values())
    for group, s in sorted(row["groups_s"].items(), key=lambda kv: -kv[1]):
        print(f"{group:18s} {s * 1e3:8.0f} ms  {100 * s / total:5.1f}%")
    print(f"matmuls overall: {row['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s")
    for m in row["top_matmuls"]:
        print(f"  {m['shape']:32s} x{m['calls']:3d} {m['seconds'] * 1e3:7.0f} ms "
              f"{m['flops_per_s'] / 1e9:6.0f} GFLOP/s")


if __name__ == "__main__":
    main()
