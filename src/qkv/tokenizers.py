"""Text <-> token ids, one interface over char-level and byte-level BPE tokenizers.

Both kinds are real ``tokenizers`` library objects, so every qkv checkpoint stores its tokenizer the same
way, as ``tokenizer.json``, readable by any tool that reads Hugging Face tokenizers.

    >>> tok = Tokenizer.train_char("hello")
    >>> tok.encode("hell"), tok.decode([3, 1])
    ([1, 0, 2, 2], 'oh')

char: one token per character (WordLevel model, every character its own piece). Vocabulary = the
      sorted distinct characters of the training text; an unseen character is an error naming the fix.
bpe:  byte-level BPE (Sennrich et al., 2016; GPT-2's byte-level variant) trained at a chosen vocab size;
      it can encode any string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from .errors import CheckpointError, InputError

EOS_NAMES = ("<eos>", "<|endoftext|>", "</s>")
BOS_NAMES = ("<bos>", "<s>")
PAD_NAMES = ("<pad>", "[PAD]")


class Tokenizer:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.kind = "char" if isinstance(backend.model, models.WordLevel) else "bpe"
        vocab = backend.get_vocab(with_added_tokens=True)
        self.eos_id = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
        self.pad_id = next((vocab[n] for n in PAD_NAMES if n in vocab), None)
        self.bos_id = next((vocab[n] for n in BOS_NAMES if n in vocab), None)
        # Char vocabularies map one character to one id: a dict lookup is 30x faster than the backend
        # on a megabyte of text, and a test holds the two equal.
        # (Only without special tokens: "<eos>" inside text must still become one token.)
        plain_chars = self.kind == "char" and not backend.get_added_tokens_decoder()
        self._char_ids = {t: i for t, i in vocab.items() if len(t) == 1} if plain_chars else None

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def train_char(cls, text: str, special_tokens: Iterable[str] = ()) -> "Tokenizer":
        chars = sorted(set(text))
        specials = list(special_tokens)
        vocab = {c: i for i, c in enumerate(specials + chars)}
        backend = Backend(models.WordLevel(vocab, unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        if specials:
            backend.add_special_tokens(specials)
        return cls(backend)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int,
                  special_tokens: Iterable[str] = ("<eos>",)) -> "Tokenizer":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        backend.train_from_iterator(texts, trainer)
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        try:
            return cls(Backend.from_file(str(path)))
        except Exception as e:  # the library raises plain Exceptions for malformed files
            raise CheckpointError(f"{path} is not a valid tokenizer.json ({e}); re-save the tokenizer") from None

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer | None":
        """tokenizer.json, or GPT-2's vocab.json + merges.txt; None when the directory has neither."""
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            return cls.from_file(d / "tokenizer.json")
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            backend = Backend(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
            backend.add_special_tokens([n for n in EOS_NAMES if n in vocab])
            return cls(backend)
        return None

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    # ---- use ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self._char_ids is not None:
            try:
                return [self._char_ids[c] for c in text]
            except KeyError:
                pass                        # fall through to the backend for the error message
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        except Exception as e:  # WordLevel without an unk token raises on unseen characters
            unseen = sorted({c for c in text if self.backend.token_to_id(c) is None})
            raise InputError(f"text has characters this {self.kind} tokenizer never saw: {unseen!r}; "
                             f"remove them or train the tokenizer on text that has them ({e})") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_text(self, i: int) -> str:
        return self.decode([i])
