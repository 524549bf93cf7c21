"""Will it fit? Bytes per device and FLOPs per step of a config's train step on a simulated mesh.

    python bench/memory_plan.py                       # the table of docs/SCALING.md
    python bench/memory_plan.py --config configs/clip_l14.py --devices 32 --mesh 4,4,2

Nothing is allocated and no accelerator is needed: each case runs in its own process with
`--xla_force_host_platform_device_count=N` CPU devices, builds the exact step the trainer runs
(`setup_training`), lowers it on abstract inputs and compiles it for the (data, fsdp, tensor)
mesh. Per device it reports

    parameters, optimizer state   from the shardings the logical-axis rules give each array
    activations (temporaries)     XLA's compiled memory analysis (`temp_size_in_bytes`): what the
                                  forward and backward pass hold at their peak, with remat
    FLOPs per step                analytic (`bench/workload.py`: every matmul's 2·M·N·K, forward
                                  and backward, the count BENCHMARKS.md checks against XLA's)

The compiled program is XLA:CPU's; a TPU or GPU compiler fuses and schedules differently, so
temporaries are an estimate of the right order, while parameter and optimizer bytes are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [
    ("configs/clip_b16.py", 8, (8, 1, 1)),
    ("configs/clip_b16.py", 8, (1, 8, 1)),
    ("configs/clip_b16.py", 32, (32, 1, 1)),
    ("configs/clip_b16.py", 32, (4, 8, 1)),
    ("configs/clip_l14.py", 8, (8, 1, 1)),
    ("configs/clip_l14.py", 8, (1, 8, 1)),
    ("configs/clip_l14.py", 8, (2, 2, 2)),
    ("configs/clip_l14.py", 32, (4, 8, 1)),
    ("configs/clip_l14.py", 32, (1, 32, 1)),
    ("configs/clip_l14.py", 32, (2, 8, 2)),
]


def measure(config_path: str, mesh: tuple[int, int, int]) -> dict:
    """Runs inside a process with the right number of forced devices."""
    import jax
    import numpy as np

    from mmjax.training import sharding as shd
    from mmjax.training.setup import setup_training
    from mmjax.training.state import count_params

    from bench.workload import load_config, train_flops

    config = load_config(config_path)
    config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    mesh_obj = shd.make_mesh(config.mesh)
    task, _, _, abstract_state, train_step = setup_training(config, mesh_obj)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shd.batch_sharding(mesh_obj))
             for k, v in task.example_batch(config, config.batch_size).items()}
    start = time.perf_counter()
    compiled = train_step.lower(abstract_state, batch).compile()
    compile_s = time.perf_counter() - start

    def per_device_bytes(tree):
        return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))

    memory = compiled.memory_analysis()
    return {
        "config": os.path.basename(config_path),
        "devices": jax.device_count(),
        "mesh": dict(mesh_obj.shape),
        "parameters": count_params(abstract_state.params),
        "batch_per_device": config.batch_size // shd.num_batch_shards(mesh_obj),
        "param_bytes": per_device_bytes(abstract_state.params),
        "opt_bytes": per_device_bytes(abstract_state.opt_state),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "flops_per_step": train_flops(config),
        "compile_s": compile_s,
    }


def run_case(config_path: str, devices: int, mesh: tuple[int, int, int]) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run(
        [sys.executable, __file__, "--config", config_path, "--devices", str(devices),
         "--mesh", ",".join(map(str, mesh)), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{config_path} on {devices} devices, mesh {mesh} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| config | params | devices | mesh (data, fsdp, tensor) | batch / device | parameters GiB | "
        "optimizer GiB | activations GiB | total GiB | TFLOP / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mesh = r["mesh"]
        total = r["param_bytes"] + r["opt_bytes"] + r["temp_bytes"]
        lines.append(
            f"| {r['config']} | {r['parameters'] / 1e6:.1f} M | {r['devices']} | "
            f"{mesh['data']}, {mesh['fsdp']}, {mesh['tensor']} | {r['batch_per_device']} | "
            f"{gib(r['param_bytes'])} | {gib(r['opt_bytes'])} | {gib(r['temp_bytes'])} | {gib(total)} | "
            f"{r['flops_per_step'] / 1e12:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--mesh", help="data,fsdp,tensor")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.json:  # the child process
        sys.path.insert(0, ROOT)
        print(json.dumps(measure(args.config, tuple(int(x) for x in args.mesh.split(",")))))
        return
    cases = CASES if args.config is None else [(args.config, args.devices, tuple(int(x) for x in args.mesh.split(",")))]
    rows = []
    for config_path, devices, mesh in cases:
        rows.append(run_case(config_path, devices, mesh))
        print(f"{config_path} {devices} devices mesh {mesh}: compiled in {rows[-1]['compile_s']:.0f} s",
              file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
