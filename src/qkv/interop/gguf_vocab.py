"""A qkv tokenizer as GGUF tokenizer metadata (``tokenizer.ggml.*``): the inverse of ``gguf_tokenizer``.

GGUF's ``gpt2`` tokenizer model is byte-level BPE: pieces written in GPT-2's byte alphabet (each byte one
printable character: space -> Ġ, newline -> Ċ), merges, and a ``tokenizer.ggml.pre`` tag naming the rule
that splits text before the bytes are merged (``gguf_tokenizer.SPLITS``, llama.cpp's table). What qkv holds:

    qkv tokenizer                      GGUF                                                   exact?
    byte-level BPE (qkv's, GPT-2's)    pieces + merges, pre = the tag whose rule it has        yes
    char-level, every character ASCII  each character as its byte's piece and no merges (1)   refused (2)
    char-level, a non-ASCII character  -                                                      refused (3)
    WordPiece (BERT)                   -                                                      refused

    (1) An ASCII character is one byte, so byte-level BPE with no merges splits text into exactly the
        characters the char tokenizer would: qkv's GGUF reader and transformers' gave the same ids (a test
        builds that BPE). (2) But llama.cpp refuses a gpt2 vocabulary without ``tokenizer.ggml.merges``
        ("cannot find tokenizer merges", llama-cpp-python 0.3.36), and the gguf writer cannot write an
        empty list; a merge that never fires would need an id of its own. A GGUF llama.cpp cannot open is
        not written. (3) 'é' is two bytes (Ã ©): GGUF would need both as pieces and a merge, ids the model lacks.

Token types: 1 normal, 3 control (special tokens: <eos>, <|im_start|>), 4 user-defined (other added tokens),
5 unused (ids past the tokenizer's vocabulary, up to the model's vocab_size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import CheckpointError
from ..tokenizers import Tokenizer
from .gguf_tokenizer import CONTROL, GPT2_SPLIT, SPLITS, USER_DEFINED

NORMAL, UNUSED = 1, 5
PREFERRED_TAGS = ("gpt-2", "llama-bpe", "qwen2", "smollm")    # names llama.cpp knows (not "gpt2")


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def _refuse(why: str) -> CheckpointError:
    return CheckpointError(f"GGUF cannot hold this tokenizer exactly: {why}; export with --format hf (tokenizer.json "
                           f"holds any tokenizer)")


def _split_tag(pre: dict | None) -> str:
    """The ``tokenizer.ggml.pre`` tag whose split rule is the pre-tokenizer's (as ``gguf_tokenizer`` builds it)."""
    steps = (pre or {}).get("pretokenizers", [pre]) if pre and pre.get("type") == "Sequence" else [pre]
    last = steps[-1] or {}
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        raise _refuse(f"its pre-tokenizer ({(pre or {}).get('type')}) does not end in GPT-2's byte-level step")
    rules = []
    for step in steps[:-1]:
        pattern = step.get("pattern", {})
        if step.get("type") != "Split" or "Regex" not in pattern or step.get("behavior") != "Isolated" \
                or step.get("invert"):
            raise _refuse(f"its pre-tokenizer has a {step.get('type')} step, which no tokenizer.ggml.pre tag names")
        rules.append(pattern["Regex"])
    if last.get("use_regex", True):
        rules.append(GPT2_SPLIT)                   # ByteLevel's own regex is GPT-2's split rule
    tags = [t for t in PREFERRED_TAGS + tuple(SPLITS) if SPLITS.get(t) == rules]
    if not tags:
        raise _refuse(f"its split rule {rules} is none of llama.cpp's tokenizer.ggml.pre rules ({sorted(SPLITS)})")
    return tags[0]


def _types(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str | None], list[int]]:
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
        tokens[i], types[i] = token, NORMAL
    for i, added in tokenizer.backend.get_added_tokens_decoder().items():
        types[i] = CONTROL if added.special else USER_DEFINED
    return tokens, types


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> Vocab:
    """The GGUF tokenizer of ``tokenizer`` for a model of ``vocab_size`` ids; raises for what GGUF cannot hold."""
    state = json.loads(tokenizer.backend.to_str())
    model = state["model"]
    if state.get("normalizer") is not None:
        raise _refuse(f"it normalizes text first ({state['normalizer'].get('type')}), which GGUF's BPE does not")
    tokens, types = _types(tokenizer, vocab_size)
    if model["type"] == "WordLevel" and tokenizer.kind == "char":
        wide = next((t for i, t in enumerate(tokens) if types[i] == NORMAL and (len(t) != 1 or ord(t) > 127)), None)
        if wide is not None:
            raise _refuse(f"the character {wide!r} is {len(wide.encode())} bytes in UTF-8, and byte-level BPE would "
                          f"need its bytes as pieces and a merge, ids this model does not have")
        raise _refuse("a char-level vocabulary is byte-level BPE with no merges, and llama.cpp refuses a GGUF "
                      "without tokenizer.ggml.merges (train with --tokenizer bpe for a GGUF)")
    if model["type"] == "BPE":
        for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise _refuse(f"its BPE sets {option}={model[option]!r}")
        if model.get("byte_fallback") or model.get("ignore_merges"):
            raise _refuse("its BPE sets byte_fallback or ignore_merges, which qkv's GGUF reader does not")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        pre = _split_tag(state.get("pre_tokenizer"))
    else:
        raise _refuse(f"it is a {tokenizer.kind} tokenizer ({model['type']}), and GGUF's gpt2 model is byte-level BPE")
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    return Vocab(tokens, types, merges, pre)
