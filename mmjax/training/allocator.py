"""The host allocator: mimalloc, preloaded into training and evaluation processes on Linux.

XLA:CPU allocates the buffers of every step afresh at each call. glibc's malloc serves an
allocation larger than its mmap threshold (32 MiB at most) with fresh pages from the kernel and
hands them back when it is freed, so every step faults its activations into memory again: a
256 MiB elementwise op writes fresh memory at 4.5 GB/s and reused memory at 21 GB/s (BENCHMARKS.md,
"The allocator"). mimalloc keeps freed memory for the next allocation. Measured with `bench/step.py`
on the same 2-core Intel Xeon (AVX-512, AMX), alternating runs:

    step               glibc            mimalloc         tcmalloc (TCMALLOC_RELEASE_RATE=0)
    clip_tiny          262-286 ms       216-219 ms       221-229 ms
    clip_s16, batch 16 3.65-3.82 s      3.13-3.23 s      3.06-3.21 s

glibc's own settings do not get there (GLIBC_TUNABLES with mmap disabled, one arena and no
trimming: 248 ms and 3.23 s). mimalloc comes from PyPI (`cmeel-mimalloc`, one of mmjax's
dependencies on Linux), so every install has it; tcmalloc needs the system's package manager.

An allocator can only be replaced when a process starts. `train.py` and `eval.py` call
`reexec_with_mimalloc()` before anything else: it runs the same command again (same process id,
`os.execve`) with LD_PRELOAD naming mimalloc; the `make` targets preload it themselves
(`python -m mmjax.training.allocator` prints the library's path). `MMJAX_ALLOCATOR=system` keeps
glibc's malloc.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

_DISTRIBUTION = "cmeel-mimalloc"
_LIBRARY = "libmimalloc.so"


def mimalloc_library() -> str | None:
    """The path of the installed mimalloc shared library, or None (not Linux, not installed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = importlib.metadata.files(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith(_LIBRARY) and not file.name.endswith(".a"):
            path = str(file.locate())
            if os.path.exists(path):
                return os.path.realpath(path)
    return None


def reexec_with_mimalloc() -> None:
    """Starts this command again with mimalloc preloaded, unless it already is (or cannot be).

    Call first thing in a script, before threads start or files open: `os.execve` replaces the
    process. Interpreter options and arguments are kept (`sys.orig_argv`).
    """
    if os.environ.get("MMJAX_ALLOCATOR") == "system":
        return
    library = mimalloc_library()
    preloaded = os.environ.get("LD_PRELOAD", "")
    # Already preloaded, another allocator chosen (tcmalloc, jemalloc), or tried once already.
    if library is None or "malloc" in preloaded or os.environ.get("_MMJAX_REEXECUTED"):
        return
    env = dict(os.environ, LD_PRELOAD=f"{library}:{preloaded}".rstrip(":"), _MMJAX_REEXECUTED="1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


if __name__ == "__main__":
    # For shells and Makefiles: LD_PRELOAD="$(python -m mmjax.training.allocator)" command ...
    if os.environ.get("MMJAX_ALLOCATOR") != "system":
        print(mimalloc_library() or "")
