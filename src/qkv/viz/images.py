"""Attention maps of an image classifier, in the shape the other views read (``AttentionMap``).

    ViT    one map: every patch (and [CLS]) attending to every patch, one probs_HLL per layer; patches are
           labelled by grid row and column (r2c5).
    Swin   one map per stage that has window ``window`` (row-major over the stage's windows; later stages have
           fewer, so a high number shows the first stages only): its w*w
           patches attending to each other, one probs_HLL per block. On the shifted blocks (odd ones) the
           window lies over the grid rolled by w/2, so its patches are others than on the plain blocks;
           labels give the position inside the window (y,x), and the masked pairs (patches from opposite
           sides of the image) show as zeros.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .read import AttentionMap


@torch.no_grad()
def image_attention_maps(model, pixels_1IYX: torch.Tensor, window: int = 0) -> list[AttentionMap]:
    """The attention maps of one (preprocessed) image."""
    out = model(pixels_1IYX, return_attentions=True)
    if out.attentions is None:
        raise InputError(f"a {type(model).__name__} has no attention to show; use a ViT or Swin")
    if hasattr(model, "stages"):                                         # Swin: per stage, one window
        maps, start = [], 0
        for s, stage in enumerate(model.stages):
            probs = out.attentions[start:start + len(stage.blocks)]
            start += len(stage.blocks)
            n_windows = (stage.grid // stage.window) ** 2
            if not 0 <= window < n_windows:
                if s == 0:
                    raise InputError(f"window {window} is out of range: the first stage has {n_windows} windows, "
                                     f"numbered 0 to {n_windows - 1}")
                continue
            w = stage.window
            labels = [f"{t // w},{t % w}" for t in range(w * w)]
            maps.append(AttentionMap(f"stage {s} window {window} of {n_windows}", labels, labels,
                                     [p[window].float().cpu() for p in probs]))
        return maps
    g = model.vision.grid
    labels = (["CLS"] if model.vision.pool == "cls" else []) + [f"r{i // g}c{i % g}" for i in range(g * g)]
    return [AttentionMap("self-attention", labels, labels, [p[0].float().cpu() for p in out.attentions])]
