"""The video, audio and three-way configs end to end, and the pieces of their task.

The three-way config (video, audio and text towers, every pair in the loss) is shrunk and trained
on the 8-device CPU mesh: interrupted and resumed, it ends bit-identical to an uninterrupted run,
and its evaluation scores every pair, the untrained ones too, on both test splits. The video-only
and audio-only configs train and report the same way (slow tests; their quality is measured by
the full configs, README).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import audio_clip_tiny, triple_tiny, video_clip_tiny
from mmjax.data.pipeline import MediaContrastivePreprocess
from mmjax.data.prepare import MediaWorldData, prepare_data
from mmjax.data.shapes import mirror_text
from mmjax.evaluation.multimodal_eval import pair_retrieval
from mmjax.training.loop import train_and_evaluate
from mmjax.training.multimodal_task import MultiModalContrastiveTask
from mmjax.training import sharding as shd
from mmjax.training.setup import setup_training
from tests.training.test_loop import assert_trees_equal, saved_params

SMALL = dict(width=32, depth=1, num_heads=2, mlp_dim=64)


def shrink(config, data_dir, num_steps=4):
    config.data.data_dir = str(data_dir)
    config.data.update(num_train=64, num_validation=8, num_test=16, num_compositional_test=8, vocab_size=128)
    config.batch_size = 16
    config.num_steps = num_steps
    config.optimizer.warmup_steps = 1
    config.log_every = 2
    config.checkpoint_every = 2
    config.eval.batch_size = 16
    for tower in config.model.towers.values():
        tower.update(SMALL)
    config.model.towers.text.vocab_size = 128
    config.model.embed_dim = 16
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    for get_config in (video_clip_tiny.get_config, audio_clip_tiny.get_config):
        prepare_data(shrink(get_config(), data_dir).data)
    return data_dir


def test_three_way_config_resumes_bit_identically_on_8_devices_and_scores_every_pair(data_dir, tmp_path, capsys):
    config = shrink(triple_tiny.get_config("video_audio"), data_dir, num_steps=6)
    assert jax.device_count() == 8
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert train_and_evaluate(config, straight, stop_after=4) is None
    assert train_and_evaluate(config, resumed, stop_after=2) is None
    results = train_and_evaluate(config, resumed)  # resumes at step 2, saves step 4 on its way to 6
    assert "Resumed from" in capsys.readouterr().out
    assert_trees_equal(saved_params(resumed, config, step=4).params, saved_params(straight, config, step=4).params)

    directions = [f"{a}_to_{b}" for a, b in (("video", "audio"), ("video", "text"), ("audio", "text"))]
    directions += [f"{b}_to_{a}" for a, b in (("video", "audio"), ("video", "text"), ("audio", "text"))]
    for prefix in ("", "compositional_"):
        for direction in directions:
            r1, r5, r10 = (results[f"{prefix}{direction}_r{k}"] for k in (1, 5, 10))
            assert 0.0 <= r1 <= r5 <= r10 <= 1.0, (prefix, direction)
    saved = json.load(open(tmp_path / "resumed" / "results.json"))
    assert saved["video_to_text_r1"] == pytest.approx(results["video_to_text_r1"])
    assert (tmp_path / "resumed" / "retrieval_text_to_video.png").exists()
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    logged = next(r for r in rows if "loss" in r)
    assert {"video_text_loss", "audio_text_loss", "video_audio_loss", "video_audio_logit_scale"} <= set(logged)


# Slow (20-30 s each): the three-way config above is built from these two (the same towers,
# spectrogram and data) and trains, resumes and reports in the default run.
@pytest.mark.slow
@pytest.mark.parametrize("get_config", [video_clip_tiny.get_config, audio_clip_tiny.get_config],
                         ids=["video_clip_tiny", "audio_clip_tiny"])
def test_two_tower_configs_train_on_8_devices_and_report(get_config, data_dir, tmp_path, capsys):
    config = shrink(get_config(), data_dir, num_steps=2)
    results = train_and_evaluate(config, str(tmp_path))
    medium = config.model.modalities[0]
    assert set(results) == {f"{p}{a}_to_{b}_r{k}" for p in ("", "compositional_") for a, b in
                            ((medium, "text"), ("text", medium)) for k in (1, 5, 10)}
    out = capsys.readouterr().out
    assert f"| {medium} -> text " in out and "Retrieval on compositional_test" in out


def test_the_loss_is_the_mean_of_each_pairs_infonce(data_dir):
    """Against float64 NumPy: L = mean over pairs of (CE(s·A·Bᵀ) + CE(s·B·Aᵀ)) / 2."""
    config = shrink(triple_tiny.get_config(), data_dir)
    task = MultiModalContrastiveTask.from_config(config)
    assert task.model.pairs == (("video", "text"), ("audio", "text"))  # no video-audio pair by default
    batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in task.example_batch(config, 8).items()}
    params = jax.jit(task.init)(jax.random.key(0), batch)
    rng = np.random.default_rng(1)
    features = {}
    for m in ("video", "audio", "text"):
        x = rng.normal(size=(8, 16))
        features[f"{m}_embeddings"] = jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)
    loss, metrics = task.loss_from_features(params, features)

    def infonce(a, b, scale):
        logits = scale * np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
        log_softmax = lambda z: z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)  # noqa: E731
        return -(np.trace(log_softmax(logits)) + np.trace(log_softmax(logits.T))) / (2 * len(a))

    expected = [infonce(features[f"{a}_embeddings"], features[f"{b}_embeddings"], float(metrics[f"{a}_{b}_logit_scale"]))
                for a, b in task.model.pairs]
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["audio_text_loss"]), expected[1], rtol=1e-5)
    assert float(metrics["video_text_logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)


def test_a_sample_rate_the_audio_tower_does_not_expect_is_named(data_dir):
    config = shrink(audio_clip_tiny.get_config(), data_dir)
    config.data.sample_rate = 16_000
    with pytest.raises(ValueError, match="sampled at 16000 Hz but the audio tower's spectrogram expects 8000 Hz"):
        setup_training(config, shd.make_mesh(1))


def test_a_config_typo_in_a_tower_and_an_unknown_pair_are_named(data_dir):
    config = shrink(video_clip_tiny.get_config(), data_dir)
    config.model.towers.video.tubelet = 2
    with pytest.raises(ValueError, match=r"config.model.towers.video has unknown field\(s\) \['tubelet'\]"):
        MultiModalContrastiveTask.from_config(config)
    config = shrink(video_clip_tiny.get_config(), data_dir)
    config.model.pairs = (("video", "audio"),)
    with pytest.raises(ValueError, match="each pair must name two different modalities of"):
        MultiModalContrastiveTask.from_config(config)


def test_a_flip_mirrors_every_frame_and_the_captions_directions(data_dir):
    data = prepare_data(shrink(video_clip_tiny.get_config(), data_dir).data)
    example = data.split("train")[0]
    flip = MediaContrastivePreprocess(data.tokenizer, 32, ("video", "audio"), 1.0, data.mirror_text)
    out = flip(example, np.random.default_rng(0))
    np.testing.assert_array_equal(out["video"], np.asarray(example["video"])[:, :, ::-1])
    np.testing.assert_array_equal(out["audio"], example["audio"])  # a sound has no left and right
    captions = [c.decode() for c in example["captions"]]
    assert data.tokenizer.decode(out["token_ids"].tolist()) in [mirror_text(c) for c in captions]
    with pytest.raises(ValueError, match="flip_probability=0.5 flips videos, but this dataset has no video"):
        MediaContrastivePreprocess(data.tokenizer, 32, ("audio",), 0.5, None)


def test_a_hit_shares_what_both_modalities_show():
    """Two clips make the same sounds (different colours): audio -> video finds either; video -> text
    needs the very scene."""
    embedded = {
        "scene_key": np.array(["red:circle", "blue:circle", "red:square"]),
        "sound_key": np.array(["circle", "circle", "square"]),
        # clip 0's audio lies nearest clip 1's video: a hit by sound, a miss by scene
        "audio_embeddings": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
        "video_embeddings": np.array([[0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]),
    }
    by_sound = pair_retrieval(embedded, "audio", "video", "sound_key", ks=(1,))
    by_scene = pair_retrieval(embedded, "audio", "video", "scene_key", ks=(1,))
    assert by_sound["audio_to_video_r1"] == 1.0 and by_scene["audio_to_video_r1"] == pytest.approx(1 / 3)
    shows = {"video": "scene_key", "audio": "sound_key", "text": "scene_key"}
    world = MediaWorldData(name="moving_shapes", builder_class=None, data_dir="", variant={}, tokenizer=None,
                 tokenizer_path="", class_names=[], shows=shows)
    assert [world.hit_key(*p) for p in (("video", "text"), ("audio", "text"), ("video", "audio"))] == [
        "scene_key", "sound_key", "sound_key"]
