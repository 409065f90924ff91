"""Sampling in the decode loop draws from the distribution the processors define, checked by goodness of fit.

A model that returns the same logits at every step is decoded thousands of times through ``generate_ids``
(one long row, or thousands of rows of a batch, left padded); the token counts are compared with the
distribution computed here, independently and in float64, from the published rules: softmax(logits / T)
after top-k, then top-p (the smallest set reaching p), then min-p (relative to the top probability), with
CTRL's repetition penalty over the prompt and OpenAI's presence/frequency penalties over the output.

Each comparison is Pearson's chi-square test; it fails when p < 1e-6, so a correct sampler fails it once in a
million seeds, while a sampler that ignored the temperature or a filter is rejected at p far below that
(``test_the_test_rejects_a_sampler_that_ignores_temperature`` shows it). Filtered tokens must never appear.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from qkv import ModelConfig
from qkv.generate import GenerationConfig, generate_ids
from qkv.models.output import ModelOutput

scipy_stats = pytest.importorskip("scipy.stats")

FALSE_ALARM = 1e-6
LOGITS = [1.5, 1.1, 0.7, 0.2, -0.2, -0.6, -1.0, -1.6]          # V = 8, unsorted ids below
V = len(LOGITS)


class FixedLogits(nn.Module):
    """Every step, every row: the same logits (the decode loop's sampling is all that varies)."""

    def __init__(self, logits: list[float], max_len: int):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=len(logits), max_len=max_len, n_layers=1, d_model=4, n_heads=1)
        self.register_buffer("logits_V", torch.tensor(logits))
        self.anchor = nn.Parameter(torch.zeros(1))            # the loop reads the device from a parameter

    def new_caches(self, batch, max_len=None):
        return None

    def check_ids(self, ids_BL, start=0):
        pass

    def forward(self, ids_BL, caches=None, key_mask_BM=None, last_only=False):
        return ModelOutput(logits=self.logits_V.expand(ids_BL.shape[0], 1, -1))


# ---- the reference distribution, from the definitions --------------------------------------------------
def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z[np.isfinite(z)].max())
    return e / e.sum()


def reference(logits, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, seen=(), repetition_penalty=1.0,
              counts=None, presence_penalty=0.0, frequency_penalty=0.0) -> np.ndarray:
    z = np.array(logits, dtype=np.float64)
    for t in set(seen):                                   # CTRL: less likely, whatever the logit's sign
        z[t] = z[t] / repetition_penalty if z[t] > 0 else z[t] * repetition_penalty
    for t, c in (counts or {}).items():                   # OpenAI: additive, generated tokens only
        z[t] -= presence_penalty * (c > 0) + frequency_penalty * c
    z = z / temperature
    if top_k is not None:
        z[z < np.sort(z)[::-1][top_k - 1]] = -np.inf
    if top_p < 1.0:
        p = softmax(z)
        mass_before = 0.0
        for t in np.argsort(-p, kind="stable"):
            if mass_before >= top_p:
                z[t] = -np.inf
            mass_before += p[t]
    if min_p > 0.0:
        p = softmax(z)
        z[p < min_p * p.max()] = -np.inf
    return softmax(z)


def assert_fits(counts: np.ndarray, probs: np.ndarray, what: str) -> float:
    """Pearson's chi-square of ``counts`` against ``probs``; returns the p-value. Zero-probability cells must
    be empty, and every other cell must expect at least 5 draws (the test's validity condition)."""
    n = counts.sum()
    assert counts[probs == 0].sum() == 0, f"{what}: a filtered token was drawn: {counts.tolist()}"
    kept = probs > 0
    assert (n * probs[kept]).min() >= 5, f"{what}: too few draws for a chi-square test"
    result = scipy_stats.chisquare(counts[kept], n * probs[kept])
    assert result.pvalue > FALSE_ALARM, (f"{what}: counts {counts.tolist()} do not fit {np.round(probs, 4).tolist()}"
                                         f" (chi2 {result.statistic:.1f}, p {result.pvalue:.2e})")
    return result.pvalue


def draw(params: dict, path: str, n: int, seed: int = 0, prompt=(3,)) -> np.ndarray:
    """Token counts of ``n`` draws: one row decoding n tokens, or n rows decoding one each."""
    cfg = GenerationConfig(seed=seed, **params, max_new_tokens=n if path == "one row" else 1)
    model = FixedLogits(LOGITS, max_len=len(prompt) + cfg.max_new_tokens)
    prompt_BL = torch.tensor([list(prompt)] * (1 if path == "one row" else n))
    new_BN = generate_ids(model, prompt_BL, cfg)
    assert new_BN.numel() == n
    return np.bincount(new_BN.flatten().numpy(), minlength=V)


SETTINGS = {
    "temperature 0.6": dict(temperature=0.6),
    "temperature 1.8": dict(temperature=1.8),
    "top-k 3": dict(temperature=1.3, top_k=3),
    "top-p 0.7": dict(temperature=0.9, top_p=0.7),
    "min-p 0.3": dict(temperature=1.2, min_p=0.3),
    "all three": dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.1),
}


@pytest.mark.parametrize("path", ["one row", "batch"])
@pytest.mark.parametrize("name", SETTINGS)
def test_draws_follow_the_processed_distribution(name, path):
    params = SETTINGS[name]
    probs = reference(LOGITS, **params)
    assert_fits(draw(params, path, n=4000), probs, f"{name}, {path}")


def test_the_reference_filters_what_the_definitions_say():
    """The hand-computed reference itself, on the settings above (so a wrong reference cannot pass)."""
    kept = {name: set(np.flatnonzero(reference(LOGITS, **p)).tolist()) for name, p in SETTINGS.items()}
    assert kept["top-k 3"] == {0, 1, 2}
    # T = 0.9: p = .380 .244 .156 .090 ...; the mass before token 3 is .780 >= 0.7, so 3 tokens are kept
    assert kept["top-p 0.7"] == {0, 1, 2}
    # T = 1.2: p = .314 .225 .161 .106 .076 ...; min-p keeps p >= 0.3 * .314 = .094
    assert kept["min-p 0.3"] == {0, 1, 2, 3}
    assert kept["temperature 1.8"] == set(range(V))
    assert reference([2.0, 0.0], temperature=0.5)[0] == pytest.approx(1 / (1 + math.exp(-4)))


def test_the_test_rejects_a_sampler_that_ignores_temperature():
    counts = draw(SETTINGS["temperature 0.6"], "batch", n=4000)
    untempered = reference(LOGITS)
    assert scipy_stats.chisquare(counts, counts.sum() * untempered).pvalue < FALSE_ALARM


def test_repetition_penalty_over_the_prompt_with_left_padding():
    """Rows of different lengths, left padded with token 1: every row has seen {0, 5} (one positive, one
    negative logit), so all draw from one distribution; a counted pad would also penalize token 1."""
    prompts = [[0, 5], [5, 0, 5, 5], [0, 5, 0]] * 1500           # seen once or more: penalized once
    L = max(map(len, prompts))
    ids_BL = torch.full((len(prompts), L), 1)
    key_mask_BL = torch.zeros(len(prompts), L, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids_BL[b, L - len(p):], key_mask_BL[b, L - len(p):] = torch.tensor(p), True
    params = dict(temperature=1.1, repetition_penalty=2.0)
    new_BN = generate_ids(FixedLogits(LOGITS, L + 1), ids_BL, GenerationConfig(max_new_tokens=1, seed=1, **params),
                          key_mask_BM=key_mask_BL)
    counts = np.bincount(new_BN.flatten().numpy(), minlength=V)
    probs = reference(LOGITS, seen=(0, 5), **params)
    assert probs[0] < reference(LOGITS, temperature=1.1)[0] / 1.5          # the penalty matters
    assert_fits(counts, probs, "repetition penalty")


def test_presence_and_frequency_penalties_over_three_draws():
    """The joint law of three tokens: each draw is penalized by the tokens drawn before it in its row only
    (not the prompt), presence once per token and frequency per occurrence."""
    logits = [0.6, 0.3, 0.0, -0.3]
    params = dict(temperature=1.0, presence_penalty=0.7, frequency_penalty=0.4)
    n = 30000
    model = FixedLogits(logits, max_len=4)
    new_BN = generate_ids(model, torch.zeros(n, 1, dtype=torch.long),     # the prompt token 0 never counts
                          GenerationConfig(max_new_tokens=3, seed=2, **params))
    observed = np.zeros((4, 4, 4))
    np.add.at(observed, tuple(new_BN.numpy().T), 1)
    expected = np.zeros((4, 4, 4))
    for a, b, c in itertools.product(range(4), repeat=3):
        p_a = reference(logits, **params)[a]
        p_b = reference(logits, counts={a: 1}, **params)[b]
        p_c = reference(logits, counts={a: 1 + (b == a), b: 1 + (b == a)}, **params)[c]
        expected[a, b, c] = p_a * p_b * p_c
    assert expected.sum() == pytest.approx(1.0)
    assert_fits(observed.flatten(), expected.flatten(), "presence/frequency")
    # presence and frequency differ on a token drawn twice: 0.7 + 2 * 0.4 against 2 * 0.7 + 0.4
    swapped = dict(params, presence_penalty=0.4, frequency_penalty=0.7)
    assert not np.allclose(reference(logits, counts={3: 2}, **params), reference(logits, counts={3: 2}, **swapped))
