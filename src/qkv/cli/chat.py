"""`qkv chat PATH`: an interactive terminal chat with a model's own chat template, streamed.

    qkv chat SmolLM2-135M-Instruct.Q4_1.gguf --system "Answer briefly." --temperature 0.7 --quantized

Type a message and press Enter; the reply streams as it is generated and ends at the model's end-of-turn
token. The conversation's KV cache is kept between turns, so each turn computes only its new tokens.
``/reset`` starts over (the system message stays), ``/exit`` (or end of input, Ctrl-D) quits. When the
conversation outgrows the context, the oldest turns are dropped and one line says so; a message that does
not fit even alone is one error line, and the chat goes on. Reads stdin line by line, so it also takes
piped input: ``printf 'Hi\\n/exit\\n' | qkv chat model.gguf``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..generate import GenerationConfig
from .generate import add_sampling_arguments, load_for_decoding, sampling_config

DEFAULTS = GenerationConfig(max_new_tokens=512, temperature=0.7, top_p=0.95)   # chat's defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="PATH", help="a .gguf file or a Llama / Mistral / Qwen2 directory with a "
                                                 "chat template (or a qkv checkpoint that has one)")
    p.add_argument("--system", metavar="TEXT", default=None, help="the system message")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="KV-cache positions for the conversation (default min(max_len, 4096))")
    add_sampling_arguments(p, DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from ..conversation import ChatSession

    cfg = sampling_config(args, DEFAULTS)
    model = load_for_decoding(args.model, args, "chat")
    session = ChatSession(model, system=args.system, context=args.context, config=cfg)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} ({session.context}-token context); /reset starts over, /exit quits",
              file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        try:
            for piece in session.say(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except InputError as e:              # this turn cannot be answered; the conversation goes on
            if session.messages and session.messages[-1]["role"] == "user":
                session.messages.pop()
            print(f"qkv chat: {e}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        for notice in session.notices:
            print(f"qkv chat: {notice}", file=sys.stderr)
        session.notices.clear()
