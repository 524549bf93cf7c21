"""`make bench`: every benchmark, then BENCHMARKS.md's tables and the plots in docs/bench/.

    python bench/run_all.py                  # everything (about 25 minutes on 2 CPU cores)
    python bench/run_all.py --only ceiling step peer
    python bench/run_all.py --report-only    # rewrite BENCHMARKS.md from bench/results.json

Suites (each measurement in its own process, see runner.py):
  ceiling    float32 matmul rate and memory bandwidth (ceiling.py)
  step       train step of clip_tiny, clip_small, clip_s16: time, examples/s, FLOPs, MFU (step.py),
             with XLA's FLOP count of the unrolled step as a cross-check (compile_time.py)
  peer       the same step in PyTorch (open_clip), alternating runs with mmjax (peer.py, step.py)
  bf16       clip_small and clip_s16 in float32 and bfloat16 (mmjax's bf16 towers, PyTorch's bf16
             autocast), alternating runs; only on CPUs with AMX-BF16 (cpu.py), elsewhere it says so
  allocator  clip_tiny's and clip_s16's step with glibc's allocator vs mimalloc (train.py's)
  profile    where clip_s16's step spends its time, by kind of operation (profile_step.py)
  loader     examples/s the training loader delivers (input_pipeline.py)
  scaling    step time vs batch size, image resolution, text length and forced CPU devices
  inference  embedding throughput; CoCa generate() tokens/s, greedy and beam 4 (inference.py)
  compile    compile time of clip_b16 and clip_s16, scanned and unrolled (compile_time.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from bench.cpu import cpu_info, cpu_summary, has_amx_bf16  # noqa: E402
from bench.runner import ROOT, host_allocator, run  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results.json")
STEP_CASES = [  # (config, overrides, timed steps)
    ("configs/clip_tiny.py", {}, 20),
    ("configs/clip_small.py", {"batch_size": 64}, 10),
    ("configs/clip_s16.py", {}, 6),
]
PEER_ROUNDS = {"clip_tiny.py": 3, "clip_small.py": 3, "clip_s16.py": 2}
# open_clip's vision tower pools a class token, learns its position table and has no patch bias;
# clip_tiny and clip_small (mean pooling, sin-cos positions, a patch bias) are compared in that
# form, on both sides. clip_s16 is open_clip's ViT-S-16 as it is.
OPEN_CLIP_FORM = {"model.image.pool": "token", "model.image.position_embedding": "learned",
                  "model.image.patch_bias": False}


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]


def _step(config: str, overrides: dict, steps: int, **kw) -> dict:
    return run("step.py", "--config", config, "--steps", str(steps), *_sets(overrides), **kw)


def suite_ceiling(results: dict) -> None:
    results["ceiling"] = run("ceiling.py")


def suite_step(results: dict) -> None:
    rows = []
    for config, overrides, steps in STEP_CASES:
        row = _step(config, overrides, steps)
        unrolled = run("compile_time.py", "--config", config, "--unrolled", *_sets(overrides))
        row["flops_xla_unrolled"] = unrolled["flops_xla"]
        rows.append(row)
        print(f"  step {row['config']}: {row['step_s'] * 1e3:.0f} ms", file=sys.stderr, flush=True)
    results["step"] = rows


def suite_peer(results: dict) -> None:
    """Alternating runs: mmjax (one device per core, as train.py runs), mmjax on one device over
    both cores (--cpu_devices 1), peer, and again; each run's median step, then the median over
    runs; the ratio of those is reported."""
    rows = []
    for config, overrides, steps in STEP_CASES:
        name = os.path.basename(config)
        if name != "clip_s16.py":
            overrides = {**overrides, **OPEN_CLIP_FORM}
        mmjax_runs, one_device_runs, peer_runs = [], [], []
        for _ in range(PEER_ROUNDS[name]):
            mmjax_runs.append(_step(config, overrides, steps))
            one_device_runs.append(run("step.py", "--config", config, "--steps", str(steps),
                                       "--cpu_devices", "1", *_sets(overrides)))
            peer_runs.append(run("peer.py", "--config", config, "--steps", str(steps), *_sets(overrides)))
        mmjax_s = statistics.median(r["step_s"] for r in mmjax_runs)
        one_device_s = statistics.median(r["step_s"] for r in one_device_runs)
        peer_s = statistics.median(r["step_s"] for r in peer_runs)
        rows.append({
            "config": name, "batch_size": mmjax_runs[0]["batch_size"],
            "mmjax_parameters": mmjax_runs[0]["parameters"], "peer_parameters": peer_runs[0]["parameters"],
            "max_embedding_diff": peer_runs[0]["max_embedding_diff"], "threads": peer_runs[0]["threads"],
            "mmjax_devices": mmjax_runs[0]["devices"],
            "mmjax_step_s": mmjax_s, "peer_step_s": peer_s, "speedup": peer_s / mmjax_s,
            "mmjax_one_device_step_s": one_device_s, "speedup_one_device": peer_s / one_device_s,
            "mmjax_runs": [r["step_s"] for r in mmjax_runs], "peer_runs": [r["step_s"] for r in peer_runs],
            "mmjax_one_device_runs": [r["step_s"] for r in one_device_runs],
            "flops_analytic": mmjax_runs[0]["flops_analytic"], "versions": peer_runs[0]["versions"],
            "cpu": mmjax_runs[0]["cpu"],
        })
        print(f"  peer {name}: mmjax {mmjax_s:.3f} s (one device {one_device_s:.3f} s), peer {peer_s:.3f} s",
              file=sys.stderr, flush=True)
    results["peer"] = rows


BF16_CASES = [("configs/clip_small.py", {"batch_size": 64}, 6), ("configs/clip_s16.py", {}, 4)]
BF16_ROUNDS = 2


def suite_bf16(results: dict) -> None:
    """float32 and bfloat16 steps of both frameworks, alternating: mmjax f32, mmjax bf16, PyTorch
    f32, PyTorch bf16 autocast, and again. bfloat16 differs from float32 in speed only where the
    CPU multiplies bfloat16 natively (AMX); elsewhere the suite records why it did not run."""
    if not has_amx_bf16():
        results["bf16"] = {"skipped": f"this CPU has no AMX-BF16 ({cpu_summary()})"}
        return
    rows = []
    for config, overrides, steps in BF16_CASES:
        name = os.path.basename(config)
        if name != "clip_s16.py":
            overrides = {**overrides, **OPEN_CLIP_FORM}
        runs = {}
        for _ in range(BF16_ROUNDS):
            for dtype in ("float32", "bfloat16"):
                typed = {**overrides, "model.image.dtype": dtype, "model.text.dtype": dtype}
                for framework, script in (("mmjax", "step.py"), ("pytorch", "peer.py")):
                    row = run(script, "--config", config, "--steps", str(steps), *_sets(typed))
                    runs.setdefault((framework, dtype), []).append(row)
        medians = {key: statistics.median(r["step_s"] for r in rs) for key, rs in runs.items()}
        rows.append({
            "config": name, "batch_size": runs["mmjax", "float32"][0]["batch_size"],
            "flops_analytic": runs["mmjax", "float32"][0]["flops_analytic"],
            "step_s": {f"{framework} {dtype}": medians[framework, dtype] for framework, dtype in medians},
            "runs": {f"{framework} {dtype}": [r["step_s"] for r in rs] for (framework, dtype), rs in runs.items()},
            "cpu": runs["mmjax", "float32"][0]["cpu"],
        })
        print(f"  bf16 {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1]["step_s"].items()),
              file=sys.stderr, flush=True)
    results["bf16"] = rows


def suite_allocator(results: dict) -> None:
    rows = []
    for config, overrides, steps in (STEP_CASES[0], ("configs/clip_s16.py", {"batch_size": 16}, 4)):
        for _ in range(2):
            for allocator in (False, True):
                rows.append(_step(config, overrides, steps, allocator=allocator))
    results["allocator"] = rows


def suite_profile(results: dict) -> None:
    results["profile"] = [run("profile_step.py", "--config", config) for config in
                          ("configs/clip_tiny.py", "configs/clip_s16.py")]


def suite_loader(results: dict) -> None:
    rows = [
        run("input_pipeline.py", "--config", "configs/clip_tiny.py"),
        run("input_pipeline.py", "--config", "configs/clip_tiny.py", "--set", "data.num_threads=2"),
        # A smaller 224 px build (2048 training scenes): the loader's speed does not depend on
        # the split's size, and the full 20k-scene build at 224 px takes long.
        run("input_pipeline.py", "--config", "configs/clip_s16.py", "--batches", "10",
            *_sets({"data.num_train": 2048, "data.num_validation": 64, "data.num_test": 64,
                    "data.num_compositional_test": 64, "data.num_threads": 2})),
    ]
    results["loader"] = rows


def suite_scaling(results: dict) -> None:
    config = "configs/clip_tiny.py"
    rows = []
    for batch in (64, 128, 256, 512):
        rows.append(dict(_step(config, {"batch_size": batch}, 10), axis="batch_size", value=batch))
    for size in (48, 96, 144, 192):
        rows.append(dict(_step(config, {"data.image_size": size}, 5), axis="image_size", value=size))
    for length in (16, 32, 64, 128):
        rows.append(dict(_step(config, {"data.text_len": length}, 10), axis="text_len", value=length))
    for devices in (1, 2, 4, 8):
        rows.append(dict(_step(config, {}, 10, devices=devices), axis="devices", value=devices))
    results["scaling"] = rows


def suite_inference(results: dict) -> None:
    results["inference"] = [
        run("inference.py", "--config", "configs/clip_tiny.py", "--batch", "256"),
        run("inference.py", "--config", "configs/clip_s16.py", "--batch", "32"),
        run("inference.py", "--config", "configs/coca_tiny.py", "--batch", "64", "--beam", "1", "4"),
    ]


def suite_compile(results: dict) -> None:
    rows = []
    unroll = _sets({"model.image.unroll": True, "model.text.unroll": True})
    loop = _sets({"model.image.unroll": False, "model.text.unroll": False})
    for config in ("configs/clip_b16.py", "configs/clip_s16.py"):
        rows.append(run("compile_time.py", "--config", config, *loop))
        rows.append(run("compile_time.py", "--config", config, *unroll))
        rows.append(run("compile_time.py", "--config", config, "--unrolled"))
    results["compile"] = rows


SUITES = {
    "ceiling": suite_ceiling, "step": suite_step, "peer": suite_peer, "bf16": suite_bf16, "allocator": suite_allocator,
    "profile": suite_profile, "loader": suite_loader, "scaling": suite_scaling, "inference": suite_inference, "compile": suite_compile,
}


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "open_clip_torch", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {
        "date": datetime.date.today().isoformat(), "cpu": cpu_summary(), "cpu_model": cpu_info()["model"],
        "extensions": cpu_info()["extensions"], "cores": cpu_info()["cores"],
        "python": platform.python_version(), "versions": versions,
        "allocator": "mimalloc" if host_allocator() else "system",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="run these suites only")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            results = json.load(f)
    if not args.report_only:
        results["machine"] = machine()
        for name in args.only or SUITES:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            SUITES[name](results)
            # Saved after every suite: an interrupted run keeps what it measured.
            tmp = RESULTS + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=1)
            os.replace(tmp, RESULTS)
    report.write(results)
    print(report.summary(results))


if __name__ == "__main__":
    main()
