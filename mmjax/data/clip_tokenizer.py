"""The CLIP tokenizer (OpenAI's byte-level BPE), built from the user's vocabulary / merges files.

Imported CLIP weights only mean something with the token ids they were trained on, so this
reproduces OpenAI's tokenizer (the one open_clip copies) id for id:

    "A photo of a CAT!"
      -> clean: ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower-cased
      -> split: 's 't 're 've 'm 'll 'd | letter runs | single digits | runs of other symbols
         ("a", "photo", "of", "a", "cat", "!")
      -> bytes mapped to printable characters (GPT-2's byte-level trick: no unknown tokens)
      -> BPE with the end-of-word suffix "</w>" ("cat</w>", "!</w>")
      -> [<|startoftext|>, ids ..., <|endoftext|>]  = [49406, 320, 1125, 539, 320, 2368, 256, 49407]

The BPE itself runs in Hugging Face's `tokenizers` library (a model, a pre-tokenizer and a split
pattern, as transformers' own `CLIPTokenizer` sets it up); the cleaning is done here in Python, as
OpenAI's code does it, because `tokenizers` has no ftfy and no HTML unescaping. (Hugging Face's
tokenizer skips both, so "&amp;" or a curly apostrophe tokenise differently there; for plain text
the three agree, which the tests check.)

The vocabulary comes from files the user has, in either layout:
  - Hugging Face: `vocab.json` (token -> id) and `merges.txt` (one merge per line);
  - open_clip / OpenAI: `bpe_simple_vocab_16e6.txt.gz`, merges only; the vocabulary is the 256
    byte characters, the same with "</w>", one token per merge, then the two special tokens.

Padding is id 0, as in open_clip (it is the token "!", but CLIP's causal text tower never lets a
padding position reach the end-of-text token it pools).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
from typing import Sequence

import ftfy
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
# open_clip's spelling of the same two tokens.
OPEN_CLIP_SPECIAL = {"<start_of_text>": START_OF_TEXT, "<end_of_text>": END_OF_TEXT}

# OpenAI's pre-tokenisation pattern: contractions, letter runs, single digits, symbol runs.
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# OpenAI's file holds 48,894 merges (49,152 - 256 - 2) after its version line.
OPEN_CLIP_NUM_MERGES = 49_152 - 256 - 2
PAD_ID = 0


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, GPT-2's table: printable Latin-1 bytes map to themselves, the
    rest to characters from U+0100 on, so every byte string is a string of visible characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Text -> CLIP token ids. `encode_batch(texts, max_len)` -> int32 [len(texts), max_len].

    Same interface as `mmjax.data.tokenizer.Tokenizer`, so the evaluation code takes either.

    Args:
      vocab: token -> id, with the special tokens <|startoftext|> and <|endoftext|>.
      merges: the BPE merges, highest priority first.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        vocab = {OPEN_CLIP_SPECIAL.get(token, token): i for token, i in vocab.items()}
        for special in (START_OF_TEXT, END_OF_TEXT):
            if special not in vocab:
                raise ValueError(f"the CLIP vocabulary has no {special} token: is this a CLIP vocabulary file?")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("the vocabulary's ids are not 0..N-1 without gaps: the vocabulary file is damaged")
        missing = [a + b for a, b in merges if a + b not in vocab]
        if missing:
            raise ValueError(
                f"{len(missing)} merge results are not in the vocabulary (first: {missing[0]!r}): the "
                "vocabulary and merges files do not belong together"
            )
        self.vocab = vocab
        self.sot_id, self.eot_id = vocab[START_OF_TEXT], vocab[END_OF_TEXT]
        tokenizer = Tokenizer(
            models.BPE(
                vocab=vocab, merges=list(merges), end_of_word_suffix="</w>", continuing_subword_prefix="",
                unk_token=END_OF_TEXT, fuse_unk=False,
            )
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            # Keep the matches of the pattern, drop everything between them (the whitespace).
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            # Bytes -> printable characters only; the pattern above has already split the words.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([START_OF_TEXT, END_OF_TEXT])
        self._tokenizer = tokenizer

    @classmethod
    def from_open_clip_bpe(cls, path: str | os.PathLike) -> "ClipTokenizer":
        """From OpenAI's / open_clip's `bpe_simple_vocab_16e6.txt.gz` (or the uncompressed .txt)."""
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Line 0 is a version comment; OpenAI uses the next 48,894 merges.
        merges = [tuple(line.split()) for line in lines[1 : OPEN_CLIP_NUM_MERGES + 1]]
        _check_merges(merges, path)
        byte_chars = list(bytes_to_unicode().values())
        tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        tokens += [START_OF_TEXT, END_OF_TEXT]
        return cls({token: i for i, token in enumerate(tokens)}, merges)

    @classmethod
    def from_vocab_and_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> "ClipTokenizer":
        """From Hugging Face's `vocab.json` and `merges.txt`."""
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        merges = [tuple(line.split()) for line in lines]
        _check_merges(merges, merges_path)
        return cls(vocab, merges)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClipTokenizer":
        """From a folder holding `vocab.json` + `merges.txt` or `bpe_simple_vocab_16e6.txt.gz`, or
        from one of those files (for `vocab.json`, `merges.txt` must sit beside it)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "vocab.json")):
                return cls.load(os.path.join(path, "vocab.json"))
            gz = os.path.join(path, "bpe_simple_vocab_16e6.txt.gz")
            if os.path.exists(gz):
                return cls.from_open_clip_bpe(gz)
            raise FileNotFoundError(
                f"no CLIP tokenizer files in {path}: expected vocab.json + merges.txt (Hugging Face) "
                "or bpe_simple_vocab_16e6.txt.gz (open_clip, which ships it inside its package)"
            )
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        if path.endswith(".json"):
            merges = os.path.join(os.path.dirname(path), "merges.txt")
            if not os.path.exists(merges):
                raise FileNotFoundError(f"{path} needs merges.txt beside it; {merges} does not exist")
            return cls.from_vocab_and_merges(path, merges)
        return cls.from_open_clip_bpe(path)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def check_vocab_size(self, model_vocab_size: int) -> None:
        """Raises unless the model's token table has exactly one row per token of this vocabulary."""
        if self.vocab_size != model_vocab_size:
            raise ValueError(
                f"the tokenizer files have {self.vocab_size} tokens but the model's token table has "
                f"{model_vocab_size} rows: these files belong to another model; use the tokenizer "
                "files published with the checkpoint"
            )

    def encode(self, text: str | bytes) -> list[int]:
        """[<|startoftext|>, ids ..., <|endoftext|>] of one text, untruncated."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        ids = self._tokenizer.encode(clean_text(text), add_special_tokens=False).ids
        return [self.sot_id, *ids, self.eot_id]

    def encode_batch(self, texts: Sequence[str | bytes], max_len: int) -> np.ndarray:
        """int32 [len(texts), max_len], padded with 0. A text that does not fit keeps its first
        max_len - 1 ids and ends with <|endoftext|> (open_clip's and Hugging Face's truncation)."""
        out = np.full((len(texts), max_len), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > max_len:
                ids = ids[: max_len - 1] + [self.eot_id]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the ids between <|startoftext|> and the first <|endoftext|>, words spaced."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.replace("</w>", " ").split())


def _check_merges(merges: list[tuple], path) -> None:
    bad = [i for i, m in enumerate(merges) if len(m) != 2]
    if bad:
        raise ValueError(
            f"{path}: line {bad[0] + 1} after the version line is not a merge of two symbols: "
            "is this a BPE merges file?"
        )
