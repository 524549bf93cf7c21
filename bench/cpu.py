"""Which CPU a benchmark ran on: its model and the vector and matrix extensions that decide speed.

    python bench/cpu.py        # e.g. "Intel(R) Xeon(R) Processor, 2 cores: AVX2, AVX-512, AVX512-BF16, AMX-BF16"

Two machines of one cloud "kind" can be an AMD EPYC with AVX2 one day and an Intel Xeon with
AVX-512 and AMX the next; their timings differ by 2x and more, and bfloat16 is several times faster
than float32 only where AMX exists. Every benchmark row records `cpu_summary()`, and the bfloat16
suite runs only where `has_amx_bf16()`.
"""

from __future__ import annotations

import functools
import os
import platform

# /proc/cpuinfo flag -> the name people know it by, in the order they appeared in x86 CPUs.
EXTENSIONS = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8",
    "asimd": "NEON", "sve": "SVE", "sme": "SME",
}


@functools.lru_cache(maxsize=4)
def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"model": str, "cores": int, "extensions": [names]} from /proc/cpuinfo (Linux)."""
    model, flags = None, set()
    try:
        with open(cpuinfo, encoding="utf-8") as file:
            for line in file:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "Model") and model is None:  # x86, Arm
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.processor() or platform.machine(), "cores": cores,
            "extensions": [name for flag, name in EXTENSIONS.items() if flag in flags]}


def cpu_summary() -> str:
    info = cpu_info()
    extensions = ", ".join(info["extensions"]) or "no AVX2"
    return f"{info['model']}, {info['cores']} cores: {extensions}"


def has_amx_bf16() -> bool:
    """Whether the CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return "AMX-BF16" in cpu_info()["extensions"]


if __name__ == "__main__":
    print(cpu_summary())
