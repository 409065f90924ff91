"""The tokenizer a GGUF file describes, rebuilt as a ``tokenizers`` object (so ``qkv.Tokenizer`` wraps it
like any other).

A GGUF has no tokenizer.json: it stores the pieces and their types as metadata (``tokenizer.ggml.*``), and
``tokenizer.ggml.model`` says which of two kinds of vocabulary they form:

    gpt2   byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM, ...)       llama   SentencePiece (Llama 2, Mistral, ...)
    ─────────────────────────────────────────────────────────       ───────────────────────────────────────────
    pieces spelled in a 256-character byte alphabet                   pieces are text, "▁" for a space,
      ("Ġthe" = " the")                                                 <0x00>..<0xFF> for raw bytes
    merges: the BPE's merge list, in rank order                      scores: a float per piece, no merges
    tokenizer.ggml.pre: a tag naming the regex that splits           add_space_prefix: "▁" in front of the text
      text into words first (``SPLITS`` below)
    bytes -> alphabet (ByteLevel), then BPE within each word         the whole text one word; BPE with merges
                                                                       derived from the scores, byte fallback
    decoder: alphabet -> bytes -> UTF-8                              decoder: "▁" -> " ", <0xNN> -> bytes

The SentencePiece side is ``gguf_sentencepiece.py``. Both share the rest: token type 3 (control: <s>,
<|im_start|>, ...) and the bos/eos/unk/pad pieces become special tokens (matched whole in text, even
inside it), type 4 (user-defined) added tokens; special ids (bos/eos/pad/unk, and eot where the file has
one), whether a prompt starts with bos and ends with eos, and the chat template come from the same
metadata. The ids equal transformers' (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``) except
where ``SPLITS`` and ``gguf_sentencepiece`` say why not. Other vocabularies (``bert``, ``t5``, ``rwkv``,
...) are refused: their models are not ones qkv reads from GGUF.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..errors import CheckpointError
from ..tokenizers import Tokenizer
from .gguf_sentencepiece import CONTROL, UNKNOWN, USER_DEFINED, sentencepiece_backend, spelled_for

# Split rules by ``tokenizer.ggml.pre``: the regexes llama.cpp applies before byte-level BPE, which are the
# ones in the models' own tokenizer.json. Only tags whose rule a test checks (tests/test_gguf_pretokenizers.py:
# transformers' split, or the family's tokenizer.json); another tag is refused rather than guessed.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: combining marks (\p{M}) stay inside words
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's tekken and OpenAI's o200k (GPT-4o) end a word where small letters give way to a capital:
# "HTTPServerError CamelCase" -> "HTTPServer", "Error", " Camel", "Case"
_UPPER, _LOWER, _LEAD = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", r"[^\r\n\p{L}\p{N}]?"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _cased_words(suffix: str) -> str:
    """Two alternatives: capitals (maybe none) then small letters ("Camel", "HTTPServer"), or capitals then
    small letters (maybe none: "UPPER"); ``suffix`` follows either."""
    return f"{_LEAD}{_UPPER}*{_LOWER}+{suffix}|{_LEAD}{_UPPER}+{_LOWER}*{suffix}"


TEKKEN_SPLIT = _cased_words("") + r"|\p{N}|" + _REST
GPT4O_SPLIT = _cased_words(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?") + r"|\p{N}{1,3}|" + _REST
DIGITS_THEN_GPT2 = [r"\p{N}", GPT2_SPLIT]          # digits one by one first (SmolLM, StarCoder, Command R)
SPLITS = {
    **dict.fromkeys(["default", "gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"], [GPT2_SPLIT]),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "dbrx", "smaug-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"], [LLAMA3_SPLIT]),
    # stablelm2 as llama.cpp has it (Arcade100k); transformers' reader gives it GPT-2's rule
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "kormo", "f2llmv2", "megrez"], [QWEN2_SPLIT]),
    "qwen35": [QWEN35_SPLIT], "tekken": [TEKKEN_SPLIT],
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], [GPT4O_SPLIT]),
    # transformers gives these GPT-2's rule; the models' tokenizer.json (and llama.cpp) split digits first
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r"], DIGITS_THEN_GPT2),
}
KINDS = ("gpt2", "llama")                          # tokenizer.ggml.model values qkv rebuilds


def _pre_tokenizer(tag: str | None, where) -> pre_tokenizers.PreTokenizer:
    splits = SPLITS.get(tag or "default")
    if splits is None:
        raise CheckpointError(f"{where} splits text by rule {tag!r} (tokenizer.ggml.pre), which qkv does not "
                              f"know; known: {sorted(SPLITS)}")
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
    return pre_tokenizers.Sequence(steps + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _merges(f) -> list[tuple[str, str]] | None:
    """tokenizer.ggml.merges ("Ġ t" strings, best first) as pairs; None when the file has none."""
    merges = f.get("tokenizer.ggml.merges")
    return None if merges is None else [tuple(m.split(" ", 1)) for m in merges]


def _byte_level_backend(f, tokens: list[str]) -> Backend:
    backend = Backend(models.BPE({t: i for i, t in enumerate(tokens)}, _merges(f) or []))
    backend.pre_tokenizer = _pre_tokenizer(f.get("tokenizer.ggml.pre"), f.path)
    backend.decoder = decoders.ByteLevel()
    return backend


def _special_ids(f, n_tokens: int) -> dict[str, int | None]:
    ids = {key: f.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos", "padding", "unknown", "eot")}
    for key, i in ids.items():
        if i is not None and not 0 <= i < n_tokens:
            raise CheckpointError(f"{f.path}: tokenizer.ggml.{key}_token_id={i} is outside the {n_tokens} "
                                  f"tokens; the file is damaged")
    return ids


def tokenizer_from_gguf(f, arch: str | None = None) -> Tokenizer | None:
    """``qkv.Tokenizer`` from a ``GGUFFile``'s metadata; None when the file carries no vocabulary.

    arch: the architecture whose SentencePiece rule applies (gguf_sentencepiece); None: the file's own
    ``general.architecture``."""
    arch = arch or f.arch or "llama"
    kind = f.get("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind not in KINDS:
        raise CheckpointError(f"{f.path} has a {kind!r} tokenizer (tokenizer.ggml.model); qkv rebuilds byte-level "
                              f"BPE ('gpt2') and SentencePiece ('llama') vocabularies only")
    tokens = f.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise CheckpointError(f"{f.path} names a {kind!r} tokenizer but has no tokenizer.ggml.tokens; the file is "
                              f"damaged: convert the model again")
    tokens, original = list(tokens), list(tokens)
    types = list(f.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    ids = _special_ids(f, len(tokens))
    if kind == "gpt2":
        backend = _byte_level_backend(f, tokens)
    else:
        unk = ids["unknown"] if ids["unknown"] is not None else next(
            (i for i, k in enumerate(types) if k == UNKNOWN), None)
        tokens, scores = spelled_for(arch, tokens, f.get("tokenizer.ggml.scores"))
        backend = sentencepiece_backend(tokens, scores, types, _merges(f), None if unk is None else tokens[unk],
                                        bool(f.get("tokenizer.ggml.add_space_prefix", True)), f.path, arch)
    named = {ids[key] for key in ("bos", "eos", "padding", "unknown") if ids[key] is not None}
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for i, (t, k) in enumerate(zip(tokens, types)) if k == CONTROL or i in named])
    # a user-defined piece respelled for Gemma ("  " -> "▁▁") stays a vocabulary piece, as in transformers
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for i, (t, k) in enumerate(zip(tokens, types))
                        if k == USER_DEFINED and i not in named and t == original[i]])
    names = {"bos_token": "bos", "eos_token": "eos", "pad_token": "padding", "unk_token": "unknown"}
    specials = {name: tokens[ids[key]] for name, key in names.items() if ids[key] is not None}
    # llama.cpp (and transformers) start a SentencePiece prompt with bos unless the file says otherwise
    return Tokenizer(backend, specials, f.get("tokenizer.chat_template"),
                     add_bos=bool(f.get("tokenizer.ggml.add_bos_token", kind == "llama")),
                     add_eos=bool(f.get("tokenizer.ggml.add_eos_token", False)),
                     extra_stop_ids=[ids["eot"]] if ids["eot"] is not None else ())
