"""Shared test setup.

Tests run on the CPU. Multi-device tests start a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, because the device count is fixed when jax
is first imported.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
