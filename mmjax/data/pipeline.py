"""The input pipeline: a random-access source -> shuffled, augmented, tokenized batches.

    source (TFDS ArrayRecord, random access)
      -> this process's slice (every process reads different examples)
      -> shuffle (a new permutation each epoch), repeat forever
      -> per example: pick one of the captions, flip the image *and* mirror the caption's
         left/right words, tokenize                          (seeded by the example's index)
      -> batch [local_batch, ...]
      -> threads prefetch batches while the device computes

It is built on grain's `MapDataset`, so every stage is a deterministic function of (seed, index):
the iterator's state is just a position, saved in each checkpoint, and a resumed run reads the
exact batches an uninterrupted run would have read.

Truth survives augmentation: a horizontal flip turns "a red circle at the top left" into a picture
of a red circle at the top right, so the caption's left and right are swapped with it. Crops are not
used: they could cut an object out while the caption still names it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import numpy as np

from mmjax.data.masking import mask_tokens
from mmjax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _maybe_flip(
    image: np.ndarray, texts: list[str], rng: np.random.Generator, probability: float,
    mirror_text: Callable[[str], str] | None,
) -> tuple[np.ndarray, list[str]]:
    """Flips the image horizontally with `probability`, mirroring every text with it."""
    if probability and rng.random() < probability:
        return np.ascontiguousarray(image[:, ::-1]), [mirror_text(t) for t in texts]
    return np.ascontiguousarray(image), texts


class ContrastivePreprocess:
    """One example -> {"images": uint8 [H, W, 3], "token_ids": int32 [text_len]}.

    One of the example's captions, picked at random. Also the input of a captioner, which
    predicts `token_ids` from the image (the decoder's inputs are these ids shifted right).

    Args:
      tokenizer: text -> ids.
      text_len: fixed text length (padded / truncated).
      flip_probability: chance of a horizontal flip (with the caption mirrored).
      mirror_text: the function that swaps left/right words of a caption.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        text_len: int,
        flip_probability: float = 0.0,
        mirror_text: Callable[[str], str] | None = None,
    ):
        if flip_probability > 0 and mirror_text is None:
            raise ValueError(
                f"config.data.flip_probability={flip_probability} flips images, but this dataset cannot mirror "
                "its captions (their left and right would become false): set --config.data.flip_probability=0"
            )
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.flip_probability = flip_probability
        self.mirror_text = mirror_text

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        captions = example["captions"]
        caption = _text(captions[rng.integers(len(captions))])
        image, (caption,) = _maybe_flip(
            np.asarray(example["image"]), [caption], rng, self.flip_probability, self.mirror_text
        )
        return {"images": image, "token_ids": self.tokenizer.encode_batch([caption], self.text_len)[0]}


class MaskedLanguagePreprocess(ContrastivePreprocess):
    """Adds BERT-style masked inputs for image-conditioned masked language modelling (ALBEF).

    Output: the contrastive fields plus
      mlm_input_ids  int32 [text_len]   the caption with ~15% of its tokens corrupted (80/10/10)
      mlm_targets    int32 [text_len]   the original ids
      mlm_mask       bool  [text_len]   the positions that are scored

    The tokenizer has no mask token of its own, so the mask id is `tokenizer.vocab_size`: the
    model's text vocabulary must be at least one larger than the tokenizer's.
    """

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = super().__call__(example, rng)
        inputs, targets, mask = mask_tokens(
            out["token_ids"],
            rng,
            mask_id=self.tokenizer.vocab_size,
            vocab_size=self.tokenizer.vocab_size,
            special_ids=(PAD_ID, UNK_ID, EOS_ID),
        )
        out.update(mlm_input_ids=inputs.astype(np.int32), mlm_targets=targets.astype(np.int32),
                   mlm_mask=mask)
        return out


class MediaContrastivePreprocess:
    """One clip -> its media and one caption: {"video": uint8 [T, S, S, 3], "audio": int16 [samples],
    "token_ids": int32 [text_len]}, for the media named in `media`.

    A horizontal flip mirrors every frame of the video and the caption's left and right (a clip of
    a circle moving left becomes one of a circle moving right); the sound is unchanged by it.
    """

    def __init__(self, tokenizer: Tokenizer, text_len: int, media: tuple[str, ...],
                 flip_probability: float = 0.0, mirror_text: Callable[[str], str] | None = None):
        if flip_probability > 0 and (mirror_text is None or "video" not in media):
            raise ValueError(
                f"config.data.flip_probability={flip_probability} flips videos, but this dataset has no video or "
                "cannot mirror its captions: set --config.data.flip_probability=0")
        self.tokenizer, self.text_len, self.media = tokenizer, text_len, media
        self.flip_probability, self.mirror_text = flip_probability, mirror_text

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        captions = example["captions"]
        caption = _text(captions[rng.integers(len(captions))])
        out = {}
        if "video" in self.media:
            # [T, S, S, 3]: the width axis is 2
            video = np.asarray(example["video"])
            if self.flip_probability and rng.random() < self.flip_probability:
                video, caption = video[:, :, ::-1], self.mirror_text(caption)
            out["video"] = np.ascontiguousarray(video)
        if "audio" in self.media:
            out["audio"] = np.asarray(example["audio"], np.int16)
        out["token_ids"] = self.tokenizer.encode_batch([caption], self.text_len)[0]
        return out


UNKNOWN_ANSWER = "<unk>"


def build_answer_vocabulary(answers: Iterable[str | bytes], min_count: int = 1) -> list[str]:
    """The answers seen at least `min_count` times, most frequent first; index 0 is "<unk>".

    VQA as classification (Antol et al., 2015) picks one of a fixed set of answers; an answer
    outside the set (a held-out combination, say) maps to index 0 and is always scored wrong.
    """
    counts = Counter(_text(a) for a in answers)
    kept = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    return [UNKNOWN_ANSWER] + kept


def save_answer_vocabulary(vocabulary: list[str], path: str | os.PathLike) -> None:
    """Writes the vocabulary as JSON, atomically (temp file + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as tmp:
        json.dump(vocabulary, tmp)
    os.replace(tmp.name, path)


def load_answer_vocabulary(path: str | os.PathLike) -> list[str]:
    with open(path) as f:
        vocabulary = json.load(f)
    if not vocabulary or vocabulary[0] != UNKNOWN_ANSWER:
        raise ValueError(f"{path} is not an answer vocabulary: its first entry must be {UNKNOWN_ANSWER!r}")
    return vocabulary


def scene_id(scene_key: str | bytes) -> np.int32:
    """A 31-bit id of a scene's structured description (CRC-32), to find duplicate scenes in a batch.

    Two examples showing the same scene get the same id, so image-text matching never presents
    one's caption as a mismatch for the other's image. (Distinct scenes collide with probability
    about 2^-31 per pair: one of them would then lose a negative, nothing worse.)
    """
    key = scene_key if isinstance(scene_key, bytes) else scene_key.encode("utf-8")
    return np.int32(zlib.crc32(key) & 0x7FFFFFFF)


def qa_sequence(
    tokenizer: Tokenizer, question: str, answer: str, max_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """A question and its answer as one token sequence, for generative VQA with a text decoder.

        qa_ids      [what colour is the circle ?  red  EOS  PAD ...]     int32 [max_len]
        qa_weights  [0    0      0  0   0      0  1    1    0   ...]     float32 [max_len]

    The decoder reads the question and is scored only on the answer and its EOS: at test time the
    question is the prompt and the model writes the rest.

    Returns:
      (qa_ids, qa_weights, prompt_len), prompt_len = the number of question tokens.
    """
    question_ids = tokenizer.encode(question)[:-1]  # no EOS between question and answer
    answer_ids = tokenizer.encode(answer)
    if len(question_ids) + len(answer_ids) > max_len:
        raise ValueError(
            f"question and answer take {len(question_ids) + len(answer_ids)} tokens, more than "
            f"config.data.qa_len = {max_len} ({question!r} / {answer!r}): raise qa_len"
        )
    ids = np.full((max_len,), PAD_ID, np.int32)
    weights = np.zeros((max_len,), np.float32)
    ids[: len(question_ids) + len(answer_ids)] = question_ids + answer_ids
    weights[len(question_ids) : len(question_ids) + len(answer_ids)] = 1.0
    return ids, weights, len(question_ids)


class VqaPreprocess:
    """One example -> a question about its image and the answer's class (and, optionally, more).

    Output:
      images         uint8 [H, W, 3]
      question_ids   int32 [question_len]  the tokenized question
      answer         int32 []              index into the answer vocabulary (0 = unknown answer)
      question_type  int32 []              index into `question_types`
    with `with_caption`, also a caption of the same (flipped) image, for models trained on
    several objectives at once:
      token_ids      int32 [text_len]      one of the example's captions
      scene_id       int32 []              `scene_id(scene_key)`, equal for equal scenes
    with `with_mlm` (needs `with_caption`), the BERT-masked caption (see MaskedLanguagePreprocess):
      mlm_input_ids, mlm_targets int32 [text_len], mlm_mask bool [text_len]
    with `qa_len > 0`, questions and answers as decoder sequences (see `qa_sequence`): the picked
    question first, then `qa_per_image - 1` other questions of the same image, all distinct:
      qa_ids int32 [qa_per_image, qa_len], qa_weights float32 [qa_per_image, qa_len]
    (A decoder reads the image once and answers several questions about it: more answers per
    image-tower pass.)

    One of the example's questions (and captions) is picked at random. A flip mirrors the question
    *and* the answer *and* the caption ("what is left of the blue circle?" / "red square" stays
    true as "what is right of the blue circle?" with the mirrored scene), so augmentation never
    teaches a false answer.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        question_len: int,
        answer_vocabulary: Sequence[str],
        question_types: Sequence[str],
        flip_probability: float = 0.0,
        mirror_text: Callable[[str], str] | None = None,
        *,
        text_len: int = 0,
        with_caption: bool = False,
        with_mlm: bool = False,
        qa_len: int = 0,
        qa_per_image: int = 1,
    ):
        if flip_probability > 0 and mirror_text is None:
            raise ValueError("flip_probability > 0 needs mirror_text, or answers become false")
        if (with_caption or with_mlm) and text_len < 1:
            raise ValueError(f"captions need text_len >= 1; got {text_len}")
        if with_mlm and not with_caption:
            raise ValueError("with_mlm masks the caption: it needs with_caption=True")
        self.tokenizer = tokenizer
        self.question_len = question_len
        self.answer_index = {a: i for i, a in enumerate(answer_vocabulary)}
        self.type_index = {t: i for i, t in enumerate(question_types)}
        self.flip_probability = flip_probability
        self.mirror_text = mirror_text
        self.text_len = text_len
        self.with_caption = with_caption
        self.with_mlm = with_mlm
        self.qa_len = qa_len
        if qa_per_image < 1:
            raise ValueError(f"qa_per_image must be >= 1; got {qa_per_image}")
        self.qa_per_image = qa_per_image

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        pick = rng.integers(len(example["questions"]))
        question, answer = _text(example["questions"][pick]), _text(example["answers"][pick])
        qtype = _text(example["question_types"][pick])
        if qtype not in self.type_index:
            raise ValueError(f"unknown question type {qtype!r}; expected one of {list(self.type_index)}")
        texts = [question, answer]
        extra = []
        if self.qa_len and self.qa_per_image > 1:
            others = [i for i in range(len(example["questions"])) if i != pick]
            if len(others) < self.qa_per_image - 1:
                raise ValueError(
                    f"qa_per_image is {self.qa_per_image} but the example has only "
                    f"{len(others) + 1} questions: lower config.data.qa_per_image"
                )
            extra = list(rng.permutation(others)[: self.qa_per_image - 1])
        extra_texts = [_text(example[f][i]) for i in extra for f in ("questions", "answers")]
        if self.with_caption:
            captions = example["captions"]
            texts.append(_text(captions[rng.integers(len(captions))]))
        image, texts = _maybe_flip(
            np.asarray(example["image"]), texts + extra_texts, rng, self.flip_probability, self.mirror_text
        )
        texts, extra_texts = texts[: len(texts) - len(extra_texts)], texts[len(texts) - len(extra_texts):]
        question, answer = texts[0], texts[1]
        out = {
            "images": image,
            "question_ids": self.tokenizer.encode_batch([question], self.question_len)[0],
            "answer": np.int32(self.answer_index.get(answer, 0)),
            "question_type": np.int32(self.type_index[qtype]),
        }
        if self.with_caption:
            token_ids = self.tokenizer.encode_batch([texts[2]], self.text_len)[0]
            out.update(token_ids=token_ids, scene_id=scene_id(example["scene_key"]))
        if self.with_mlm:
            inputs, targets, mask = mask_tokens(
                out["token_ids"], rng, mask_id=self.tokenizer.vocab_size,
                vocab_size=self.tokenizer.vocab_size, special_ids=(PAD_ID, UNK_ID, EOS_ID),
            )
            out.update(mlm_input_ids=inputs.astype(np.int32), mlm_targets=targets.astype(np.int32),
                       mlm_mask=mask)
        if self.qa_len:
            pairs = [(question, answer)] + list(zip(extra_texts[0::2], extra_texts[1::2]))
            sequences = [qa_sequence(self.tokenizer, q, a, self.qa_len)[:2] for q, a in pairs]
            out["qa_ids"] = np.stack([ids for ids, _ in sequences])
            out["qa_weights"] = np.stack([weights for _, weights in sequences])
        return out


def all_questions(
    example: dict[str, Any], tokenizer: Tokenizer, question_len: int,
    answer_vocabulary: Sequence[str], question_types: Sequence[str],
) -> dict[str, np.ndarray]:
    """Every question of one example, for evaluation (no augmentation), Q = questions per example.

    Returns: question_ids int32 [Q, question_len], answer int32 [Q] (0 = not in the vocabulary),
    question_type int32 [Q], and the raw texts: questions, answers object [Q].
    """
    questions = [_text(q) for q in example["questions"]]
    answers = [_text(a) for a in example["answers"]]
    answer_index = {a: i for i, a in enumerate(answer_vocabulary)}
    type_index = {t: i for i, t in enumerate(question_types)}
    return {
        "question_ids": tokenizer.encode_batch(questions, question_len),
        "answer": np.asarray([answer_index.get(a, 0) for a in answers], np.int32),
        "question_type": np.asarray([type_index[_text(t)] for t in example["question_types"]], np.int32),
        "questions": np.asarray(questions, dtype=object),
        "answers": np.asarray(answers, dtype=object),
    }


class DecodedCache(Sequence):
    """A random-access source that keeps every example once it is decoded.

    Reading a `shapes` example from its ArrayRecord file (parse the record, decode the PNG and
    every text field) takes ~1.4 ms of Python, 30x what preprocessing it takes: over many epochs
    of a small dataset, decoding each example once and keeping it makes the loader ~20x faster
    and gives the cores back to the train step (BENCHMARKS.md, "Input pipeline"). Memory: the
    decoded split (48 px, 20k scenes: ~0.3 GB). Examples are shared between epochs, so the
    preprocessing must not modify them in place (none here does).
    """

    def __init__(self, source: Sequence):
        self._source = source
        self._examples: list[Any] = [None] * len(source)

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> Any:
        example = self._examples[index]
        if example is None:
            # Two loader threads may decode the same example at once; both get equal copies.
            example = self._examples[index] = self._source[index]
        return example


def make_train_loader(
    source: Sequence,
    preprocess: Callable[[dict, np.random.Generator], dict],
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch_batches: int = 4,
    cache_decoded: bool = False,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's batches (`batch_size` rows each).

    `get_state()` / `set_state()` on the returned iterator save and restore the position.
    `cache_decoded`: keep decoded examples in memory (`DecodedCache`); same batches, faster
    from the second epoch on.
    """
    if cache_decoded:
        source = DecodedCache(source)
    if batch_size < 1:
        raise ValueError(f"local batch size must be >= 1; got {batch_size}")
    if len(source) < batch_size * process_count:
        raise ValueError(
            f"the training split has {len(source)} examples, fewer than one global batch of "
            f"{batch_size * process_count}: lower config.batch_size or build a larger split"
        )
    # One global stream of examples, the same for any number of processes: shuffled, repeated,
    # preprocessed (each example's random augmentation is seeded by its position in the stream)
    # and cut into local batches; global batch t is local batches t·P .. t·P + P − 1, and process
    # p takes the p-th of them. So a run on 2 hosts sees exactly the global batches of a run on
    # 1 host, and each process reads and preprocesses only its own rows.
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)
        .random_map(preprocess, seed=seed + 1)
        .batch(batch_size, drop_remainder=True)
    )[process_index::process_count]
    # Threads overlap loading with the device step; the batches they produce are still in order.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(dataset.to_iter_dataset(read_options))


def iterate_in_order(
    source: Sequence,
    transform: Callable[[dict], dict],
    *,
    batch_size: int | None,
    num_threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `source` once, in index order, transformed and batched (last batch short;
    `batch_size=None`: one example at a time, unstacked, for examples of different shapes).

    Used by evaluation, which must see each test example exactly once.
    """
    dataset = grain.MapDataset.source(source).map(transform)
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=False)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads)))
