"""Dropout (Srivastava et al., 2014), or nothing at all when its rate is 0.

A model built with dropout 0 (every loaded checkpoint, every decode) would still pay a module call and an
operator dispatch per site for ``nn.Dropout(0.0)``; 61 of them per token in a 30-layer model. The rate is
fixed by the frozen config, so the choice is made once, at construction.
"""

from torch import nn


def make_dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()
