"""What this machine can do at best: the float32 matmul rate and the memory bandwidth through XLA.

    python bench/ceiling.py

matmul     C = A·B for square float32 matrices (n = 1024, 2048, 3072, 4096), jitted; 2·n³ FLOPs per
           call; the best of the sizes' median rates is the ceiling MFU is measured against.
copy       y = x + 1 over a 256 MiB float32 array: one read and one write per element, so
           2 · 256 MiB per call (a bare copy could be elided by XLA).
bfloat16   the same matmul on bfloat16 matrices (n = 2048, 4096), both ways XLA can be asked for
           it: a bfloat16 result (XLA:CPU converts the dot to float32 first) and a float32 result
           (`preferred_element_type`: what mmjax's bfloat16 layers ask for, `mmjax/nn/linear.py`,
           and what XLA:CPU sends to YNNPACK's bfloat16 kernels, AMX tiles where the CPU has them).
The same matmul in PyTorch (same thread count) is printed beside it: two libraries' kernels on the
same cores, so MFU against this ceiling is comparable between the two frameworks.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(repeats: int = 7) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    matmul = {}
    f = jax.jit(jnp.matmul)
    for n in (1024, 2048, 3072, 4096):
        a = jnp.asarray(rng.standard_normal((n, n), np.float32))
        b = jnp.asarray(rng.standard_normal((n, n), np.float32))
        matmul[n] = 2 * n**3 / median_seconds(lambda: f(a, b).block_until_ready(), repeats)
    x = jnp.asarray(rng.standard_normal(64 * 2**20, np.float32))  # 256 MiB
    g = jax.jit(lambda x: x + 1.0)
    bandwidth = 2 * x.nbytes / median_seconds(lambda: g(x).block_until_ready(), repeats)
    bf16_out, f32_out = {}, {}
    to_f32 = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    for n in (2048, 4096):
        a = jnp.asarray(rng.standard_normal((n, n), np.float32), jnp.bfloat16)
        b = jnp.asarray(rng.standard_normal((n, n), np.float32), jnp.bfloat16)
        bf16_out[n] = 2 * n**3 / median_seconds(lambda: f(a, b).block_until_ready(), repeats)
        f32_out[n] = 2 * n**3 / median_seconds(lambda: to_f32(a, b).block_until_ready(), repeats)
    row = {
        "bf16_matmul_flops_per_s": max(bf16_out.values()),
        "bf16_to_f32_matmul_flops_per_s": max(f32_out.values()),
        "matmul_flops_per_s": max(matmul.values()),
        "matmul_by_size": {str(n): v for n, v in matmul.items()},
        "copy_bytes_per_s": bandwidth,
        "devices": [str(d) for d in jax.local_devices()],
    }
    try:
        import torch
    except ImportError:
        return row
    torch_rates = {}
    for n in (1024, 2048, 3072, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch_rates[n] = 2 * n**3 / median_seconds(lambda: a @ b, repeats)
    row["torch_matmul_flops_per_s"] = max(torch_rates.values())
    torch_bf16 = {}
    for n in (2048, 4096):
        a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
        torch_bf16[n] = 2 * n**3 / median_seconds(lambda: a @ b, repeats)
    row["torch_bf16_matmul_flops_per_s"] = max(torch_bf16.values())
    row["torch_threads"] = torch.get_num_threads()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    row = measure()
    if args.json:
        print(json.dumps(row))
        return
    sizes = ", ".join(f"{n}: {v / 1e9:.0f}" for n, v in row["matmul_by_size"].items())
    print(f"XLA float32 matmul: {row['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s (by size {sizes})")
    print(f"XLA copy bandwidth: {row['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    print(f"XLA bfloat16 matmul: {row['bf16_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s with a bfloat16 result, "
          f"{row['bf16_to_f32_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s with a float32 result")
    if "torch_matmul_flops_per_s" in row:
        print(f"PyTorch float32 matmul ({row['torch_threads']} threads): "
              f"{row['torch_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, bfloat16 "
              f"{row['torch_bf16_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
