"""The whole loop on a tiny dataset: exact resume, learning, artifacts and clear errors."""

import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from mmjax.training.checkpoint import Checkpointer
from mmjax.training.evaluate import evaluate_checkpoint
from mmjax.training.loop import train_and_evaluate
from mmjax.training.setup import setup_training
from mmjax.training import sharding as shd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(data_dir, num_steps=6, **overrides):
    from configs.clip_tiny import get_config

    config = get_config()
    config.data.data_dir = str(data_dir)
    config.data.image_size = 48
    config.data.num_train = 64
    config.data.num_validation = 8
    config.data.num_test = 24
    config.data.num_compositional_test = 8
    config.data.vocab_size = 128
    config.model.text.vocab_size = 128
    config.model.image.update(patch_size=16, width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.embed_dim = 32
    config.batch_size = 16
    config.num_steps = num_steps
    config.optimizer.warmup_steps = 2
    config.log_every = 2
    config.checkpoint_every = 1000
    config.eval.batch_size = 16
    for key, value in overrides.items():
        config[key] = value
    return config


def run_train_py(workdir, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py --config configs/clip_tiny.py --workdir <workdir> <flags>`, its output
    captured: for the command line's own checks, which fail before any training."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, "configs/clip_tiny.py"),
         "--workdir", str(workdir), *flags],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def saved_params(workdir, config, step=None):
    mesh = shd.make_mesh(config.mesh)
    _, _, _, abstract_state, _ = setup_training(config, mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    state = checkpointer.restore(abstract_state, data_iterator=None, step=step)
    checkpointer.close()
    return jax.device_get(state)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# Slow (about 60 s): tests/training/test_faults.py resumes a run killed with kill -9 and checks the
# same bit-identity in the default run; this one also checks the asynchronous saves' contents.
@pytest.mark.slow
def test_interrupted_run_resumes_bit_identically(data_dir, tmp_path):
    config = tiny_config(data_dir)
    # The uninterrupted run saves asynchronously every 2 steps while training goes on with the
    # donated state: the saved step-4 state must still be exactly the step-4 state.
    config.checkpoint_every = 2
    straight = str(tmp_path / "straight")
    results = train_and_evaluate(config, straight)
    assert results is not None and 0.0 <= results["i2t_r1"] <= 1.0

    interrupted = str(tmp_path / "interrupted")
    assert train_and_evaluate(config, interrupted, stop_after=4) is None
    assert Checkpointer(os.path.join(interrupted, "checkpoints")).latest_step() == 4
    assert_trees_equal(saved_params(straight, config, step=4), saved_params(interrupted, config, step=4))
    train_and_evaluate(config, interrupted)  # resumes from step 4

    a, b = saved_params(straight, config), saved_params(interrupted, config)
    assert int(a.step) == int(b.step) == 6
    assert_trees_equal(a, b)  # bit-identical: same data order, same updates

    # The run folder has everything a user looks for.
    for name in ("config.json", "metrics.jsonl", "results.json", "loss_curve.png", "tokenizer.model",
                 "retrieval_image_to_text.png", "retrieval_text_to_image.png", "tensorboard"):
        assert os.path.exists(os.path.join(interrupted, name)), name
    rows = [json.loads(line) for line in open(os.path.join(interrupted, "metrics.jsonl"))]
    assert {r["step"] for r in rows if "loss" in r} == {2, 4, 6}

    # Resuming with another model names the first mismatched parameter and both shapes.
    wider = tiny_config(data_dir)
    wider.model.image.width = 48
    with pytest.raises(ValueError, match=r"parameter params/image_encoder/\S+ has shape \(1, 2, 16\) in the checkpoint but \(1, 2, 24\)"):
        train_and_evaluate(wider, interrupted)


def test_eval_without_checkpoint_or_dataset_says_what_to_do(data_dir, tmp_path):
    config = tiny_config(data_dir)
    with pytest.raises(FileNotFoundError, match="no checkpoint in .* train first with `python train.py"):
        evaluate_checkpoint(config, str(tmp_path / "never_trained"))

    workdir = str(tmp_path / "trained")
    train_and_evaluate(config, workdir, stop_after=1)
    config.data.data_dir = str(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"(?s)is not built in .*elsewhere.*python -m mmjax.data.build_shapes --data_dir \S*elsewhere --config 48"):
        evaluate_checkpoint(config, workdir)


def test_short_run_beats_chance_by_a_wide_margin(data_dir, tmp_path):
    """120 steps of a tiny CLIP on 512 scenes: in-batch and test retrieval far above chance."""
    config = tiny_config(data_dir, num_steps=120)
    config.model.image.update(width=64, depth=2, num_heads=4, mlp_dim=256)
    config.model.text.update(width=64, num_heads=4, mlp_dim=256)
    config.model.embed_dim = 64
    config.data.num_train = 512
    config.data.num_test = 64
    config.batch_size = 32
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 10
    config.log_every = 20
    # One device: learning does not depend on the mesh, and 8 forced devices on a 2-core host
    # split every small operation eight ways (1.6x this test's time).
    config.mesh.data = 1
    results = train_and_evaluate(config, str(tmp_path / "learn"))
    rows = [json.loads(line) for line in open(tmp_path / "learn" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.6 * np.log(32), losses  # chance is log(batch) = 3.47
    # Chance R@5 over 64 test scenes (320 captions) is about 5/64 = 0.08 for text -> image.
    assert results["t2i_r5"] > 0.3, results
    assert results["i2t_r5"] > 0.3, results


def test_config_typo_on_the_command_line_names_the_key(tmp_path):
    proc = run_train_py(tmp_path / "x", "--config.batch_sise=8")
    assert proc.returncode != 0
    assert "batch_sise" in proc.stderr


def test_library_logs_go_to_the_run_folder_unless_verbosity_is_given(tmp_path):
    # A config error found once the run holds its folder: by then JAX has started, and logged at
    # INFO that it looked for a TPU (JAX_PLATFORMS unset: every platform is tried).
    no_platform = {"JAX_PLATFORMS": ""}
    quiet = run_train_py(tmp_path / "quiet", "--config.num_steps=3", "--config.data.data_dir=" + str(tmp_path),
                         env=no_platform)
    assert quiet.returncode == 1
    assert quiet.stderr.strip() == "error: config.num_steps=3 must exceed config.optimizer.warmup_steps=50", quiet.stderr
    log = (tmp_path / "quiet" / "logs" / "train.log").read_text()
    assert re.search(r"^\S+ \S+ I pid=\d+ jax\._src\.xla_bridge xla_bridge\.py:\d+\] ", log, re.M), log
    loud = run_train_py(tmp_path / "loud", "--config.num_steps=3", "--config.data.data_dir=" + str(tmp_path),
                        "--verbosity=0", env=no_platform)
    assert loud.returncode == 1 and "xla_bridge.py" in loud.stderr
    assert not (tmp_path / "loud" / "logs").exists()
