"""Multi-host: two processes joined by `jax.distributed` train exactly what one process trains.

Two local `train.py` processes with 4 forced CPU devices each stand in for two hosts (the
cross-process collectives go through gloo), on a mesh whose data axis spans the two processes
and whose fsdp axis lies within each. Each process reads only its half of every global batch.
After training, the parameters saved by the pair (Orbax writes one checkpoint from both) equal
those of a single process with all 8 devices.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from mmjax.training.distributed import distributed_settings
from mmjax.training.run_lock import read_holder
from tests.conftest import CODEGEN_XLA_FLAGS
from tests.training.test_faults import REPO, config_flags
from tests.training.test_loop import saved_params, tiny_config
from tests.training.test_step import assert_trees_close

NUM_STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, workdir, num_devices, **env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {CODEGEN_XLA_FLAGS}", **env)
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config",
               os.path.join(REPO, "configs/clip_tiny.py"), "--workdir", str(workdir), *config_flags(config)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait(procs, timeout=400):
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, f"exit code {proc.returncode}\n{out}\n{err[-4000:]}"
        outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def data_dir(prepared_data_dir):
    return prepared_data_dir


def test_two_processes_train_the_parameters_of_one(data_dir, tmp_path):
    config = tiny_config(data_dir, num_steps=NUM_STEPS)
    config.mesh = {"data": 2, "fsdp": 4}
    config.checkpoint_every = NUM_STEPS
    address = f"127.0.0.1:{free_port()}"
    pair = [
        launch(config, tmp_path / "two", 4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))
        for i in range(2)
    ]
    single = launch(config, tmp_path / "one", 8)
    out_pair = wait(pair)
    wait([single])
    assert "Process 0 of 2: 4 local of 8 devices." in out_pair[0]
    assert "Process 1 of 2: 4 local of 8 devices." in out_pair[1]
    # Process 0 alone writes metrics (one line per logged step, not one per process) and results.
    steps = [json.loads(line)["step"] for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert steps == [json.loads(line)["step"] for line in open(tmp_path / "one" / "metrics.jsonl")]
    assert steps and os.path.exists(tmp_path / "two" / "results.json")
    # Process 0 held the run folder for the job, and released it at the end.
    assert os.path.exists(tmp_path / "two" / "run.lock") and read_holder(str(tmp_path / "two")) is None
    assert_trees_close(saved_params(str(tmp_path / "two"), config), saved_params(str(tmp_path / "one"), config))


def test_settings_come_from_flags_or_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed_settings(environ=env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                                 "process_id": 3}
    assert distributed_settings("h:1", 2, 0, environ=env)["num_processes"] == 2  # flags win
    assert distributed_settings(environ={}) is None  # a single process
    with pytest.raises(ValueError, match="process_id not given"):
        distributed_settings("h:1", 2, environ={})
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed_settings("h:1", 2, 2, environ={})
