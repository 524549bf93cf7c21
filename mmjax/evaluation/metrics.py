"""Evaluation metrics for contrastive image-text models, as pure NumPy functions.

Two benchmarks measure what a CLIP-style model learned without training anything further:

1. Retrieval (Flickr30k / COCO style). Every query is compared with every gallery item by cosine
   similarity, S_qg = <x_q, y_g> / (|x_q| |y_g|), and the gallery is ranked by S, best first.

       recall@K = (1 / Q) Σ_q 1[ some gallery item g in the top K of query q has group(g) = group(q) ]

   A *group* is an integer id of "the same scene": one image has five captions, and two different
   images may show the same scene, so a query usually has several relevant gallery items and any of
   them counts as a hit. Run both ways: image → text (i2t: each image ranks all captions) and
   text → image (t2i: each caption ranks all images).

2. Zero-shot classification. Each class name is written into a few prompt templates ("a photo of
   a {}."), the text tower embeds every prompt, and the class embedding is the renormalised mean of
   its unit-norm prompt embeddings (CLIP's prompt ensembling, Radford et al., 2021, §3.1.4):

       c_k = normalize( (1/T) Σ_t normalize(text_tower(template_t(name_k))) )
       prediction(x) = argmax_k <normalize(x), c_k>

Ranking, ties and memory:

- The order is total: item i ranks before item j when S_i > S_j, or S_i = S_j and i < j (the lower
  index wins a tie). So every metric here is deterministic, whatever the chunk size, and a
  similarity of ties everywhere (a collapsed model) scores like chance-by-index rather than
  like a perfect model.
- recall@K needs only the rank of the *best* relevant item of each query, which is a count, not a
  sort:

       rank(q) = #{g : S_qg > S_qb} + #{g < b : S_qg = S_qb}      (b = best relevant item of q)
       hit@K(q) = rank(q) < K

  That is O(Q·G) comparisons and gives every K at once, exact under the tie rule above.
- Queries are processed in chunks of rows, so a 25 000 × 5 000 similarity never has more than one
  [chunk, G] slab of temporaries alive, and `image_text_retrieval` never builds the full similarity
  matrix at all: it computes one [chunk, G] block of it at a time.
"""

from __future__ import annotations

from typing import Hashable, Iterator, Sequence

import numpy as np

# CLIP-style prompt templates ("{}" is the class name). Short and generic on purpose: they work for
# everyday objects at low resolution, and averaging over several of them evens out the quirks of
# any single phrasing. CLIP's ImageNet ensemble has 80; the gain from more than ~7 is small.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image with a {}.",
    "a {} in the picture.",
    "a blurry photo of a {}.",
    "a low resolution photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
)

# Rows of the similarity matrix handled at once; [chunk, num_gallery] temporaries stay small.
DEFAULT_CHUNK_SIZE = 1024


def group_ids(*key_lists: Sequence[Hashable]) -> tuple[np.ndarray, ...]:
    """Maps equal keys to equal integer ids, with one table shared by all the lists.

    Images and captions that share a key (an image id, a file name) must get the same group id, and
    ids made by two separate tables would not be comparable; hence one call for all lists:

        image_groups, text_groups = group_ids(image_keys, caption_image_keys)

    Ids are assigned in order of first appearance (first list first), so they are deterministic.

    Args:
      *key_lists: sequences of hashable keys (str, bytes, int, ...), each of length n_i.

    Returns:
      A tuple with one int64 array [n_i] per list (a 1-tuple for a single list).
    """
    table: dict[Hashable, int] = {}
    ids = []
    for keys in key_lists:
        ids.append(np.fromiter((table.setdefault(_hashable(key), len(table)) for key in keys),
                               dtype=np.int64))
    return tuple(ids)


def retrieval_recall(
    similarity: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[int, float]:
    """recall@K: the fraction of queries with a same-group gallery item among their top K.

        recall@K = (1/Q) Σ_q 1[ rank(q) < K ]

    where rank(q) is the 0-based position of q's best relevant item (see `first_relevant_rank`).
    Ranking is by similarity, descending, ties broken by the lower gallery index. A query with no
    relevant gallery item at all never hits (it still counts in Q). K larger than the gallery is
    allowed: then every query with a relevant item hits.

    Args:
      similarity: [num_queries, num_gallery], higher = more similar; no NaN.
      query_groups: [num_queries] integer group ids.
      gallery_groups: [num_gallery] integer group ids.
      ks: the cut-offs K (positive integers).
      chunk_size: queries processed at once; bounds the temporaries to [chunk_size, num_gallery].

    Returns:
      {K: recall@K} with values in [0, 1].

    Examples:
      >>> retrieval_recall(np.eye(3), np.arange(3), np.arange(3), ks=(1,))
      {1: 1.0}
    """
    ranks = first_relevant_rank(similarity, query_groups, gallery_groups, chunk_size)
    return recall_at_k(ranks, ks)


def first_relevant_rank(
    similarity: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """The 0-based rank of each query's best-ranked relevant gallery item.

        b(q)    = the relevant g with the largest S_qg (lowest index among equals)
        rank(q) = #{g : S_qg > S_qb} + #{g < b : S_qg = S_qb}

    rank(q) = 0 means the top item is relevant. The median of these ranks (+1) is the "MedR" of
    the retrieval literature.

    Args:
      similarity: [num_queries, num_gallery]; no NaN (±inf is allowed, e.g. to mask items out).
      query_groups: [num_queries] integer group ids.
      gallery_groups: [num_gallery] integer group ids.
      chunk_size: queries processed at once.

    Returns:
      int64 [num_queries]; -1 for a query that has no relevant item in the gallery.
    """
    similarity = np.asarray(similarity)
    query_groups = np.asarray(query_groups)
    gallery_groups = np.asarray(gallery_groups)
    num_queries, num_gallery = _check_retrieval_shapes(similarity.shape, query_groups, gallery_groups)
    ranks = np.empty(num_queries, dtype=np.int64)
    for rows in _chunks(num_queries, chunk_size):
        scores = _exact_float(similarity[rows])
        relevant = query_groups[rows, None] == gallery_groups[None, :]
        ranks[rows] = _best_target_rank(scores, relevant)
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """recall@K = mean over queries of 1[0 <= rank < K], from `first_relevant_rank`'s output.

    Args:
      ranks: int [num_queries], -1 for a query without a relevant item (never a hit).
      ks: the cut-offs K.

    Returns:
      {K: recall@K}.
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("recall needs at least one query")
    found = ranks >= 0
    return {int(k): float(np.mean(found & (ranks < k))) for k in _check_ks(ks)}


def top_k_indices(similarity: np.ndarray, k: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """The indices of each row's k most similar gallery items, best first.

    Uses the same total order as the recall functions (similarity descending, lower index first on
    ties), so item g is in a query's top k exactly when its rank is < k. Cost per row is a
    partition (O(G)) plus a sort of k items, not a full O(G log G) sort:

        t      = the k-th largest similarity of the row            (np.partition)
        top k  = {g : S_g > t}  ∪  the lowest-index items with S_g = t, enough to make k

    Args:
      similarity: [num_queries, num_gallery]; no NaN.
      k: how many items per row (capped at num_gallery).
      chunk_size: queries processed at once.

    Returns:
      int64 [num_queries, min(k, num_gallery)].
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [num_queries, num_gallery], got {similarity.shape}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    num_queries, num_gallery = similarity.shape
    k = min(int(k), num_gallery)
    indices = np.empty((num_queries, k), dtype=np.int64)
    for rows in _chunks(num_queries, chunk_size):
        scores = _exact_float(similarity[rows])
        _check_no_nan(scores)
        # the k-th largest value of each row: everything above it is in, ties at it fill up to k
        kth_value = -np.partition(-scores, k - 1, axis=1)[:, k - 1, None]
        above = scores > kth_value
        tied = scores == kth_value
        ties_needed = k - above.sum(axis=1, keepdims=True)
        selected = above | (tied & (np.cumsum(tied, axis=1) <= ties_needed))
        # exactly k per row; nonzero walks rows in order, columns ascending
        chosen = np.nonzero(selected)[1].reshape(-1, k)
        # best first; the stable sort keeps ascending index among equal scores
        order = np.argsort(-np.take_along_axis(scores, chosen, axis=1), axis=1, kind="stable")
        indices[rows] = np.take_along_axis(chosen, order, axis=1)
    return indices


def cosine_similarity_chunks(
    queries: np.ndarray, gallery: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yields (rows, S[rows]) for S = normalize(queries) · normalize(gallery)ᵀ, one block at a time.

    Computed in float32 (the precision the embeddings carry). A zero vector has similarity 0 with
    everything rather than NaN.

    Args:
      queries: [num_queries, dim].
      gallery: [num_gallery, dim].
      chunk_size: rows per block.

    Yields:
      (slice of query rows, float32 [rows, num_gallery]).
    """
    queries = l2_normalize(queries)
    gallery = l2_normalize(gallery)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"need [n, dim] and [m, dim] embeddings, got {queries.shape} and {gallery.shape}")
    for rows in _chunks(queries.shape[0], chunk_size):
        yield rows, queries[rows] @ gallery.T


def image_text_retrieval(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    image_groups: np.ndarray,
    text_groups: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Image→text and text→image recall@K from embeddings, by cosine similarity.

        S = normalize(images) · normalize(texts)ᵀ                       [n_img, n_txt]
        i2t_rK = recall@K of S  (queries: images, gallery: texts)
        t2i_rK = recall@K of Sᵀ (queries: texts, gallery: images)

    The full S is never built: each direction computes [chunk_size, gallery] blocks of it.

    Args:
      image_embeddings: [n_img, dim] (need not be normalised).
      text_embeddings: [n_txt, dim].
      image_groups: [n_img] integer group ids (see `group_ids`).
      text_groups: [n_txt] integer group ids, from the same table as image_groups.
      ks: the cut-offs K.
      chunk_size: queries processed at once.

    Returns:
      {"i2t_r1": ..., "i2t_r5": ..., "i2t_r10": ..., "t2i_r1": ..., ...} for the given ks.
    """
    image_groups = np.asarray(image_groups)
    text_groups = np.asarray(text_groups)
    results = {}
    directions = (
        ("i2t", image_embeddings, text_embeddings, image_groups, text_groups),
        ("t2i", text_embeddings, image_embeddings, text_groups, image_groups),
    )
    for name, queries, gallery, query_groups, gallery_groups in directions:
        _check_retrieval_shapes((len(queries), len(gallery)), query_groups, gallery_groups)
        ranks = np.empty(len(queries), dtype=np.int64)
        for rows, scores in cosine_similarity_chunks(queries, gallery, chunk_size):
            relevant = query_groups[rows, None] == gallery_groups[None, :]
            ranks[rows] = _best_target_rank(scores, relevant)
        for k, recall in recall_at_k(ranks, ks).items():
            results[f"{name}_r{k}"] = recall
    return results


def class_embeddings_from_prompts(prompt_embeddings: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensembling: one unit-norm embedding per class from its prompt embeddings.

        c_k = normalize( (1/T) Σ_t normalize(e_kt) )

    Normalising each prompt first gives every template an equal vote; normalising the mean puts
    the class embedding back on the unit sphere, where cosine similarity is a dot product.

    Args:
      prompt_embeddings: [num_classes, num_templates, dim].

    Returns:
      [num_classes, dim], unit L2 norm per row (float32, or float64 if given float64).
    """
    prompt_embeddings = np.asarray(prompt_embeddings)
    if prompt_embeddings.ndim != 3:
        raise ValueError(
            f"prompt_embeddings must be [num_classes, num_templates, dim], got {prompt_embeddings.shape}"
        )
    return l2_normalize(l2_normalize(prompt_embeddings).mean(axis=1))


def format_prompts(
    class_names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES
) -> list[list[str]]:
    """Every template filled with every class name: `[num_classes][num_templates]` strings.

    Embed these with the text tower, reshape to [num_classes, num_templates, dim] and pass the result
    to `class_embeddings_from_prompts`. Underscores in names ("pickup_truck") become spaces.
    """
    return [[template.format(name.replace("_", " ")) for template in templates] for name in class_names]


def zero_shot_accuracy(
    image_embeddings: np.ndarray,
    class_embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Zero-shot classification accuracy by cosine similarity to class embeddings.

        S = normalize(images) · normalize(classes)ᵀ                   [n, num_classes]
        topK = (1/n) Σ_i 1[ rank of labels_i in row i < K ]
        mean_per_class_accuracy = mean over classes c present in labels of top-1 accuracy on c

    Ties are broken as everywhere in this module (lower class index first). The mean per-class
    accuracy weighs every class equally, so it is not dominated by the frequent classes of an
    unbalanced test set.

    Args:
      image_embeddings: [n, dim].
      class_embeddings: [num_classes, dim] (e.g. from `class_embeddings_from_prompts`).
      labels: int [n], in [0, num_classes).
      ks: the cut-offs K; K >= num_classes gives 1.0.
      chunk_size: images processed at once.

    Returns:
      {"top1": ..., "top5": ..., "mean_per_class_accuracy": ...} (one "top{K}" per K).
    """
    labels = np.asarray(labels)
    num_classes = len(class_embeddings)
    if labels.shape != (len(image_embeddings),):
        raise ValueError(f"labels must be [{len(image_embeddings)}], got {labels.shape}")
    if labels.size == 0:
        raise ValueError("accuracy needs at least one example")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    ranks = np.empty(len(labels), dtype=np.int64)
    for rows, scores in cosine_similarity_chunks(image_embeddings, class_embeddings, chunk_size):
        is_label = labels[rows, None] == np.arange(num_classes)[None, :]
        ranks[rows] = _best_target_rank(scores, is_label)
    results = {f"top{k}": float(np.mean(ranks < k)) for k in _check_ks(ks)}
    correct = ranks == 0
    present = np.unique(labels)
    results["mean_per_class_accuracy"] = float(np.mean([correct[labels == c].mean() for c in present]))
    return results


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """vectors / max(|vectors|, eps) along the last axis, in float32 (float64 stays float64)."""
    vectors = np.asarray(vectors)
    dtype = np.float64 if vectors.dtype == np.float64 else np.float32
    vectors = vectors.astype(dtype, copy=False)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


# --- helpers ---------------------------------------------------------------------------------------


def _best_target_rank(scores: np.ndarray, is_target: np.ndarray) -> np.ndarray:
    """rank(q) of the best target per row (see the module docstring); -1 where a row has none.

    Args:
      scores: float [rows, num_items]; no NaN.
      is_target: bool [rows, num_items].
    """
    _check_no_nan(scores)
    # the best target score per row, and the lowest index that reaches it
    best_score = np.where(is_target, scores, -np.inf).max(axis=1, keepdims=True)
    best_index = np.argmax(is_target & (scores == best_score), axis=1)[:, None]
    # items ranked before it: strictly better, or equal with a lower index
    better = (scores > best_score).sum(axis=1)
    tied_before = ((scores == best_score) & (np.arange(scores.shape[1]) < best_index)).sum(axis=1)
    return np.where(is_target.any(axis=1), better + tied_before, -1)


def _chunks(num_rows: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, num_rows, chunk_size):
        yield slice(start, min(start + chunk_size, num_rows))


def _exact_float(scores: np.ndarray) -> np.ndarray:
    """float32/float64 as they are; any other dtype (bfloat16, ints) widened to float64 exactly."""
    scores = np.asarray(scores)
    return scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)


def _check_no_nan(scores: np.ndarray) -> None:
    if np.isnan(scores).any():
        raise ValueError("similarity contains NaN; the embeddings are probably not finite")


def _check_retrieval_shapes(shape, query_groups, gallery_groups) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"similarity must be [num_queries, num_gallery], got {shape}")
    if query_groups.shape != (shape[0],) or gallery_groups.shape != (shape[1],):
        raise ValueError(
            f"groups must be [{shape[0]}] and [{shape[1]}], "
            f"got {query_groups.shape} and {gallery_groups.shape}"
        )
    return shape[0], shape[1]


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _hashable(key: Hashable) -> Hashable:
    """NumPy scalars as their Python equivalents, so np.bytes_(b"a") and b"a" are one key."""
    return key.item() if isinstance(key, np.generic) else key


def reranked_recall(
    candidates: np.ndarray,
    scores: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """recall@K after re-ranking each query's first-stage candidates by a second score.

    ALBEF's retrieval: a cheap first stage (cosine similarity of separately computed embeddings)
    picks k candidates per query; an expensive scorer that sees the pair (the ITM head on the
    fusion stack) re-orders them:

        reordered_q = candidates_q sorted by scores_q, descending (stable: first-stage order on ties)
        recall@K    = (1/Q) Σ_q 1[ some g in reordered_q[:K] has gallery_groups[g] = query_groups[q] ]

    Only the candidates can be found: K must not exceed k.

    Args:
      candidates: int [num_queries, k], gallery indices, first-stage best first.
      scores: [num_queries, k] float, the second-stage score of each candidate.
      query_groups: [num_queries] group ids; gallery_groups: [num_gallery] group ids.
      ks: the cut-offs K <= k.

    Returns:
      {K: recall@K}.
    """
    candidates, scores = np.asarray(candidates), np.asarray(scores)
    if candidates.shape != scores.shape or candidates.ndim != 2:
        raise ValueError(f"candidates and scores must be equal [num_queries, k]; got {candidates.shape}, {scores.shape}")
    ks = _check_ks(ks)
    if max(ks) > candidates.shape[1]:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} candidates per query; got {candidates.shape[1]}")
    _check_no_nan(scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    reordered = np.take_along_axis(candidates, order, axis=1)
    hits = np.asarray(gallery_groups)[reordered] == np.asarray(query_groups)[:, None]
    return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}
