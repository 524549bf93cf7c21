"""One CPU device per core: how many, when it applies, and that the entry points take the flag."""

import os
import subprocess
import sys

import pytest

import ml_collections

from mmjax.training.host_devices import AUTO, MAX_AUTO_CORES, config_fits, cpu_device_count
from tests.training.test_loop import run_train_py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("cores,batch,expected", [
    (2, 256, 2),   # one per core
    (8, 256, 8),
    (6, 256, 4),   # the largest count <= cores that splits the batch evenly
    (MAX_AUTO_CORES, 256, MAX_AUTO_CORES),
    (MAX_AUTO_CORES + 1, 256, 1),  # larger hosts keep one device over every core
    (4, 6, 3),
    (2, 7, 1),     # an odd batch stays on one device
    (1, 256, 1),
])
def test_auto_is_one_device_per_core_fitted_to_the_batch(cores, batch, expected):
    assert cpu_device_count(AUTO, batch, cores=cores) == expected


def test_auto_fits_the_mesh_and_the_microbatches():
    config = ml_collections.ConfigDict(dict(batch_size=24, grad_accum_steps=1,
                                            mesh=dict(data=-1, fsdp=1, tensor=1)))
    assert cpu_device_count(AUTO, 24, cores=8, fits=config_fits(config)) == 8
    config.grad_accum_steps = 6  # microbatches of 4 rows: at most 4 devices
    assert cpu_device_count(AUTO, 24, cores=8, fits=config_fits(config)) == 4
    config.grad_accum_steps = 1
    config.mesh = dict(data=-1, fsdp=1, tensor=3)  # tensor parallelism over 3 devices
    assert cpu_device_count(AUTO, 24, cores=8, fits=config_fits(config)) == 6
    config.mesh = dict(data=1, fsdp=1, tensor=1)  # a fixed one-device mesh would leave cores idle
    assert cpu_device_count(AUTO, 24, cores=8, fits=config_fits(config)) == 1
    # Two processes: each splits for its half of the batch, and the mesh spans both.
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    assert cpu_device_count(AUTO, 12, cores=8, fits=config_fits(config, num_processes=2)) == 6


def test_explicit_counts_and_their_errors():
    assert cpu_device_count(0, 256, cores=2) == 1
    assert cpu_device_count(1, 256, cores=2) == 1
    assert cpu_device_count(4, 256, cores=2) == 4  # more devices than cores is the user's call
    with pytest.raises(ValueError, match=r"--cpu_devices=3 does not divide config.batch_size=16"):
        cpu_device_count(3, 16, cores=8)
    with pytest.raises(ValueError, match=r"--cpu_devices must be -1 .* got -2"):
        cpu_device_count(-2, 16, cores=8)


def _run(code: str, xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


SPLIT = ("import os, jax\nfrom mmjax.training.host_devices import split_cpu_host\n"
         "done = split_cpu_host({n})\n"
         "print(done, jax.device_count(), os.environ.get('XLA_FLAGS', ''), sep='|')")


def test_split_makes_single_threaded_devices_before_the_backend_starts():
    done, count, flags = _run(SPLIT.format(n=2), xla_flags=None).split("|")
    assert (done, count) == ("True", "2")
    assert "--xla_cpu_multi_thread_eigen=false" in flags


def test_split_for_config_fits_the_microbatches():
    code = ("import jax, ml_collections\nfrom mmjax.training.host_devices import split_for_config\n"
            "config = ml_collections.ConfigDict(dict(batch_size=12, grad_accum_steps={k}, mesh=dict(data=-1)))\n"
            "print(split_for_config(config, {n}), jax.device_count(), sep='|')")
    # 2 devices asked for, microbatches of 12/6 = 2 rows split over 2 devices: done.
    assert _run(code.format(k=6, n=2), xla_flags=None) == "True|2"
    # Auto on this host (at least 1 core): at most one device per core, never a count that
    # leaves a microbatch of 1 row split two ways.
    done, count = _run(code.format(k=12, n=-1), xla_flags=None).split("|")
    assert (done, count) == ("False", "1")


def test_a_device_count_forced_in_xla_flags_wins():
    done, count, flags = _run(SPLIT.format(n=2), "--xla_force_host_platform_device_count=3").split("|")
    assert (done, count) == ("False", "3")
    assert "multi_thread_eigen" not in flags
    done, count, _ = _run(SPLIT.format(n=1), xla_flags=None).split("|")
    assert (done, count) == ("False", "1")


def test_train_py_rejects_a_device_count_that_does_not_split_the_batch(tmp_path):
    proc = run_train_py(tmp_path / "x", "--cpu_devices=3")
    assert proc.returncode != 0
    assert "--cpu_devices=3 does not divide config.batch_size=256" in proc.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_join_prepares_the_host_with_the_process_count_before_joining(monkeypatch):
    from mmjax.training import distributed

    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kw: calls.append(("join", kw.get("num_processes"))))
    distributed.initialize(prepare=lambda n: calls.append(("prepare", n)))
    assert calls == [("prepare", 1)]  # a single process: no join
    calls.clear()
    distributed.initialize("localhost:1234", 2, 0, prepare=lambda n: calls.append(("prepare", n)))
    assert calls == [("prepare", 2), ("join", 2)]  # before JAX connects (and starts its backends)
    calls.clear()
    distributed.initialize(auto_detect=True, prepare=lambda n: calls.append(("prepare", n)))
    assert calls == [("prepare", None), ("join", None)]  # the cluster says how many, later
