"""A qkv encoder as the config.json and tensors of a transformers BERT class, chosen by its head.

The trunk's names are ``hf_bert.LAYER_NAMES`` read the other way (the loader's own table, so the two cannot
drift; a test also loads the export back with ``hf_bert``). The head decides the class:

    qkv model        head                         transformers class              head tensors
    Encoder          none (mean pooling in qkv)   BertModel                       (its pooler is left out)
    BERT             MaskedLMHead                 BertForMaskedLM                 cls.predictions.transform.dense /
                                                                                  .LayerNorm, cls.predictions.bias
    BertClassifier   ClassifierHead (pool, out)   BertForSequenceClassification   bert.pooler.dense, classifier
    BertTagger       TaggerHead (out)             BertForTokenClassification      classifier
    BertQA           SpanHead (out: start, end)   BertForQuestionAnswering        qa_outputs

Every class but BertModel prefixes the trunk with ``bert.``. The label names of a classifier or tagger go to
config.json's ``id2label`` / ``label2id``. A model without segment embeddings (type_vocab_size = 0) gets
BERT's table as one zero row, and Linears without biases get zero biases: the same sums either way.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..models.encoder import BERT, BertClassifier, BertQA, BertTagger, Encoder
from .export_hf_decoder import with_zero_biases
from .hf_bert import LAYER_NAMES

ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
# qkv class -> (transformers class, {qkv head parameter: HF name}); checked in order (subclasses first)
HEADS = [(BERT, "BertForMaskedLM", {"head.transform": "cls.predictions.transform.dense",
                                     "head.norm": "cls.predictions.transform.LayerNorm"}),
         (BertClassifier, "BertForSequenceClassification", {"head.pool": "bert.pooler.dense",
                                                            "head.out": "classifier"}),
         (BertTagger, "BertForTokenClassification", {"head.out": "classifier"}),
         (BertQA, "BertForQuestionAnswering", {"head.out": "qa_outputs"}),
         (Encoder, "BertModel", {})]
LINEARS = ("attn.wq", "attn.wkv", "attn.wo", "mlp.up", "mlp.down")


def bert_class(model: Encoder) -> tuple[str, dict[str, str]]:
    """The transformers class for ``model``'s head, and its head's tensor names."""
    for cls, name, head in HEADS:
        if isinstance(model, cls) and (cls is not Encoder or model.head is None):
            return name, head
    raise CheckpointError(f"{type(model).__name__} has a head ({type(model.head).__name__}) that no transformers "
                          f"BERT class has; export the bare encoder instead")


def config_json(model: Encoder, ids: dict) -> dict:
    cfg: ModelConfig = model.cfg
    name, _ = bert_class(model)
    config = {"model_type": "bert", "architectures": [name], "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
              "intermediate_size": cfg.ffn_dim, "hidden_act": ACTIVATIONS[cfg.mlp],
              "max_position_embeddings": cfg.max_len, "type_vocab_size": max(cfg.type_vocab_size, 1),
              "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout,
              "attention_probs_dropout_prob": cfg.dropout, "position_embedding_type": "absolute",
              "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "dtype": "float32", **ids}
    labels = getattr(model, "labels", None)
    if labels is not None:
        config.update(id2label={str(i): label for i, label in enumerate(labels)},
                      label2id={label: i for i, label in enumerate(labels)})
    return config


def state_dict(model: Encoder) -> dict[str, torch.Tensor]:
    """The tensors of ``bert_class(model)``'s save_pretrained, contiguous CPU float32 copies."""
    cfg: ModelConfig = model.cfg
    name, head = bert_class(model)
    sd = with_zero_biases({k: t.detach() for k, t in model.state_dict().items()}, cfg.n_layers, LINEARS)
    C = cfg.d_model
    trunk = {"embeddings.word_embeddings.weight": sd["tok.weight"],
             "embeddings.position_embeddings.weight": sd["pos.table.weight"],
             "embeddings.token_type_embeddings.weight": sd.get("types.weight", torch.zeros(1, C)),
             "embeddings.LayerNorm.weight": sd["embed_norm.weight"], "embeddings.LayerNorm.bias": sd["embed_norm.bias"]}
    for i in range(cfg.n_layers):
        e, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            for theirs, ours in LAYER_NAMES.items():
                trunk[f"{e}{theirs}.{kind}"] = sd[f"{b}{ours}.{kind}"]
            trunk[f"{e}attention.self.key.{kind}"], trunk[f"{e}attention.self.value.{kind}"] = \
                sd[f"{b}attn.wkv.{kind}"].chunk(2)
    hf = trunk if name == "BertModel" else {"bert." + k: t for k, t in trunk.items()}
    for ours, theirs in head.items():
        for kind in ("weight", "bias"):
            hf[f"{theirs}.{kind}"] = sd[f"{ours}.{kind}"]
    if name == "BertForMaskedLM":
        # transformers ties decoder.bias to cls.predictions.bias only while the embeddings are tied: write both
        hf["cls.predictions.bias"] = hf["cls.predictions.decoder.bias"] = sd["head.decoder.bias"]
        if not cfg.tie_embeddings:
            hf["cls.predictions.decoder.weight"] = sd["head.decoder.weight"]
    return {k: t.float().cpu().contiguous().clone() for k, t in hf.items()}
