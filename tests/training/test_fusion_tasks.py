"""The fusion configs end to end on a tiny dataset: every task trains, evaluates and reports.

Each config is shrunk (1-layer towers, 64 training scenes) and trained for a few steps on the
8-device CPU mesh, so the sharded steps (ALBEF's negatives over the global batch included),
the evaluators and the reports all run; quality is measured by the full configs (README).
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from mmjax.training.evaluate import evaluate_checkpoint
from mmjax.training.loop import train_and_evaluate

SMALL = dict(width=32, depth=1, num_heads=2, mlp_dim=64)


def shrink(config, data_dir, num_steps=4):
    config.data.data_dir = str(data_dir)
    config.data.update(num_train=64, num_validation=8, num_test=16, num_compositional_test=8, vocab_size=128)
    if "qa_len" in config.data:  # a 128-piece tokenizer writes longer questions
        config.data.qa_len = 32
    config.batch_size = 16
    config.num_steps = num_steps
    config.optimizer.warmup_steps = 1
    config.log_every = 2
    config.checkpoint_every = 1000
    config.eval.batch_size = 16
    model = config.model
    for tower in ("image", "text"):
        if tower in model:
            model[tower].update(SMALL)
    if "text" in model:
        model.text.vocab_size = 129  # room for ALBEF's [MASK]
    if "fusion" in model:
        model.fusion.update({k: v for k, v in SMALL.items() if k != "width"})
    if "decoder" in model:
        model.decoder.update(SMALL)
    if "embed_dim" in model:
        model.embed_dim = 16
    if "vocab_size" in model:  # early fusion: one flat section
        model.update(SMALL, vocab_size=128)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def load_config(name):
    module = __import__(f"configs.{name}", fromlist=["get_config"])
    return module.get_config()


def check_accuracy_table(results, prefix="vqa_accuracy"):
    types = [k for k in results if k.startswith(prefix + "/")]
    assert len(types) == 7, types  # one per question type of `shapes`
    assert all(0.0 <= results[k] <= 1.0 for k in [prefix, *types])


@pytest.mark.parametrize("name", ["early_fusion_vqa_tiny", "late_fusion_vqa_tiny"])
def test_vqa_classifier_configs_train_and_report(name, data_dir, tmp_path, capsys):
    config = shrink(load_config(name), data_dir)
    results = train_and_evaluate(config, str(tmp_path))
    check_accuracy_table(results)
    out = capsys.readouterr().out
    assert "VQA accuracy on shapes/test (112 questions)" in out and "relation" in out
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["vqa_accuracy"] == pytest.approx(results["vqa_accuracy"])
    assert (tmp_path / "vqa_examples_test.txt").read_text().count("\n") == 20
    assert (tmp_path / "loss_curve.png").exists()

    # eval.py on another split keeps the test results.
    config.eval.split = "compositional_test"
    evaluate_checkpoint(config, str(tmp_path))
    assert json.load(open(tmp_path / "results_compositional_test.json"))["split"] == "compositional_test"
    assert json.load(open(tmp_path / "results.json"))["split"] == "test"


def test_albef_config_trains_all_four_objectives_and_reports(data_dir, tmp_path, capsys):
    config = shrink(load_config("albef_tiny"), data_dir)
    config.eval.rerank_k = 10
    results = train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if "loss_itm" in r]
    assert train and all(np.isfinite(r[f"loss_{n}"]) for r in train for n in ("contrastive", "itm", "mlm", "vqa"))
    for key in ("i2t_r1", "t2i_r10", "i2t_itm_r1", "t2i_itm_r10", "itm_accuracy", "itm_accuracy_random"):
        assert 0.0 <= results[key] <= 1.0, key
    check_accuracy_table(results)
    out = capsys.readouterr().out
    assert "ITM re-ranked (top 10)" in out and "Image-text matching" in out


def test_albef_rejects_a_text_vocabulary_without_room_for_mask(data_dir, tmp_path):
    config = shrink(load_config("albef_tiny"), data_dir)
    config.model.text.vocab_size = 128
    with pytest.raises(ValueError, match=r"\[MASK\].*config.model.text.vocab_size is 128: raise it to at least 129"):
        train_and_evaluate(config, str(tmp_path))


def test_unknown_loss_weight_is_named(data_dir):
    config = shrink(load_config("albef_tiny"), data_dir)
    config.loss_weights.itn = 1.0
    with pytest.raises(ValueError, match=r"config.loss_weights has unknown field\(s\) \['itn'\]"):
        config.task.from_config(config)


def test_coca_config_captions_and_answers(data_dir, tmp_path, capsys):
    config = shrink(load_config("coca_tiny"), data_dir)
    results = train_and_evaluate(config, str(tmp_path))
    for key in ("caption_bleu_4", "caption_cider", "caption_exact_scene_match", "i2t_r1", "zero_shot_top1"):
        assert np.isfinite(results[key]) and results[key] >= 0.0, key
    check_accuracy_table(results)
    captions = (tmp_path / "captions_test.txt").read_text().splitlines()
    assert len(captions) == 16 and all(line[:3] in ("ok ", "BAD") for line in captions)
    out = capsys.readouterr().out
    assert "Captioning on shapes/test (16 images, greedy)" in out and "Generative VQA" in out
