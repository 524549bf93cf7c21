"""DALL-E's two stages through the trainer: the VQ-VAE's codebook step, the frozen tokenizer under
the prior, the scores in results.json, and `python -m mmjax.generate` on the trained run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.training import sharding as shd
from mmjax.training.loop import train_and_evaluate
from mmjax.training.setup import setup_training
from mmjax.training.tasks import normalize_images
from tests.training.test_loop import REPO, saved_params, tiny_config


def vq_config(data_dir, **overrides):
    from configs import vq_tiny

    config = vq_tiny.get_config()
    base = tiny_config(data_dir)
    config.data = base.data
    config.model.tokenizer.update(channels=(8, 16), code_dim=8, num_codes=32)
    config.batch_size = 16
    config.num_steps = 4
    config.optimizer.warmup_steps = 1
    config.log_every = 2
    config.checkpoint_every = 1000
    config.eval.batch_size = 16
    config.eval.max_images = 8
    config.mesh = ml_collections.ConfigDict(dict(data=1))
    for key, value in overrides.items():
        config[key] = value
    return config


def dalle_config(data_dir, vq_workdir, **overrides):
    from configs import dalle_tiny

    config = dalle_tiny.get_config()
    vq = vq_config(data_dir)
    config.data = vq.data
    config.model.tokenizer = vq.model.tokenizer
    config.model.prior.update(vocab_size=128, width=32, depth=1, num_heads=2, mlp_dim=64)
    config.init_from.workdir = vq_workdir
    config.batch_size = 16
    config.num_steps = 3
    config.optimizer.warmup_steps = 1
    config.log_every = 1
    config.checkpoint_every = 1000
    # The configured scale (3) lies outside the sweep: it is scored too, and is the headline.
    config.eval.update(batch_size=16, num_captions=4, samples_per_caption=2, guidance_scale=3.0,
                       guidance_sweep=(1.0, 2.0))
    config.eval.clip_judge.workdir = ""
    config.mesh = ml_collections.ConfigDict(dict(data=1))
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def data_dir(prepared_data_dir):
    return prepared_data_dir


@pytest.fixture(scope="module")
def vq_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("vq"))
    config = vq_config(data_dir)
    results = train_and_evaluate(config, workdir)
    return workdir, config, results


@pytest.fixture(scope="module")
def dalle_run(data_dir, vq_run, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("dalle"))
    config = dalle_config(data_dir, vq_run[0])
    results = train_and_evaluate(config, workdir)
    return workdir, config, results


def test_the_codebook_follows_the_moving_averages_of_the_updated_encoder_not_the_optimizer(data_dir):
    config = vq_config(data_dir)
    config.vq.dead_code_threshold = 0.0  # no restarts: every code follows the formula
    task, _, init_fn, _, step = setup_training(config, shd.make_mesh(config.mesh))
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8),
             "token_ids": rng.integers(1, 100, (16, config.data.text_len)).astype(np.int32)}
    batch = shd.to_global_batch(batch, shd.make_mesh(config.mesh))
    state, _ = step(init_fn(), batch)  # step 1 has learning rate 0 (warm-up): the second one trains
    before = jax.device_get(state.params)
    state, metrics = step(state, batch)
    after = jax.device_get(state.params)

    # The encoder was trained (the optimizer moved it) ...
    assert not np.allclose(after["tokenizer"]["encoder"]["to_codes"]["kernel"],
                           before["tokenizer"]["encoder"]["to_codes"]["kernel"])
    # ... and the codebook is the EMA step, in float64, from the updated encoder's outputs.
    images = normalize_images(jnp.asarray(np.asarray(batch["images"])))
    z = np.asarray(task.model.apply({"params": after["tokenizer"]}, images,
                                    method=type(task.model).encode), np.float64).reshape(-1, 8)
    old = {k: np.asarray(v, np.float64) for k, v in before["tokenizer"]["codebook"].items()}
    nearest = np.argmin(((z[:, None, :] - old["embedding"][None]) ** 2).sum(-1), axis=1)
    one_hot = np.eye(32)[nearest]
    gamma, eps = config.vq.ema_decay, 1e-5
    counts = gamma * old["counts"] + (1 - gamma) * one_hot.sum(0)
    sums = gamma * old["sums"] + (1 - gamma) * one_hot.T @ z
    smoothed = (counts + eps) / (counts.sum() + 32 * eps) * counts.sum()
    new = after["tokenizer"]["codebook"]
    np.testing.assert_allclose(new["counts"], counts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["sums"], sums, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["embedding"], sums / smoothed[:, None], rtol=1e-4, atol=1e-5)
    assert float(metrics["restarted_codes"]) == 0


@pytest.mark.parametrize("by_error", [False, True])
def test_dead_codes_restart_on_encoder_outputs_of_the_batch(data_dir, by_error):
    config = vq_config(data_dir)
    config.vq.restart_by_error = by_error
    task, _, init_fn, _, step = setup_training(config, shd.make_mesh(config.mesh))
    state = init_fn()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8)
    batch = {"images": images, "token_ids": rng.integers(1, 100, (16, config.data.text_len)).astype(np.int32)}
    state, metrics = step(state, shd.to_global_batch(batch, shd.make_mesh(config.mesh)))
    book = jax.device_get(state.params["tokenizer"]["codebook"])
    z = np.asarray(task.model.apply({"params": jax.device_get(state.params["tokenizer"])},
                                    normalize_images(jnp.asarray(images)), method=type(task.model).encode)).reshape(-1, 8)
    # One step after init a code's running count is γ·1 + (1 − γ)·n_k, below the threshold 1 for
    # exactly the codes the batch never chose (n_k = 0): those restart, each onto one of the
    # batch's encoder outputs, with count 1.
    on_outputs = [k for k in range(32) if np.min(np.abs(z - book["embedding"][k]).max(axis=1)) < 1e-6]
    assert len(on_outputs) >= int(metrics["restarted_codes"]) > 0
    assert all(book["counts"][k] == 1.0 for k in on_outputs)


def test_the_tokenizer_loss_adds_the_weighted_edge_and_commitment_terms(data_dir):
    from mmjax.training.vq_task import VQTask

    config = vq_config(data_dir)
    config.vq.gradient_weight = 0.7
    task = VQTask.from_config(config)
    rng = np.random.default_rng(2)
    batch = {"images": rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)}
    params = task.init(jax.random.key(0), batch)
    loss, metrics = task.loss(params, batch, jax.random.key(1))
    out = task.model.apply({"params": params["tokenizer"]}, normalize_images(jnp.asarray(batch["images"])))
    x = batch["images"].astype(np.float64) / 127.5 - 1.0
    r = np.asarray(out["reconstruction"], np.float64)
    mse = np.mean((r - x) ** 2)
    edges = np.mean((np.diff(r, axis=1) - np.diff(x, axis=1)) ** 2) + np.mean((np.diff(r, axis=2) - np.diff(x, axis=2)) ** 2)
    np.testing.assert_allclose(metrics["gradient_difference"], edges, rtol=1e-4)
    np.testing.assert_allclose(loss, mse + 0.7 * edges + 0.25 * float(out["commitment_loss"]), rtol=1e-4)


def test_vq_run_reports_reconstruction_codebook_use_and_parsed_scenes(vq_run):
    workdir, _, results = vq_run
    saved = json.load(open(os.path.join(workdir, "results.json")))
    for name in ("recon_mse", "recon_psnr", "code_perplexity", "codes_used", "recon_scene_match"):
        assert name in saved and np.isfinite(saved[name])
    assert 1.0 <= saved["code_perplexity"] <= 32 and saved["original_scene_match"] == 1.0
    # The test split's evaluation scores the held-out combinations too.
    assert saved["compositional_original_scene_match"] == 1.0
    assert 0.0 <= saved["compositional_recon_scene_match"] <= 1.0
    assert os.path.exists(os.path.join(workdir, "reconstructions_test.png"))


def test_prior_run_keeps_the_loaded_tokenizer_bit_identical_and_scores_its_samples(data_dir, vq_run, dalle_run):
    vq_workdir, vq_cfg, _ = vq_run
    workdir, config, results = dalle_run
    loaded = saved_params(vq_workdir, vq_cfg).params["tokenizer"]
    trained = saved_params(workdir, config).params
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained["tokenizer"])):
        np.testing.assert_array_equal(a, b)
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert 0.0 <= saved["scene_match"] <= 1.0
    assert saved["scene_match"] == saved["scene_match_guidance_3"]
    assert {"scene_match_guidance_1", "scene_match_guidance_2"} <= set(saved)
    # dalle_tiny scores compositional_test at its configured scale only (sweep_compositional)
    assert not config.eval.sweep_compositional
    assert {"compositional_scene_match", "compositional_scene_match_guidance_3"} <= set(saved)
    assert saved["compositional_scene_match"] == saved["compositional_scene_match_guidance_3"]
    assert "compositional_scene_match_guidance_1" not in saved
    assert os.path.exists(os.path.join(workdir, "samples_test.png"))


def test_prior_without_the_tokenizer_run_is_refused_before_training(data_dir, tmp_path):
    config = dalle_config(data_dir, "unused")
    config.init_from.subtrees = ()
    with pytest.raises(ValueError, match="config.init_from must load the image tokenizer"):
        train_and_evaluate(config, str(tmp_path / "run"))
    config = dalle_config(data_dir, "unused")
    config.eval.clip_judge.workdir = str(tmp_path / "no_clip")
    with pytest.raises(FileNotFoundError, match="has no checkpoints: train the judge first"):
        train_and_evaluate(config, str(tmp_path / "run2"))


def test_config_mistakes_name_the_field(data_dir):
    config = vq_config(data_dir)
    config.vq.commitment = 0.5
    with pytest.raises(ValueError, match=r"config.vq has unknown field\(s\) \['commitment'\]"):
        setup_training(config, shd.make_mesh(config.mesh))
    config = vq_config(data_dir)
    config.model.tokenizer.num_res_block = 2
    with pytest.raises(ValueError, match=r"config.model.tokenizer has unknown field\(s\) \['num_res_block'\]"):
        setup_training(config, shd.make_mesh(config.mesh))
    config = vq_config(data_dir)
    config.model.tokenizer.channels = (8, 16, 16, 16, 16)  # f = 32 does not divide 48
    with pytest.raises(ValueError, match="image_size=48 must be a multiple of the tokenizer's downsampling "
                                         r"2\^len\(config.model.tokenizer.channels\) = 32"):
        setup_training(config, shd.make_mesh(config.mesh))


def _generate(workdir, config_path, *flags):
    return subprocess.run(
        [sys.executable, "-m", "mmjax.generate", "--checkpoint", workdir, "--config", config_path, *flags],
        capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def dalle_config_file(data_dir, vq_run, dalle_run, tmp_path_factory):
    """A config file that is the tiny prior's config (the CLI takes a file)."""
    path = tmp_path_factory.mktemp("configs") / "dalle_test.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "from tests.training.test_text_to_image_runs import dalle_config\n"
        f"def get_config():\n    return dalle_config({str(data_dir)!r}, {vq_run[0]!r})\n")
    return str(path)


def test_generate_writes_a_grid_and_a_fixed_seed_repeats_it(dalle_run, dalle_config_file, tmp_path):
    workdir = dalle_run[0]
    outs = []
    for name in ("a.png", "b.png"):
        done = _generate(workdir, dalle_config_file, "--prompt", "a large red circle at the top left",
                         "--prompt", "a small blue square in the center", "--num", "3",
                         "--output", str(tmp_path / name), "--seed", "5")
        assert done.returncode == 0, done.stderr
        outs.append((tmp_path / name).read_bytes())
    assert "of 3 pictures show exactly this scene" in done.stdout and "Wrote" in done.stdout
    assert outs[0] == outs[1]


def test_generate_refuses_bad_prompts_in_one_line(dalle_run, dalle_config_file):
    workdir = dalle_run[0]
    long_prompt = " and ".join(["a large red circle at the top left"] * 6)
    for prompt, message in ((long_prompt, "tokens with its end token; the prior reads at most config.data.text_len"),
                            ("a large red circle at the top left ☃", "pieces the tokenizer does not know"),
                            ("   ", "a prompt is empty")):
        done = _generate(workdir, dalle_config_file, "--prompt", prompt)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
