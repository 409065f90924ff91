"""A qkv decoder written as a GGUF file of architecture ``llama``: the inverse of ``gguf`` / ``gguf_model``.

    qkv                          GGUF tensor (``gguf_archs.layer_sources`` read the other way)   type (--type)
    tok.weight                   token_embd.weight                                        T
    blocks.{i}.norm1 / norm2     blk.{i}.attn_norm / ffn_norm                             F32 (1-D)
    blocks.{i}.attn.wq           blk.{i}.attn_q        rows permuted (1)                   T
    blocks.{i}.attn.wkv          blk.{i}.attn_k (rows permuted (1)) and attn_v             T
    blocks.{i}.attn.wo, mlp.*    blk.{i}.attn_output, ffn_gate / ffn_up / ffn_down         T
    norm_f / head.weight         output_norm / output (absent when tied)                  F32 / T

    (1) llama.cpp's rope rotates neighbouring channels (2i, 2i + 1), Hugging Face's and qkv's channel i with
        i + D/2; ``permute_rows`` reorders each head's q/k rows as llama.cpp's converter does, and the
        reader's ``unpermute_rows`` puts them back (a test holds the pair to the identity).

T is the ``--type``: F32 and F16 store the floats; Q8_0, Q4_0 and Q4_1 store blocks of 32 weights along each
row, made by the ``gguf`` package's ``gguf.quants.quantize`` (the reference implementation of ggml's
formats; ``qkv.quant.gguf_blocks`` reads them back, tested equal to gguf's own dequantization). A matrix
whose rows are not a multiple of 32 long stays F16, as llama.cpp's converter leaves it. With Q4_0 / Q4_1 the
token embedding and an untied head are Q8_0, as in llama.cpp's own Q4 files: at 4 bits the vocabulary
matrix alone moved SmolLM2's logits by up to 6 (bench/README.md). Each weight is then
off by at most half a block's step (Q8_0: max|w| / 127 / 2 per block; Q4_x: a 16th of the block's range).

Metadata: the hyper-parameters ``gguf.config_from_gguf`` reads, the tokenizer (``gguf_vocab``), special ids,
``add_bos_token``, the chat template and the sampling defaults (``general.sampling.*``). The file is written
to a temp file beside OUT and renamed into place whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..generation_defaults import GGUF_KEYS
from ..models.decoder import GPT
from .export_axes import check_gguf_llama
from .gguf_archs import layer_shapes, layer_sources
from .gguf_vocab import gguf_vocab

TYPES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
              "q4_1": "MOSTLY_Q4_1"}
BLOCK = 32

ARCH = "llama"                          # the one GGUF architecture written (export_axes.check_gguf_llama)


def permute_rows(rows_O: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: per head, [first half ; second half] -> interleaved rotary pairs."""
    O = rows_O.shape[0]
    return rows_O.reshape(n_heads, 2, O // n_heads // 2, *rows_O.shape[1:]).swapaxes(1, 2).reshape(rows_O.shape)


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """Every tensor of the file as float32 (out, in) arrays, under llama.cpp's names, q/k rows permuted: the
    reader's own table (``gguf_archs.layer_sources``: which GGUF tensors' rows stack into each qkv weight) read
    the other way, so that writer and reader cannot drift apart."""
    cfg = model.cfg
    sd = {k: t.detach().float().cpu().numpy() for k, t in model.state_dict().items()}
    shapes = layer_shapes(cfg, ARCH)
    out = {"token_embd.weight": sd["tok.weight"], "output_norm.weight": sd["norm_f.weight"]}
    for i in range(cfg.n_layers):
        for ours, sources in layer_sources(cfg, ARCH, i).items():
            start = 0
            for name, heads, _ in sources:                  # llama has no fused tensors: no row slices
                rows = shapes[name.split(".", 2)[2]][0]     # blk.{i}.attn_k.weight -> attn_k.weight
                piece = sd[ours][start:start + rows]
                start += rows
                out[name] = permute_rows(piece, heads) if heads else piece
    if not cfg.tie_embeddings:                  # tied: llama.cpp reads token_embd for the head
        out["output.weight"] = sd["head.weight"]
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


def tensor_type(name: str, t: np.ndarray, kind: str) -> str:
    """The GGUF type of one tensor for ``--type kind``: norms F32; rows that do not fill blocks F16; with 4-bit
    types the embedding (and an untied head) Q8_0, as llama.cpp's own Q4 files keep them."""
    if t.ndim == 1:
        return "F32"
    if TYPES[kind].startswith("Q") and t.shape[1] % BLOCK:
        return "F16"
    if TYPES[kind].startswith("Q4") and name in ("token_embd.weight", "output.weight"):
        return "Q8_0"
    return TYPES[kind]


def _metadata(w, model: GPT, name: str, kind: str, gguf) -> None:
    cfg = model.cfg
    w.add_name(name)
    w.add_file_type(int(gguf.LlamaFileType[FILE_TYPES[kind]]))
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(float(cfg.pos_base))
    w.add_layer_norm_rms_eps(float(cfg.norm_eps))
    w.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_heads != cfg.d_model:            # as llama.cpp's converter: only when explicit
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    for key, field in GGUF_KEYS.items():
        value = (getattr(model, "generation_defaults", None) or {}).get(field)
        if value is not None:
            w.add_int32(key, int(value)) if field == "top_k" else w.add_float32(key, float(value))


def _tokenizer(w, tokenizer, vocab_size: int) -> None:
    vocab = gguf_vocab(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for key, i in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id),
                   ("unk", tokenizer.unk_id), ("eot", (tokenizer.extra_stop_ids or (None,))[0])):
        if i is not None:
            getattr(w, f"add_{key}_token_id")(i)
    w.add_add_bos_token(bool(tokenizer.add_bos))
    if tokenizer.chat_template is not None:
        w.add_chat_template(tokenizer.chat_template)


def write_gguf(path: str | Path, model: GPT, kind: str = "f32", tokenizer=None) -> dict[str, int]:
    """Write ``model`` (and its tokenizer) as a llama GGUF at ``path``; returns {tensor type: count}."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError("writing GGUF files needs the gguf package: pip install 'qkv[gguf]' "
                              "(or pip install gguf)") from None
    if kind not in TYPES:
        raise CheckpointError(f"GGUF type {kind!r} is not one qkv writes; choose one of {list(TYPES)}")
    check_gguf_llama(model.cfg)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    tensors = gguf_tensors(model)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    counts: dict[str, int] = {}
    try:
        w = gguf.GGUFWriter(tmp, ARCH)
        _metadata(w, model, path.stem, kind, gguf)
        if tokenizer is not None:
            _tokenizer(w, tokenizer, model.cfg.vocab_size)
        for name, t in tensors.items():
            qtype = gguf.GGMLQuantizationType[tensor_type(name, t, kind)]
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
            data = gguf.quants.quantize(t, qtype)
            w.add_tensor(name, data, raw_dtype=qtype if qtype.name.startswith("Q") else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts
