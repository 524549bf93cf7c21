"""Checkpoints that are damaged after they were written, and saves that cannot be written.

One short run (checkpoints at steps 4 and 8) is damaged in the ways storage fails: a truncated
data file, a flipped byte, lost metadata. Each is found on restore and named; training falls back
to the newest intact checkpoint and ends where the undamaged run ended, bit for bit; evaluation
names the intact steps and evaluates the one asked for. A save into a filesystem too small for it
stops the run with a message that says how much space is needed and what the next run resumes.
"""

import gc
import glob
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mmjax.training.checkpoint as checkpoint_lib
from mmjax.training.checkpoint import CheckpointDamaged, Checkpointer, CheckpointSaveFailed, fingerprints
from mmjax.training.evaluate import evaluate_checkpoint
from mmjax.training.loop import train_and_evaluate
from mmjax.training.run_lock import RunLock
from tests.training.test_loop import assert_trees_equal, saved_params, tiny_config

# Reading a damaged checkpoint leaves TensorStore's other pending reads to be collected unawaited;
# Python reports each one as an unraisable exception (the CLI shows none of them: one error line).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def collect_abandoned_reads():
    """Collects them before the test ends, so that they are not reported under another test."""
    yield
    gc.collect()


def short_run_config(data_dir):
    """Stopped at step 8 of 12 (`stop_after`), so that no run here spends time evaluating."""
    config = tiny_config(data_dir, num_steps=12)
    config.checkpoint_every = 4
    config.keep_checkpoints = 3
    config.mesh.data = 1  # one device of the eight: what is checked does not depend on the mesh
    return config


def data_files(workdir, step):
    """The array data files of a checkpoint's state, largest first."""
    files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d", "*"))
    return sorted(files, key=os.path.getsize, reverse=True)


def truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def flip_a_bit(path):
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        byte = file.read(1)[0]
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte ^ 0x10]))


@pytest.fixture(scope="module")
def trained(prepared_data_dir, tmp_path_factory):
    """A run stopped after step 8 with checkpoints 4 and 8, and the state checkpoint 8 holds."""
    config = short_run_config(prepared_data_dir)
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    assert train_and_evaluate(config, workdir, stop_after=8) is None
    return config, workdir, saved_params(workdir, config, step=8)


def copy_of(trained, tmp_path):
    config, workdir, final = trained
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return config, copy, final


def test_fingerprints_see_a_flipped_bit_and_swapped_elements_but_not_the_sharding():
    x = jax.random.normal(jax.random.key(0), (8, 6))
    reference = fingerprints({"x": x})["x"]
    flipped = jax.lax.bitcast_convert_type(x, jnp.uint32).at[3, 2].add(1 << 7)
    assert fingerprints({"x": jax.lax.bitcast_convert_type(flipped, jnp.float32)})["x"] != reference
    assert fingerprints({"x": x[::-1]})["x"] != reference  # same values, other places
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    sharded = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    assert fingerprints({"x": sharded})["x"] == reference
    # Integer, boolean, half-precision and scalar leaves have fingerprints too.
    tree = {"step": jnp.int32(7), "mask": jnp.array([True, False]), "h": jnp.ones(3, jnp.bfloat16)}
    assert set(fingerprints(tree)) == {"step", "mask", "h"}


def test_the_host_fingerprint_is_the_device_one():
    """On a CPU the hash is computed by NumPy; on accelerators by the jitted reduction: the same."""
    rng = np.random.default_rng(0)
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    arrays = [
        jax.device_put(jnp.asarray(rng.normal(size=(8, 6)), jnp.float32), NamedSharding(mesh, P("a", "b"))),
        jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.bfloat16), jnp.asarray(rng.integers(-9, 9, 11), jnp.int8),
        jnp.asarray(rng.random(4) > 0.5), jnp.int32(123456789), jax.random.key(3),
        jnp.asarray(rng.normal(size=300_001), jnp.float32),
    ]
    with jax.enable_x64():
        arrays.append(jnp.asarray(rng.normal(size=(2, 3)), jnp.float64))
        device = jax.device_get(checkpoint_lib._fingerprint_arrays(arrays))
    host = [checkpoint_lib.fingerprint_on_host(np.asarray(jax.random.key_data(x) if checkpoint_lib._is_key(x) else x))
            for x in arrays]
    assert host == [int(h) for h in device]


def test_a_truncated_latest_checkpoint_falls_back_and_ends_where_the_intact_run_ended(trained, tmp_path, capsys):
    config, workdir, final = copy_of(trained, tmp_path)
    truncate(data_files(workdir, 8)[0])

    # eval.py's path: the damage is named with the intact steps, and --step evaluates one of them.
    with pytest.raises(CheckpointDamaged, match=r"checkpoint 8 in \S+ is damaged: reading it failed \(OUT_OF_RANGE.*"
                                                r"Intact checkpoints: 4; evaluate one with --step 4\."):
        evaluate_checkpoint(config, workdir)
    with RunLock(workdir):  # beside a training job that holds the folder: never blocked
        results = evaluate_checkpoint(config, workdir, step=4)
    assert 0.0 <= results["i2t_r1"] <= 1.0

    # train.py --on_damaged_checkpoint=error: the same damage stops the run, and nothing is moved.
    with pytest.raises(CheckpointDamaged, match=r"checkpoint 8 .* is damaged"):
        train_and_evaluate(config, workdir, stop_after=8, fall_back_to_intact=False)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "8"))

    # The default: a warning, checkpoint 8 moved aside (kept), steps 5-8 trained again from 4.
    capsys.readouterr()
    train_and_evaluate(config, workdir, stop_after=8)
    out = capsys.readouterr()
    assert "Warning: checkpoint 8 in" in out.err and "Resumed from" in out.out and "at step 4." in out.out
    moved = glob.glob(os.path.join(workdir, "damaged_checkpoints", "8.*"))
    assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], "state"))
    assert_trees_equal(saved_params(workdir, config, step=8), final)  # bit-identical to the intact run


def test_a_flipped_byte_fails_the_checksum_and_lost_metadata_is_named(trained, tmp_path):
    config, workdir, _ = copy_of(trained, tmp_path)
    for path in data_files(workdir, 8):  # TensorStore reads such values back without an error
        flip_a_bit(path)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    _, abstract_state = saved_state_template(config)
    with pytest.raises(CheckpointDamaged, match=r"checkpoint 8 .* do not match the checksum written with them"):
        checkpointer.restore(abstract_state, None, 8)
    os.remove(os.path.join(workdir, "checkpoints", "4", "state", "_METADATA"))
    with pytest.raises(CheckpointDamaged, match=r"checkpoint 4 .* its metadata cannot be read"):
        checkpointer.restore(abstract_state, None, 4)
    # With every checkpoint damaged nothing is moved, and the error says none is intact.
    with pytest.raises(CheckpointDamaged, match=r"checkpoint 8 .*no older checkpoint is intact either \(4\)"):
        checkpointer.restore_newest_intact(abstract_state, None)
    assert checkpointer.all_steps() == [4, 8]
    checkpointer.close()


def saved_state_template(config):
    from mmjax.training import sharding as shd
    from mmjax.training.setup import setup_training

    mesh = shd.make_mesh(config.mesh)
    _, _, _, abstract_state, _ = setup_training(config, mesh)
    return mesh, abstract_state


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1.4 MB tmpfs: room for the run's tokenizer, config and one checkpoint, not for two."""
    mount_point = tmp_path / "tiny_fs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_save_into_a_full_filesystem_stops_the_run_clearly_and_keeps_the_older_checkpoint(
        prepared_data_dir, tiny_filesystem):
    config = short_run_config(prepared_data_dir)
    workdir = str(tiny_filesystem / "run")
    with pytest.raises(CheckpointSaveFailed) as failure:
        train_and_evaluate(config, workdir, stop_after=8)
    message = str(failure.value)
    assert f"saving checkpoint 8 into {workdir}/checkpoints failed: no space left on the device" in message
    assert "A checkpoint of this run takes about 0." in message and "MB are free there" in message
    assert message.endswith("It will resume from checkpoint 4, checked intact.")
    # The unfinished save is gone (its space with it) and checkpoint 4 restores.
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]
    assert int(saved_params(workdir, config, step=4).step) == 4


def test_eval_looks_the_latest_step_up_again_when_training_deletes_it_while_it_is_read(trained, tmp_path, monkeypatch):
    """A training job keeps `keep_checkpoints`: the one an evaluation started reading can vanish."""
    config, workdir, _ = copy_of(trained, tmp_path)
    real_restore, reads = Checkpointer.restore, []

    def restore_while_training_prunes(self, abstract_state, data_iterator, step=None):
        reads.append(step)
        if len(reads) == 1:  # the training job deletes checkpoint 8 just as it is opened
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
        return real_restore(self, abstract_state, data_iterator, step)

    monkeypatch.setattr(Checkpointer, "restore", restore_while_training_prunes)
    from mmjax.training.evaluate import _restore
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    _, abstract_state = saved_state_template(config)
    step, state = _restore(checkpointer, abstract_state, None)
    checkpointer.close()
    assert reads == [8, 4] and step == 4 and int(state.step) == 4
