"""Open-vocabulary detection: the detector's heads, DETR's set loss against NumPy, the data, the
step on the 8-device mesh, the evaluation and the command-line tool's parts."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.data.detection import DetectionPreprocess, query_phrase, tokenize_queries, training_class_ids
from mmjax.data.tokenizer import train_tokenizer
from mmjax.detect import detect_images, draw, parse_queries
from mmjax.evaluation.detection_eval import plot_detections, top_detections
from mmjax.losses import DetectionLossWeights, detection_set_loss
from mmjax.models.detection import OpenVocabularyDetector
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT
from mmjax.training import sharding as shd
from mmjax.training.detection_task import DetectionTask
from mmjax.training.setup import setup_training

B, Q, T, L = 4, 5, 3, 6  # images, queries per image, boxes per image, query length


@functools.cache
def tiny_model() -> OpenVocabularyDetector:
    return OpenVocabularyDetector(
        image_encoder=ViT(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="mean"),
        text_encoder=TextTransformer(vocab_size=128, max_len=L, width=32, depth=1, num_heads=2, mlp_dim=64),
        embed_dim=16, box_hidden=32,
    )


def random_batch(seed: int, batch_size: int = B) -> dict[str, np.ndarray]:
    """24 px images (a 3x3 grid of 8 px patches), random queries, 1-3 random boxes each."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 40, (batch_size, Q, L)).astype(np.int32)
    ids[..., 4:] = 0
    ids[..., 3] = 2
    centres, sizes = rng.uniform(0.25, 0.75, (batch_size, T, 2)), rng.uniform(0.1, 0.4, (batch_size, T, 2))
    return {
        "images": rng.integers(0, 256, (batch_size, 24, 24, 3)).astype(np.uint8),
        "query_ids": ids,
        "query_valid": np.arange(Q)[None, :] < rng.integers(3, Q + 1, (batch_size, 1)),
        "boxes": np.concatenate([centres, sizes], -1).astype(np.float32),
        "box_queries": rng.integers(0, 3, (batch_size, T)).astype(np.int32),
        "box_valid": np.arange(T)[None, :] < rng.integers(1, T + 1, (batch_size, 1)),
    }


@functools.cache
def initialised():
    model = tiny_model()
    batch = random_batch(0)
    params = jax.jit(model.init)(jax.random.key(0), batch["images"] / 255.0, batch["query_ids"])["params"]
    return model, nn.unbox(params), jax.jit(model.apply)


def test_each_token_starts_at_its_patch_box_in_row_major_order():
    """The box head's last layer starts at zero: token n = (row i, column j) predicts its patch."""
    model, params, apply = initialised()
    batch = random_batch(1)
    boxes = np.asarray(apply({"params": params}, batch["images"] / 255.0, batch["query_ids"])["boxes"])
    grid = np.array([((j + 0.5) / 3, (i + 0.5) / 3, 1 / 3, 1 / 3) for i in range(3) for j in range(3)])
    np.testing.assert_allclose(boxes, np.broadcast_to(grid, boxes.shape), atol=1e-6)


def test_heads_keep_the_order_of_images_tokens_and_queries():
    model, params, apply = initialised()
    batch = random_batch(2)
    # Train the box head a little off zero so that boxes depend on the tokens.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * jax.random.normal(jax.random.key(len(path)), x.shape)
        if "box_head" in jax.tree_util.keystr(path) else x, params)
    out = apply({"params": params}, batch["images"] / 255.0, batch["query_ids"])
    images, queries = np.random.default_rng(3).permutation(B), np.random.default_rng(4).permutation(Q)
    permuted = apply({"params": params}, batch["images"][images] / 255.0, batch["query_ids"][images][:, queries])
    np.testing.assert_allclose(permuted["boxes"], np.asarray(out["boxes"])[images], atol=1e-5)
    np.testing.assert_allclose(permuted["logits"], np.asarray(out["logits"])[images][:, :, queries], atol=1e-4)
    # A token's box follows its own patch: changing one patch's pixels moves only that token's box.
    changed = batch["images"].copy()
    changed[:, :8, 16:] = 255 - changed[:, :8, 16:]  # the patch at row 0, column 2 (token 2)
    boxes = np.asarray(apply({"params": params}, changed / 255.0, batch["query_ids"])["boxes"])
    moved = np.abs(boxes - np.asarray(out["boxes"])).max(axis=(0, 2))
    assert moved[2] > 1e-3, moved


def _numpy_giou(a, b):
    """Float64 GIoU of two (cx, cy, w, h) boxes, from the definitions."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    iou = inter / union
    return iou - (hull - union) / hull, iou


def _numpy_focal(x, y, alpha, gamma):
    p = 1 / (1 + np.exp(-x))
    p_t = np.where(y == 1, p, 1 - p)
    return -np.where(y == 1, alpha, 1 - alpha) * (1 - p_t) ** gamma * np.log(p_t)


def numpy_set_loss(logits, boxes, batch, w: DetectionLossWeights):
    """DETR's set loss in float64 with the matching found by trying every injection."""
    logits, boxes = logits.astype(np.float64), boxes.astype(np.float64)
    total_class = total_l1 = total_giou = 0.0
    num_boxes = max(int(batch["box_valid"].sum()), 1)
    for b in range(len(logits)):
        real = np.flatnonzero(batch["box_valid"][b])
        targets = batch["boxes"][b].astype(np.float64)
        queries = batch["box_queries"][b]

        def cost(t, n):
            x = logits[b, n, queries[t]]
            focal = _numpy_focal(x, 1, w.focal_alpha, w.focal_gamma) - _numpy_focal(x, 0, w.focal_alpha, w.focal_gamma)
            return (w.class_weight * focal + w.l1_weight * np.abs(boxes[b, n] - targets[t]).sum()
                    - w.giou_weight * _numpy_giou(boxes[b, n], targets[t])[0])

        best = min(itertools.permutations(range(logits.shape[1]), len(real)),
                   key=lambda cols: sum(cost(t, n) for t, n in zip(real, cols)))
        y = np.zeros(logits.shape[1:])
        for t, n in zip(real, best):
            y[n, queries[t]] = 1
            total_l1 += np.abs(boxes[b, n] - targets[t]).sum()
            total_giou += 1 - _numpy_giou(boxes[b, n], targets[t])[0]
        focal = _numpy_focal(logits[b], y, w.focal_alpha, w.focal_gamma) * batch["query_valid"][b][None, :]
        total_class += focal.sum()
    return (w.class_weight * total_class + w.l1_weight * total_l1 + w.giou_weight * total_giou) / num_boxes


@jax.jit
def set_loss_and_grads(logits, boxes, batch):
    """detection_set_loss and its gradient w.r.t. (logits, boxes), compiled once for the tests."""
    def loss(x, b):
        return detection_set_loss(x, b, batch["boxes"], batch["box_queries"], batch["box_valid"], batch["query_valid"])
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logits, boxes)


def test_set_loss_equals_numpy_with_brute_force_matching():
    """Matching over 6 predictions by exhaustive search (120 injections of 3 boxes), then the
    focal, L1 and GIoU terms, all in float64."""
    rng = np.random.default_rng(5)
    batch = random_batch(6)
    batch["boxes"][..., 2:] = rng.uniform(0.05, 0.3, (B, T, 2))
    logits = rng.normal(0, 2, (B, 6, Q)).astype(np.float32)
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (B, 6, 2)), rng.uniform(0.05, 0.4, (B, 6, 2))], -1).astype(np.float32)
    weights = DetectionLossWeights()
    (loss, metrics), grads = set_loss_and_grads(logits, boxes, batch)
    np.testing.assert_allclose(float(loss), numpy_set_loss(logits, boxes, batch, weights), rtol=1e-5)
    assert 0 <= float(metrics["matched_iou"]) <= 1
    # Gradients reach the logits and the boxes, and are finite.
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in grads)


def test_a_batch_without_boxes_has_only_the_background_loss():
    batch = random_batch(7)
    batch["box_valid"][:] = False
    logits = np.random.default_rng(8).normal(size=(B, 6, Q)).astype(np.float32)
    boxes = np.full((B, 6, 4), 0.3, np.float32)
    (loss, metrics), _ = set_loss_and_grads(logits, boxes, batch)
    w = DetectionLossWeights()
    focal = _numpy_focal(logits.astype(np.float64), 0, w.focal_alpha, w.focal_gamma) * batch["query_valid"][:, None, :]
    expected = w.class_weight * focal.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["l1_loss"]) == 0.0 and float(metrics["giou_loss"]) == 0.0


def tiny_detection_config(batch_size: int = 8) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        task=DetectionTask, seed=1, batch_size=batch_size, num_steps=20,
        data=dict(image_size=24, max_boxes=T, num_queries=Q, query_len=L),
        model=dict(embed_dim=16, box_hidden=32,
                   image=dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="mean"),
                   text=dict(vocab_size=128, max_len=L, width=32, depth=1, num_heads=2, mlp_dim=64)),
        freeze=("^text_encoder/", "^text_projection/"),
        optimizer=dict(learning_rate=3e-3, end_learning_rate=0.0, warmup_steps=1, weight_decay=0.0,
                       b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0),
    ))


def run_steps(mesh_config, batches):
    """(initial text tower, final state, losses) of training on `batches`."""
    mesh = shd.make_mesh(mesh_config)
    _, _, init_fn, _, train_step = setup_training(tiny_detection_config(), mesh)
    state = init_fn()
    text_tower = jax.tree.map(np.array, state.params["text_encoder"])  # a copy: the step donates the state
    losses = []
    for batch in batches:
        state, metrics = train_step(state, shd.to_global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return text_tower, state, losses


def test_detector_trains_on_the_8_device_mesh_exactly_like_one_device():
    """The matching runs inside the step, per image, wherever the image's shard lives."""
    batches = [random_batch(10 + i, 8) for i in range(3)]
    text_tower, state1, losses1 = run_steps(1, batches)
    _, state8, losses8 = run_steps({"data": 8}, batches)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert losses1[-1] < losses1[0]
    # The frozen text tower did not move.
    for a, b in zip(jax.tree.leaves(text_tower), jax.tree.leaves(state1.params["text_encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@functools.cache
def shapes_tokenizer():
    rng = np.random.default_rng(0)
    texts = [shapes.make_caption(shapes.sample_scene(shapes.ShapesConfig(), rng), rng) for _ in range(300)]
    return train_tokenizer(texts + [query_phrase(n) for n in shapes.class_names()], vocab_size=120)


def shapes_example(seed: int = 0, split: str = "train") -> dict:
    rng = np.random.default_rng(seed)
    config = shapes.ShapesConfig(image_size=48)
    while True:
        scene = shapes.sample_scene(config, rng, with_heldout=split == "compositional_test")
        if shapes.split_of_scene(scene, config) == split:
            break
    return {"image": shapes.render_scene(scene, 48, rng), "boxes": np.array([o.box for o in scene.objects], np.float32),
            "box_labels": np.array([shapes.class_id(o.shape, o.colour) for o in scene.objects]), "scene_key": scene.key()}


def test_preprocess_asks_for_the_image_classes_and_absent_ones():
    tokenizer = shapes_tokenizer()
    train_classes = training_class_ids(shapes.ShapesConfig().heldout_pairs)
    preprocess = DetectionPreprocess(tokenizer, shapes.class_names(), train_classes, max_objects=3, num_queries=8,
                                     query_len=8, flip_probability=0.0)
    for seed in range(5):
        example = shapes_example(seed)
        out = preprocess(example, np.random.default_rng(seed))
        phrases = [tokenizer.decode(ids) for ids in out["query_ids"]]
        n = len(example["box_labels"])
        assert out["box_valid"].sum() == n and out["query_valid"].all()
        for t in range(n):  # each box's query names its class
            assert phrases[out["box_queries"][t]] == query_phrase(shapes.class_names()[example["box_labels"][t]])
        present = {query_phrase(shapes.class_names()[c]) for c in example["box_labels"]}
        assert set(phrases[len(present):]).isdisjoint(present)  # the negatives are absent
        heldout = {query_phrase(shapes.class_names()[c]) for c in range(30) if c not in train_classes}
        assert heldout.isdisjoint(phrases)  # never asked in training
        y0, x0, y1, x1 = example["boxes"][0]
        np.testing.assert_allclose(out["boxes"][0], [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], rtol=1e-6)
    flipped = DetectionPreprocess(tokenizer, shapes.class_names(), train_classes, 3, 8, 8, flip_probability=1.0)
    example = shapes_example(0)
    a, b = preprocess(example, np.random.default_rng(0)), flipped(example, np.random.default_rng(0))
    np.testing.assert_allclose(b["boxes"][0, 0], 1 - a["boxes"][0, 0], rtol=1e-6)
    np.testing.assert_array_equal(b["images"], a["images"][:, ::-1])


def test_bad_input_gets_a_clear_error():
    tokenizer = shapes_tokenizer()
    train_classes = training_class_ids(shapes.ShapesConfig().heldout_pairs)
    with pytest.raises(ValueError, match="names nothing to find"):
        parse_queries(" , ")
    with pytest.raises(ValueError, match="query list is empty"):
        tokenize_queries(tokenizer, [], 8)
    with pytest.raises(ValueError, match="is empty"):
        query_phrase("  ")
    with pytest.raises(ValueError, match="config.data.query_len is 2"):
        tokenize_queries(tokenizer, ["a large red circle"], 2)
    preprocess = DetectionPreprocess(tokenizer, shapes.class_names(), train_classes, 3, 8, 8)
    example = shapes_example(1)
    example["boxes"] = example["boxes"].copy()
    example["boxes"][0, 2] = 1.3
    with pytest.raises(ValueError, match=r"example .*: box .* is not a normalised \[y0, x0, y1, x1\]"):
        preprocess(example, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside the training vocabulary"):
        preprocess(shapes_example(2, "compositional_test"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_queries=2 must be >= config.data.max_boxes=3"):
        DetectionPreprocess(tokenizer, shapes.class_names(), train_classes, 3, 2, 8)


def test_evaluation_takes_the_best_token_class_pairs_and_draws_them(tmp_path):
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    scores = np.array([[0.1, 0.9, 0.3], [0.8, 0.05, 0.2]])
    xyxy, labels, top = top_detections(boxes, scores, max_detections=3)
    np.testing.assert_array_equal(labels, [1, 0, 2])
    np.testing.assert_allclose(top, [0.9, 0.8, 0.3])
    np.testing.assert_allclose(xyxy[0], [0.4, 0.4, 0.6, 0.6])
    image = shapes_example(3)["image"]
    truth = [(np.array([[0.4, 0.4, 0.6, 0.6]]), np.array([1]))]
    out = plot_detections(image[None], truth, [(xyxy, labels, top)], str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").stat().st_size > 1000 and out.endswith("d.png")


def test_the_command_line_maps_boxes_back_to_each_images_pixels(tmp_path):
    """A wide photo is centre-cropped to the model's square: every box lands inside the crop, in
    the original image's pixels, and the pictures are drawn."""
    from PIL import Image

    model, params, _ = initialised()
    config = ml_collections.ConfigDict(dict(data=dict(image_size=24, query_len=L)))
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    results = detect_images(DetectionTask(model), params, shapes_tokenizer(), config, [str(tmp_path / "wide.png")],
                            ["red circle", "blue"], threshold=0.0)
    found = results[0]["detections"]
    assert results[0]["size"] == [60, 30] and len(found) == 9 * 2  # every token, both queries
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    boxes = np.array([d["box"] for d in found])
    assert (boxes[:, [0, 2]] >= 15 - 1e-3).all() and (boxes[:, [0, 2]] <= 45 + 1e-3).all()  # the crop is x in [15, 45]
    assert (boxes[:, [1, 3]] >= -1e-3).all() and (boxes[:, [1, 3]] <= 30 + 1e-3).all()
    assert {d["query"] for d in found} == {"red circle", "blue"}
    draw(str(tmp_path / "wide.png"), found[:3], str(tmp_path / "out.png"))
    assert (tmp_path / "out.png").stat().st_size > 1000


def test_detection_config_trains_evaluates_and_reports_end_to_end(tmp_path, capsys):
    """configs/detection_tiny.py shrunk (1-layer towers, 64 training scenes, no CLIP run to start
    from) on the 8-device mesh: the loop trains, evaluates both splits and writes the results and
    the pictures."""
    import json

    from configs import detection_tiny
    from mmjax.training.loop import train_and_evaluate

    config = detection_tiny.get_config()
    config.data.update(data_dir=str(tmp_path / "data"), num_train=64, num_validation=8, num_test=16,
                       num_compositional_test=8, vocab_size=128)
    small = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.image.update(small)
    config.model.text.update(small, vocab_size=128)
    config.model.update(embed_dim=16, box_hidden=32)
    del config.init_from
    config.update(batch_size=16, num_steps=3, log_every=1, checkpoint_every=1000)
    config.optimizer.warmup_steps = 1
    config.eval.batch_size = 16
    results = train_and_evaluate(config, str(tmp_path / "run"))
    for key in ("map50", "map", "top1_accuracy", "compositional_map50", "compositional_heldout_map50",
                "compositional_heldout_top1_accuracy"):
        assert 0.0 <= results[key] <= 1.0, key
    assert json.load(open(tmp_path / "run" / "results.json"))["map50"] == pytest.approx(results["map50"])
    assert (tmp_path / "run" / "detections_test.png").exists()
    assert (tmp_path / "run" / "detections_compositional_test.png").exists()
    assert "compositional_test" in capsys.readouterr().out
