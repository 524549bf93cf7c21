"""Shared test setup.

Tests run on the CPU with 8 forced host devices, so multi-device sharding is exercised in-process
(a mesh of 1 device and a mesh of 8 can be compared in the same test). The flag must be set before
jax is first imported, which is why it lives here.

XLA compiles the tests' programs with LLVM's optimisations off (`--xla_backend_optimization_level=0`;
the subprocess tests pass `CODEGEN_XLA_FLAGS` on to the `train.py` processes they start).
Compiling is most of what the suite does: at LLVM's default level, XLA's backend compile took
307 s of the suite's 527 s on the 2-core machine. Level 0 changes only how machine code is
generated from the optimised HLO: every HLO pass (fusion, layout assignment, SPMD partitioning,
the rewrites that decide the numerics) runs as it does in training, and LLVM's optimisations do
not change floating-point results (XLA:CPU does not enable fast math), so every property a test
checks is the one `train.py` has. `XLA_FLAGS=--xla_backend_optimization_level=2 make test` runs
the suite with the default code generation.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

# One persistent compilation cache for the whole run, shared by the pytest-xdist workers (and the
# `train.py` processes the tests start, which inherit it): tests build the same tiny configs over
# and over (each `train_and_evaluate` jits new closures, so JAX's in-memory cache cannot reuse the
# last run's step), and XLA compiles identical programs into identical executables. A hit reads
# the executable back from disk instead of compiling it again: test_checkpoint.py went from 71 s
# to 55 s on its own. The folder is new for every run (named after xdist's run id), so nothing
# carries over from an earlier run or another checkout.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    import uuid

    _run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"mmjax-tests-xla-cache-{_run_id}")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The code generation of this run, for subprocesses that set their own device count.
CODEGEN_XLA_FLAGS = " ".join(flag for flag in _flags.split() if "xla_backend_optimization_level" in flag)
