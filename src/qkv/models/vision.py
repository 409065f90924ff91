"""ViT: an image is worth 16x16 words (Dosovitskiy et al., 2021): patches become tokens for the text encoder.

Legend: B batch, L tokens (patches, + 1 with [CLS]), C d_model, K classes, I image channels,
Y image rows, X image columns, 1 a kept singleton dimension.

    pixels_BIYX ─> PatchEmbed: a P x P stride-P convolution = one linear map per patch ─> x_BLC (row-major grid)
                ─> (prepend [CLS]) ─> + positions (learned table, or 2-D sinusoidal) ─> dropout
                ─> the encoder's Stack: n x Block with a bidirectional mask (the same Block as BERT and GPT)
                ─> final norm ─> h_BLC ─> h[:, 0] ([CLS]) or mean over patches ─> linear ─> logits_BK

Nothing here is a second attention or a second block: ``Stack.run`` is the text encoder's loop. What is
new is only the first step (pixels -> token vectors instead of ids -> a table lookup) and the readout.

2-D sinusoidal positions (as in MAE, He et al., 2022): half the channels encode the patch's row with the
paper's 1-D table, the other half its column; [CLS] gets zeros. ``pos="learned"`` is ViT's own table.

``ImageClassifier`` is what every image model here shares (ViT, Swin in ``swin.py``, the CNN in
``cnn.py``): labels and the ``VisionConfig`` kept in config.json, and the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig, VisionConfig, build
from ..errors import CheckpointError, ConfigError, InputError
from ..family import Family
from ..nn.masks import build_mask
from ..nn.position import Position, sinusoidal_table
from .output import ModelOutput
from .stack import Stack


class ImageClassifier:
    """Mixin for image models: ``labels`` and ``vision`` saved in config.json, input checks, the loss."""
    family = Family.IMAGE_CLASSIFIER

    @classmethod
    def check_labels(cls, labels: Sequence[str] | None) -> list[str]:
        labels = list(labels) if labels is not None else []
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"{cls.__name__} needs at least 2 distinct string labels, got {labels!r}; "
                              f"pass the class names, e.g. ['0', '1', ..., '9']")
        return labels

    def extra_config(self) -> dict:
        return {"labels": self.labels, "vision": dataclasses.asdict(self.vision)}

    @classmethod
    def from_config(cls, cfg: ModelConfig, config: dict):
        try:
            vision = build(VisionConfig, config.get("vision") or {}, "config.json 'vision'")
            return cls(cfg, vision, config.get("labels"))
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"config.json of a {cls.model_type} checkpoint needs its 'vision' settings and "
                                  f"'labels' list ({e}); re-save the model") from None

    def check_pixels(self, pixels_BIYX: torch.Tensor) -> None:
        v = self.vision
        if pixels_BIYX.dim() != 4 or pixels_BIYX.shape[1:] != (v.channels, v.image_size, v.image_size):
            raise InputError(f"images must be a (batch, {v.channels}, {v.image_size}, {v.image_size}) tensor for "
                             f"this model, got {tuple(pixels_BIYX.shape)}; resize and convert them with "
                             f"qkv.data.images.preprocess")
        if not pixels_BIYX.is_floating_point():
            raise InputError(f"images must be normalized floats, got {pixels_BIYX.dtype}; use "
                             f"qkv.data.images.preprocess")

    def classify(self, logits_BK: torch.Tensor, labels_B: torch.Tensor | None, **extra) -> ModelOutput:
        loss = None
        if labels_B is not None:
            if labels_B.numel() and (int(labels_B.min()) < 0 or int(labels_B.max()) >= len(self.labels)):
                raise InputError(f"labels must lie in [0, {len(self.labels)}) for the classes {self.labels}; got "
                                 f"{int(labels_B.min())}..{int(labels_B.max())}")
            loss = F.cross_entropy(logits_BK.float(), labels_B.long())
        return ModelOutput(logits=logits_BK, loss=loss, **extra)


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> C-vectors. A stride-P convolution is exactly unfold + one Linear."""

    def __init__(self, channels: int, patch: int, d_model: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)

    def forward(self, pixels_BIYX: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels_BIYX).flatten(2).transpose(1, 2)          # x_BLC, patches in row-major order


def sincos_2d_table(grid: int, d_model: int, cls: bool, base: float = 10000.0) -> torch.Tensor:
    """(grid^2 (+1), C): channels [0, C/2) encode the row with the 1-D sinusoidal table, [C/2, C) the column.

    >>> sincos_2d_table(2, 4, cls=False)[3]       # row 1, column 1: sin(1), cos(1) twice
    tensor([0.8415, 0.5403, 0.8415, 0.5403])
    """
    if d_model % 4:
        raise ConfigError(f"2-D sinusoidal positions need d_model divisible by 4, got {d_model}")
    half = sinusoidal_table(grid, d_model // 2, base)                      # (grid, C/2)
    rows = half[:, None, :].expand(grid, grid, -1)
    cols = half[None, :, :].expand(grid, grid, -1)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, d_model)
    return torch.cat([torch.zeros(1, d_model), table]) if cls else table


class Sincos2DPosition(Position):
    def __init__(self, grid: int, d_model: int, cls: bool, base: float):
        super().__init__()
        self.register_buffer("table", sincos_2d_table(grid, d_model, cls, base), persistent=False)

    def embed(self, pos_BL):
        return self.table[pos_BL]


class ViT(ImageClassifier, Stack):
    """ViT for classification; ``model(pixels_BIYX, labels_B)`` -> ModelOutput(logits_BK, loss)."""
    model_type = "qkv-vit"

    def __init__(self, cfg: ModelConfig, vision: VisionConfig, labels: Sequence[str]):
        labels = self.check_labels(labels)
        n_tokens = vision.grid ** 2 + (vision.pool == "cls")
        if cfg.mask != "bidirectional":
            raise ConfigError(f"ViT attends both ways but mask={cfg.mask!r}; set mask='bidirectional'")
        if cfg.pos not in ("learned", "sinusoidal"):
            raise ConfigError(f"ViT takes pos='learned' or 'sinusoidal' (2-D), not {cfg.pos!r}")
        if cfg.max_len != n_tokens:
            raise ConfigError(f"max_len={cfg.max_len} must equal the {n_tokens} tokens of a {vision.image_size}^2 "
                              f"image in {vision.patch_size}^2 patches{' + [CLS]' if vision.pool == 'cls' else ''}; "
                              f"set max_len={n_tokens}")
        Stack.__init__(self, cfg, tokens=False)
        self.vision, self.labels = vision, labels
        self.patch = PatchEmbed(vision.channels, vision.patch_size, cfg.d_model)
        if vision.pool == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        if cfg.pos == "sinusoidal":
            self.pos = Sincos2DPosition(vision.grid, cfg.d_model, vision.pool == "cls", cfg.pos_base)
        self.head = nn.Linear(cfg.d_model, len(self.labels))
        self.init_weights()
        if vision.pool == "cls":
            nn.init.normal_(self.cls, std=0.02)

    def rebuild_buffers(self) -> None:
        if self.cfg.pos == "sinusoidal":
            v = self.vision
            self.pos = Sincos2DPosition(v.grid, self.cfg.d_model, v.pool == "cls", self.cfg.pos_base)

    def embed_images(self, pixels_BIYX: torch.Tensor) -> torch.Tensor:
        x_BLC = self.patch(pixels_BIYX)
        if self.vision.pool == "cls":
            x_BLC = torch.cat([self.cls.expand(x_BLC.shape[0], -1, -1).to(x_BLC.dtype), x_BLC], dim=1)
        pos_1L = torch.arange(x_BLC.shape[1], device=x_BLC.device)[None]
        return self.drop(x_BLC + self.pos.embed(pos_1L))

    def forward(self, pixels_BIYX: torch.Tensor, labels: torch.Tensor | None = None,
                return_attentions: bool = False) -> ModelOutput:
        self.check_pixels(pixels_BIYX)
        x_BLC = self.embed_images(pixels_BIYX)
        L = x_BLC.shape[1]
        mask = build_mask(L, L, "bidirectional", device=x_BLC.device)      # every patch sees every patch
        pos_1L = torch.arange(L, device=x_BLC.device)[None]
        h_BLC, attentions, _ = self.run(x_BLC, mask, pos_1L, return_attentions=return_attentions)
        pooled_BC = h_BLC[:, 0] if self.vision.pool == "cls" else h_BLC.mean(dim=1)
        return self.classify(self.head(pooled_BC), labels, hidden=h_BLC,
                             attentions=tuple(attentions) if return_attentions else None)
