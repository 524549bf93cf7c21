"""Shared test setup.

Tests run on the CPU with 8 forced host devices, so multi-device sharding is exercised in-process
(a mesh of 1 device and a mesh of 8 can be compared in the same test). The flag must be set before
jax is first imported, which is why it lives here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
