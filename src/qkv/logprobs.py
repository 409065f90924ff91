"""Log-probabilities of the sampled tokens, for ``qkv.generate(..., logprobs=True)`` and the server's
``logprobs`` / ``top_logprobs``.

Legend: B rows, V vocab, A the alternatives asked for (``top_logprobs``).

They are the model's own: the log-softmax of its logits, taken before logit_bias, a JSON constraint's
mask, the penalties, temperature and the filters, as vLLM reports them (OpenAI does not say). So they
measure what the model thinks of a token, not how the sampler was steered to it: a token forced by
``logit_bias`` can show a very low log-probability.

    >>> out = qkv.generate(model, tok, "ROMEO:", max_new_tokens=3, temperature=0, logprobs=True)  # doctest: +SKIP
    >>> out.text, [round(t.logprob, 2) for t in out.logprobs]                                       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenLogprob:
    id: int                                              # the sampled token
    logprob: float                                       # its log-probability under the model
    top: tuple[tuple[int, float], ...] = ()              # the ``top_logprobs`` most likely (id, logprob), best first


@dataclass(frozen=True)
class Completion:
    """What ``qkv.generate`` returns for a prompt when asked for ``logprobs``."""
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)   # one per generated token of the text, stop
                                                                  # string included; end-of-turn ids not


def token_logprobs(logits_BV: torch.Tensor, next_B: torch.Tensor, top: int = 0) -> list[TokenLogprob]:
    """Each row's sampled token ``next_B`` scored by the model's ``logits_BV``, with ``top`` alternatives."""
    logprobs_BV = logits_BV.float().log_softmax(-1)
    chosen_B = logprobs_BV.gather(1, next_B[:, None].to(logprobs_BV.device))[:, 0]
    if top:
        values_BA, ids_BA = logprobs_BV.topk(top, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(ids_BA.tolist(), values_BA.tolist())]
    else:
        tops = [()] * len(chosen_B)
    return [TokenLogprob(t, lp, alternatives) for t, lp, alternatives in zip(next_B.tolist(), chosen_B.tolist(), tops)]


class StepLogprobs:
    """A decode loop's hook (``qkv.generate.iter_ids``): ``last`` holds the step's TokenLogprob per row."""

    def __init__(self, top: int = 0):
        self.top = top
        self.last: list[TokenLogprob] = []

    def record(self, logits_BV: torch.Tensor, next_B: torch.Tensor) -> None:
        self.last = token_logprobs(logits_BV, next_B, self.top)
