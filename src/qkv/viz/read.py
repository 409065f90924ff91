"""What the pictures show, read off a model: the tokens it sees, its attention maps, its residual stream.

Legend: B batch, L query length, M key length, S source length, C d_model, H heads, V vocab, N any leading
dimensions, Y X an image's rows and columns.

Every model qkv loads is one of three families (each class's ``family``), never told apart by name:

    decoder          (GPT, and everything loaded as one: GPT-2, Llama-family, GGUF)   self-attention, causal
    encoder          (BERT and its task models)                                        self-attention, both ways
    encoder-decoder  (the original Transformer)                    encoder self-, decoder self-, cross-attention

The probabilities come from the explicit attention path (``return_attentions=True``); the fused path
returns none. Hidden states are read with forward hooks on the blocks, so no model code changes for this.
Text is tokenized as each family's commands do it: a decoder reads the bare text (``qkv generate``), an
encoder adds its special tokens ([CLS] ... [SEP], as ``qkv embed``), an encoder-decoder reads the source
bare and the target behind ``<bos>`` (as ``qkv translate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..family import Family
from ..models.encoder import BERT
from ..models.stack import Stack


def stack_family(model) -> Family:
    """The stack a picture reads: decoder, encoder or encoder-decoder (a fine-tuned encoder is an encoder with
    a task head; an image classifier has pictures of its own, ``qkv.viz.images``)."""
    kind = getattr(model, "family", None)           # the class's Family (qkv.loading.family_of reads the same)
    if kind == Family.FINETUNED_ENCODER:
        return Family.ENCODER
    if kind in (Family.DECODER, Family.ENCODER, Family.ENCODER_DECODER):
        return kind
    raise InputError(f"{type(model).__name__} is not a transformer qkv can look inside; load a decoder, "
                     f"encoder or encoder-decoder checkpoint")


def tokenizer_of(model):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError("the model has no tokenizer (tokenizer.json, vocab.json + merges.txt or vocab.txt); "
                         "add the one it was trained with to the checkpoint directory")
    return tokenizer


def token_label(tokenizer, i: int) -> str:
    """A token as a person reads it: its text, with whitespace made visible (a space alone is ␣)."""
    text = tokenizer.decode([i])
    if "\ufffd" in text:                       # part of a multi-byte character: show the raw piece
        text = tokenizer.backend.id_to_token(i) or text
    if text.strip() == "":
        return text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") or "∅"
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _fit(ids: list[int], max_len: int, truncate: bool, keep_end: bool, what: str) -> list[int]:
    if not ids:
        raise InputError(f"the {what} is empty; pass some text")
    if len(ids) <= max_len:
        return ids
    if not truncate:
        raise InputError(f"the {what} is {len(ids)} tokens but the model's context is {max_len}; shorten it "
                         f"or truncate it (--truncate keeps the {'last' if keep_end else 'first'} {max_len})")
    return ids[-max_len:] if keep_end else ids[:max_len]


@dataclass
class Inputs:
    """Token ids ready for the model, and their labels."""
    ids: list[int]                       # decoder: the text; encoder: [CLS] text [SEP]; enc-dec: <bos> target
    labels: list[str]
    src_ids: list[int] | None = None     # encoder-decoder only: the source
    src_labels: list[str] | None = None


def encode_inputs(model, text: str, source: str | None = None, truncate: bool = False,
                  keep_end: bool = False) -> Inputs:
    """Tokenize ``text`` (and ``source``) the way the model's family reads them; check the context.

    truncate: cut an over-long text to the context, keeping its end (``keep_end``) or its start.
    """
    kind, tokenizer = stack_family(model), tokenizer_of(model)
    max_len = model.cfg.max_len
    if kind != Family.ENCODER_DECODER and source is not None:
        raise InputError(f"a source text is for encoder-decoders; this is a {kind}")
    if kind == Family.DECODER:
        ids = _fit(tokenizer.encode(text), max_len, truncate, keep_end, "text")
    elif kind == Family.ENCODER:
        tokenizer.encode(text)              # unseen characters: the tokenizer's own error
        ids = tokenizer.encode_for_model(text).ids
        if len(ids) > max_len and truncate and not keep_end:
            ids = tokenizer.encode_for_model(text, max_len=max_len).ids    # keeps [SEP]
        ids = _fit(ids, max_len, truncate, keep_end, "text")
    else:
        if source is None:
            raise InputError("an encoder-decoder reads a source text too; pass it (--source TEXT)")
        src_tokenizer = getattr(model, "src_tokenizer", None) or tokenizer
        if tokenizer.bos_id is None:
            raise InputError("the tokenizer has no <bos> token, which starts every target of an encoder-decoder")
        src_ids = _fit(src_tokenizer.encode(source), max_len, truncate, keep_end, "source")
        ids = _fit([tokenizer.bos_id] + tokenizer.encode(text), max_len, truncate, keep_end, "target")
        return Inputs(ids, [token_label(tokenizer, i) for i in ids], src_ids,
                      [token_label(src_tokenizer, i) for i in src_ids])
    return Inputs(ids, [token_label(tokenizer, i) for i in ids])


@dataclass
class AttentionMap:
    """One kind of attention in one model run: probabilities per layer, queries x keys."""
    name: str                            # "self-attention", "encoder self-attention", "cross-attention", ...
    queries: list[str]                   # token labels, L
    keys: list[str]                      # token labels, M
    layers: list[torch.Tensor]           # one probs_HLM per layer (float32, CPU)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.layers[0].shape[0]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def attention_maps(model, inputs: Inputs) -> list[AttentionMap]:
    """Run the model once on ``inputs`` and return every kind of attention it has."""
    kind, device = stack_family(model), _device(model)
    ids_BL = torch.tensor([inputs.ids], device=device)
    if kind == Family.ENCODER_DECODER:
        src_BS = torch.tensor([inputs.src_ids], device=device)
        out = model(src_BS, ids_BL, return_attentions=True)
        found = [("encoder self-attention", inputs.src_labels, inputs.src_labels, out.encoder_attentions),
                 ("decoder self-attention", inputs.labels, inputs.labels, out.attentions),
                 ("cross-attention", inputs.labels, inputs.src_labels, out.cross_attentions)]
    else:
        out = model(ids_BL, return_attentions=True)
        found = [("self-attention", inputs.labels, inputs.labels, out.attentions)]
    return [AttentionMap(name, queries, keys, [p[0].float().cpu() for p in probs])
            for name, queries, keys, probs in found]


@dataclass
class Residuals:
    """The residual stream after the embeddings and after each block, at every position: h_LC per row."""
    names: list[str]                     # "embeddings", "layer 1", ...
    hidden: list[torch.Tensor]           # one h_LC per row of ``names``
    logits_LV: torch.Tensor              # the model's own output logits


def trunk(model) -> Stack:
    """The stack whose residual stream predicts tokens: the decoder's, or the encoder's itself."""
    return model.decoder if stack_family(model) == Family.ENCODER_DECODER else model


def unembed(model, h_NC: torch.Tensor) -> torch.Tensor:
    """Hidden states -> vocabulary logits through the model's final norm and output head (the logit lens).

    The final norm is an identity for post-norm stacks, whose blocks end in a norm already."""
    stack = trunk(model)
    if stack_family(model) == Family.ENCODER:
        if not isinstance(model, BERT):
            raise InputError(f"this {type(model).__name__} has no language-model head to read tokens from; "
                             f"use a masked-LM (qkv-bert) checkpoint or a decoder")
        return model.head.project(stack.norm_f(h_NC))
    return model.logits(stack.norm_f(h_NC)) if hasattr(model, "logits") else model.head(stack.norm_f(h_NC))


@torch.no_grad()
def residuals(model, inputs: Inputs) -> Residuals:
    """The residual stream at the input of block 0 and at the output of every block."""
    stack, device = trunk(model), _device(model)
    rows: list[torch.Tensor] = []
    hooks = [stack.blocks[0].register_forward_pre_hook(lambda m, args: rows.append(args[0][0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: rows.append(out[0][0])) for b in stack.blocks]
    try:
        ids_BL = torch.tensor([inputs.ids], device=device)
        if stack_family(model) == Family.ENCODER_DECODER:
            out = model(torch.tensor([inputs.src_ids], device=device), ids_BL)
        else:
            out = model(ids_BL)
    finally:
        for h in hooks:
            h.remove()
    names = ["embeddings"] + [f"layer {i + 1}" for i in range(len(stack.blocks))]
    return Residuals(names, [r.float() for r in rows], out.logits[0].float())
