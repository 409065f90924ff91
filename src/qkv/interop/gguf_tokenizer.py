"""The tokenizer a GGUF file describes, rebuilt as a ``tokenizers`` object (so ``qkv.Tokenizer`` wraps it
like any other).

A GGUF has no tokenizer.json: it stores the pieces, their types and the merges as metadata
(``tokenizer.ggml.*``), and names the text-splitting rule by a short tag (``tokenizer.ggml.pre``). For
``tokenizer.ggml.model = gpt2`` (byte-level BPE: GPT-2, Llama 3, Qwen2, SmolLM, ...) that is all a BPE
needs:

    pieces (byte-level alphabet) + merges ─> models.BPE
    pre tag ─> split regex (llama.cpp's table) ─> ByteLevel (bytes -> alphabet)      decoder: ByteLevel
    token types: 3 = control (<|im_start|>, ...) -> special tokens; 4 = user-defined -> added tokens

Special ids (bos/eos/pad/unk, and eot where the file has one), whether a prompt starts with bos, and the
chat template come from the same metadata. SentencePiece vocabularies (``tokenizer.ggml.model = llama``)
store scores instead of merges; rebuilding those is not implemented, and such a file says so.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..errors import CheckpointError
from ..tokenizers import Tokenizer

# Split rules by ``tokenizer.ggml.pre`` (the regexes llama.cpp applies before byte-level BPE).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"default": [GPT2_SPLIT], "gpt2": [GPT2_SPLIT], "gpt-2": [GPT2_SPLIT],
          "llama3": [LLAMA3_SPLIT], "llama-v3": [LLAMA3_SPLIT], "llama-bpe": [LLAMA3_SPLIT],
          "qwen2": [QWEN2_SPLIT], "deepseek-r1-qwen": [QWEN2_SPLIT],
          # digits one by one, then GPT-2's rule (SmolLM, StarCoder)
          "smollm": [r"\p{N}", GPT2_SPLIT], "starcoder": [r"\p{N}", GPT2_SPLIT], "refact": [r"\p{N}", GPT2_SPLIT]}
CONTROL, USER_DEFINED = 3, 4


def _pre_tokenizer(tag: str | None, where) -> pre_tokenizers.PreTokenizer:
    splits = SPLITS.get(tag or "default")
    if splits is None:
        raise CheckpointError(f"{where} splits text by rule {tag!r} (tokenizer.ggml.pre), which qkv does not "
                              f"know; known: {sorted(SPLITS)}")
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
    return pre_tokenizers.Sequence(steps + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def tokenizer_from_gguf(f) -> Tokenizer | None:
    """``qkv.Tokenizer`` from a ``GGUFFile``'s metadata; None when the file carries no vocabulary."""
    kind = f.get("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind != "gpt2":
        raise CheckpointError(f"{f.path} has a {kind!r} tokenizer (tokenizer.ggml.model); qkv rebuilds byte-level "
                              f"BPE ('gpt2') vocabularies only, and this model's tokenizer would be wrong")
    tokens = list(f.get("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges", [])]
    types = list(f.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    backend = Backend(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    backend.pre_tokenizer = _pre_tokenizer(f.get("tokenizer.ggml.pre"), f.path)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == USER_DEFINED])
    ids = {key: f.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos", "padding", "unknown", "eot")}
    for key, i in ids.items():
        if i is not None and not 0 <= i < len(tokens):
            raise CheckpointError(f"{f.path}: tokenizer.ggml.{key}_token_id={i} is outside the {len(tokens)} "
                                  f"tokens; the file is damaged")
    names = {"bos_token": "bos", "eos_token": "eos", "pad_token": "padding", "unk_token": "unknown"}
    specials = {name: tokens[ids[key]] for name, key in names.items() if ids[key] is not None}
    return Tokenizer(backend, specials, f.get("tokenizer.chat_template"),
                     add_bos=bool(f.get("tokenizer.ggml.add_bos_token", False)),
                     extra_stop_ids=[ids["eot"]] if ids["eot"] is not None else ())
