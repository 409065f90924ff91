"""`qkv chat PATH`: an interactive terminal chat with a model's own chat template, streamed.

    qkv chat SmolLM2-135M-Instruct.Q4_1.gguf --system "Answer briefly." --temperature 0.7 --quantized

Type a message and press Enter; the reply streams as it is generated and ends at the model's end-of-turn
token, followed (in a terminal) by its speed. The conversation's KV cache is kept between turns, so each
turn computes only its new tokens. In a terminal the line can be edited and earlier lines recalled
(readline), and Ctrl-C stops the reply in progress and keeps the conversation (the part already written
stays in it). A message of several lines goes between two lines of three quotes (\"\"\"). Commands:

    /help   the commands            /set NAME VALUE   a sampling setting for the next replies (/set lists them)
    /reset  start over (the system message stays)     /system TEXT   a new system message, and start over
    /exit   quit (also Ctrl-D)      //text            a message that begins with a slash

When the conversation outgrows the context, the oldest turns are dropped and one line says so; a message
that does not fit even alone is one error line, and the chat goes on. Reads stdin line by line, so it also
takes piped input: ``printf 'Hi\\n/exit\\n' | qkv chat model.gguf``.
"""

from __future__ import annotations

import argparse
import sys
import time
import typing

from ..errors import InputError
from ..generate import GenerationConfig, make_config
from .flags import field_parser, positive_int
from .generate import SAMPLING_FLAGS, add_sampling_arguments, load_for_decoding, sampling_config

DEFAULTS = GenerationConfig(max_new_tokens=512, temperature=0.7, top_p=0.95)   # chat's defaults
COMMANDS = {
    "/help": "the commands",
    "/set": "/set NAME VALUE sets a sampling setting for the next replies; /set alone lists them",
    "/system": "/system TEXT sets the system message and starts over",
    "/reset": "start over (the system message stays)",
    "/exit": "quit (also Ctrl-D)",
}
HINTS = typing.get_type_hints(GenerationConfig)
SETTINGS = {name: field_parser(HINTS[name], name, f"/set {name}")        # what /set takes: the sampling
            for name in SAMPLING_FLAGS if HINTS[name] is not bool}       # flags that take a number
BLOCK = '"""'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="PATH", help="a .gguf file or a Llama / Mistral / Qwen2 directory with a "
                                                 "chat template (or a qkv checkpoint that has one)")
    p.add_argument("--system", metavar="TEXT", default=None, help="the system message")
    p.add_argument("--context", type=positive_int("--context"), default=None, metavar="N",
                   help="KV-cache positions for the conversation (default min(max_len, 4096))")
    add_sampling_arguments(p, DEFAULTS)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Terminal:
    """Lines from the user: ``input`` with readline's editing and history in a terminal, plain stdin lines
    otherwise. ``read`` returns None at end of input; a \"\"\" line opens a block of lines that a line
    ending in \"\"\" closes."""

    def __init__(self, interactive: bool):
        self.interactive = interactive
        if interactive:
            try:
                import readline  # noqa: F401  (importing it gives input() line editing and history)
            except ImportError:  # not on every platform (Windows); input() still works without it
                pass

    def _line(self, prompt: str) -> str | None:
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    def read(self) -> str | None:
        line = self._line("> ")
        if line is None or not line.lstrip().startswith(BLOCK):
            return line
        lines, rest = [], line.lstrip()[len(BLOCK):]
        while not rest.rstrip().endswith(BLOCK):
            lines.append(rest)
            rest = self._line(". ")
            if rest is None:                             # input ended inside the block: send what came
                return "\n".join(lines).strip("\n")
        lines.append(rest.rstrip()[:-len(BLOCK)])
        return "\n".join(lines).strip("\n")


def _set(session, words: list[str]) -> str:
    """/set NAME VALUE on the session's sampling config (validated by GenerationConfig); /set lists them."""
    if not words:
        return "; ".join(f"{name} {getattr(session.config, name)}" for name in SETTINGS)
    if len(words) != 2 or words[0] not in SETTINGS:
        raise InputError(f"usage: /set NAME VALUE with NAME one of {', '.join(SETTINGS)}")
    name, text = words
    try:
        value = SETTINGS[name](text)
    except argparse.ArgumentTypeError as e:
        raise InputError(str(e)) from None
    session.config = make_config(session.config, **{name: value})
    return f"{name} {value}"


def _command(session, text: str) -> bool:
    """Run a /command; False for /exit. An unknown one is an error, never a message to the model."""
    name, _, rest = text.strip().partition(" ")
    if name == "/exit":
        return False
    if name == "/help":
        _note("\n".join(f"  {c:<8} {what}" for c, what in COMMANDS.items()) +
              f"\n  {BLOCK}      a message of several lines, closed by {BLOCK}"
              f"\n  //text   a message that begins with '/'")
    elif name == "/reset":
        session.reset()
        _note("(conversation reset)")
    elif name == "/system":
        session.system = rest.strip() or None
        session.reset()
        _note(f"(system message {'set' if session.system else 'removed'}; conversation reset)")
    elif name == "/set":
        _note(f"({_set(session, rest.split())})")
    else:
        raise InputError(f"unknown command {name}; /help lists them (start a message with // to send a '/')")
    return True


def _reply(session, text: str, interactive: bool) -> None:
    """Stream one reply; Ctrl-C stops it, and what was written stays in the conversation."""
    t0 = time.perf_counter()
    pieces = session.say(text)
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pieces.close()                               # the session keeps the reply so far and its cache
        sys.stdout.write("\n")
        _note("(reply stopped)")
        return
    except InputError:                               # this turn cannot be answered; the conversation goes on
        if session.messages and session.messages[-1]["role"] == "user":
            session.messages.pop()
        raise
    sys.stdout.write("\n")
    sys.stdout.flush()
    if interactive and session.reply_tokens:
        seconds = time.perf_counter() - t0
        _note(f"({session.reply_tokens} tokens, {session.reply_tokens / seconds:.1f} tokens/s)")


def run(args: argparse.Namespace) -> int:
    from ..conversation import ChatSession

    cfg = sampling_config(args, DEFAULTS)
    model = load_for_decoding(args.model, args, "chat")
    session = ChatSession(model, system=args.system, context=args.context, config=cfg)
    terminal = Terminal(sys.stdin.isatty())
    if terminal.interactive:
        _note(f"chatting with {args.model} ({session.context}-token context); /help lists the commands, "
              f"Ctrl-C stops a reply, /exit quits")
    while True:
        try:
            text = terminal.read()
        except KeyboardInterrupt:                    # at the prompt: a fresh line, as shells do
            sys.stdout.write("\n")
            _note("(/exit or Ctrl-D quits)")
            continue
        if text is None:
            return 0
        stripped = text.strip()
        try:
            if stripped.startswith("/") and not stripped.startswith("//"):
                if not _command(session, stripped):
                    return 0
                continue
            if stripped:
                _reply(session, text.lstrip()[1:] if stripped.startswith("//") else text, terminal.interactive)
        except InputError as e:
            _note(f"qkv chat: {e}")
            continue
        for notice in session.notices:
            _note(f"qkv chat: {notice}")
        session.notices.clear()
