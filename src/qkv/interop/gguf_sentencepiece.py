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

The architecture (``general.architecture``, passed in by whoever opened the file) changes three things,
as transformers' GGUF reader does (``integrations/gguf/gguf_tokenizer_mapping.py``, its builders by arch):

    gemma2, gemma3   no prefix space ever (normalizer " " -> "▁", no Metaspace), decoder without the strip;
                     a piece of only spaces ("  ", as llama.cpp's converter stores Gemma's) is spelled "▁▁";
                     merges ranked by the pieces' order in the file, not their scores
    phi3             the prefix comes from a normalizer ("▁" prepended to every piece of text, the text
                     after each special token included), so " hi" -> ▁▁hi where Llama gives ▁hi
    others           the Llama rule above

llama.cpp has no such per-architecture rule (it prefixes by ``add_space_prefix``, which transformers' reader
ignores), so on some texts (Phi-3's " hi", a Gemma file whose flag says true) its ids differ from these: qkv
follows transformers for these three architectures, and keeps Gemma's "no prefix" whatever the flag says.

Token types (llama.cpp's numbering, which is SentencePiece's): 1 normal, 2 unknown, 3 control (<s>, </s>:
special tokens, matched whole in text), 4 user-defined (matched whole, not special), 5 unused, 6 byte
(<0x00>..<0xFF>, exactly that spelling).
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers

from ..errors import CheckpointError

SPACE = "\u2581"                                  # "▁", SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
GEMMA = ("gemma2", "gemma3")                      # architectures with Gemma's rule (see the docstring)


def spelled_for(arch: str, tokens: list[str], scores) -> tuple[list[str], list[float] | None]:
    """The pieces and scores the BPE is built from: Gemma's space runs as "▁" runs, ranked by file order."""
    if arch not in GEMMA:
        return tokens, scores
    tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    return tokens, None if scores is None else [-float(i) for i in range(len(tokens))]


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
                          unk: str | None, space_prefix: bool, where, arch: str = "llama") -> Backend:
    """The ``tokenizers`` object of a checked SentencePiece vocabulary (special tokens are added by the caller).

    merges: the file's own, where it has them (rare); otherwise derived from the scores. unk: the piece a
    character becomes when it has no piece and no byte pieces cover it. arch: the file's architecture
    (``GEMMA``, phi3 or another; the module docstring says what each changes).
    """
    check_vocabulary(tokens, scores, types, where)
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(models.BPE(vocab, merges if merges is not None else merges_from_scores(tokens, scores),
                                 unk_token=unk, fuse_unk=True, byte_fallback=True))
    # split=False: the text stays one word, so merges may join across spaces ("▁▁", "▁de▁la" are pieces)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if arch in GEMMA:                             # GemmaTokenizer's own pipeline (its Split finds no " " left)
        backend.normalizer = normalizers.Replace(" ", SPACE)
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        backend.decoder = decoders.Sequence(steps)
        return backend
    if arch == "phi3":
        backend.normalizer = normalizers.Sequence(([normalizers.Prepend(SPACE)] if space_prefix else [])
                                                  + [normalizers.Replace(" ", SPACE)])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, split=False,
                                                         prepend_scheme="first" if space_prefix else "never")
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    return backend
