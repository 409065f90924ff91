"""Swin Transformer: attention inside shifted windows, patches merged between stages (Liu et al., 2021).

Legend: B batch, Y X patch-grid rows and columns, C d_model of the stage, H heads, M key length (= L), K classes,
W windows (over the whole batch), L tokens (of a window, w * w, in a stage; of the image, Y * X, in
the model's forward), I image channels, 1 a kept singleton dimension.

    pixels_BIYX ─> PatchEmbed (stride-P convolution) ─> norm ─> x_BYXC
      stage s (d_model C * 2^s):  depth x [ (roll the grid by -w/2 on odd blocks: the shift)
                                            ─> cut into w x w windows: x_WLC (windows become batch rows)
                                            ─> Block(x_WLC, AttnMask(bias = relative position bias,
                                                                     allowed = the shifted-window mask))
                                            ─> paste the windows back, roll back ]
                                  ─> PatchMerging (not after the last stage): 2x2 neighbours concatenated
                                     (4C) ─> norm ─> linear to 2C; the grid halves
      ─> norm ─> mean over patches ─> linear ─> logits_BK

The block is the text encoder's ``Block`` unchanged. Everything Swin-specific reaches attention through
``AttnMask``, which already carries an additive bias (ALiBi's hook) and a boolean mask:
- relative position bias: one learned scalar per head for each of the (2w-1)^2 offsets between two
  patches of a window, read from a table by the offset (bias_1HLL);
- the shifted-window mask: rolling the grid by w/2 makes the windows straddle the old window borders, and
  the windows at the bottom/right edge then hold patches from opposite sides of the image; the mask lets a
  patch attend only to patches that were neighbours before the roll (allowed_W1LL).
Norms, the FFN and the residuals act per token, so running the whole Block on window rows computes what
Swin's layer does (norm, windowed attention, residual, norm, FFN, residual).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig, VisionConfig
from ..errors import ConfigError
from ..nn.block import Block
from ..nn.masks import AttnMask
from ..nn.norms import make_norm
from .vision import ImageClassifier, PatchEmbed

# The reference code builds the patch embedding's and the merging layers' norms as nn.LayerNorm(dim), with its
# default eps; only the blocks' norms and the final one take the configured eps (transformers' layer_norm_eps).
FIXED_EPS = 1e-5


def window_partition(x_BYXC: torch.Tensor, w: int) -> torch.Tensor:
    """x_WLC: the w x w windows of every image as rows (image-major, windows in row-major order)."""
    B, Y, X, C = x_BYXC.shape
    return x_BYXC.view(B, Y // w, w, X // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def window_merge(x_WLC: torch.Tensor, w: int, Y: int, X: int) -> torch.Tensor:
    """The inverse of ``window_partition``: x_BYXC."""
    C = x_WLC.shape[-1]
    return x_WLC.view(-1, Y // w, X // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, Y, X, C)


def relative_index(w: int) -> torch.Tensor:
    """index_LL: which table row holds the bias between patch t and patch u of a window (row-major patches):
    (dy + w - 1) * (2w - 1) + (dx + w - 1), with (dy, dx) = position of t - position of u."""
    yx_2L = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    offset_LL2 = (yx_2L[:, :, None] - yx_2L[:, None, :]).permute(1, 2, 0) + (w - 1)
    return offset_LL2[..., 0] * (2 * w - 1) + offset_LL2[..., 1]


def shifted_window_mask(Y: int, X: int, w: int, shift: int) -> torch.Tensor:
    """allowed_WLL for one image's windows after rolling by -shift: True where both patches come from the
    same region of the unrolled grid (regions: cut each axis at -w and -shift)."""
    region_YX = torch.zeros(Y, X, dtype=torch.long)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for i, ys in enumerate(cuts):
        for j, xs in enumerate(cuts):
            region_YX[ys, xs] = 3 * i + j
    region_WL = window_partition(region_YX[None, :, :, None], w)[..., 0]
    return region_WL[:, :, None] == region_WL[:, None, :]


class PatchMerging(nn.Module):
    """2x2 neighbouring patches -> one: concatenate (4C), norm, project to 2C. The grid halves."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, 4 * cfg.d_model, FIXED_EPS)
        self.reduce = nn.Linear(4 * cfg.d_model, 2 * cfg.d_model, bias=False)

    def forward(self, x_BYXC: torch.Tensor) -> torch.Tensor:
        # Concatenation order (0,0) (1,0) (0,1) (1,1) as in the reference implementation (weights load as-is).
        parts = [x_BYXC[:, 0::2, 0::2], x_BYXC[:, 1::2, 0::2], x_BYXC[:, 0::2, 1::2], x_BYXC[:, 1::2, 1::2]]
        return self.reduce(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """``depth`` Blocks on a Y x X grid, alternating plain and shifted windows; then (optionally) merging."""

    def __init__(self, cfg: ModelConfig, depth: int, grid: int, window: int, merge: bool):
        super().__init__()
        if grid <= window:                  # one window covers the grid: nothing to shift (as the reference does)
            window, shift = grid, 0
        else:
            shift = window // 2
        if grid % window:
            raise ConfigError(f"a Swin stage of {grid}x{grid} patches cannot be cut into {window}x{window} "
                              f"windows; choose image_size, patch_size and window_size so that each stage's grid "
                              f"is a multiple of the window (e.g. 28 px, patch 2, window 7)")
        if merge and grid % 2:
            raise ConfigError(f"patch merging needs an even grid, but a stage has {grid}x{grid} patches; use "
                              f"fewer stages or another image_size / patch_size")
        self.cfg, self.grid, self.window, self.shift = cfg, grid, window, shift
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.rel_bias = nn.ParameterList(nn.Parameter(torch.zeros((2 * window - 1) ** 2, cfg.n_heads))
                                         for _ in range(depth))
        self.register_buffer("index_LL", relative_index(window), persistent=False)
        if shift:
            self.register_buffer("allowed_W1LL", shifted_window_mask(grid, grid, window, shift)[:, None],
                                 persistent=False)
        self.merge = PatchMerging(cfg) if merge else None

    def bias(self, i: int) -> torch.Tensor:
        """bias_1HLL of block i, from its table."""
        L = self.window ** 2
        return self.rel_bias[i][self.index_LL.flatten()].view(L, L, -1).permute(2, 0, 1)[None]

    def forward(self, x_BYXC: torch.Tensor, return_attentions: bool = False):
        """Returns (x_BYXC of the next stage, [probs_WHLL per block or None])."""
        B, Y, X, _ = x_BYXC.shape
        w, attentions = self.window, []
        for i, block in enumerate(self.blocks):
            shifted = self.shift if i % 2 else 0
            if shifted:
                x_BYXC = torch.roll(x_BYXC, shifts=(-shifted, -shifted), dims=(1, 2))
                allowed = self.allowed_W1LL.repeat(B, 1, 1, 1)                    # the same windows in every image
                mask = AttnMask(allowed_B1LM=allowed, bias_1HLM=self.bias(i).to(x_BYXC.dtype))
            else:
                mask = AttnMask(bias_1HLM=self.bias(i).to(x_BYXC.dtype))
            x_WLC, probs_WHLL, _ = block(window_partition(x_BYXC, w), mask, return_probs=return_attentions)
            x_BYXC = window_merge(x_WLC, w, Y, X)
            if shifted:
                x_BYXC = torch.roll(x_BYXC, shifts=(shifted, shifted), dims=(1, 2))
            attentions.append(probs_WHLL)
        return (self.merge(x_BYXC) if self.merge is not None else x_BYXC), attentions


def stage_config(cfg: ModelConfig, vision: VisionConfig, s: int) -> ModelConfig:
    """Stage s's block config: d_model and the FFN width double per stage, heads as ``vision.heads`` says."""
    return dataclasses.replace(cfg, d_model=cfg.d_model * 2 ** s, n_heads=vision.stage_heads(cfg.n_heads)[s],
                               d_ff=cfg.ffn_dim * 2 ** s, n_kv_heads=None, d_head=None)


class Swin(ImageClassifier, nn.Module):
    """Swin for classification; ``model(pixels_BIYX, labels_B)`` -> ModelOutput(logits_BK, loss)."""
    model_type = "qkv-swin"

    def __init__(self, cfg: ModelConfig, vision: VisionConfig, labels: Sequence[str]):
        labels = self.check_labels(labels)
        if cfg.norm_placement != "pre" or cfg.mask != "bidirectional":
            raise ConfigError("Swin's blocks are pre-norm and attend both ways inside a window: set "
                              "norm_placement='pre' and mask='bidirectional'")
        nn.Module.__init__(self)
        self.cfg, self.vision, self.labels = cfg, vision, labels
        self.patch = PatchEmbed(vision.channels, vision.patch_size, cfg.d_model)
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, FIXED_EPS)
        self.drop = nn.Dropout(cfg.dropout)
        n = len(vision.depths)
        self.stages = nn.ModuleList(
            SwinStage(stage_config(cfg, vision, s), depth, vision.grid // 2 ** s, vision.window_size, s < n - 1)
            for s, depth in enumerate(vision.depths))
        width = cfg.d_model * 2 ** (n - 1)
        self.norm_f = make_norm(cfg.norm, width, cfg.norm_eps)
        self.head = nn.Linear(width, len(labels))
        self.init_weights()

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for stage in self.stages:
            for table in stage.rel_bias:
                nn.init.trunc_normal_(table, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def rebuild_buffers(self) -> None:
        for stage in self.stages:
            stage.index_LL = relative_index(stage.window)
            if stage.shift:
                stage.allowed_W1LL = shifted_window_mask(stage.grid, stage.grid, stage.window, stage.shift)[:, None]

    def forward(self, pixels_BIYX: torch.Tensor, labels: torch.Tensor | None = None,
                return_attentions: bool = False):
        """``attentions``: per block, probs_WHLL over its windows (W = batch x windows per image)."""
        self.check_pixels(pixels_BIYX)
        x_BLC = self.drop(self.embed_norm(self.patch(pixels_BIYX)))
        g = self.vision.grid
        x_BYXC = x_BLC.view(-1, g, g, x_BLC.shape[-1])
        attentions = []
        for stage in self.stages:
            x_BYXC, probs = stage(x_BYXC, return_attentions)
            attentions += probs
        h_BLC = self.norm_f(x_BYXC.flatten(1, 2))
        return self.classify(self.head(h_BLC.mean(dim=1)), labels, hidden=h_BLC,
                             attentions=tuple(attentions) if return_attentions else None)
