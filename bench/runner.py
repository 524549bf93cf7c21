"""Runs one benchmark script in a fresh process and returns its JSON row.

Each measurement gets its own process: compiled programs, caches and allocator state of one
never speed up or slow down the next, and forced CPU device counts (`XLA_FLAGS`) take effect.
Every process gets the same environment, including the host allocator (`host_allocator`), so the
PyTorch peer and mmjax run under the same conditions, and every row records the CPU it ran on
(model and vector/matrix extensions, `cpu.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.cpu import cpu_summary  # noqa: E402
from mmjax.training.allocator import mimalloc_library  # noqa: E402


def host_allocator() -> dict[str, str]:
    """LD_PRELOAD of mimalloc, the allocator `train.py` runs with (mmjax/training/allocator.py).

    XLA:CPU allocates a step's buffers afresh at every call; glibc hands allocations over 32 MiB
    back to the kernel when they are freed, so every step pays the page faults of touching
    gigabytes of new memory again (measured: a 256 MiB elementwise op writes into fresh memory at
    4.5 GB/s, into reused memory at 21 GB/s). mimalloc keeps freed memory for reuse. Set
    MMJAX_ALLOCATOR=system to measure without it.
    """
    library = mimalloc_library()
    if os.environ.get("MMJAX_ALLOCATOR") == "system" or library is None:
        return {}
    return {"LD_PRELOAD": library}


def run(script: str, *args: str, devices: int | None = None, allocator: bool = True,
        timeout: float = 1800) -> dict:
    """`python bench/<script> <args> --json` -> its last stdout line, parsed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("LD_PRELOAD", None)
    if allocator:
        env.update(host_allocator())
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    command = [sys.executable, os.path.join(ROOT, "bench", script), *args, "--json"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{' '.join(command[1:])} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["allocator"] = "mimalloc" if allocator and "LD_PRELOAD" in env else "system"
    row["cpu"] = cpu_summary()  # every row says which machine it was measured on
    return row
