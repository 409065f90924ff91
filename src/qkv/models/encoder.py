"""BERT: a bidirectional encoder, pre-trained by masked language modelling, fine-tuned with small heads
(Devlin et al., 2019).

Legend: B batch, L length, M key length (= L), C d_model, H heads, V vocab, K labels (classes or tags),
N rows (the scored tokens; the sentences embedded), 1 a kept singleton dimension.

    ids_BL, types_BL ─> Stack (token + position + segment embeddings ─> norm ─> n x post-norm Block with a
                        bidirectional mask, padding keys hidden by key_mask_BL) ─> h_BLC ─> one head:

    MaskedLMHead    h_BLC ─> dense ─> act ─> norm ─> decoder (tied to the embedding) + bias ─> logits_BLV
    ClassifierHead  h_BLC[:, 0] ([CLS]) ─> pooler: dense ─> tanh ─> dropout ─> linear ─> logits_BK
    TaggerHead      h_BLC ─> dropout ─> linear ─> logits_BLK                              (one per token)
    SpanHead        h_BLC ─> linear ─> logits_BL2 = (start, end) score per token        (extractive QA)
    MeanPool        mean of h_BLC over real tokens ─> L2-normalize ─> emb_BC      (sentence embeddings)

Every loss is a mean cross-entropy; labels of -100 are ignored (MLM scores only the ~15% masked positions,
and with labels its head computes logits for those positions alone, logits_NV; tagging scores only the
first piece of each word). The QA loss is the mean of the start and end cross-entropies.

Padding: rows are padded on the right and ``key_mask_BL`` is True for real tokens; positions count from 0
in every row, so a padded row computes exactly what the unpadded sequence would (a test holds this).
Without padding (no mask, or an all-True one) attention takes SDPA's unmasked fast path.

Fine-tuning starts from a pre-trained encoder: ``qkv.train.pretrained.from_pretrained_encoder(dir, "classify",
labels)`` keeps the encoder weights of any encoder checkpoint (qkv or Hugging Face BERT) and initializes a
new head (it reads checkpoints, so it lives with the loaders).

    >>> model = from_pretrained_encoder("runs/bert", "classify", ["neg", "pos"])     # doctest: +SKIP
    >>> model(ids_BL, labels_B, key_mask_BL=mask_BL, types_BL=types_BL).loss         # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, InputError
from ..family import Family
from ..nn.masks import build_mask
from ..nn.norms import make_norm
from ..padding import pad_right
from .output import ModelOutput
from .stack import Stack

# The MLM transform uses the FFN's activation, as BERT's hidden_act does (SwiGLU's gate is SiLU).
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
               "swiglu": nn.SiLU}


def _loss(logits_NK: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_NK.float(), labels_N.long(), ignore_index=-100)


# ---- heads -------------------------------------------------------------------------------------------------
class MaskedLMHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.mlp]()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)     # weight tied by the model; own bias

    def forward(self, h_BLC, labels_BL=None):
        """logits_BLV without labels; with labels, (logits_NV, loss) over the N scored positions only.

        Only ~15% of the positions carry a label, and the vocabulary projection is the largest product of
        a small BERT's step (128 x 8k per row vs 4 layers of 256-wide blocks), so it runs on those rows alone.
        """
        if labels_BL is None:
            return self.project(h_BLC), None
        scored_N = (labels_BL != -100).flatten().nonzero().squeeze(1)
        logits_NV = self.project(h_BLC.flatten(0, 1).index_select(0, scored_N))
        return logits_NV, _loss(logits_NV, labels_BL.flatten().index_select(0, scored_N))

    def project(self, h_NC: torch.Tensor) -> torch.Tensor:
        """Hidden states (any leading dims N) -> vocabulary logits: dense, act, norm, tied decoder."""
        return self.decoder(self.norm(self.act(self.transform(h_NC))))


class ClassifierHead(nn.Module):
    def __init__(self, cfg: ModelConfig, n_labels: int):
        super().__init__()
        self.pool = nn.Linear(cfg.d_model, cfg.d_model)          # BERT's pooler, read at [CLS]
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, n_labels)

    def forward(self, h_BLC, labels_B=None):
        pooled_BC = torch.tanh(self.pool(h_BLC[:, 0]))
        logits_BK = self.out(self.drop(pooled_BC))
        return logits_BK, None if labels_B is None else _loss(logits_BK, labels_B)


class TaggerHead(nn.Module):
    def __init__(self, cfg: ModelConfig, n_labels: int):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, n_labels)

    def forward(self, h_BLC, labels_BL=None):
        logits_BLK = self.out(self.drop(h_BLC))
        return logits_BLK, None if labels_BL is None else _loss(logits_BLK.flatten(0, 1), labels_BL.flatten())


class SpanHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out = nn.Linear(cfg.d_model, 2)

    def forward(self, h_BLC, spans_B2=None):
        """spans_B2: (start, end) token index of each answer; -100 for none."""
        logits_BL2 = self.out(h_BLC)
        if spans_B2 is None:
            return logits_BL2, None
        start_loss = _loss(logits_BL2[..., 0], spans_B2[:, 0])
        return logits_BL2, (start_loss + _loss(logits_BL2[..., 1], spans_B2[:, 1])) / 2


class MeanPool(nn.Module):
    """Mean of the hidden states over real tokens, L2-normalized: cosine similarity is a dot product."""

    def forward(self, h_BLC, key_mask_BL=None):
        if key_mask_BL is None:
            mean_BC = h_BLC.mean(dim=1)
        else:
            real_BL1 = key_mask_BL[..., None].to(h_BLC.dtype)
            mean_BC = (h_BLC * real_BL1).sum(dim=1) / real_BL1.sum(dim=1).clamp(min=1)
        return F.normalize(mean_BC, dim=-1)


# ---- models ------------------------------------------------------------------------------------------------
class Encoder(Stack):
    """A bidirectional ``Stack`` with segment embeddings; bare, it returns hidden states (``.hidden``)."""
    model_type = "qkv-bert-encoder"
    family = Family.ENCODER

    def __init__(self, cfg: ModelConfig, head: nn.Module | None = None):
        if cfg.mask != "bidirectional":
            raise ConfigError(f"an encoder attends both ways but mask={cfg.mask!r}; set mask='bidirectional'")
        super().__init__(cfg)
        self.head = head
        self.pool = MeanPool()
        self.init_weights()

    def encode(self, ids_BL: torch.Tensor, key_mask_BL: torch.Tensor | None = None,
               types_BL: torch.Tensor | None = None, return_attentions: bool = False):
        """Final hidden states h_BLC and the attention list (see ``Stack.run``)."""
        B, L = ids_BL.shape
        self.check_ids(ids_BL)
        self._check_masks(ids_BL, key_mask_BL, types_BL)
        if key_mask_BL is not None and bool(key_mask_BL.all()):
            key_mask_BL = None                   # no padding: let SDPA run unmasked
        pos_BL = torch.arange(L, device=ids_BL.device)[None]
        x_BLC = self.embed(ids_BL, pos_BL, types_BL)
        mask = build_mask(L, L, self.cfg.mask, self.cfg.window, key_mask_BM=key_mask_BL,
                          bias_1HLM=self.pos.bias(L, L), device=ids_BL.device)
        h_BLC, attentions, _ = self.run(x_BLC, mask, pos_BL, return_attentions=return_attentions)
        return h_BLC, attentions

    def forward(self, ids_BL: torch.Tensor, labels: torch.Tensor | None = None,
                key_mask_BL: torch.Tensor | None = None, types_BL: torch.Tensor | None = None,
                return_attentions: bool = False) -> ModelOutput:
        """The head's logits (None when bare) and, with ``labels`` (shaped as the head says), its loss.

        key_mask_BL: True for real tokens (right padding). types_BL: segment ids, 0 for text A, 1 for B.
        """
        h_BLC, attentions = self.encode(ids_BL, key_mask_BL, types_BL, return_attentions)
        logits, loss = None, None
        if self.head is not None:
            logits, loss = self.head(h_BLC, labels)
        elif labels is not None:
            raise InputError("a bare encoder has no head to score labels; build a task model with "
                             "from_pretrained_encoder(directory, head, labels)")
        return ModelOutput(logits=logits, loss=loss, hidden=h_BLC,
                           attentions=tuple(attentions) if return_attentions else None)

    def sentence_embeddings(self, ids_BL: torch.Tensor, key_mask_BL: torch.Tensor | None = None,
                            types_BL: torch.Tensor | None = None) -> torch.Tensor:
        """emb_BC: mean-pooled, L2-normalized last hidden states of each row's real tokens."""
        h_BLC, _ = self.encode(ids_BL, key_mask_BL, types_BL)
        return self.pool(h_BLC, key_mask_BL)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """emb_NC for N texts, with ``self.tokenizer`` (special tokens added, truncated to max_len)."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            raise CheckpointError("this encoder has no tokenizer; load a checkpoint saved with one, or set "
                                  "model.tokenizer")
        rows, was_training = [], self.training
        self.eval()                              # no dropout: the same text always gets the same vector
        try:
            for start in range(0, len(texts), batch_size):
                encodings = tokenizer.encode_batch_for_model(list(texts[start:start + batch_size]),
                                                             max_len=self.cfg.max_len)
                ids_BL, key_mask_BL, types_BL = pad_batch(encodings, tokenizer.pad_id or 0,
                                                          self.tok.weight.device)
                rows.append(self.sentence_embeddings(ids_BL, key_mask_BL, types_BL).float())
        finally:
            self.train(was_training)
        return torch.cat(rows) if rows else torch.empty(0, self.cfg.d_model)

    def _check_masks(self, ids_BL, key_mask_BL, types_BL) -> None:
        for name, t in (("key_mask_BL", key_mask_BL), ("types_BL", types_BL)):
            if t is not None and t.shape != ids_BL.shape:
                raise InputError(f"{name} has shape {tuple(t.shape)} but ids_BL {tuple(ids_BL.shape)}; "
                                 f"pass one entry per token")
        if types_BL is not None and types_BL.numel() and \
                (int(types_BL.min()) < 0 or int(types_BL.max()) >= max(self.cfg.type_vocab_size, 1)):
            raise InputError(f"segment ids must lie in [0, {max(self.cfg.type_vocab_size, 1)}) "
                             f"(type_vocab_size={self.cfg.type_vocab_size}); got max {int(types_BL.max())}: "
                             f"use 0 for the first text and 1 for the second, or set type_vocab_size")


class BERT(Encoder):
    """The pre-training model: encoder + masked-LM head, its decoder tied to the token embedding."""
    model_type = "qkv-bert"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, MaskedLMHead(cfg))
        if cfg.tie_embeddings:
            self.head.decoder.weight = self.tok.weight


class BertQA(Encoder):
    """Extractive QA: ``.start_logits`` / ``.end_logits`` (B, L) over the tokens; labels are spans_B2."""
    model_type = "qkv-bert-qa"
    family = Family.FINETUNED_ENCODER          # a task head: predict and evaluate, not embed

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, SpanHead(cfg))

    def forward(self, ids_BL, labels=None, key_mask_BL=None, types_BL=None, return_attentions=False):
        out = super().forward(ids_BL, labels, key_mask_BL, types_BL, return_attentions)
        out.start_logits, out.end_logits = out.logits.unbind(-1)
        return out


class LabelledEncoder(Encoder):
    """An encoder whose head predicts one of ``labels`` (names kept in config.json, so load rebuilds it)."""
    head_class: type = nn.Module
    min_labels = 1
    family = Family.FINETUNED_ENCODER

    def __init__(self, cfg: ModelConfig, labels: Sequence[str]):
        labels = list(labels)
        if len(labels) < self.min_labels or len(set(labels)) != len(labels) or \
                not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"{type(self).__name__} needs at least {self.min_labels} distinct string labels, "
                              f"got {labels!r}; pass the label names, e.g. ['neg', 'pos']")
        super().__init__(cfg, self.head_class(cfg, len(labels)))
        self.labels = labels

    def extra_config(self) -> dict:
        return {"labels": self.labels}

    @classmethod
    def from_config(cls, cfg: ModelConfig, config: dict):
        try:
            return cls(cfg, config.get("labels"))
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"config.json of a {cls.model_type} checkpoint needs its 'labels' list "
                                  f"({e}); re-save the model") from None


class BertClassifier(LabelledEncoder):
    """Sequence classification from [CLS]: logits_BK; labels are labels_B (class indices)."""
    model_type = "qkv-bert-classify"
    head_class = ClassifierHead
    min_labels = 2


class BertTagger(LabelledEncoder):
    """Token classification: logits_BLK; labels are labels_BL (-100 on specials and continuation pieces)."""
    model_type = "qkv-bert-tag"
    head_class = TaggerHead


HEADS = {"mlm": BERT, "classify": BertClassifier, "tag": BertTagger, "qa": BertQA, "embed": Encoder}


def pad_batch(encodings, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``Tokenizer.encode_batch_for_model`` results: (ids_BL, key_mask_BL, types_BL)."""
    ids_BL, _ = pad_right([e.ids for e in encodings], pad_id, device=device)
    attention_BL, _ = pad_right([e.attention_mask for e in encodings], 0, device=device)
    types_BL, _ = pad_right([e.type_ids for e in encodings], 0, device=device)
    return ids_BL, attention_BL.bool(), types_BL
