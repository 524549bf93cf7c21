"""A sentencepiece tokenizer: text -> fixed-length token ids for the text tower.

    "a large red circle at the top left"  ->  [17, 42, 9, 23, 5, 6, 31, 12, 2, 0, 0, ...]
                                                 (pieces ...,                eos, padding)

Ids are laid out so that the model needs no extra bookkeeping:
  0 = padding (the text tower derives its mask from `ids != 0`),
  1 = unknown, 2 = end-of-text (every encoded text ends with it; CLIP pools there).
There is no begin-of-text token: the causal text tower does not need one.

The tokenizer is trained on the training captions (sentencepiece BPE, in memory, in about a second
for the `shapes` grammar) and saved as a `.model` file beside the data, so training,
evaluation and a resumed run all use the identical vocabulary.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


class Tokenizer:
    """Wraps a sentencepiece model with padding/truncation to a fixed length."""

    def __init__(self, model_proto: bytes):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        if (self._sp.pad_id(), self._sp.unk_id(), self._sp.eos_id()) != (PAD_ID, UNK_ID, EOS_ID):
            raise ValueError(
                "tokenizer model has pad/unk/eos ids "
                f"{(self._sp.pad_id(), self._sp.unk_id(), self._sp.eos_id())}, expected "
                f"{(PAD_ID, UNK_ID, EOS_ID)}: train it with `train_tokenizer`"
            )

    def __getstate__(self):  # picklable, so loader worker processes can receive it
        return {"model_proto": self.model_proto}

    def __setstate__(self, state):
        self.__init__(state["model_proto"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Loads a `.model` file written by `train_tokenizer`."""
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"tokenizer model {path} does not exist: it is written when the dataset is prepared "
                "(`make data`, or the first `train.py` run)"
            )
        with open(path, "rb") as f:
            return cls(f.read())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of one text, ending with EOS_ID (no padding)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not text.strip():
            raise ValueError(f"cannot tokenize an empty caption: got {text!r}")
        return self._sp.encode(text) + [EOS_ID]

    def encode_batch(self, texts: Sequence[str | bytes], max_len: int) -> np.ndarray:
        """int32 [len(texts), max_len]: ids padded with PAD_ID.

        A text longer than `max_len` keeps its first `max_len - 1` pieces and still ends with
        EOS_ID, so the tower always pools at an end-of-text token.
        """
        out = np.full((len(texts), max_len), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > max_len:
                ids = ids[: max_len - 1] + [EOS_ID]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the ids up to the first EOS_ID; padding is dropped."""
        pieces = []
        for i in np.asarray(ids).tolist():
            if i == EOS_ID:
                break
            if i == PAD_ID:
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            pieces.append(i)
        return self._sp.decode(pieces)

    def unknown_pieces(self, text: str) -> list[str]:
        """The pieces of `text` that map to the unknown id (for clear errors on bad input)."""
        return [p for p, i in zip(self._sp.encode_as_pieces(text), self._sp.encode(text)) if i == UNK_ID]


def train_tokenizer(
    sentences: Iterable[str],
    vocab_size: int,
    path: str | os.PathLike | None = None,
    model_type: str = "bpe",
) -> Tokenizer:
    """Trains a sentencepiece model on `sentences`; writes it atomically to `path` if given.

    BPE (as CLIP uses) merges the frequent words of a caption corpus into single pieces and keeps
    characters for anything else, so no text is ever unknown. (On the tiny `shapes` grammar the
    unigram trainer prunes itself down to near-characters, doubling the sequence length.)
    `hard_vocab_limit=False` lets a small corpus end with fewer pieces than `vocab_size`.
    """
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type=model_type,
        num_threads=1,  # with the fixed seed and no shuffling: the same corpus, the same model
        shuffle_input_sentence=False,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        minloglevel=2,
    )
    proto = model.getvalue()
    if path is not None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # Write next to the target and rename: a crash never leaves a half-written model file.
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
            tmp.write(proto)
        os.replace(tmp.name, path)
    return Tokenizer(proto)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mmjax.data.tokenizer --captions FILE --vocab-size N --output FILE`: trains a
    tokenizer on any corpus (one caption a line, or a captions.jsonl / .csv manifest's captions);
    `config.data.tokenizer = FILE` makes a run use it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mmjax.data.tokenizer", description=main.__doc__.splitlines()[0])
    parser.add_argument("--captions", required=True, help="a text file (one caption a line) or a captions.jsonl / .csv")
    parser.add_argument("--vocab-size", type=int, required=True, help="sentencepiece pieces (at most)")
    parser.add_argument("--output", required=True, help="the .model file to write")
    args = parser.parse_args(argv)
    try:
        captions = read_captions(args.captions)
        if not captions:
            raise ValueError(f"{args.captions} holds no non-empty caption")
        tokenizer = train_tokenizer(captions, args.vocab_size, args.output)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output}: {tokenizer.vocab_size} pieces from {len(captions):,} captions.")
    return 0


def read_captions(path: str) -> list[str]:
    """The non-empty captions of a text file (one a line), or of a captions.jsonl / .csv manifest."""
    import csv
    import json

    if path.endswith(".jsonl"):
        captions = []
        with open(path, encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    caption = json.loads(line).get("caption", [])
                    captions += [caption] if isinstance(caption, str) else list(caption)
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as file:
            captions = [row.get("caption") or "" for row in csv.DictReader(file)]
    else:
        with open(path, encoding="utf-8") as file:
            captions = file.read().splitlines()
    return [" ".join(c.split()) for c in captions if c and c.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
