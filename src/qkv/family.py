"""``Family``: what kind of model a checkpoint holds, which decides the commands that run it.

Each model class names its family (``GPT.family is Family.DECODER``); ``qkv.loading.family_of`` reads it
off a model, or off a checkpoint's config.json (or a GGUF file) without reading the weights. The values
are the words the CLI's messages use ("holds a fine-tuned encoder model"), and a Family compares equal to
its word, so code and messages written with the words keep working.
"""

from __future__ import annotations

from enum import Enum


class Family(str, Enum):
    DECODER = "decoder"                        # GPT, GPT-2, the Llama family, GGUF files: generate, chat, serve
    ENCODER = "encoder"                        # BERT without a task head: embed, fine-tune
    FINETUNED_ENCODER = "fine-tuned encoder"   # an encoder with a task head: predict, evaluate
    FINETUNED_DECODER = "fine-tuned decoder"   # a decoder with a classifier on its last token: qkv.load in Python
    ENCODER_DECODER = "encoder-decoder"        # the original Transformer: translate
    IMAGE_CLASSIFIER = "image classifier"      # ViT, Swin, the CNN baseline: predict --image, evaluate

    __str__ = str.__str__                      # the word, in messages and f-strings, on every Python
    __format__ = str.__format__

    @property
    def decodes(self) -> bool:
        """It runs one token at a time after the prompt (a KV-cache loop), not whole sequences."""
        return self in (Family.DECODER, Family.ENCODER_DECODER)
