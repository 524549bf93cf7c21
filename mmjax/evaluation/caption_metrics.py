"""Captioning metrics, BLEU-1..4 and CIDEr-D, computed exactly as the COCO caption evaluation code.

Every model that writes captions is compared with published numbers, and those numbers come from
one implementation: the COCO caption evaluation toolkit (`pycocoevalcap`: `Bleu(4)` and `Cider()`
after its PTB tokenizer). Its formulas have quirks that shift scores by a few tenths, so this
module reproduces its arithmetic step by step, in the same order, and gives the same floats (the
tests check equality against golden numbers produced by it). Pure Python and NumPy; nothing here
runs at training time.

Notation. A corpus has N captions to score (one candidate c_i per image, i = 0..N-1), each with a
set of references R_i = {r_i1, ..., r_im} (m ≥ 1). Captions are lists of tokens
(`tokenize_caption`); g is an n-gram, h_g(s) the number of times g occurs in s, |s| its length.

1. BLEU (Papineni et al., 2002) at corpus level, the way `Bleu(4)` computes it:

       correct_n = Σ_i Σ_{g ∈ n-grams(c_i)} min( h_g(c_i), max_j h_g(r_ij) )   (clipped matches)
       guess_n   = Σ_i max(0, |c_i| - n + 1)                                   (candidate n-grams)
       p_n       = (correct_n + 1e-15) / (guess_n + 1e-9)                      (smoothed precision)
       BLEU-N    = BP · (p_1 · p_2 ··· p_N)^(1/N)                              (geometric mean)

       C = Σ_i |c_i|,   R = Σ_i |r_i*|   where r_i* is the reference of c_i with the length
                                          closest to |c_i| (the shorter one on a tie: 'closest')
       BP = exp(1 - 1/ρ) if ρ < 1 else 1,   ρ = (C + 1e-15) / (R + 1e-9)

   The counts are summed over the corpus before dividing (corpus BLEU is *not* the mean of the
   per-caption BLEUs), and the two constants keep a zero count finite: p_n = 0 gives ~1e-15/guess_n,
   so BLEU-4 of a corpus without any matching 4-gram is small but not 0, as in the toolkit.

2. CIDEr-D (Vedantam et al., 2015, with the toolkit's "-D" changes). Each caption s becomes, for
   each n = 1..4, a tf-idf vector over n-grams, with the document frequency counted over the
   references *of the evaluated corpus* (one document per image, all its references together):

       df(g)       = #{i : g occurs in some r_ij}
       w_g(s)      = h_g(s) · ( log N - log max(1, df(g)) )
       CIDEr_n(c, r) = e^{-δ² / 2σ²} · Σ_g min(w_g(c), w_g(r)) · w_g(r) / ( |w(c)| |w(r)| )
       CIDEr-D(c_i) = 10 · (1/4) Σ_{n=1..4} (1/m) Σ_j CIDEr_n(c_i, r_ij)
       corpus score = (1/N) Σ_i CIDEr-D(c_i)

   - min(w_g(c), w_g(r)) clips the candidate: repeating a matching word does not raise the score.
   - δ = ℓ(c) - ℓ(r) and the Gaussian with σ = 6 penalise a length mismatch. The toolkit's "length"
     ℓ(s) is the number of *bigrams* of s, |s| - 1, so δ is the difference in words (captions are
     never empty here); with n = 1 no bigram is counted and there is no penalty. Kept as is.
   - When |w(c)| = 0 or |w(r)| = 0 the dot product is not divided (it is 0 anyway).
   - Because idf = log(N / df), an n-gram in every image's references weighs 0, and a corpus of one
     image scores 0 whatever the caption: CIDEr-D needs a corpus, not a single pair.

Tokenization. The toolkit runs Stanford's PTB tokenizer (Java) with lower-casing, then deletes the
punctuation tokens  '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;  and splits on spaces.
`tokenize_caption` does the same for plain text without Java: see its docstring for what it
simplifies. On lowercase ASCII words, commas and periods (our captions) the two agree exactly.

Beyond the toolkit. Its scorers always count n-grams up to 4, so `Bleu(n)` only works for n ≤ 4 and
`Cider(n)` only for n = 4; here `max_n` and `n` may be any positive integer (other values have no
toolkit numbers to match). Empty captions, which the toolkit scores silently, raise a ValueError.

Examples:
  >>> corpus_bleu(["a red circle"], [["a red circle", "one red circle"]])["bleu_1"]  # doctest: +ELLIPSIS
  0.99999999933...
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np

# The toolkit's smoothing: added to the numerator and denominator of every precision and of the
# length ratio, so that a zero count gives a tiny positive number instead of 0/0 or log(0).
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

NGram = tuple[str, ...]

# Clitics that the PTB tokenizer splits off a word ("dog's" -> "dog 's", "don't" -> "do n't").
_NEGATION = re.compile(r"n't\b")
_CLITIC = re.compile(r"'(s|re|ve|ll|d|m)\b")
# A token: a split-off clitic, or a run of letters/digits that may contain inner hyphens or periods
# ("t-shirt", "3.5"). Everything else (spaces, the punctuation the toolkit deletes) separates.
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:[-.][^\W_]+)*")


def tokenize_caption(text: str) -> list[str]:
    """Lowercases a caption and splits it into words, dropping punctuation, like the COCO toolkit.

        "A man's dog, running." -> ["a", "man", "'s", "dog", "running"]

    Simplifications of the PTB tokenizer, none of which touches lowercase words, commas and
    periods: hyphenated words and decimal numbers stay whole and clitics ('s 're 've 'll 'd 'm n't)
    are split off as PTB does, but abbreviations lose their final period ("st." -> "st"), other
    apostrophes separate words ("o'clock" -> "o", "clock"), and symbols PTB would keep as tokens
    of their own ($ % & # / + = @ *, square brackets) are dropped.

    Joining the tokens with spaces and tokenizing again gives the same tokens.
    """
    text = text.lower()
    # split off clitics: "don't" -> "do n't", "dog's" -> "dog 's"
    text = _NEGATION.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    return _TOKEN.findall(text)


def _ngram_counts(tokens: Sequence[str], max_n: int) -> dict[NGram, int]:
    """h_g(s) for every n-gram g of length 1..max_n, in order of n, then of first occurrence.

    The order matters for CIDEr-D: it is the order in which floats are summed, and keeping the
    toolkit's order is what makes the scores equal to the last bit.
    """
    counts: dict[NGram, int] = {}
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            ngram = tuple(tokens[start:start + n])
            counts[ngram] = counts.get(ngram, 0) + 1
    return counts


def _tokenize_corpus(
    candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Tokenizes every caption and checks the corpus shape, naming the first bad entry."""
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("candidates and references must be sequences of captions, not one string")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference groups")
    if not candidates:
        raise ValueError("empty corpus: no candidate caption to score")
    candidate_tokens, reference_tokens = [], []
    for i, (candidate, refs) in enumerate(zip(candidates, references)):
        if isinstance(refs, str):
            raise TypeError(f"references[{i}] is a string; it must be a list of reference captions")
        tokens = tokenize_caption(candidate)
        if not tokens:
            raise ValueError(f"candidate {i} is empty (no word after tokenization): {candidate!r}")
        if len(refs) == 0:
            raise ValueError(f"candidate {i} has no reference caption")
        ref_tokens = [tokenize_caption(ref) for ref in refs]
        for j, tokens_j in enumerate(ref_tokens):
            if not tokens_j:
                raise ValueError(f"reference {j} of candidate {i} is empty: {refs[j]!r}")
        candidate_tokens.append(tokens)
        reference_tokens.append(ref_tokens)
    return candidate_tokens, reference_tokens


def corpus_bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> dict[str, float]:
    """Corpus-level BLEU-1..max_n, as `pycocoevalcap.bleu.Bleu(4)` (option 'closest').

        BLEU-N = BP · (Π_{n=1..N} p_n)^(1/N),   p_n = (Σ clipped matches + 1e-15) / (Σ n-grams + 1e-9)
        BP     = exp(1 - R/C) when C < R, else 1   (C, R: corpus candidate / closest-reference lengths)

    (the exact smoothing of the ratio ρ = C/R is in the module docstring).

    Args:
      candidates: [N] one generated caption per image (raw text; tokenized here).
      references: `[N][m_i]`, the reference captions of each image, m_i ≥ 1.
      max_n: the longest n-gram; BLEU-1..max_n are all returned.

    Returns:
      {"bleu_1": ..., ..., "bleu_{max_n}": ...}, floats in [0, 1].

    Raises:
      ValueError: an empty candidate or reference (after tokenization), an image without
        references, an empty corpus, or N that differs between the two arguments.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    candidate_tokens, reference_tokens = _tokenize_corpus(candidates, references)

    # accumulate clipped matches, candidate n-grams and both lengths over the corpus
    correct = [0] * max_n
    guess = [0] * max_n
    candidate_length = reference_length = 0
    for tokens, refs in zip(candidate_tokens, reference_tokens):
        max_ref_counts: dict[NGram, int] = {}
        for ref in refs:
            for ngram, count in _ngram_counts(ref, max_n).items():
                max_ref_counts[ngram] = max(max_ref_counts.get(ngram, 0), count)
        for ngram, count in _ngram_counts(tokens, max_n).items():
            correct[len(ngram) - 1] += min(count, max_ref_counts.get(ngram, 0))
        for n in range(1, max_n + 1):
            guess[n - 1] += max(0, len(tokens) - n + 1)
        candidate_length += len(tokens)
        # the closest reference length, the shorter one on a tie
        reference_length += min((abs(len(ref) - len(tokens)), len(ref)) for ref in refs)[1]

    # geometric mean of the smoothed precisions, built up one order at a time
    scores = {}
    product = 1.0
    for n in range(1, max_n + 1):
        product *= (correct[n - 1] + _BLEU_TINY) / (guess[n - 1] + _BLEU_SMALL)
        scores[f"bleu_{n}"] = product ** (1.0 / n)

    # brevity penalty on the corpus length ratio
    ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    if ratio < 1:
        brevity_penalty = math.exp(1 - 1 / ratio)
        scores = {name: score * brevity_penalty for name, score in scores.items()}
    return scores


def _tfidf_vectors(
    counts: dict[NGram, int], n: int, log_num_images: np.float64, document_frequency: Counter
) -> tuple[list[dict[NGram, float]], list[float], int]:
    """One caption's tf-idf vector per n-gram order, their norms, and the toolkit's length.

    Returns:
      (weights [n] of {n-gram: w_g}, norms [n] of |w|, length = number of bigrams).
    """
    weights: list[dict[NGram, float]] = [{} for _ in range(n)]
    squared_norms = [0.0] * n
    for ngram, term_frequency in counts.items():
        order = len(ngram) - 1
        # w_g = h_g · (log N - log max(1, df(g))); an n-gram unseen in the references has df = 0
        weight = float(term_frequency) * (
            log_num_images - np.log(max(1.0, float(document_frequency[ngram])))
        )
        weights[order][ngram] = weight
        squared_norms[order] += weight**2
    norms = [math.sqrt(squared_norm) for squared_norm in squared_norms]
    # the toolkit's "length" is the number of bigrams, |s| - 1 (0 when no bigram is counted)
    length = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return weights, norms, length


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, np.ndarray]:
    """CIDEr-D of every candidate and of the corpus, as `pycocoevalcap.cider.Cider()`.

        CIDEr_n(c, r) = e^{-δ²/2σ²} · Σ_g min(w_g(c), w_g(r)) · w_g(r) / (|w(c)| |w(r)|)
        CIDEr-D(c_i)  = 10 · mean_{n=1..4} mean_j CIDEr_n(c_i, r_ij),   corpus = mean_i CIDEr-D(c_i)

    with w_g the tf-idf weight of n-gram g, idf from the references of *this* corpus, and δ the
    length difference (module docstring). Scores are comparable only between corpora of the same
    images: the idf changes with the corpus, and a corpus of one image scores 0.

    Args:
      candidates: [N] one generated caption per image (raw text; tokenized here).
      references: `[N][m_i]`, the reference captions of each image, m_i ≥ 1.
      n: the longest n-gram (the scores average orders 1..n).
      sigma: standard deviation, in words, of the Gaussian length penalty.

    Returns:
      (corpus score, per-caption scores [N] float64); a perfect caption scores about 10.

    Raises:
      ValueError: as `corpus_bleu`.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    candidate_tokens, reference_tokens = _tokenize_corpus(candidates, references)
    candidate_counts = [_ngram_counts(tokens, n) for tokens in candidate_tokens]
    reference_counts = [[_ngram_counts(ref, n) for ref in refs] for refs in reference_tokens]

    # document frequency: in how many images' reference sets each n-gram occurs
    document_frequency: Counter = Counter()
    for refs in reference_counts:
        document_frequency.update({ngram for counts in refs for ngram in counts})
    log_num_images = np.log(float(len(reference_counts)))

    scores = []
    for counts, refs in zip(candidate_counts, reference_counts):
        weights, norms, length = _tfidf_vectors(counts, n, log_num_images, document_frequency)
        score = np.zeros(n)
        for ref in refs:
            ref_weights, ref_norms, ref_length = _tfidf_vectors(ref, n, log_num_images, document_frequency)
            # Gaussian length penalty (the toolkit writes it as a power of e; kept for equal floats)
            delta = float(length - ref_length)
            length_penalty = math.e ** (-(delta**2) / (2 * sigma**2))
            similarity = np.zeros(n)
            for order in range(n):
                # clipped dot product over the candidate's n-grams, then cosine normalisation
                dot = 0.0
                for ngram, weight in weights[order].items():
                    ref_weight = ref_weights[order].get(ngram, 0.0)
                    dot += min(weight, ref_weight) * ref_weight
                if norms[order] != 0 and ref_norms[order] != 0:
                    dot /= norms[order] * ref_norms[order]
                similarity[order] = dot * length_penalty
            score += similarity
        # mean over n-gram orders, mean over references, × 10
        scores.append(np.mean(score) / len(refs) * 10.0)
    per_caption = np.array(scores, dtype=np.float64)
    return float(np.mean(per_caption)), per_caption


def exact_scene_match(
    candidates: Sequence[str], scene_keys: Sequence[str], parse: Callable[[str], str | None]
) -> float:
    """Fraction of generated captions whose meaning is exactly the scene shown.

        match = 1/N Σ_i [parse(candidate_i) = key_i]

    n-gram metrics reward wording; on a synthetic world whose captions can be parsed back into
    structured truth (`shapes.parse_caption`), this asks the real question: did the caption name
    every object with the right shape, colour, size and position, and nothing else? A caption the
    grammar cannot parse counts as wrong.
    """
    if len(candidates) != len(scene_keys):
        raise ValueError(f"{len(candidates)} candidates but {len(scene_keys)} scene keys")
    if not candidates:
        raise ValueError("exact_scene_match needs at least one caption")
    hits = [parse(c) == (k.decode("utf-8") if isinstance(k, bytes) else k) for c, k in zip(candidates, scene_keys)]
    return float(np.mean(hits))
