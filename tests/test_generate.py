"""Generation: the decode loop against full recomputation, batching, each processor by hand, stop strings,
streaming, and every bad input as an InputError that names the fix."""

import dataclasses
import os
import re

import pytest
import torch
from torch import nn

from qkv import GPT, ModelConfig, Tokenizer
from qkv.errors import InputError
from qkv.bench.decode import weight_bytes_per_token
from qkv.runtime.layout import decode_layout
from qkv.text_stream import TextStream
from qkv.generate import (GenerationConfig, generate, generate_ids, min_p_filter,
                          presence_frequency_penalty, repetition_penalty, stream, top_k_filter, top_p_filter)
from qkv.models.output import ModelOutput

from tiny_models import tiny_model

TEXT = "abcdefghijklmnopqrstuvwxyz .,\n"
NEG = float("-inf")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_char(TEXT, special_tokens=["<eos>"])


def tiny_gpt(vocab_size, seed=0, **kw):
    return tiny_model(GPT, vocab_size, seed, **{"max_len": 32, **kw})


class FakeLM(nn.Module):
    """Logits from a table, row t for the t-th new token (the last row repeats), whatever the input:
    scripts exact token sequences for stop/eos/streaming tests and fixed logits for penalty tests."""

    def __init__(self, rows_TV: torch.Tensor, prompt_len: int, max_len: int = 64):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=rows_TV.shape[1], max_len=max_len, n_layers=1, d_model=4, n_heads=1)
        self.rows_TV, self.prompt_len = rows_TV, prompt_len
        self.anchor = nn.Parameter(torch.zeros(1))          # generation reads the device from a parameter

    @classmethod
    def script(cls, ids: list[int], vocab_size: int, prompt_len: int = 1):
        # a margin of 100 nats: sampled at the default temperature the scripted token is drawn whatever the
        # global RNG holds (at 10, 299 other tokens had a 1.3% chance together, so a test failed in some orders)
        return cls(torch.eye(vocab_size)[ids] * 100, prompt_len)

    def new_caches(self, batch, max_len=None):
        return [type("Cache", (), {"length": 0})()]

    def check_ids(self, ids_BL, start=0):
        pass

    def forward(self, ids_BL, caches=None, key_mask_BM=None, last_only=False):
        start = caches[0].length if caches else 0
        M = start + ids_BL.shape[1]
        if caches:
            caches[0].length = M
        row_V = self.rows_TV[min(M - self.prompt_len, len(self.rows_TV) - 1)]
        return ModelOutput(logits=row_V.expand(ids_BL.shape[0], 1, -1))


# ---- the decode loop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_greedy_is_argmax_of_full_recompute(pos):
    model = tiny_gpt(40, pos=pos)
    prompt_BL = torch.randint(0, 40, (1, 5))
    new_BN = generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=12, temperature=0))
    seq_BT = prompt_BL
    for _ in range(12):
        with torch.no_grad():
            nxt = model(seq_BT).logits[:, -1].argmax(-1, keepdim=True)
        seq_BT = torch.cat([seq_BT, nxt], dim=1)
    assert torch.equal(new_BN, seq_BT[:, 5:])


@pytest.mark.parametrize("params", [dict(temperature=0), dict(temperature=0.9, top_k=20, top_p=0.9, seed=3),
                                    dict(temperature=0, repetition_penalty=1.5, frequency_penalty=0.5)])
def test_cache_equals_recompute(params):
    model = tiny_gpt(40)
    prompt_BL = torch.randint(0, 40, (2, 6))
    cached = generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=15, **params))
    recomputed = generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=15, use_cache=False, **params))
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("params", [dict(), dict(repetition_penalty=1.3, presence_penalty=1.0)])
def test_left_padded_batch_equals_each_prompt_alone(pos, params):
    model = tiny_gpt(40, pos=pos)
    prompts = [torch.randint(1, 40, (n,)) for n in (7, 2, 4)]
    L = max(len(p) for p in prompts)
    ids_BL = torch.zeros(3, L, dtype=torch.long)            # pad id 0, which the prompts never use
    key_mask_BL = torch.zeros(3, L, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids_BL[b, L - len(p):], key_mask_BL[b, L - len(p):] = p, True
    cfg = GenerationConfig(max_new_tokens=10, temperature=0, **params)
    batch_BN = generate_ids(model, ids_BL, cfg, key_mask_BM=key_mask_BL)
    for b, p in enumerate(prompts):
        assert torch.equal(batch_BN[b], generate_ids(model, p[None], cfg)[0]), f"row {b}"


def _window_reference(model, prompt_BL, steps, **sampling):
    """Greedy decoding by hand, each step a cache-free forward over the window the context-shift rule
    leaves: past W columns, the newest W // 2 are kept."""
    W, seq_BT, start = model.cfg.max_len, prompt_BL, 0
    for _ in range(steps):
        if seq_BT.shape[1] - start > W:
            start = seq_BT.shape[1] - W // 2
        with torch.no_grad():
            nxt = model(seq_BT[:, start:]).logits[:, -1].argmax(-1, keepdim=True)
        seq_BT = torch.cat([seq_BT, nxt], dim=1)
    return seq_BT[:, prompt_BL.shape[1]:]


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "alibi"])
def test_context_shift_equals_recompute_on_the_window(pos):
    """Past the context (W = 8, 5 + 30 tokens) every step equals the model run without a cache on the
    window the shift keeps, for every position scheme: the refill starts the window at position 0."""
    model = tiny_gpt(40, pos=pos, max_len=8)
    prompt_BL = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(1))
    cfg = GenerationConfig(max_new_tokens=30, temperature=0, context_shift=True)
    new_BN = generate_ids(model, prompt_BL, cfg)
    assert new_BN.shape == (1, 30)
    assert torch.equal(new_BN, _window_reference(model, prompt_BL, 30))
    assert torch.equal(new_BN, generate_ids(model, prompt_BL, dataclasses.replace(cfg, use_cache=False)))


@pytest.mark.parametrize("params",
                         [dict(temperature=0.9, top_p=0.9, seed=3), dict(temperature=0, repetition_penalty=1.5)])
def test_context_shift_cache_equals_recompute_on_a_padded_batch(params):
    model = tiny_gpt(40, pos="rope", max_len=8)
    ids_BL = torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(2))
    key_mask_BL = torch.ones(2, 6, dtype=torch.bool)
    key_mask_BL[1, :3] = False
    cfg = GenerationConfig(max_new_tokens=25, context_shift=True, **params)
    cached = generate_ids(model, ids_BL, cfg, key_mask_BM=key_mask_BL)
    recomputed = generate_ids(model, ids_BL, dataclasses.replace(cfg, use_cache=False), key_mask_BM=key_mask_BL)
    assert cached.shape == (2, 25) and torch.equal(cached, recomputed)


def test_text_batch_equals_each_prompt_alone(tok):
    model = tiny_gpt(tok.vocab_size)
    prompts = ["hello world", "a", "the cat"]
    alone = [generate(model, tok, p, max_new_tokens=8, temperature=0) for p in prompts]
    assert generate(model, tok, prompts, max_new_tokens=8, temperature=0) == alone


def test_temperature_zero_and_top_k_one_are_greedy():
    model = tiny_gpt(40)
    prompt_BL = torch.randint(0, 40, (2, 4))
    greedy = generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=10, temperature=0))
    top1 = generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=10, temperature=1.5, top_k=1, seed=7))
    assert torch.equal(greedy, top1)


def test_seed_reproducible_and_different_seeds_differ(tok):
    model = tiny_gpt(tok.vocab_size)
    kw = dict(max_new_tokens=24, temperature=1.0, ignore_eos=True)
    a = generate(model, tok, "the ", seed=1, **kw)
    assert a == generate(model, tok, "the ", seed=1, **kw)
    assert len({generate(model, tok, "the ", seed=s, **kw) for s in (2, 3, 4)} | {a}) > 1


def test_max_new_tokens_counts_new_tokens_only(tok):
    model = tiny_gpt(tok.vocab_size)
    prompt_BL = torch.randint(0, tok.vocab_size, (1, 9))
    assert generate_ids(model, prompt_BL, GenerationConfig(max_new_tokens=5)).shape == (1, 5)
    text = generate(model, tok, "abcdefgh", max_new_tokens=6, temperature=0, ignore_eos=True)
    assert len(text) == 6                                       # one character per token


def test_decode_layout_changes_strides_not_results():
    model = tiny_gpt(40, tie_embeddings=True)
    prompt_BL = torch.randint(0, 40, (2, 5))
    cfg = GenerationConfig(max_new_tokens=10, temperature=0)
    before_BN = generate_ids(model, prompt_BL, cfg)
    with torch.no_grad():
        logits_BLV = model(prompt_BL).logits
    assert decode_layout(model) is model
    assert model.head.weight is model.tok.weight and model.tok.weight.stride() == (1, 40)   # tied, column-major
    assert model.blocks[0].mlp.down.weight.is_contiguous()             # fewer outputs than inputs: untouched
    with torch.no_grad():
        assert torch.allclose(model(prompt_BL).logits, logits_BLV, atol=1e-5)
    assert torch.equal(generate_ids(model, prompt_BL, cfg), before_BN)


def test_weight_bytes_per_token_counts_the_tied_head_once_and_skips_lookups():
    model = tiny_gpt(40, tie_embeddings=True)                            # learned positions: a lookup table
    total = sum(p.numel() for p in model.parameters()) * 4
    assert weight_bytes_per_token(model) == total - model.pos.table.weight.numel() * 4
    untied = tiny_gpt(40, tie_embeddings=False)
    total = sum(p.numel() for p in untied.parameters()) * 4
    assert weight_bytes_per_token(untied) == total - (untied.pos.table.weight.numel() + 40 * 32) * 4


class SpyLM(FakeLM):
    """FakeLM that records what the loop asks of the model: cache sizes and each call's input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.cache_sizes = [], []

    def new_caches(self, batch, max_len=None):
        self.cache_sizes.append((batch, max_len))
        return super().new_caches(batch, max_len)

    def forward(self, ids_BL, caches=None, key_mask_BM=None, last_only=False):
        self.calls.append((ids_BL.shape[1], caches is not None, last_only))
        return super().forward(ids_BL, caches, key_mask_BM, last_only)


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_loop_prefills_once_then_feeds_one_token_at_a_time(use_cache):
    """With a cache: one call over the 3-token prompt, then one call per new token over that token alone, into
    caches allocated once for prompt + new tokens; without: the whole sequence each step. Always only the
    last position's logits."""
    model = SpyLM.script([1, 2, 3, 1], vocab_size=5, prompt_len=3)
    new_BN = generate_ids(model, torch.zeros(2, 3, dtype=torch.long), GenerationConfig(4, temperature=0,
                                                                                       use_cache=use_cache))
    assert new_BN.tolist() == [[1, 2, 3, 1]] * 2
    if use_cache:
        assert model.calls == [(3, True, True)] + [(1, True, True)] * 3 and model.cache_sizes == [(2, 7)]
    else:
        assert model.calls == [(3, False, True), (4, False, True), (5, False, True), (6, False, True)]
        assert model.cache_sizes == []


# ---- processors, each against a hand-computed example ------------------------------------------------
def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits_BV = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen_BV = torch.tensor([[True, True, False, False]])
    assert repetition_penalty(logits_BV, seen_BV, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_presence_and_frequency_penalty():
    out = presence_frequency_penalty(torch.ones(1, 3), torch.tensor([[0.0, 1.0, 3.0]]), 0.5, 0.25)
    assert torch.allclose(out, torch.tensor([[1.0, 0.25, -0.25]]))


def test_top_k_keeps_k_largest():
    out = top_k_filter(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), 2)
    assert out.tolist() == [[NEG, 4.0, 3.0, NEG]]
    assert top_k_filter(torch.tensor([[1.0, 4.0, 3.0]]), 10).tolist() == [[1.0, 4.0, 3.0]]   # k > V keeps all


def test_zero_new_tokens_is_an_empty_continuation(tok):
    model = tiny_gpt(tok.vocab_size)
    assert generate_ids(model, torch.tensor([[1, 2, 3], [3, 4, 5]]), GenerationConfig(max_new_tokens=0)).shape == (2, 0)
    assert generate(model, tok, ["ab", "c"], max_new_tokens=0) == ["", ""] and generate(model, tok, []) == []


@pytest.mark.parametrize("p,kept", [(0.4, {1}), (0.75, {1, 3}), (0.85, {0, 1, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_set_reaching_p(p, kept):
    logits_BV = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()     # deliberately unsorted
    out = top_p_filter(logits_BV, p)
    assert {i for i, x in enumerate(out[0].tolist()) if x != NEG} == kept


def test_top_p_and_min_p_at_their_exact_boundaries_and_per_row():
    """Where the arithmetic is exact: a set whose mass reaches p exactly is complete (top-p drops the rest); a
    token exactly min_p times as likely as the top one stays; each row has its own top probability."""
    logits_BV = torch.tensor([[0.125, 0.5, 0.125, 0.25]], dtype=torch.float64).log()   # sorted mass .5 .75
    assert torch.isinf(top_p_filter(logits_BV, 0.75)).tolist() == [[True, False, True, False]]
    assert not torch.isinf(min_p_filter(torch.zeros(1, 4), 1.0)).any()               # ties with the top stay
    two_BV = torch.tensor([[0.125, 0.5, 0.125, 0.25], [0.25] * 4], dtype=torch.float64).log()
    assert torch.isinf(min_p_filter(two_BV, 0.6)).tolist() == [[True, False, True, True], [False] * 4]


def test_a_prompt_may_fill_the_context_when_nothing_is_added(tok):
    model = tiny_gpt(tok.vocab_size)                                    # max_len 32
    assert generate_ids(model, torch.ones(1, 32, dtype=torch.long), GenerationConfig(0)).shape == (1, 0)
    assert generate_ids(model, torch.ones(1, 31, dtype=torch.long), GenerationConfig(1)).shape == (1, 1)


def test_min_p_threshold_is_relative_to_top_probability():
    logits_BV = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = min_p_filter(logits_BV, 0.2)                           # threshold 0.2 * 0.5 = 0.1
    assert torch.isinf(out).tolist() == [[False, False, False, True]]


def test_penalties_in_the_loop():
    logits_TV = torch.tensor([[3.0, 2.9, 0.0, 0.0]])
    prompt_BL = torch.tensor([[0, 0, 0]])
    # Frequency counts generated tokens only: the prompt's three 0s do not count, so 0 comes first,
    # then each use costs 0.2 and the two leaders alternate.
    freq = generate_ids(FakeLM(logits_TV, 3), prompt_BL, GenerationConfig(6, temperature=0, frequency_penalty=0.2))
    assert freq.tolist() == [[0, 1, 0, 1, 0, 1]]
    # Repetition counts the prompt: 3 / 1.5 = 2 < 2.9, so 1 first; once both are seen, 2 > 2.9 / 1.5.
    rep = generate_ids(FakeLM(logits_TV, 3), prompt_BL, GenerationConfig(4, temperature=0, repetition_penalty=1.5))
    assert rep.tolist() == [[1, 0, 0, 0]]


# ---- eos, stop strings, streaming ------------------------------------------------------------------------
def scripted(tok, text: str, eos: bool = True):
    return FakeLM.script(tok.encode(text) + ([tok.eos_id] if eos else []), tok.vocab_size)


def test_eos_stops_and_is_not_returned(tok):
    model = scripted(tok, "hi there")
    assert generate(model, tok, "a", max_new_tokens=30) == "hi there"
    assert generate(model, tok, "a", max_new_tokens=30, ignore_eos=True).startswith("hi there<eos>")
    new_BN = generate_ids(model, torch.tensor([[1]]), GenerationConfig(30), eos_id=tok.eos_id)
    assert new_BN.shape[1] == len("hi there") + 1 and new_BN[0, -1] == tok.eos_id


def test_rows_finish_independently_on_eos(tok):
    model = tiny_gpt(tok.vocab_size)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    free_BN = generate_ids(model, torch.tensor([[3, 4], [5, 6]]), cfg)
    eos = int(free_BN[0, 2])                                     # pretend row 0's third token is eos
    new_BN = generate_ids(model, torch.tensor([[3, 4], [5, 6]]), cfg, eos_id=eos)
    assert (new_BN[0, 2:] == eos).all()
    stop1 = next((i for i, t in enumerate(free_BN[1].tolist()) if t == eos), 11)
    assert torch.equal(new_BN[1, :stop1 + 1], free_BN[1, :stop1 + 1])


@pytest.mark.parametrize("stop,expected", [("lo w", "hel"), (["zz", "o w"], "hell"), ("rld", "hello wo"),
                                           ("d", "hello worl"), ("x", "hello world")])
def test_stop_strings_across_token_boundaries_are_not_returned(tok, stop, expected):
    model = scripted(tok, "hello world", eos=True)
    assert generate(model, tok, "a", max_new_tokens=30, stop=stop) == expected
    pieces = list(stream(model, tok, "a", max_new_tokens=30, stop=stop))
    assert "".join(pieces) == expected


def test_stream_holds_back_only_possible_stop_prefixes(tok):
    model = scripted(tok, "abcab abd", eos=False)
    pieces = list(stream(model, tok, "a", max_new_tokens=9, stop=["abd!"]))
    # "ab" is held until "c" proves it is no stop; "ab abd" waits for the end of the text.
    assert pieces == ["abc", "ab ", "abd"]


@pytest.mark.parametrize("kw", [dict(temperature=0, repetition_penalty=3.0), dict(temperature=1.0, top_p=0.9, seed=5)])
def test_stream_and_generate_equal_the_decoded_ids_cut_at_the_stop(tok, kw):
    """The text layer against the id loop: decode the ids, end at <eos>, cut before the first stop string."""
    model = tiny_gpt(tok.vocab_size)
    ids = generate_ids(model, torch.tensor([tok.encode("the cat")]), GenerationConfig(max_new_tokens=20, **kw),
                       eos_id=tok.eos_id)[0].tolist()
    text = tok.decode(ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids)
    at = next(i for i in range(4, len(text) - 1) if text.index(text[i:i + 2]) == i)   # first seen at i
    stop, expected = text[at:at + 2], text[:at]
    pieces = list(stream(model, tok, "the cat", max_new_tokens=20, stop=stop, **kw))
    assert "".join(pieces) == expected and len(pieces) >= 2      # streamed in pieces, not all at the end
    assert generate(model, tok, "the cat", max_new_tokens=20, stop=stop, **kw) == expected
    assert generate(model, tok, "the cat", max_new_tokens=20, **kw) == text


@pytest.fixture(scope="module")
def bpe():
    # ASCII-only training text: every non-ASCII character stays split into its UTF-8 byte tokens.
    return Tokenizer.train_bpe(["the cat sat on the mat. " * 20], vocab_size=300)


def test_multibyte_characters_never_stream_as_replacement(bpe):
    text = "the €5 café 日本 cat"
    ids = bpe.encode(text)
    assert len(ids) > len(text.split()) + 6                       # the multi-byte characters span tokens
    model = FakeLM.script(ids + [bpe.eos_id], bpe.vocab_size, prompt_len=len(bpe.encode("the")))
    pieces = list(stream(model, bpe, "the", max_new_tokens=len(ids) + 1))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert generate(model, bpe, "the", max_new_tokens=len(ids) + 1, stop="日本") == "the €5 café "


def test_text_stream_drops_a_character_cut_at_the_end(bpe):
    s = TextStream(bpe)
    ids = bpe.encode("the 日本")
    assert "\ufffd" in bpe.decode(ids[:-1])                        # a full decode shows half a character
    assert "".join(s.push(i) for i in ids[:-1]) + s.finish() == "the 日"


@pytest.mark.parametrize("cut", range(1, 4))
def test_a_token_limit_inside_a_character_leaves_no_half_of_it(bpe, cut):
    """qkv.generate and qkv.stream stopped by max_new_tokens inside 日 (three byte tokens): the text ends
    before it, streamed or not."""
    reply = bpe.encode(" 日本")
    model = FakeLM.script(reply + [bpe.eos_id], bpe.vocab_size, prompt_len=len(bpe.encode("the")))
    limit = len(bpe.encode(" ")) + cut
    want = " " if cut < 3 else " 日"
    assert generate(model, bpe, "the", max_new_tokens=limit) == want
    assert "".join(stream(model, bpe, "the", max_new_tokens=limit)) == want


# ---- logit_bias and log-probabilities (what the server's rows have, in qkv.generate) ---------------------
def test_logprobs_are_the_log_softmax_of_a_full_recompute(tok):
    """Each generated token's logprob and its top alternatives, against the model run on the whole
    sequence so far (no cache), at a temperature where sampling, not argmax, chose the tokens."""
    model = tiny_gpt(tok.vocab_size, seed=3)
    out = generate(model, tok, "the fox", max_new_tokens=7, temperature=1.3, seed=11, logprobs=True,
                   top_logprobs=4)
    ids = tok.encode("the fox")
    assert len(out.logprobs) == 7 and tok.decode([t.id for t in out.logprobs]) == out.text
    for scored in out.logprobs:
        with torch.no_grad():
            want_V = model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        assert scored.logprob == pytest.approx(float(want_V[scored.id]), abs=1e-5)
        top_values, top_ids = want_V.topk(4)
        assert [i for i, _ in scored.top] == top_ids.tolist()
        assert [v for _, v in scored.top] == pytest.approx(top_values.tolist(), abs=1e-5)
        ids.append(scored.id)
    plain = generate(model, tok, "the fox", max_new_tokens=7, temperature=1.3, seed=11)
    assert plain == out.text                                   # asking for logprobs changes no token


def test_logprobs_in_a_batch_equal_each_row_alone_and_skip_the_end_of_turn(tok):
    model = FakeLM.script(tok.encode("ab") + [tok.eos_id], tok.vocab_size)
    out = generate(model, tok, ["x", "y"], max_new_tokens=6, temperature=0, logprobs=True)
    assert [c.text for c in out] == ["ab", "ab"]
    assert [[t.id for t in c.logprobs] for c in out] == [tok.encode("ab")] * 2     # eos is no part of the text
    assert all(t.top == () for c in out for t in c.logprobs)
    real = tiny_gpt(tok.vocab_size, seed=5)
    batch = generate(real, tok, ["ab", "the long one"], max_new_tokens=5, temperature=0, logprobs=True,
                     top_logprobs=2)
    for prompt, row in zip(["ab", "the long one"], batch):
        alone = generate(real, tok, prompt, max_new_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
        assert alone.text == row.text and [t.id for t in alone.logprobs] == [t.id for t in row.logprobs]
        assert [t.logprob for t in alone.logprobs] == pytest.approx([t.logprob for t in row.logprobs], abs=1e-5)


def test_logit_bias_forces_and_bans_tokens_but_not_their_logprobs(tok):
    model = tiny_gpt(tok.vocab_size, seed=2)
    free = generate(model, tok, "ab", max_new_tokens=6, temperature=0)
    z = tok.encode("z")[0]
    forced = generate(model, tok, "ab", max_new_tokens=6, temperature=0, logit_bias={z: 100}, logprobs=True)
    assert forced.text == "zzzzzz" != free
    assert all(t.logprob < -0.01 for t in forced.logprobs)     # the model's own opinion, before the bias
    first = tok.encode(free[0])[0]
    banned = generate(model, tok, "ab", max_new_tokens=6, temperature=0, logit_bias={first: -100})
    assert free[0] not in banned and banned != free
    assert generate(model, tok, "ab", max_new_tokens=6, temperature=0, logit_bias={first: 0.0}) == free


@pytest.mark.parametrize("bias", [{-1: 1}, {"5": 1}, {True: 1}, {5: 101}, {5: -100.5}, {5: "1"}, {5: True}])
def test_bad_logit_bias_is_one_line(bias):
    with pytest.raises(InputError, match=r"^logit_bias .* keys must be token ids \(integers >= 0\) and values "
                                         r"numbers between -100 and 100$"):
        GenerationConfig(logit_bias=bias)


def test_logit_bias_and_top_logprobs_are_checked_against_the_model(tok):
    model = tiny_gpt(tok.vocab_size)
    with raises_exactly(f"logit_bias names token {tok.vocab_size}, outside the vocabulary [0, {tok.vocab_size})"):
        generate(model, tok, "ab", max_new_tokens=4, logit_bias={tok.vocab_size: 1})
    for top, logprobs in ((-1, True), (tok.vocab_size + 1, True), (2, False), (1.5, True)):
        with raises_exactly(f"top_logprobs={top!r} must be an integer between 0 and the vocabulary size "
                            f"({tok.vocab_size}), with logprobs=True"):
            generate(model, tok, "ab", logprobs=logprobs, top_logprobs=top)


# ---- every bad input names the fix -------------------------------------------------------------------------
@pytest.mark.parametrize("params,message", [
    (dict(temperature=-0.1), "temperature=-0.1 must be >= 0 (0 = greedy, 1 = the model's distribution)"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]; use 1 to turn nucleus sampling off"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]; use 1 to turn nucleus sampling off"),
    (dict(min_p=-0.1), "min_p=-0.1 must be in [0, 1]; use 0 to turn it off"),
    (dict(min_p=1.5), "min_p=1.5 must be in [0, 1]; use 0 to turn it off"),
    (dict(top_k=0), "top_k=0 must be an integer >= 1; leave it unset (None) to keep every token"),
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be > 0 (1 = off, 1.1-1.3 is typical)"),
    (dict(repetition_penalty=-1.0), "repetition_penalty=-1.0 must be > 0 (1 = off, 1.1-1.3 is typical)"),
    (dict(presence_penalty=2.5), "presence_penalty=2.5 must be between -2 and 2 (0 = off)"),
    (dict(frequency_penalty=-3.0), "frequency_penalty=-3.0 must be between -2 and 2 (0 = off)"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1 must be an integer >= 0"),
    (dict(stop=[""]), "stop=[''] must be a list of non-empty strings or a non-empty string"),
    (dict(stop=None), "stop=None must be a list of non-empty strings or a non-empty string"),
    (dict(temperature=float("nan")), "temperature=nan must be a finite number"),
    (dict(seed="x"), "seed='x' must be an integer or None"),
])
def test_bad_parameters_raise_input_error(params, message):
    with pytest.raises(InputError) as e:
        GenerationConfig(**params)
    assert str(e.value) == message                                     # the whole line a person reads


def raises_exactly(message: str):
    return pytest.raises(InputError, match=f"^{re.escape(message)}$")


def test_bad_inputs_raise_input_error(tok):
    model = tiny_gpt(tok.vocab_size)                                   # max_len 32
    with pytest.raises(InputError, match="unknown generation parameter.*temprature"):
        generate(model, tok, "ab", temprature=0.5)
    with raises_exactly("the prompt has 40 tokens but the model's context is max_len=32; shorten the prompt"):
        generate(model, tok, "a" * 40)
    with raises_exactly("prompt (10 tokens) + max_new_tokens (30) = 40 exceeds the model's context max_len=32; "
                        "lower max_new_tokens (--max-new-tokens) to at most 22, shorten the prompt, or let the "
                        "window slide past the context (--context-shift, context_shift=True)"):
        generate(model, tok, "a" * 10, max_new_tokens=30)
    with pytest.raises(InputError, match="token ids must lie in"):
        generate_ids(model, torch.tensor([[1, 999]]), GenerationConfig(4))
    with pytest.raises(InputError, match="never saw"):
        generate(model, tok, "ABC")
    for prompt, kind in ((5, "int"), (None, "NoneType"), (b"ab", "bytes")):
        with raises_exactly(f"prompt must be a string or a list of strings, got {kind}"):
            generate(model, tok, prompt)
    with raises_exactly("prompt must be a string, got int"):
        generate(model, tok, ["ab", 5])
    with raises_exactly("the prompt is empty; give at least one token (text prompts start from eos)"):
        generate_ids(model, torch.zeros(2, 0, dtype=torch.long), GenerationConfig(4))
    plain = Tokenizer.train_char(TEXT)                                  # no eos to start from
    with raises_exactly("the prompt is empty and the tokenizer has no eos token to start from; give a non-empty "
                        "prompt"):
        generate(tiny_gpt(plain.vocab_size), plain, "")
    assert generate(model, tok, "", max_new_tokens=3, temperature=0, ignore_eos=True)   # starts from eos


THREADS_PROBE = """
import os, sys, torch
os.getloadavg = lambda: (float(sys.argv[1]), 0.0, 0.0)           # other processes hold this many cores
import qkv
from qkv.runtime import available_cores
if sys.argv[2] == "user":
    torch.set_num_threads(1)
model = qkv.GPT(qkv.ModelConfig(vocab_size=20, max_len=16, n_layers=1, d_model=16, n_heads=2))
before = torch.get_num_threads()
qkv.generate(model, qkv.Tokenizer.train_char("abc"), "ab", max_new_tokens=2)
print(before, torch.get_num_threads(), available_cores())
"""


@pytest.mark.parametrize("load, who", [(0.0, "qkv"), (64.0, "qkv"), (0.0, "user")])
def test_python_api_decoding_takes_the_idle_cores_unless_the_user_chose(load, who):
    """qkv.generate in a fresh process: the cores other processes leave idle (as the CLI), but a count
    the user set (torch.set_num_threads, OMP_NUM_THREADS) stays."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", THREADS_PROBE, str(load), who], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, cores = map(int, done.stdout.split())
    if who == "user":
        assert before == after == 1
    else:
        assert after == (1 if load >= cores else min(cores, 8))
