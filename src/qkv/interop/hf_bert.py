"""Hugging Face BERT checkpoints in (Devlin et al., 2019), without transformers installed.

A directory written by ``BertModel`` / ``BertForMaskedLM.save_pretrained`` holds config.json
(model_type "bert"), the weights (see ``hf_files``) and usually the tokenizer (tokenizer.json, or BERT's
vocab.txt + tokenizer_config.json). BERT is our ``Encoder`` with learned positions, segment embeddings, a
LayerNorm after the embeddings, post-norm blocks and biases everywhere, so loading is renaming keys:

    Hugging Face (``bert.`` prefix optional)           qkv
    embeddings.word_embeddings            (V, C)        tok.weight      (the MLM decoder is tied to it)
    embeddings.position_embeddings        (P, C)        pos.table.weight
    embeddings.token_type_embeddings      (T, C)        types.weight
    embeddings.LayerNorm                  (C,)          embed_norm
    encoder.layer.{i}.attention.self.query              blocks.{i}.attn.wq
    encoder.layer.{i}.attention.self.key / value        blocks.{i}.attn.wkv   (rows [key ; value])
    encoder.layer.{i}.attention.output.dense            blocks.{i}.attn.wo
    encoder.layer.{i}.attention.output.LayerNorm        blocks.{i}.norm1      (norm(x + attention(x)))
    encoder.layer.{i}.intermediate.dense  (F, C)        blocks.{i}.mlp.up
    encoder.layer.{i}.output.dense        (C, F)        blocks.{i}.mlp.down
    encoder.layer.{i}.output.LayerNorm                  blocks.{i}.norm2      (norm(x + FFN(x)))
    cls.predictions.transform.dense / .LayerNorm        head.transform / head.norm        (MLM only)
    cls.predictions.bias                  (V,)          head.decoder.bias                 (MLM only)

With ``cls.predictions.*`` tensors the result is our ``BERT`` (masked-LM head), without them a bare
``Encoder``. Left out on purpose: the pooler (read only by BERT's next-sentence head; our classifier
trains its own) and the NSP head ``cls.seq_relationship``. Old checkpoints name LayerNorm parameters
``gamma`` / ``beta`` and keep a ``position_ids`` buffer; both are understood.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, QkvError
from ..models.encoder import BERT, Encoder
from ..tokenizers import Tokenizer
from ..weights import model_from_state
from .hf_files import check_shapes, read_hf_json, read_weights

# HF hidden_act -> our mlp (the MLM transform uses the same activation).
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}

# Options that change the math in ways our encoder does not implement: name -> the only value we accept.
REQUIRED_OPTIONS = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}

# Tensors that are not part of what we load (see the module docstring).
IGNORED = ("pooler.", "cls.seq_relationship.", "embeddings.position_ids")

# Per-layer renames; key and value are fused into wkv separately.
LAYER_NAMES = {"attention.self.query": "attn.wq", "attention.output.dense": "attn.wo",
               "attention.output.LayerNorm": "norm1", "intermediate.dense": "mlp.up",
               "output.dense": "mlp.down", "output.LayerNorm": "norm2"}


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for a BERT config.json; missing keys take BertConfig's defaults, as transformers does."""
    if hf.get("model_type") != "bert":
        raise CheckpointError(f"{where} has model_type={hf.get('model_type')!r}; load_bert reads 'bert' only")
    for name, want in REQUIRED_OPTIONS.items():
        if hf.get(name, want) != want:
            raise CheckpointError(f"{where} sets {name}={hf[name]!r}, which qkv's BERT does not implement; "
                                  f"only {name}={want!r} checkpoints can be loaded")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS_IN:
        raise CheckpointError(f"{where} sets hidden_act={act!r}, which qkv does not implement; "
                              f"supported: {sorted(ACTIVATIONS_IN)}")
    try:
        return ModelConfig(
            vocab_size=hf.get("vocab_size", 30522), max_len=hf.get("max_position_embeddings", 512),
            n_layers=hf.get("num_hidden_layers", 12), d_model=hf.get("hidden_size", 768),
            n_heads=hf.get("num_attention_heads", 12), d_ff=hf.get("intermediate_size", 3072),
            norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), norm_placement="post",
            mlp=ACTIVATIONS_IN[act], pos="learned", mask="bidirectional", bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), type_vocab_size=hf.get("type_vocab_size", 2),
            embed_norm=True,
            dropout=hf.get("hidden_dropout_prob", 0.1))   # only matters for fine-tuning; loads in eval
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None


def hf_shapes(cfg: ModelConfig, mlm: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor a BERT checkpoint for ``cfg`` must hold, in HF naming without the ``bert.`` prefix."""
    V, P, T, C, F = cfg.vocab_size, cfg.max_len, cfg.type_vocab_size, cfg.d_model, cfg.ffn_dim
    shapes = {"embeddings.word_embeddings.weight": (V, C), "embeddings.position_embeddings.weight": (P, C),
              "embeddings.token_type_embeddings.weight": (T, C),
              "embeddings.LayerNorm.weight": (C,), "embeddings.LayerNorm.bias": (C,)}
    linear = {"attention.self.query": (C, C), "attention.self.key": (C, C), "attention.self.value": (C, C),
              "attention.output.dense": (C, C), "intermediate.dense": (F, C), "output.dense": (C, F)}
    for i in range(cfg.n_layers):
        e = f"encoder.layer.{i}."
        for name, (n_out, n_in) in linear.items():
            shapes[e + name + ".weight"], shapes[e + name + ".bias"] = (n_out, n_in), (n_out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[e + name + ".weight"], shapes[e + name + ".bias"] = (C,), (C,)
    if mlm:
        shapes.update({"cls.predictions.transform.dense.weight": (C, C),
                       "cls.predictions.transform.dense.bias": (C,),
                       "cls.predictions.transform.LayerNorm.weight": (C,),
                       "cls.predictions.transform.LayerNorm.bias": (C,), "cls.predictions.bias": (V,)})
        if not cfg.tie_embeddings:
            shapes["cls.predictions.decoder.weight"] = (V, C)
    return shapes


def _canonical(key: str) -> str:
    key = key.removeprefix("bert.")
    if ".LayerNorm." in key:                      # TF-era names
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def check_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> tuple[dict, bool]:
    """Canonical names, ignored tensors dropped, shapes checked. Returns (tensors, has an MLM head)."""
    hf = {_canonical(k): t for k, t in tensors.items()}
    hf = {k: t for k, t in hf.items() if not k.startswith(IGNORED)}
    mlm = any(k.startswith("cls.predictions.") for k in hf)
    if "cls.predictions.decoder.bias" in hf:      # the same parameter as cls.predictions.bias
        hf.setdefault("cls.predictions.bias", hf["cls.predictions.decoder.bias"])
        del hf["cls.predictions.decoder.bias"]
    if cfg.tie_embeddings:
        hf.pop("cls.predictions.decoder.weight", None)    # tied: it is the word embedding
    sizes = (f"vocab_size={cfg.vocab_size}, max_position_embeddings={cfg.max_len}, hidden_size={cfg.d_model}, "
             f"num_hidden_layers={cfg.n_layers}, intermediate_size={cfg.ffn_dim}, "
             f"type_vocab_size={cfg.type_vocab_size}")
    check_shapes(hf, hf_shapes(cfg, mlm), where, sizes, what="a BertModel / BertForMaskedLM",
                 extra_fix="fix num_hidden_layers in config.json; qkv loads the encoder and MLM head only: "
                           "for a fine-tuned head (classifier, qa_outputs) save its .bert and fine-tune here")
    return hf, mlm


def state_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, mlm: bool) -> dict[str, torch.Tensor]:
    """Checked HF tensors -> our state dict (nn.Linear layouts match: no transposes)."""
    emb = "embeddings."
    sd = {"tok.weight": hf[emb + "word_embeddings.weight"],
          "pos.table.weight": hf[emb + "position_embeddings.weight"],
          "types.weight": hf[emb + "token_type_embeddings.weight"],
          "embed_norm.weight": hf[emb + "LayerNorm.weight"], "embed_norm.bias": hf[emb + "LayerNorm.bias"]}
    for i in range(cfg.n_layers):
        e, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for theirs, ours in LAYER_NAMES.items():
            for p in ("weight", "bias"):
                sd[b + ours + "." + p] = hf[e + theirs + "." + p]
        for p in ("weight", "bias"):
            sd[b + "attn.wkv." + p] = torch.cat([hf[e + "attention.self.key." + p],
                                                 hf[e + "attention.self.value." + p]])
    if mlm:
        c = "cls.predictions."
        sd.update({"head.transform.weight": hf[c + "transform.dense.weight"],
                   "head.transform.bias": hf[c + "transform.dense.bias"],
                   "head.norm.weight": hf[c + "transform.LayerNorm.weight"],
                   "head.norm.bias": hf[c + "transform.LayerNorm.bias"], "head.decoder.bias": hf[c + "bias"],
                   "head.decoder.weight": sd["tok.weight"] if cfg.tie_embeddings else hf[c + "decoder.weight"]})
    return {k: t.contiguous() for k, t in sd.items()}


def load_bert(directory: str | os.PathLike) -> Encoder:
    """A BERT (MLM head) or bare Encoder, eval mode, from a Hugging Face BERT directory, with ``.tokenizer``.

    >>> model = load_bert("path/to/bert-base-uncased")                                   # doctest: +SKIP
    >>> model.embed_texts(["a sentence", "another one"]).shape                             # doctest: +SKIP
    torch.Size([2, 768])
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory; pass the folder that holds config.json and the weights")
    cfg = config_from_hf(read_hf_json(d / "config.json"), where=str(d / "config.json"))
    where = f"the weights in {d}"
    hf, mlm = check_tensors(read_weights(d), cfg, where)
    model = model_from_state(lambda: BERT(cfg) if mlm else Encoder(cfg), state_from_hf(hf, cfg, mlm), where)
    model.tokenizer = Tokenizer.from_dir(d)
    return model.eval()
