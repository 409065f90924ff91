"""A small convolutional baseline for image classification (LeCun et al., 1998, in today's spelling).

Legend: B batch, I image channels (then feature channels), Y X rows and columns, K classes.

    pixels_BIYX ─> n_layers x [3x3 conv ─> ReLU ─> 3x3 conv ─> ReLU ─> 2x2 max-pool]   (width d_model, doubling)
                ─> flatten ─> dropout ─> linear ─> logits_BK

It is here to be compared with ViT and Swin on the same data and budget: a convolution assumes that
nearby pixels belong together and that a pattern means the same thing anywhere in the image; attention
has to learn both from the examples, which matters when there are only a few thousand of them.
``ModelConfig`` sizes it: d_model is the first block's channels, n_layers the number of blocks, dropout
the rate before the classifier.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig, VisionConfig
from ..errors import ConfigError
from .vision import ImageClassifier


class CNN(ImageClassifier, nn.Module):
    """``model(pixels_BIYX, labels_B)`` -> ModelOutput(logits_BK, loss)."""
    model_type = "qkv-cnn"

    def __init__(self, cfg: ModelConfig, vision: VisionConfig, labels: Sequence[str]):
        labels = self.check_labels(labels)
        side = vision.image_size // 2 ** cfg.n_layers
        if side < 1:
            raise ConfigError(f"{cfg.n_layers} pooling blocks shrink a {vision.image_size}px image to nothing; "
                              f"use fewer n_layers")
        nn.Module.__init__(self)
        self.cfg, self.vision, self.labels = cfg, vision, labels
        layers, channels = [], vision.channels
        for i in range(cfg.n_layers):
            width = cfg.d_model * 2 ** i
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(channels * side * side, len(labels))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, pixels_BIYX: torch.Tensor, labels: torch.Tensor | None = None,
                return_attentions: bool = False):
        self.check_pixels(pixels_BIYX)
        logits_BK = self.head(self.drop(self.features(pixels_BIYX).flatten(1)))
        return self.classify(logits_BK, labels)
