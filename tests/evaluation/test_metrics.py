"""Retrieval and zero-shot metrics against brute-force NumPy references (full sorts, explicit loops)."""

import numpy as np
import pytest

from mmjax.evaluation.metrics import (
    PROMPT_TEMPLATES,
    class_embeddings_from_prompts,
    first_relevant_rank,
    format_prompts,
    group_ids,
    image_text_retrieval,
    l2_normalize,
    retrieval_recall,
    top_k_indices,
    zero_shot_accuracy,
)


def reference_order(row):
    """Gallery indices best first: a stable sort of -similarity in float64 keeps lower index first."""
    return np.argsort(-np.asarray(row, np.float64), kind="stable")


def reference_recall(similarity, query_groups, gallery_groups, ks):
    hits = {k: 0 for k in ks}
    for q in range(similarity.shape[0]):
        ranked_groups = gallery_groups[reference_order(similarity[q])]
        for k in ks:
            if any(group == query_groups[q] for group in ranked_groups[:k]):
                hits[k] += 1
    return {k: hits[k] / similarity.shape[0] for k in ks}


def random_case(rng, num_queries, num_gallery, num_groups, tied=False):
    if tied:  # few distinct values: ties everywhere, including at the top-K boundary
        similarity = rng.integers(0, 4, size=(num_queries, num_gallery)).astype(np.float32)
    else:
        similarity = rng.standard_normal((num_queries, num_gallery))
    query_groups = rng.integers(0, num_groups, num_queries)
    gallery_groups = rng.integers(0, num_groups, num_gallery)
    return similarity, query_groups, gallery_groups


@pytest.mark.parametrize(
    "num_queries, num_gallery, num_groups, chunk_size, tied",
    [
        (50, 40, 10, 7, False),  # several relevant items per query, chunks that do not divide Q
        (50, 40, 10, 7, True),
        (33, 200, 5, 8, True),  # ~40 relevant items per query
        (64, 13, 60, 64, False),  # many queries without any relevant item; one exact chunk
        (100, 30, 30, 1000, False),  # one chunk larger than Q
        (20, 3, 2, 3, True),  # K larger than the gallery
    ],
)
def test_retrieval_recall_matches_brute_force(num_queries, num_gallery, num_groups, chunk_size, tied):
    rng = np.random.default_rng(num_queries * 1000 + num_gallery)
    similarity, query_groups, gallery_groups = random_case(rng, num_queries, num_gallery, num_groups, tied)
    ks = (1, 2, 5, 10)
    expected = reference_recall(similarity, query_groups, gallery_groups, ks)
    assert retrieval_recall(similarity, query_groups, gallery_groups, ks, chunk_size=chunk_size) == expected


def test_first_relevant_rank_matches_position_in_full_sort():
    rng = np.random.default_rng(0)
    similarity, query_groups, gallery_groups = random_case(rng, 40, 30, 12, tied=True)
    ranks = first_relevant_rank(similarity, query_groups, gallery_groups, chunk_size=9)
    for q in range(40):
        relevant = gallery_groups[reference_order(similarity[q])] == query_groups[q]
        assert ranks[q] == (np.argmax(relevant) if relevant.any() else -1)


def test_identity_similarity_gives_perfect_recall():
    n = 10
    assert retrieval_recall(np.eye(n), np.arange(n), np.arange(n), ks=(1, 5)) == {1: 1.0, 5: 1.0}


def test_top_item_from_another_member_of_the_group_is_a_hit():
    # query 0 belongs to scene 7; its best match is gallery item 2, a *different* item of scene 7
    similarity = np.array([[0.1, 0.5, 0.9, 0.2]])
    query_groups = np.array([7])
    gallery_groups = np.array([7, 3, 7, 4])
    assert retrieval_recall(similarity, query_groups, gallery_groups, ks=(1,)) == {1: 1.0}
    # a relevant item only at rank 3 (0.1 is the lowest score) hits at K=4, not before
    assert retrieval_recall(similarity, query_groups, np.array([7, 3, 5, 4]), ks=(1, 3, 4)) == {
        1: 0.0, 3: 0.0, 4: 1.0}


def test_ties_are_broken_by_lower_gallery_index():
    similarity = np.array([[1.0, 1.0, 1.0, 0.0]])
    # the relevant item is tied for first but has index 2: rank 2
    assert retrieval_recall(similarity, np.array([0]), np.array([1, 2, 0, 3]), ks=(1, 2, 3)) == {
        1: 0.0, 2: 0.0, 3: 1.0}
    # tied with index 0: rank 0
    assert retrieval_recall(similarity, np.array([0]), np.array([0, 2, 1, 3]), ks=(1,)) == {1: 1.0}
    # a fully collapsed model (all similarities equal) is not scored as perfect
    assert retrieval_recall(np.zeros((4, 4)), np.arange(4), np.arange(4), ks=(1,)) == {1: 0.25}


def test_query_without_relevant_item_is_a_miss_even_when_k_exceeds_gallery():
    similarity = np.ones((2, 3))
    assert retrieval_recall(similarity, np.array([0, 9]), np.array([0, 1, 2]), ks=(1, 100)) == {
        1: 0.5, 100: 0.5}


def test_retrieval_recall_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(np.array([[np.nan, 1.0]]), np.array([0]), np.array([0, 1]))


@pytest.mark.parametrize("tied", [False, True])
def test_top_k_indices_equal_the_head_of_a_full_stable_sort(tied):
    rng = np.random.default_rng(1)
    similarity, _, _ = random_case(rng, 30, 25, 5, tied)
    for k in (1, 4, 25, 40):
        expected = np.stack([reference_order(row)[:k] for row in similarity])
        np.testing.assert_array_equal(top_k_indices(similarity, k, chunk_size=7), expected)


def test_group_ids_share_one_table_across_lists():
    image_ids, text_ids = group_ids([b"a", b"b", b"c"], [b"b", b"b", np.bytes_(b"a"), b"c", b"c"])
    np.testing.assert_array_equal(image_ids, [0, 1, 2])
    np.testing.assert_array_equal(text_ids, [1, 1, 0, 2, 2])
    (single,) = group_ids(["x", "y", "x"])
    np.testing.assert_array_equal(single, [0, 1, 0])


def test_image_text_retrieval_matches_retrieval_recall_on_cosine_similarity():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((30, 8)) * rng.uniform(0.5, 3.0, (30, 1))  # not unit norm
    texts = rng.standard_normal((70, 8))
    image_groups, text_groups = rng.integers(0, 20, 30), rng.integers(0, 20, 70)
    cosine = l2_normalize(images.astype(np.float64)) @ l2_normalize(texts.astype(np.float64)).T
    results = image_text_retrieval(images, texts, image_groups, text_groups, chunk_size=11)
    i2t = reference_recall(cosine, image_groups, text_groups, (1, 5, 10))
    t2i = reference_recall(cosine.T, text_groups, image_groups, (1, 5, 10))
    assert results == {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def test_image_text_retrieval_swapping_roles_swaps_keys():
    rng = np.random.default_rng(3)
    images, texts = rng.standard_normal((25, 6)), rng.standard_normal((60, 6))
    image_groups, text_groups = rng.integers(0, 25, 25), rng.integers(0, 25, 60)
    forward = image_text_retrieval(images, texts, image_groups, text_groups)
    swapped = image_text_retrieval(texts, images, text_groups, image_groups)
    assert forward == {key.replace("i2t", "tmp").replace("t2i", "i2t").replace("tmp", "t2i"): value
                       for key, value in swapped.items()}


def test_image_text_retrieval_with_matching_embeddings_is_perfect():
    rng = np.random.default_rng(4)
    scenes = rng.standard_normal((12, 16))
    # five noisy captions per image, grouped by image key
    texts = np.repeat(scenes, 5, axis=0) + 0.01 * rng.standard_normal((60, 16))
    image_groups, text_groups = group_ids(range(12), np.repeat(np.arange(12), 5).tolist())
    results = image_text_retrieval(scenes, texts, image_groups, text_groups, ks=(1,))
    assert results == {"i2t_r1": 1.0, "t2i_r1": 1.0}


def test_zero_shot_accuracy_matches_brute_force():
    rng = np.random.default_rng(5)
    num_images, num_classes = 200, 12
    images = rng.standard_normal((num_images, 10))
    classes = rng.standard_normal((num_classes, 10))
    labels = rng.integers(0, num_classes - 2, num_images)  # the last two classes are never present
    results = zero_shot_accuracy(images, classes, labels, ks=(1, 5), chunk_size=37)

    cosine = l2_normalize(images.astype(np.float64)) @ l2_normalize(classes.astype(np.float64)).T
    ranked = [reference_order(row) for row in cosine]
    top1 = np.array([ranked[i][0] == labels[i] for i in range(num_images)])
    top5 = np.mean([labels[i] in ranked[i][:5] for i in range(num_images)])
    per_class = [top1[labels == c].mean() for c in range(num_classes) if (labels == c).any()]
    assert results["top1"] == pytest.approx(top1.mean(), abs=0)
    assert results["top5"] == pytest.approx(top5, abs=0)
    assert results["mean_per_class_accuracy"] == pytest.approx(np.mean(per_class), rel=1e-12)


def test_mean_per_class_accuracy_weighs_classes_equally():
    # class 0: 3 images, all right; class 1: 1 image, wrong -> top1 = 3/4, per-class mean = 1/2
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    images = np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.0], [1.0, 0.0]])
    results = zero_shot_accuracy(images, classes, np.array([0, 0, 0, 1]), ks=(1, 2))
    assert results == {"top1": 0.75, "top2": 1.0, "mean_per_class_accuracy": 0.5}


def test_zero_shot_accuracy_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 2]))


def test_prompt_ensembling_equals_the_explicit_formula_and_is_unit_norm():
    rng = np.random.default_rng(6)
    prompts = rng.standard_normal((5, 4, 8)) * rng.uniform(0.1, 10.0, (5, 4, 1))
    explicit = np.zeros((5, 8))
    for c in range(5):
        mean = np.mean([prompts[c, t] / np.linalg.norm(prompts[c, t]) for t in range(4)], axis=0)
        explicit[c] = mean / np.linalg.norm(mean)
    result = class_embeddings_from_prompts(prompts)
    np.testing.assert_allclose(result, explicit, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(result, axis=-1), 1.0, rtol=1e-12)
    assert class_embeddings_from_prompts(prompts.astype(np.float32)).dtype == np.float32


def test_format_prompts_fills_every_template():
    prompts = format_prompts(["dog", "pickup_truck"])
    assert len(prompts) == 2 and len(prompts[0]) == len(PROMPT_TEMPLATES)
    assert prompts[1][0] == PROMPT_TEMPLATES[0].format("pickup truck")
    assert all("{}" not in prompt for row in prompts for prompt in row)


def test_reranked_recall_matches_brute_force_and_keeps_first_stage_order_on_ties():
    from mmjax.evaluation.metrics import reranked_recall

    rng = np.random.default_rng(0)
    num_queries, num_gallery, k = 40, 30, 8
    query_groups = rng.integers(0, 10, num_queries)
    gallery_groups = rng.integers(0, 10, num_gallery)
    candidates = np.stack([rng.permutation(num_gallery)[:k] for _ in range(num_queries)])
    scores = rng.integers(0, 3, (num_queries, k)).astype(np.float32)  # many ties
    recall = reranked_recall(candidates, scores, query_groups, gallery_groups, ks=(1, 5))
    for cut in (1, 5):
        hits = []
        for q in range(num_queries):
            order = sorted(range(k), key=lambda j: (-scores[q, j], j))
            hits.append(any(gallery_groups[candidates[q, j]] == query_groups[q] for j in order[:cut]))
        assert recall[cut] == pytest.approx(np.mean(hits))
    with pytest.raises(ValueError, match="recall@10 needs at least 10 candidates"):
        reranked_recall(candidates, scores, query_groups, gallery_groups, ks=(10,))
