"""A task model that starts from a pre-trained encoder: its trunk's weights, and a new head.

    model = from_pretrained_encoder("runs/bert-mlm", "classify", labels=["neg", "pos"])   # train mode
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import CheckpointError, ConfigError
from ..loading import load
from ..models.encoder import HEADS, Encoder, LabelledEncoder


def from_pretrained_encoder(source: str | Path | Encoder, head: str, labels: Sequence[str] | None = None,
                            tokenizer=None) -> Encoder:
    """A ``HEADS[head]`` model (train mode) with the encoder weights of ``source`` and a new head.

    source: a checkpoint directory (qkv encoder or Hugging Face BERT) or a loaded ``Encoder``.
    labels: the label names, for "classify" and "tag". tokenizer: default, the checkpoint's own.
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    if isinstance(source, Encoder):
        encoder = source
    else:
        encoder = load(source)
        if not isinstance(encoder, Encoder):
            raise CheckpointError(f"{source} holds a {encoder.model_type!r} model, not an encoder; fine-tune "
                                  f"from a qkv-bert* checkpoint or a Hugging Face BERT directory")
    tokenizer = tokenizer if tokenizer is not None else getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        raise CheckpointError(f"{source} has no tokenizer (tokenizer.json or vocab.txt); fine-tuning needs the "
                              f"one the encoder was trained with: copy it into the directory or pass tokenizer=")
    if tokenizer.vocab_size > encoder.cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the encoder only "
                              f"{encoder.cfg.vocab_size}; use the tokenizer saved with this encoder")
    cls = HEADS[head]
    if issubclass(cls, LabelledEncoder):
        model = cls(encoder.cfg, labels if labels is not None else [])
    elif labels is not None:
        raise ConfigError(f"head {head!r} takes no labels; pass labels only for 'classify' and 'tag'")
    else:
        model = cls(encoder.cfg)
    trunk = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    model.tokenizer = tokenizer
    return model.train()
