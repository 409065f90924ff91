"""SentencePiece vocabularies in GGUF (``tokenizer.ggml.model = llama``: Llama 2, Mistral, TinyLlama, ...),
rebuilt as a ``tokenizers`` BPE whose merges come from the pieces' scores.

A SentencePiece model (Kudo & Richardson, 2018) is either a unigram language model (each piece has a
log-probability; the tokenizer picks the most probable segmentation) or a BPE (Sennrich et al., 2016; each
piece's score is minus its merge rank). llama.cpp's converter writes both the same way: pieces, one float
score each, and a type each, but no merges and no normalizer. Neither llama.cpp nor transformers runs a
unigram search on such a file. Both build each word up from characters, always joining the adjacent pair
whose joined piece scores highest. That is a BPE whose merge list is "every way to cut a piece into two
pieces of the vocabulary, best score first". With these pieces besides the single characters:

    piece  score      merge (rank)         "abc" -> "▁abc" -> ▁ a b c
    ▁a     -1.0       ▁ + a   (0)                           ▁a b c     rank 0 is the best joined score
    ▁ab    -2.0       ▁a + b  (1)                           ▁ab c      ▁ab and bc tie: the longer left half
    bc     -2.0       b + c   (2)                                       first (transformers' order)
    ab     -3.0       a + b   (3)

so a unigram file tokenizes a little differently from the SentencePiece model it came from (the pieces
are the same; the segmentation is the greedy one). For a SentencePiece BPE the scores are its merge order,
and the ids equal SentencePiece's own.

Around the model:

    text ─> Metaspace: " " -> "▁", and "▁" put in front of the text (tokenizer.ggml.add_space_prefix)
         ─> BPE with byte fallback: a character no piece covers becomes its UTF-8 bytes <0xE6> <0x97> <0xA5>
    ids  ─> "▁" -> " ", byte pieces -> bytes -> UTF-8, the prefix space taken off again

The prefix goes in front of the whole text only, not after each special token inside it, and not when the
text already starts with a space (" hi" -> ▁hi, which decodes to "hi", where SentencePiece and llama.cpp
write ▁▁hi; llama.cpp also prefixes the text after a special token). That is what transformers' Llama tokenizers do
(``legacy=False``, their GGUF reader included), and qkv gives their ids. A file whose ``add_space_prefix`` is
false gets no prefix at all, as in SentencePiece and llama.cpp; transformers' GGUF reader ignores that flag.

Token types (llama.cpp's numbering, which is SentencePiece's): 1 normal, 2 unknown, 3 control (<s>, </s>:
special tokens, matched whole in text), 4 user-defined (matched whole, not special), 5 unused, 6 byte
(<0x00>..<0xFF>, exactly that spelling).
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers

from ..errors import CheckpointError

SPACE = "\u2581"                                  # "▁", SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every (left, right) split of a piece into two pieces, best joined score first.

    Ties (a piece cut in several places, or pieces of equal score) go to the longer left half, then the
    longer right half, then the piece listed first: the order transformers' GGUF reader uses, so the two
    give the same ids on every text.
    """
    known = set(tokens)
    ranked = []
    for index, (piece, score) in enumerate(zip(tokens, scores)):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in known and right in known:
                ranked.append((-score, -cut, cut - len(piece), index, left, right))
    ranked.sort(key=lambda r: r[:4])
    return [(left, right) for *_, left, right in ranked]


def check_vocabulary(tokens: list[str], scores, types: list[int], where) -> None:
    """One clear error for each way llama.cpp's SentencePiece metadata can be damaged."""
    if scores is None:
        raise CheckpointError(f"{where} has a SentencePiece vocabulary ('llama') without tokenizer.ggml.scores; "
                              f"the file is damaged: convert the model again")
    for name, values in (("scores", scores), ("token_type", types)):
        if len(values) != len(tokens):
            raise CheckpointError(f"{where}: tokenizer.ggml.{name} has {len(values)} entries for {len(tokens)} "
                                  f"tokens; the file is damaged: convert the model again")
    bad = next(((i, k) for i, k in enumerate(types) if k not in range(7)), None)
    if bad is not None:
        raise CheckpointError(f"{where}: token {bad[0]} has type {bad[1]} (tokenizer.ggml.token_type), not one of "
                              f"0-6; the file is damaged: convert the model again")
    bad = next((t for t, k in zip(tokens, types) if k == BYTE and not BYTE_PIECE.fullmatch(t)), None)
    if bad is not None:
        raise CheckpointError(f"{where}: byte token {bad!r} is not spelled <0xNN> (two upper-case hex digits); "
                              f"the file is damaged: convert the model again")


def sentencepiece_backend(tokens: list[str], scores, types: list[int], merges: list[tuple[str, str]] | None,
                          unk: str | None, space_prefix: bool, where) -> Backend:
    """The ``tokenizers`` object of a checked SentencePiece vocabulary (special tokens are added by the caller).

    merges: the file's own, where it has them (rare); otherwise derived from the scores. unk: the piece a
    character becomes when it has no piece and no byte pieces cover it.
    """
    check_vocabulary(tokens, scores, types, where)
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(models.BPE(vocab, merges if merges is not None else merges_from_scores(tokens, scores),
                                 unk_token=unk, fuse_unk=True, byte_fallback=True))
    # split=False: the text stays one word, so merges may join across spaces ("▁▁", "▁de▁la" are pieces)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, split=False,
                                                     prepend_scheme="first" if space_prefix else "never")
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    return backend
