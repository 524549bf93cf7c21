"""BLEU and CIDEr-D against the COCO caption evaluation toolkit: golden numbers, and a live check."""

import contextlib
import io
import math

import numpy as np
import pytest

from mmjax.evaluation.caption_metrics import cider_d, corpus_bleu, tokenize_caption

# (candidate, references) for one image each, already tokenized (lowercase words, single spaces) so
# that the toolkit's scorers, which only split on spaces, saw exactly these strings. Varied on
# purpose: exact matches, partial overlaps, no overlap, short and long candidates, 1-5 references,
# repeated words, and a tie for the closest reference length (case 9: 5 words vs 4 and 6).
GOLDEN_CASES = [
    ("a red circle above a blue square", ["a red circle above a blue square"]),
    ("a small green triangle next to a circle", [
        "a small green triangle to the left of a circle",
        "a green triangle and a white circle",
        "there is a tiny triangle beside a round circle",
        "a triangle next to a circle on a black background",
        "small green triangle near a circle"]),
    ("a square", ["a large yellow square in the middle of the picture",
                  "one yellow square on a gray background"]),
    ("a big purple circle is at the top left and a small orange square is at the bottom right of the image",
     ["a purple circle and an orange square", "two shapes"]),
    ("circle circle circle circle circle", ["a circle", "a big red circle"]),
    ("the dog runs in the park", ["two blue squares and a triangle"]),
    ("three triangles in a row", ["three red triangles in a row", "a row of three triangles",
                                  "triangles lined up in a row"]),
    ("a blue square below a red circle", ["a red circle above a blue square",
                                          "a blue square below a red circle",
                                          "a circle and a square", "red and blue shapes"]),
    ("triangle", ["a triangle", "triangle"]),
    ("a green square and a circle", ["a green square and two", "a green square and a red circle"]),
    ("a red square and a red square and a red square", ["a red square and a blue square",
                                                        "two red squares"]),
    ("two circles", ["two circles", "two small circles", "a pair of circles", "two round shapes",
                     "circles"]),
    ("a yellow triangle on the right", ["a yellow triangle on the right side",
                                        "on the right there is a yellow triangle"]),
    ("an orange circle", ["a purple square"]),
    ("a circle a square a triangle", ["a circle a square and a triangle",
                                      "three shapes a circle a square a triangle"]),
    ("a large white square in the center of the image with a small black circle inside it",
     ["a small black circle inside a large white square",
      "a white square containing a black circle",
      "black circle in a white square in the center"]),
    ("the the the the", ["the circle is red", "the square is blue", "the the"]),
    ("a blue triangle above a green triangle", ["a blue triangle above a green triangle",
                                                "two triangles one blue one green",
                                                "a green triangle below a blue triangle"]),
    ("a red circle", ["a red circle on the left and a blue square on the right",
                      "a red circle", "red circle and blue square", "a circle that is red"]),
    ("two squares one big and one small", ["a big square and a small square",
                                           "two squares of different sizes",
                                           "one big square and one small square"]),
    ("a pink star", ["a pink star", "a star that is pink", "pink star", "a small pink star",
                     "a star"]),
]

# Produced by pycocoevalcap 1.2 (Bleu(4) with option 'closest', and Cider() with n=4, sigma=6) on
# exactly GOLDEN_CASES (and, for the last two, on its first one and first two cases), as repr()
# of the floats it returned.
GOLDEN_BLEU = [0.7028985507195442, 0.6438399758661835, 0.5856354172476608, 0.5298514787838597]
GOLDEN_CIDER = 2.964014657162685
GOLDEN_CIDER_PER_CAPTION = [
    10.0, 2.38443826329551, 0.13970125869709668, 0.026170250241910616, 0.2892231597145614, 0.0,
    4.380212419953601, 3.45244756513096, 2.4818250371946675, 6.943023091104258, 1.312999305065168,
    2.2727466942941867, 6.470988015128808, 0.0, 6.366689159970715, 1.312214968602297,
    0.8873822801007936, 4.915182823896281, 2.748577013205556, 2.073732867188459, 3.7867536276315534,
]
GOLDEN_BLEU_FIRST_CASE = [0.9999999997142859, 0.9999999997023811, 0.9999999996873018,
                          0.9999999996672622]
GOLDEN_BLEU_FIRST_TWO_CASES = [0.9999999999333334, 0.9999999999282052, 0.9687293060757425,
                               0.9169923473166036]
GOLDEN_CIDER_FIRST_TWO_CASES = (6.338537493142204, [10.0, 2.6770749862844085])


def split(cases):
    return [candidate for candidate, _ in cases], [references for _, references in cases]


def bleu_list(scores):
    return [scores[f"bleu_{n}"] for n in range(1, 5)]


def test_tokenize_caption_lowercases_and_drops_punctuation():
    assert tokenize_caption("A red circle, above a blue square.") == \
        "a red circle above a blue square".split()
    assert tokenize_caption("  Two  shapes:\nA (big) T-shirt; 3.5 inches!? ") == \
        ["two", "shapes", "a", "big", "t-shirt", "3.5", "inches"]
    # clitics are split off as the PTB tokenizer does, and kept
    assert tokenize_caption("The dog's ball isn't red") == ["the", "dog", "'s", "ball", "is", "n't", "red"]
    assert tokenize_caption("... , .") == []


def test_tokenize_caption_is_idempotent():
    for text in ["The dog's ball isn't red.", "A (big) T-shirt; 3.5 inches!"]:
        tokens = tokenize_caption(text)
        assert tokenize_caption(" ".join(tokens)) == tokens


def test_corpus_bleu_equals_pycocoevalcap_golden_numbers():
    candidates, references = split(GOLDEN_CASES)
    assert bleu_list(corpus_bleu(candidates, references)) == GOLDEN_BLEU


def test_cider_d_equals_pycocoevalcap_golden_numbers():
    candidates, references = split(GOLDEN_CASES)
    score, per_caption = cider_d(candidates, references)
    assert score == GOLDEN_CIDER
    assert per_caption.dtype == np.float64 and per_caption.shape == (len(GOLDEN_CASES),)
    assert per_caption.tolist() == GOLDEN_CIDER_PER_CAPTION


def test_raw_captions_score_like_their_tokenized_form():
    # capitals and the punctuation the toolkit's tokenizer deletes change nothing
    candidates, references = split(GOLDEN_CASES)
    raw_candidates = [c.capitalize() + "." for c in candidates]
    raw_references = [[r.replace(" a ", ", a ").capitalize() + " ." for r in refs] for refs in references]
    assert corpus_bleu(raw_candidates, raw_references) == corpus_bleu(candidates, references)
    assert cider_d(raw_candidates, raw_references)[0] == GOLDEN_CIDER


def test_bleu_brevity_penalty_and_clipping_by_hand():
    # 4 words, all matching, against a 6-word reference: every p_n ≈ 1 and BP = exp(1 - 6/4)
    scores = corpus_bleu(["a b c d"], [["a b c d e f"]])
    assert scores["bleu_4"] == pytest.approx(math.exp(1 - 6 / 4), rel=1e-8)
    # "the" 4 times but at most twice in one reference: p_1 = 2/4; "the the" 3 times, at most
    # once: p_2 = 1/3; no trigram match: p_3 = 1e-15/2, the toolkit's smoothing
    scores = corpus_bleu(["the the the the"], [["the cat", "the the"]])
    assert scores["bleu_1"] == pytest.approx(1 / 2, rel=1e-8)
    assert scores["bleu_2"] == pytest.approx(math.sqrt(1 / 2 * 1 / 3), rel=1e-8)
    assert scores["bleu_3"] == pytest.approx((1 / 2 * 1 / 3 * 1e-15 / 2) ** (1 / 3), rel=1e-6)
    # max_n below 4 gives the same first scores
    assert corpus_bleu(["a b c d"], [["a b c e"]], max_n=2) == {
        k: v for k, v in corpus_bleu(["a b c d"], [["a b c e"]]).items() if k in ("bleu_1", "bleu_2")}


def test_candidate_equal_to_its_single_reference():
    candidates, references = split(GOLDEN_CASES[:2])  # case 0 has one reference, equal to it
    assert bleu_list(corpus_bleu(candidates, references)) == GOLDEN_BLEU_FIRST_TWO_CASES
    score, per_caption = cider_d(candidates, references)
    assert (score, per_caption.tolist()) == GOLDEN_CIDER_FIRST_TWO_CASES
    assert per_caption[0] == 10.0  # a perfect caption


def test_corpus_of_one():
    candidates, references = split(GOLDEN_CASES[:1])
    # BLEU is 1 up to the toolkit's smoothing constants
    assert bleu_list(corpus_bleu(candidates, references)) == GOLDEN_BLEU_FIRST_CASE
    # idf = log(N / df) = log(1 / 1) = 0 for every n-gram: CIDEr-D of a lone image is 0
    score, per_caption = cider_d(candidates, references)
    assert score == 0.0 and per_caption.tolist() == [0.0]


@pytest.mark.parametrize("metric", [corpus_bleu, cider_d])
def test_empty_or_malformed_input_raises_naming_the_caption(metric):
    with pytest.raises(ValueError, match="candidate 1 is empty"):
        metric(["a circle", "", "a square"], [["a circle"], ["a square"], ["a square"]])
    with pytest.raises(ValueError, match="candidate 0 is empty"):
        metric([" , ."], [["a circle"]])
    with pytest.raises(ValueError, match="candidate 1 has no reference"):
        metric(["a circle", "a square"], [["a circle"], []])
    with pytest.raises(ValueError, match="reference 1 of candidate 0 is empty"):
        metric(["a circle"], [["a circle", "."]])
    with pytest.raises(ValueError, match="2 candidates but 1 reference groups"):
        metric(["a circle", "a square"], [["a circle"]])
    with pytest.raises(ValueError, match="empty corpus"):
        metric([], [])
    with pytest.raises(TypeError):
        metric(["a circle"], ["a circle"])


def random_caption(rng, vocabulary, max_words):
    return " ".join(rng.choice(vocabulary, size=rng.integers(1, max_words + 1)))


def test_matches_pycocoevalcap_live_on_random_captions():
    """Re-verification for anyone with the toolkit installed: a fresh random corpus, equal floats."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    # a small vocabulary makes many shared n-grams, repeats and clipping; lengths 1..10 words
    rng = np.random.default_rng(2024)
    vocabulary = ["a", "red", "blue", "circle", "square", "the", "on", "left", "two"]
    candidates, references = [], []
    for _ in range(300):
        candidates.append(random_caption(rng, vocabulary, 10))
        references.append([random_caption(rng, vocabulary, 10) for _ in range(rng.integers(1, 6))])
    gts = dict(enumerate(references))
    res = {i: [candidate] for i, candidate in enumerate(candidates)}

    with contextlib.redirect_stdout(io.StringIO()):  # the toolkit prints its counts
        expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected_cider, expected_per_caption = Cider().compute_score(gts, res)

    assert bleu_list(corpus_bleu(candidates, references)) == list(expected_bleu)
    score, per_caption = cider_d(candidates, references)
    assert score == expected_cider
    np.testing.assert_array_equal(per_caption, expected_per_caption)


def test_exact_scene_match_parses_captions_back_to_scenes():
    from mmjax.data import shapes
    from mmjax.evaluation.caption_metrics import exact_scene_match

    config = shapes.ShapesConfig(image_size=32)
    examples = [shapes.generate_example(config, "test", i) for i in range(20)]
    keys = [e["scene_key"] for e in examples]
    right = [e["captions"][0] for e in examples]
    assert exact_scene_match(right, keys, shapes.parse_caption) == 1.0
    wrong = right[1:] + right[:1]  # every caption describes another scene
    assert exact_scene_match(wrong, keys, shapes.parse_caption) == pytest.approx(
        np.mean([shapes.parse_caption(w) == k for w, k in zip(wrong, keys)]))
    assert exact_scene_match(wrong, keys, shapes.parse_caption) < 0.2
    assert exact_scene_match(["a green blob"] + right[1:], keys, shapes.parse_caption) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="2 candidates but 1 scene keys"):
        exact_scene_match(["a", "b"], ["k"], shapes.parse_caption)
