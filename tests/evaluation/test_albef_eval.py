"""ITM evaluation: hard negatives are never the same scene; a perfect matcher scores perfectly."""

import numpy as np

from mmjax.evaluation.albef_eval import evaluate_matching, hard_negative_captions


def synthetic_split(seed, num_scenes=12, captions_per_image=3, dim=6):
    """Embeddings where each scene is a noisy direction; some scenes appear twice (duplicates)."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"scene{k}" for k in rng.integers(0, num_scenes - 3, num_scenes)])
    centres = {k: rng.standard_normal(dim) for k in sorted(set(keys))}  # sorted: str hashes vary by process
    images = np.stack([centres[k] + 0.8 * rng.standard_normal(dim) for k in keys])
    texts = np.stack([centres[k] + 0.8 * rng.standard_normal(dim) for k in np.repeat(keys, captions_per_image)])
    return {"image_embeddings": images, "text_embeddings": texts, "scene_keys": keys,
            "captions_per_image": captions_per_image,
            "caption_image": np.repeat(np.arange(num_scenes), captions_per_image),
            "first_caption": np.arange(num_scenes) * captions_per_image}


def test_hard_negatives_are_the_most_similar_caption_of_another_scene():
    split = synthetic_split(0)
    groups = np.unique(split["scene_keys"], return_inverse=True)[1]
    text_groups = np.repeat(groups, split["captions_per_image"])
    negatives = hard_negative_captions(split["image_embeddings"], split["text_embeddings"], groups, text_groups)
    images = split["image_embeddings"] / np.linalg.norm(split["image_embeddings"], axis=1, keepdims=True)
    texts = split["text_embeddings"] / np.linalg.norm(split["text_embeddings"], axis=1, keepdims=True)
    for i, j in enumerate(negatives):
        assert text_groups[j] != groups[i]
        others = np.flatnonzero(text_groups != groups[i])
        assert np.isclose(images[i] @ texts[j], max(images[i] @ texts[o] for o in others))


def test_a_matcher_that_knows_the_scenes_is_perfect():
    split = synthetic_split(1)
    c = split["captions_per_image"]
    # Tokens carry the scene index, so the "fusion" can compare them exactly.
    scene = np.unique(split["scene_keys"], return_inverse=True)[1].astype(np.float32)
    image_tokens = {"tokens": scene[:, None, None]}
    text_tokens = {"tokens": np.repeat(scene, c)[:, None, None], "mask": np.ones((len(scene) * c, 1), bool)}
    match = lambda t, m, i: (t[:, 0, 0] == i[:, 0, 0]).astype(np.float32)  # noqa: E731
    # Candidates = the whole gallery (36 captions), so every candidate set holds a true match
    # whatever the noisy contrastive embeddings rank first.
    results = evaluate_matching(split, image_tokens, text_tokens, match, batch_size=5, rerank_k=len(scene) * c)
    assert results["itm_accuracy"] == results["itm_accuracy_random"] == results["itm_positive_recall"] == 1.0
    for name in ("i2t", "t2i"):
        assert results[f"{name}_itm_r1"] == 1.0  # every candidate set holds a true match; the matcher ranks it first
        assert results[f"{name}_itm_r1"] >= results[f"{name}_r1"]
