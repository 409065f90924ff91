"""Token ids in, text out, as it is generated: incremental decoding that never splits a character
(nor shows half of one when generation stops inside it), and stop strings matched across token boundaries (never
returned)."""

from __future__ import annotations


def continuation_context(tokenizer, prompt_ids: list[int]) -> list[int]:
    """The ``context`` of a text that continues a prompt: its last token, unless that is bos or eos (an empty
    prompt), after which a text starts afresh."""
    last = list(prompt_ids[-1:])
    return [] if last and last[0] in (tokenizer.bos_id, tokenizer.eos_id) else last


class TextStream:
    """Token ids in, text pieces out: incremental decoding plus stop strings.

    Decoding uses two offsets (the text-generation-inference trick): the text of ids[prefix:] minus the
    text of ids[prefix:read] is new; it is released only when it does not end in U+FFFD, i.e. when the
    last token did not stop in the middle of a UTF-8 character. Released text then waits in ``pending``
    while its end could still be the start of a stop string.

    ``context``: the ids the text continues (a prompt's last token), decoded only to learn where the new text
    starts. A SentencePiece decoder drops the space in front of the first piece ("▁the" alone is "the"), so a
    continuation decoded on its own would lose the space after "First Citizen:"; after its context it keeps it.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...] = (), context: list[int] = ()):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = list(context)
        self.prefix = 0
        self.read = len(self.ids)
        self.pending = ""
        self.done = False                                         # a stop string was seen, or finish()

    def _new_text(self) -> str:
        decode = self.tokenizer.decode
        return decode(self.ids[self.prefix:])[len(decode(self.ids[self.prefix:self.read])):]

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (often '')."""
        if self.done:
            return ""
        self.ids.append(token_id)
        new = self._new_text()
        if new and not new.endswith("\ufffd"):
            self.pending += new
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def take(self, token_id: int, stop_ids=(), constraint=None) -> str:
        """The decode loops' one step (``qkv.generate``, a chat turn, the server's rows): a stop id ends the
        text (it is not part of it); any other token is pushed, and a ``constraint`` (``qkv.grammar``) whose
        JSON value it completed ends the text too. ``done`` says whether it ended."""
        if token_id in stop_ids:
            return self.finish()
        piece = self.push(token_id)
        if constraint is not None and constraint.finished:
            piece += self.finish()
        return piece

    def finish(self) -> str:
        """No more tokens: flush everything left, but not a character the last tokens left incomplete
        (a token limit that falls inside a multi-byte character): its bytes would show as U+FFFD, which
        the model did not write. (A U+FFFD the model wrote as its very last character looks the same
        through ``decode`` and is dropped too: the lesser error.)"""
        if self.done:
            return ""
        self.pending += self._new_text().rstrip("\ufffd")
        self.prefix = self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.done = self.pending[:min(hits)], "", True
            return out
        hold = 0 if final else self._stop_prefix_len()
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        self.done = final
        return out

    def _stop_prefix_len(self) -> int:
        """Length of the longest end of ``pending`` that begins some stop string (a match may yet come)."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best
