"""``for_inference``: the one step that readies a loaded model for running, at every inference entry point.

    model = qkv.for_inference(qkv.load("runs/books"))      # what `qkv generate`, `serve`, `embed`, ... do

A loader gives the model as its file holds it (``qkv.load`` never calls this): training, fine-tuning,
``qkv quantize`` and saving see the plain modules. The commands that run a model (generate, chat, serve,
next, attention, eval, embed, predict, evaluate, translate, bench decode) call ``for_inference`` once after
loading. ``qkv.generate`` and ``qkv.chat`` do not: the model passed to them is the caller's, who may still
be training it, and a swap here may pack weights into a form training would leave stale. In Python, call
it yourself after ``qkv.load`` (as the README does).

LoRA adapters (``qkv.adapters``) are folded into float weights first, since a swap replaces or bypasses
the Linears they hook; a quantized base keeps its adapters and skips the swaps.

Each entry of ``SWAPS`` takes the model and returns it (in place or replaced), deciding for itself whether
it applies to this model on this machine: they change speed, never values beyond float rounding. They run
in order; a new fast path (a fused kernel for one family) is one more function in the list.

    swap                 for                                   why
    runtime.layout       every model, CPU                      wide matrices column-major: decode's
                                                               matrix-vector products stream them faster
    runtime.onednn       models that do not decode token by    AVX-512 GEMMs on AMD (MKL runs AVX2 there);
                         token (encoders, image classifiers)   slower than MKL at one row: not decoders
    native.fused         quantized Llama-family decoders,      a decode step's whole stack in one native call
                         qkv.native built                      (qkv/native/fused.py; bench/README.md)
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..adapters.lora import fold_for_inference
from ..family import Family
from ..native.fused import use_fused_decode
from .layout import decode_layout
from .onednn import use_onednn


def onednn_unless_decoding(model: nn.Module) -> nn.Module:
    """oneDNN's Linears for a model that runs whole sequences: faster than MKL on BERT-base's GEMMs, slower at
    the one row a decode step has (bench/README.md has both figures)."""
    family = getattr(model, "family", None)
    return model if family is not None and Family(family).decodes else use_onednn(model)


SWAPS: list[Callable[[nn.Module], nn.Module]] = [decode_layout, onednn_unless_decoding, use_fused_decode]


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every swap of ``SWAPS`` that applies to it; returns the model."""
    model = model.eval()
    if not fold_for_inference(model):        # LoRA on a quantized base: the swaps would bypass its hooks
        return model
    for swap in SWAPS:
        model = swap(model)
    return model
