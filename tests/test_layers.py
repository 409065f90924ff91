"""Invariants of the layers in ``qkv.nn``, each checked against an independent computation.

Legend: B batch, L query length, M key length, H query heads, G key/value heads, C d_model, D head dim.
"""

import math

import pytest
import torch

from qkv.errors import InputError
from qkv.nn.attention import Attention, attend
from qkv.nn.kv_cache import KVCache
from qkv.nn.masks import AttnMask, allowed_mask, build_mask
from qkv.nn.norms import RMSNorm
from qkv.nn.position import ALiBi, RoPE, SinusoidalPosition, alibi_slopes, apply_rotary, sinusoidal_table

ATOL = 1e-5


def grid(rows: str) -> torch.Tensor:
    """'1.. 11.' -> a bool matrix; '1' allowed, '.' masked. Rows separated by spaces."""
    return torch.tensor([[c == "1" for c in row] for row in rows.split()])


# ---------------------------------------------------------------- masks against hand-written matrices

@pytest.mark.parametrize("kind,L,M,window,prefix_len,expected", [
    ("causal", 4, 4, None, 0, "1... 11.. 111. 1111"),
    ("bidirectional", 3, 3, None, 0, "111 111 111"),
    ("prefix", 4, 4, None, 2, "11.. 11.. 111. 1111"),
    ("causal", 4, 4, 2, 0, "1... 11.. .11. ..11"),
    ("bidirectional", 4, 4, 2, 0, "11.. 111. .111 ..11"),
    ("causal", 2, 5, None, 0, "1111. 11111"),            # queries are the last 2 of 5: lower-right aligned
    ("causal", 1, 4, None, 0, "1111"),                   # one decode step sees the whole cache
    ("causal", 2, 5, 2, 0, "..11. ...11"),
    ("prefix", 2, 5, None, 4, "1111. 11111"),
])
def test_allowed_mask_matches_hand_written(kind, L, M, window, prefix_len, expected):
    assert torch.equal(allowed_mask(L, M, kind, window, prefix_len), grid(expected))


def test_prefix_mask_per_row_lengths():
    allowed_BLM = allowed_mask(3, 3, "prefix", prefix_len=torch.tensor([0, 2]))
    assert torch.equal(allowed_BLM[0], grid("1.. 11. 111"))
    assert torch.equal(allowed_BLM[1], grid("11. 11. 111"))


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("L,M", [(5, 5), (1, 5), (3, 5)])
def test_build_mask_dense_equals_allowed_mask(kind, window, L, M):
    """Whatever shortcut build_mask takes (is_causal, no mask), its dense form is allowed_mask."""
    mask = build_mask(L, M, kind, window, prefix_len=2)
    dense = mask.dense_allowed(L, M, None)
    expected_LM = allowed_mask(L, M, kind, window, 2)
    dense_LM = torch.ones(L, M, dtype=torch.bool) if dense is None else dense.reshape(L, M)
    assert torch.equal(dense_LM, expected_LM)


def test_prefix_of_zero_is_causal_and_masks_are_built_where_asked():
    assert torch.equal(allowed_mask(4, 4, "prefix"), allowed_mask(4, 4, "causal"))      # prefix_len defaults to 0
    for kind in ("causal", "bidirectional", "prefix"):     # the meta device: no copy to the CPU slips in
        assert allowed_mask(3, 5, kind, window=2, prefix_len=torch.tensor([1, 2]), device="meta").is_meta
    assert AttnMask(is_causal=True).dense_allowed(2, 3, "meta").is_meta


def test_build_mask_takes_the_cheapest_form_that_is_exact():
    """What SDPA gets: its own is_causal for the square causal mask, no mask at all when every key is
    allowed, a dense mask otherwise, and live rows only when some query sees no key (AttnMask's contract)."""
    square = build_mask(5, 5, "causal")
    assert square.is_causal and square.allowed_B1LM is None and square.live_B1L1 is None
    bias_1HLM = torch.randn(1, 2, 1, 5)
    for step in (build_mask(1, 5, "causal", bias_1HLM=bias_1HLM),
                 build_mask(1, 5, "bidirectional", bias_1HLM=bias_1HLM)):
        assert not step.is_causal and step.allowed_B1LM is None and step.bias_1HLM is bias_1HLM
    for dense in (build_mask(3, 5, "causal"), build_mask(4, 4, "causal", window=2),
                  build_mask(4, 4, "prefix", prefix_len=2),
                  build_mask(4, 4, "bidirectional", window=3)):
        assert not dense.is_causal and dense.allowed_B1LM is not None and dense.live_B1L1 is None
    padded = build_mask(3, 3, "bidirectional", key_mask_BM=torch.tensor([[False, True, True], [True] * 3]))
    assert padded.live_B1L1 is None and padded.allowed_B1LM[0, 0, :, 0].tolist() == [False] * 3


def test_build_mask_marks_rows_that_see_no_key():
    key_mask_BM = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = build_mask(4, 4, "causal", key_mask_BM=key_mask_BM)
    assert mask.live_B1L1 is not None
    assert mask.live_B1L1.reshape(2, 4).tolist() == [[False, False, True, True], [True] * 4]


# ---------------------------------------------------------------- attention: two paths, one answer

def qkv_tensors(B=2, H=4, G=2, L=6, M=6, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g), torch.randn(B, G, M, D, generator=g),
            torch.randn(B, G, M, D, generator=g))


def reference_attention(q_BHLD, k_BGMD, v_BGMD, allowed_BHLM, bias_BHLM=None):
    """Textbook attention, one (batch, head) at a time, with no code shared with qkv."""
    B, H, L, D = q_BHLD.shape
    G = k_BGMD.shape[1]
    out_BHLD = torch.zeros_like(q_BHLD)
    probs_BHLM = torch.zeros(B, H, L, k_BGMD.shape[2])
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            scores_LM = q_BHLD[b, h] @ k_BGMD[b, g].T / math.sqrt(D)
            if bias_BHLM is not None:
                scores_LM = scores_LM + bias_BHLM[b, h]
            for l in range(L):
                if allowed_BHLM[b, h, l].any():
                    p_M = torch.softmax(scores_LM[l].masked_fill(~allowed_BHLM[b, h, l], -math.inf), -1)
                    probs_BHLM[b, h, l] = p_M
                    out_BHLD[b, h, l] = p_M @ v_BGMD[b, g]
    return out_BHLD, probs_BHLM


PADDING_BM = torch.tensor([[False, False, True, True, True, True], [True] * 6])
MASK_CASES = {                                             # name -> build_mask kwargs (L = M = 6)
    "causal": dict(kind="causal"),
    "bidirectional": dict(kind="bidirectional"),
    "prefix": dict(kind="prefix", prefix_len=3),
    "window": dict(kind="causal", window=3),
    "bidirectional_window": dict(kind="bidirectional", window=2),
    "causal_padding": dict(kind="causal", key_mask_BM=PADDING_BM),
    "bidirectional_padding": dict(kind="bidirectional", key_mask_BM=PADDING_BM),
    "prefix_per_row": dict(kind="prefix", prefix_len=torch.tensor([2, 4])),
}


def expected_allowed_BHLM(B, H, L, M, kind, window=None, prefix_len=0, key_mask_BM=None):
    allowed = allowed_mask(L, M, kind, window, prefix_len).reshape(-1, 1, L, M)
    if key_mask_BM is not None:
        allowed = allowed & key_mask_BM[:, None, None, :]
    return allowed.expand(B, H, L, M)


@pytest.mark.parametrize("case", sorted(MASK_CASES))
@pytest.mark.parametrize("alibi", [False, True], ids=["nobias", "alibi"])
@pytest.mark.parametrize("G", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_fast_path_equals_explicit_path_and_reference(case, alibi, G):
    B, H, L, D = 2, 4, 6, 8
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(B, H, G, L, L, D)
    bias_1HLM = ALiBi(L, H).bias(L, L) if alibi else None
    mask = build_mask(L, L, bias_1HLM=bias_1HLM, **MASK_CASES[case])
    fast_BHLD, none = attend(q_BHLD, k_BGMD, v_BGMD, mask)
    explicit_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True)
    assert none is None
    allowed_BHLM = expected_allowed_BHLM(B, H, L, L, **MASK_CASES[case])
    ref_BHLD, ref_probs_BHLM = reference_attention(
        q_BHLD, k_BGMD, v_BGMD, allowed_BHLM, None if bias_1HLM is None else bias_1HLM.expand(B, H, L, L))
    torch.testing.assert_close(fast_BHLD, explicit_BHLD, atol=ATOL, rtol=0)
    torch.testing.assert_close(explicit_BHLD, ref_BHLD, atol=ATOL, rtol=0)
    torch.testing.assert_close(probs_BHLM, ref_probs_BHLM, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_probabilities_sum_to_one_and_vanish_on_masked_keys(case):
    B, H, L = 2, 4, 6
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(B, H, 2, L, L)
    mask = build_mask(L, L, **MASK_CASES[case])
    _, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True)
    allowed_BHLM = expected_allowed_BHLM(B, H, L, L, **MASK_CASES[case])
    live_BHL = allowed_BHLM.any(-1)
    assert torch.all(probs_BHLM[~allowed_BHLM] == 0)
    torch.testing.assert_close(probs_BHLM.sum(-1)[live_BHL], torch.ones(int(live_BHL.sum())))


@pytest.mark.parametrize("return_probs", [False, True], ids=["fast", "explicit"])
def test_fully_masked_rows_give_zeros_not_nan(return_probs):
    B, H, L = 2, 4, 6
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(B, H, 4, L, L)
    key_mask_BM = torch.ones(B, L, dtype=torch.bool)
    key_mask_BM[0, :3] = False                             # under a causal mask, rows 0..2 of b=0 see nothing
    mask = build_mask(L, L, "causal", key_mask_BM=key_mask_BM)
    out_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=return_probs)
    assert not out_BHLD.isnan().any()
    assert torch.all(out_BHLD[0, :, :3] == 0)
    assert out_BHLD[0, :, 3:].abs().sum() > 0
    if return_probs:
        assert not probs_BHLM.isnan().any()
        assert torch.all(probs_BHLM[0, :, :3] == 0)


@pytest.mark.parametrize("M", [1, 5])
def test_one_query_over_a_cache_attends_to_every_key(M):
    """A decode step (L = 1) with the causal mask is lower-right aligned: it sees all M keys."""
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(1, 2, 2, 1, M)
    out_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, build_mask(1, M, "causal"), return_probs=True)
    ref_BHLD, _ = reference_attention(q_BHLD, k_BGMD, v_BGMD, torch.ones(1, 2, 1, M, dtype=torch.bool))
    torch.testing.assert_close(out_BHLD, ref_BHLD, atol=ATOL, rtol=0)
    assert torch.all(probs_BHLM > 0)


@pytest.mark.parametrize("G", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("return_probs", [False, True], ids=["fast", "explicit"])
def test_attention_module_equals_textbook_projections_and_heads(G, return_probs):
    """The module against the paper's recipe written out with its weights: project, split into heads by
    rows of W (query head h reads key/value head h // (H/G)), attend per head, concatenate, apply W_o."""
    torch.manual_seed(0)
    C, H, L = 32, 4, 5
    D = C // H
    attn = Attention(C, H, G)
    x_BLC = torch.randn(2, L, C)
    mask = build_mask(L, L, "causal")
    out_BLC, _ = attn(x_BLC, mask, return_probs=return_probs)
    q_BLC = x_BLC @ attn.wq.weight.T + attn.wq.bias
    kv = x_BLC @ attn.wkv.weight.T + attn.wkv.bias              # [k heads | v heads], D columns each
    q_BHLD = torch.stack([q_BLC[..., h * D:(h + 1) * D] for h in range(H)], dim=1)
    k_BGLD = torch.stack([kv[..., g * D:(g + 1) * D] for g in range(G)], dim=1)
    v_BGLD = torch.stack([kv[..., (G + g) * D:(G + g + 1) * D] for g in range(G)], dim=1)
    causal = torch.ones(L, L, dtype=torch.bool).tril().expand(2, H, L, L)
    heads_BHLD, _ = reference_attention(q_BHLD, k_BGLD, v_BGLD, causal)
    concat_BLC = torch.cat([heads_BHLD[:, h] for h in range(H)], dim=-1)
    torch.testing.assert_close(out_BLC, concat_BLC @ attn.wo.weight.T + attn.wo.bias, atol=ATOL, rtol=0)


def test_both_paths_drop_attention_as_torch_does():
    """Attention dropout: the explicit path computes dropout(probs) @ v with torch's own dropout (same seed,
    same draw) and returns the undropped probabilities; the fast path passes dropout_p to SDPA."""
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(1, 4, 4, 5, 5)
    mask = build_mask(5, 5, "causal")
    plain_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True)
    torch.manual_seed(3)
    out_BHLD, dropped_probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True, dropout_p=0.3)
    torch.manual_seed(3)
    expected_BHLD = torch.nn.functional.dropout(probs_BHLM, 0.3) @ v_BGMD
    torch.testing.assert_close(out_BHLD, expected_BHLD, atol=ATOL, rtol=0)
    torch.testing.assert_close(dropped_probs_BHLM, probs_BHLM, atol=0, rtol=0)
    assert (out_BHLD - plain_BHLD).abs().max() > 0.1
    torch.manual_seed(3)
    fast_BHLD, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask, dropout_p=0.3)
    torch.manual_seed(3)
    sdpa_BHLD = torch.nn.functional.scaled_dot_product_attention(q_BHLD, k_BGMD, v_BGMD, dropout_p=0.3,
                                                                  is_causal=True)
    torch.testing.assert_close(fast_BHLD, sdpa_BHLD, atol=0, rtol=0)
    assert (fast_BHLD - plain_BHLD).abs().max() > 0.1


def test_attention_module_options_reach_the_computation(monkeypatch):
    """bias=False builds no biases; probabilities only when asked; dropout only in training mode; the score
    scale and soft-cap reach ``attend``."""
    attn = Attention(32, 4, 2, bias=False, dropout=0.3)
    assert [m.bias for m in (attn.wq, attn.wkv, attn.wo)] == [None, None, None]
    x_BLC, mask = torch.randn(1, 3, 32), build_mask(3, 3, "causal")
    assert attn.eval()(x_BLC, mask)[1] is None
    seen = []
    monkeypatch.setattr("qkv.nn.attention.attend", lambda *a, **k: seen.append(a[5:] or k) or attend(*a, **k))
    attn.train()(x_BLC, mask)
    attn.eval()(x_BLC, mask)
    Attention(32, 4, 2, scale=0.5, softcap=3.0).eval()(x_BLC, mask)
    assert seen == [(0.3, None, None), (0.0, None, None), (0.0, 0.5, 3.0)]


@pytest.mark.parametrize("G", [2, 1], ids=["gqa", "mqa"])
def test_a_gqa_decode_step_is_the_reference_with_dead_rows_and_dropout(G):
    """One query over M keys under GQA (the path that does not copy the cache): the reference's output,
    probabilities when asked, zeros for a row whose keys are all padding, and dropout when training."""
    B, H, M = 2, 4, 5
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(B, H, G, 1, M)
    key_mask_BM = torch.tensor([[False] * M, [True, True, False, True, True]])
    mask = build_mask(1, M, "causal", key_mask_BM=key_mask_BM)
    out_BHLD, none = attend(q_BHLD, k_BGMD, v_BGMD, mask)
    explicit_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True)
    ref_BHLD, ref_probs_BHLM = reference_attention(q_BHLD, k_BGMD, v_BGMD,
                                                   key_mask_BM[:, None, None, :].expand(B, H, 1, M))
    assert none is None and probs_BHLM is not None
    torch.testing.assert_close(out_BHLD, ref_BHLD, atol=ATOL, rtol=0)
    torch.testing.assert_close(explicit_BHLD, ref_BHLD, atol=ATOL, rtol=0)
    torch.testing.assert_close(probs_BHLM, ref_probs_BHLM, atol=ATOL, rtol=0)
    assert torch.all(out_BHLD[0] == 0) and not out_BHLD.isnan().any()
    torch.manual_seed(0)
    dropped_BHLD, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask, dropout_p=0.5)
    assert (dropped_BHLD[1] - out_BHLD[1]).abs().max() > 0.1


def test_query_key_value_biases_can_differ_from_the_output_bias():
    """Qwen2's layout: biases on the q/k/v projections only (qkv_bias), none on the output."""
    attn = Attention(32, 4, 2, bias=False, qkv_bias=True)
    assert attn.wq.bias is not None and attn.wkv.bias is not None and attn.wo.bias is None


def test_attention_makes_no_tensor_off_its_inputs_device():
    """On the meta device a stray CPU tensor (a mask built without the device) is an error, so this holds
    every path to building its masks where its inputs are."""
    q_BHLD, k_BGMD = torch.randn(1, 2, 3, 4, device="meta"), torch.randn(1, 2, 3, 4, device="meta")
    for mask in (build_mask(3, 3, "causal"),
                 build_mask(3, 3, "causal", bias_1HLM=torch.zeros(1, 2, 3, 3, device="meta"))):
        for return_probs in (False, True):
            assert attend(q_BHLD, k_BGMD, k_BGMD, mask, return_probs=return_probs)[0].is_meta


@pytest.mark.parametrize("G", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("return_probs", [False, True], ids=["fast", "explicit"])
def test_gqa_equals_mha_with_shared_key_value_heads(G, return_probs):
    """G key/value heads each serving H/G query heads == MHA whose k/v heads are copies within a group."""
    torch.manual_seed(0)
    C, H = 32, 4
    D = C // H
    gqa = Attention(C, H, G)
    mha = Attention(C, H, H)
    with torch.no_grad():
        mha.wq.load_state_dict(gqa.wq.state_dict())
        mha.wo.load_state_dict(gqa.wo.state_dict())
        # wkv rows are [k heads | v heads], D rows each; query head h reads kv head h // (H / G).
        w_2GDC = gqa.wkv.weight.view(2, G, D, C)
        b_2GD = gqa.wkv.bias.view(2, G, D)
        mha.wkv.weight.copy_(w_2GDC.repeat_interleave(H // G, dim=1).reshape(2 * H * D, C))
        mha.wkv.bias.copy_(b_2GD.repeat_interleave(H // G, dim=1).reshape(2 * H * D))
    x_BLC = torch.randn(2, 5, C)
    mask = build_mask(5, 5, "causal")
    out_gqa = gqa(x_BLC, mask, return_probs=return_probs)
    out_mha = mha(x_BLC, mask, return_probs=return_probs)
    torch.testing.assert_close(out_gqa[0], out_mha[0], atol=ATOL, rtol=0)
    if return_probs:
        torch.testing.assert_close(out_gqa[1], out_mha[1], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- KV cache

def test_kv_cache_returns_filled_prefix_and_raises_on_overflow():
    cache = KVCache(batch=1, n_kv_heads=2, max_len=4, head_dim=3)
    k_BGLD, v_BGLD = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    k_BGMD, v_BGMD = cache.append(k_BGLD, v_BGLD)
    assert cache.length == 3 and torch.equal(k_BGMD, k_BGLD) and torch.equal(v_BGMD, v_BGLD)
    k_BGMD, _ = cache.append(k_BGLD[:, :, :1], v_BGLD[:, :, :1])
    assert k_BGMD.shape[2] == 4
    with pytest.raises(InputError, match="max_len"):
        cache.append(k_BGLD[:, :, :1], v_BGLD[:, :, :1])
    cache.reset()
    assert cache.length == 0


def test_kv_cache_reorder_and_select_follow_rows_and_keep_appending():
    """Beam search's two moves: reorder (row b takes row index[b]'s past) and select (keep some rows)."""
    cache = KVCache(batch=3, n_kv_heads=1, max_len=4, head_dim=2, dtype=torch.float64)
    k_BGLD = torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 2).double()      # row b holds b
    cache.append(k_BGLD, -k_BGLD)
    cache.reorder(torch.tensor([2, 2, 0]))
    k_BGMD, v_BGMD = cache.append(10 + k_BGLD[:, :, :1], 10 - k_BGLD[:, :, :1])
    assert k_BGMD[:, 0, :, 0].tolist() == [[2, 2, 10], [2, 2, 11], [0, 0, 12]]
    assert v_BGMD[:, 0, :, 0].tolist() == [[-2, -2, 10], [-2, -2, 9], [0, 0, 8]]
    cache.select(torch.tensor([2, 0]))
    k_BGMD, v_BGMD = cache.append(20 + k_BGLD[:2, :, :1], 20 + k_BGLD[:2, :, :1])
    assert k_BGMD[:, 0, :, 0].tolist() == [[0, 0, 12, 20], [2, 2, 10, 21]] and v_BGMD.shape == (2, 1, 4, 2)
    assert k_BGMD.dtype == torch.float64


def test_kv_cache_truncate_keeps_a_prefix_and_refuses_what_it_does_not_hold():
    cache = KVCache(batch=1, n_kv_heads=1, max_len=5, head_dim=1)
    cache.append(torch.arange(4.0).view(1, 1, 4, 1), torch.arange(4.0).view(1, 1, 4, 1))
    cache.truncate(4)                                          # all of it: nothing changes
    cache.truncate(2)
    k_BGMD, _ = cache.append(torch.full((1, 1, 1, 1), 9.0), torch.zeros(1, 1, 1, 1))
    assert cache.length == 3 and k_BGMD.flatten().tolist() == [0.0, 1.0, 9.0]
    for bad in (4, -1):
        with pytest.raises(InputError, match=f"^cannot truncate a cache of 3 positions to {bad}$"):
            cache.truncate(bad)
    cache.truncate(0)
    assert cache.length == 0


def test_kv_cache_buffers_take_the_given_dtype_and_device():
    cache = KVCache(batch=1, n_kv_heads=2, max_len=3, head_dim=4, dtype=torch.bfloat16, device="meta")
    for buffer in (cache.k_BGMD, cache.v_BGMD):
        assert buffer.dtype == torch.bfloat16 and buffer.is_meta and buffer.shape == (1, 2, 3, 4)


# ---------------------------------------------------------------- positions

def test_sinusoidal_table_matches_the_paper():
    """PE(p, 2i) = sin(p / N^(2i/C)), PE(p, 2i+1) = cos(p / N^(2i/C)), written out element by element."""
    P, C = 12, 10
    for base in (10000.0, 100.0):
        table = sinusoidal_table(P, C, base)
        for p in range(P):
            for i in range(C // 2):
                angle = p / base ** (2 * i / C)
                assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
                assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert not torch.allclose(sinusoidal_table(P, C, 100.0), sinusoidal_table(P, C, 10000.0))


def test_sinusoidal_table_far_positions_and_the_papers_default_base():
    """Far positions need float64 angles: over 3000..4095 the table is off by 3e-8 (float32's rounding of the
    result); angles or exponents 2i/C computed in float32 would be off by 1e-5 and more (C = 12: 2i/C is not
    a binary fraction). The default N is the paper's."""
    table = sinusoidal_table(4096, 12)
    assert torch.equal(table, sinusoidal_table(4096, 12, 10000.0)) and table.dtype == torch.float32
    worst = max(abs(table[p, 2 * i + k].item() - (math.cos if k else math.sin)(p / 10000.0 ** (2 * i / 12)))
                for p in range(3000, 4096) for i in range(6) for k in (0, 1))
    assert worst < 3e-7
    assert torch.equal(SinusoidalPosition(max_len=16, d_model=8).table, sinusoidal_table(16, 8))
    cos_1, _ = RoPE(max_len=8, head_dim=8).rotary(torch.tensor([[1]]))
    assert cos_1[0, 0, 0, 1].item() == pytest.approx(math.cos(10000.0 ** (-2 / 8)), abs=1e-7)


def test_rope_rotates_each_pair_forward_by_its_angle_even_far_away():
    """e_i (channel i of the first half) at position p turns to cos(a) e_i + sin(a) e_(i+D/2), a = p N^(-2i/D)
    (the GPT-NeoX / Llama layout), with float64 angles up to the last position."""
    D, P = 8, 4096
    rope = RoPE(max_len=P, head_dim=D)
    assert rope.cos_PD.shape == rope.sin_PD.shape == (P, D)
    for p, i in ((3, 1), (4095, 1), (4001, 1), (4093, 3)):
        angle = p * 10000.0 ** (-2 * i / D)
        x_BHLD = torch.zeros(1, 1, 1, D)
        x_BHLD[..., i] = 1.0
        cos, sin = rope.rotary(torch.tensor([[p]]))
        expected = torch.zeros(D)
        expected[i], expected[i + D // 2] = math.cos(angle), math.sin(angle)
        torch.testing.assert_close(apply_rotary(x_BHLD, cos, sin)[0, 0, 0], expected, atol=3e-7, rtol=0)


def test_alibi_bias_is_made_where_its_slopes_are():
    assert ALiBi(max_len=8, n_heads=2).to("meta").bias(2, 4).is_meta


def test_position_tables_are_not_saved_with_the_weights():
    """Tables computed from the config are rebuilt, never stored: a state dict holds learned weights only."""
    for module in (SinusoidalPosition(max_len=8, d_model=4), RoPE(max_len=8, head_dim=4), ALiBi(8, n_heads=2)):
        assert module.state_dict() == {} and len(list(module.buffers())) > 0


def test_sinusoidal_position_honours_pos_base():
    module = SinusoidalPosition(max_len=8, d_model=6, base=50.0)
    torch.testing.assert_close(module.embed(torch.arange(8)[None])[0], sinusoidal_table(8, 6, 50.0))


@pytest.mark.parametrize("shift", [1, 7, 20])
def test_rope_scores_depend_only_on_relative_offset(shift):
    torch.manual_seed(0)
    D = 16
    rope = RoPE(max_len=64, head_dim=D)
    q_D, k_D = torch.randn(D), torch.randn(D)

    def score(p_q, p_k):
        cos, sin = rope.rotary(torch.tensor([[p_q, p_k]]))
        rotated = apply_rotary(torch.stack([q_D, k_D])[None, None], cos, sin)[0, 0]
        return rotated[0] @ rotated[1]

    for p_q, p_k in [(5, 2), (3, 3), (10, 0), (0, 9)]:
        assert score(p_q, p_k).item() == pytest.approx(score(p_q + shift, p_k + shift).item(), abs=1e-4)
    assert abs(score(5, 2).item() - score(5, 3).item()) > 1e-3     # the offset itself does matter


def test_rope_preserves_norms_and_is_identity_at_position_zero():
    rope = RoPE(max_len=8, head_dim=8, base=100.0)
    x_BHLD = torch.randn(1, 2, 8, 8)
    cos, sin = rope.rotary(torch.arange(8)[None])
    rotated_BHLD = apply_rotary(x_BHLD, cos, sin)
    torch.testing.assert_close(rotated_BHLD.norm(dim=-1), x_BHLD.norm(dim=-1))
    torch.testing.assert_close(rotated_BHLD[:, :, 0], x_BHLD[:, :, 0])


def test_rope_honours_base():
    """Channel pair (i, i + D/2) turns by p * N^(-2i/D): check pair 1 at position 3 by hand."""
    D, base, p = 8, 100.0, 3
    cos, sin = RoPE(max_len=8, head_dim=D, base=base).rotary(torch.tensor([[p]]))
    angle = p * base ** (-2 * 1 / D)
    assert cos[0, 0, 0, 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sin[0, 0, 0, 1 + D // 2].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_alibi_slopes_for_eight_heads():
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]


def test_alibi_slopes_for_non_power_of_two_follow_the_paper():
    """For 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3."""
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -k for k in (2, 4, 6, 8, 1, 3)]))


def test_alibi_slopes_for_twelve_heads_interleave_from_the_next_power_of_two():
    """12 heads: the 8-head slopes 2^-1 .. 2^-8, then the odd ones of the 16-head set: 2^-0.5, 2^-1.5, ..."""
    expected = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


@pytest.mark.parametrize("pos", ["sinusoidal", "rope"])
def test_a_models_positions_use_its_pos_base(pos):
    from qkv import GPT, ModelConfig
    model = GPT(ModelConfig(vocab_size=10, max_len=16, n_layers=1, d_model=16, n_heads=2, pos=pos, pos_base=500.0))
    if pos == "sinusoidal":
        torch.testing.assert_close(model.pos.table, sinusoidal_table(16, 16, 500.0), atol=0, rtol=0)
    else:
        torch.testing.assert_close(model.pos.cos_PD, RoPE(16, 8, base=500.0).cos_PD, atol=0, rtol=0)


def test_alibi_bias_is_minus_slope_times_distance():
    bias_1HLM = ALiBi(max_len=8, n_heads=2).bias(2, 4)              # queries are positions 2 and 3
    slopes = alibi_slopes(2)
    for h in range(2):
        for l, p_q in enumerate((2, 3)):
            for m in range(4):
                assert bias_1HLM[0, h, l, m].item() == pytest.approx(-slopes[h].item() * abs(p_q - m))


# ---------------------------------------------------------------- norms

def test_rmsnorm_matches_formula():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x_BLC = torch.randn(2, 3, 6)
    expected_BLC = x_BLC / torch.sqrt(x_BLC.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x_BLC), expected_BLC)


@pytest.mark.parametrize("window, padded", [(None, False), (3, False), (None, True), (3, True)])
@pytest.mark.parametrize("G", [2, 1], ids=["gqa", "mqa"])
def test_one_query_gqa_path_equals_explicit_path(window, padded, G):
    """A decode step (L = 1) under GQA reads the cache without repeating it; same result as the explicit math."""
    B, H, M, D = 2, 4, 7, 8
    q_BHLD, k_BGMD, v_BGMD = qkv_tensors(B, H, G, 1, M, D)
    key_mask_BM = torch.tensor([[False, False] + [True] * (M - 2), [True] * M]) if padded else None
    mask = build_mask(1, M, "causal", window, key_mask_BM=key_mask_BM)
    fast_BHLD, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask)
    explicit_BHLD, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True)
    torch.testing.assert_close(fast_BHLD, explicit_BHLD, atol=ATOL, rtol=0)
