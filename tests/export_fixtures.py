"""What the export tests share: a byte-level BPE with chat specials and template, texts, wide random weights."""

import torch

from qkv import Tokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TEXT = "The quick brown fox, naïve café 12345!\n\tJumps over the lazy dog. " * 20
TEXTS = ["The quick brown fox", " naïve café 12345!\n\tover", "<|im_start|>user\nhé<|im_end|>\n"]


def chat_bpe() -> Tokenizer:
    """A BPE trained here whose prompts start with bos, with ChatML's specials, template and a second stop id."""
    tok = Tokenizer.train_bpe([TEXT], vocab_size=300, special_tokens=SPECIALS)
    return Tokenizer(tok.backend, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                   "pad_token": "<|endoftext|>"}, CHATML, add_bos=True,
                     extra_stop_ids=[tok.backend.token_to_id("<|endoftext|>")])


def wide(model, seed=0):
    """``model`` in eval mode with N(0, 0.3) weights: wide enough for attention (and every mistake) to show."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()
