"""Invariants of the GPT decoder over the variant product, on tiny configs.

Legend: B batch, L length, V vocab, C d_model.
"""

import dataclasses
import itertools

import pytest
import torch

from qkv import GPT, ModelConfig
from qkv.errors import ConfigError, InputError

from tiny_models import tiny_config

V, ATOL = 50, 1e-5
POS = ["learned", "sinusoidal", "rope", "alibi"]
NORMS = [("layernorm", "pre"), ("rmsnorm", "pre"), ("layernorm", "post"), ("rmsnorm", "post")]
KV_HEADS = {"mha": None, "gqa": 2, "mqa": 1}
MLPS = ["relu", "gelu", "swiglu"]


def tiny(**overrides) -> ModelConfig:
    return tiny_config(V, **{"max_len": 24, **overrides})


def model_of(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def ids(B: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


# The full product for the cheap invariant (causality); a covering subset for the costlier ones.
PRODUCT = list(itertools.product(POS, NORMS, KV_HEADS, MLPS))


@pytest.mark.parametrize("pos,norm_placement,kv,mlp", PRODUCT,
                         ids=["-".join([p, *np_, kv, m]) for p, np_, kv, m in PRODUCT])
def test_changing_future_tokens_leaves_earlier_logits_unchanged(pos, norm_placement, kv, mlp):
    norm, placement = norm_placement
    model = model_of(tiny(pos=pos, norm=norm, norm_placement=placement, n_kv_heads=KV_HEADS[kv], mlp=mlp))
    ids_BL = ids(2, 12)
    edited_BL = ids_BL.clone()
    edited_BL[:, 7:] = (edited_BL[:, 7:] + 1) % V
    with torch.no_grad():
        full_BLV, edited_BLV = model(ids_BL).logits, model(edited_BL).logits
    torch.testing.assert_close(edited_BLV[:, :7], full_BLV[:, :7], atol=ATOL, rtol=0)
    assert (edited_BLV[:, 7:] - full_BLV[:, 7:]).abs().max() > 1e-3   # ... and the future does change


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("kv", KV_HEADS)
@pytest.mark.parametrize("norm,placement", [("layernorm", "post"), ("rmsnorm", "pre")])
@pytest.mark.parametrize("prefill", [1, 5], ids=["steps_only", "prefill5"])
def test_cached_decode_equals_full_recompute(pos, kv, norm, placement, prefill):
    model = model_of(tiny(pos=pos, n_kv_heads=KV_HEADS[kv], norm=norm, norm_placement=placement))
    ids_BL = ids(2, 12)
    with torch.no_grad():
        full_BLV = model(ids_BL).logits
        caches = model.new_caches(batch=2, max_len=12)
        chunks = [model(ids_BL[:, :prefill], caches=caches).logits]
        chunks += [model(ids_BL[:, t:t + 1], caches=caches).logits for t in range(prefill, 12)]
    assert caches[0].length == 12
    torch.testing.assert_close(torch.cat(chunks, dim=1), full_BLV, atol=ATOL, rtol=0)


@pytest.mark.parametrize("window", [3])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_cached_decode_equals_full_recompute_with_sliding_window(pos, window):
    model = model_of(tiny(pos=pos, window=window, n_kv_heads=2))
    ids_BL = ids(2, 10)
    with torch.no_grad():
        full_BLV = model(ids_BL).logits
        caches = model.new_caches(batch=2, max_len=10)
        chunks = [model(ids_BL[:, :4], caches=caches).logits]
        chunks += [model(ids_BL[:, t:t + 1], caches=caches).logits for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full_BLV, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("kv", ["mha", "gqa"])
@pytest.mark.parametrize("window", [None, 4])
def test_left_padded_batch_equals_each_sequence_alone(pos, kv, window):
    """Padding shifts nothing: positions count real tokens, pads are never attended to."""
    model = model_of(tiny(pos=pos, n_kv_heads=KV_HEADS[kv], window=window))
    lengths = [10, 6, 3]
    seqs = [ids(1, n, seed=n)[0] for n in lengths]
    L = max(lengths)
    ids_BL = torch.zeros(len(seqs), L, dtype=torch.long)
    key_mask_BM = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids_BL[b, L - len(s):] = s
        key_mask_BM[b, L - len(s):] = True
    with torch.no_grad():
        batch_BLV = model(ids_BL, key_mask_BM=key_mask_BM).logits
        for b, s in enumerate(seqs):
            alone_1LV = model(s[None]).logits
            torch.testing.assert_close(batch_BLV[b, L - len(s):], alone_1LV[0], atol=ATOL, rtol=0)
        assert not batch_BLV.isnan().any()


@pytest.mark.parametrize("pos", POS)
def test_left_padded_cached_decode_equals_each_sequence_alone(pos):
    model = model_of(tiny(pos=pos, n_kv_heads=2))
    short, long = ids(1, 3, seed=3)[0], ids(1, 6, seed=6)[0]
    ids_BL = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    more_BL = ids(2, 4, seed=9)
    key_mask_BM = torch.ones(2, 10, dtype=torch.bool)
    key_mask_BM[0, :3] = False
    with torch.no_grad():
        caches = model.new_caches(batch=2, max_len=10)
        chunks = [model(ids_BL, caches=caches, key_mask_BM=key_mask_BM[:, :6]).logits]
        for t in range(4):
            chunks.append(model(more_BL[:, t:t + 1], caches=caches, key_mask_BM=key_mask_BM[:, :7 + t]).logits)
        batch_BLV = torch.cat(chunks, dim=1)
        short_alone_1LV = model(torch.cat([short, more_BL[0]])[None]).logits
        long_alone_1LV = model(torch.cat([long, more_BL[1]])[None]).logits
    torch.testing.assert_close(batch_BLV[0, 3:], short_alone_1LV[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(batch_BLV[1], long_alone_1LV[0], atol=ATOL, rtol=0)


MASKS = [dict(mask="causal"), dict(mask="bidirectional"), dict(mask="prefix"), dict(mask="causal", window=3),
         dict(mask="bidirectional", window=2)]


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "_".join(str(v) for v in m.values()))
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "leftpad"])
def test_fast_path_equals_explicit_path(pos, mask, padded):
    """return_attentions=True takes the explicit path; the logits must not depend on which path ran."""
    model = model_of(tiny(pos=pos, n_kv_heads=2, **mask))
    ids_BL = ids(2, 9)
    key_mask_BM = None
    if padded:
        key_mask_BM = torch.ones(2, 9, dtype=torch.bool)
        key_mask_BM[0, :4] = False
    kwargs = dict(key_mask_BM=key_mask_BM, prefix_len=4 if mask["mask"] == "prefix" else 0)
    with torch.no_grad():
        fast = model(ids_BL, **kwargs)
        explicit = model(ids_BL, return_attentions=True, **kwargs)
    assert fast.attentions is None
    assert len(explicit.attentions) == 2 and explicit.attentions[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(fast.logits, explicit.logits, atol=ATOL, rtol=0)
    assert not fast.logits.isnan().any()
    for probs_BHLM in explicit.attentions:
        row_sums_BHL = probs_BHLM.sum(-1)
        assert torch.all(((row_sums_BHL - 1).abs() < 1e-5) | (row_sums_BHL == 0))


def test_attentions_are_zero_on_future_and_padded_keys():
    model = model_of(tiny())
    key_mask_BM = torch.ones(1, 6, dtype=torch.bool)
    key_mask_BM[0, :2] = False
    with torch.no_grad():
        probs_BHLM = model(ids(1, 6), key_mask_BM=key_mask_BM, return_attentions=True).attentions[0]
    assert torch.all(probs_BHLM[..., :2] == 0)                        # padded keys
    assert torch.all(probs_BHLM.triu(diagonal=1) == 0)                 # future keys
    assert torch.all(probs_BHLM[0, :, :2] == 0)                        # pad queries see nothing: zeros


@pytest.mark.parametrize("G", [2, 1], ids=["gqa", "mqa"])
def test_gqa_model_equals_mha_model_with_copied_key_value_heads(G):
    """A whole GQA model against an MHA model whose every layer repeats each key/value head H/G times in its
    weights (not in its activations, as GQA does): the same logits."""
    gqa = model_of(tiny(n_kv_heads=G))
    mha = model_of(tiny(n_kv_heads=None), seed=1)
    H, D = 4, 8
    state = {}
    for key, t in gqa.state_dict().items():
        if key.endswith("wkv.weight") or key.endswith("wkv.bias"):
            t = t.view(2, G, D, *t.shape[1:]).repeat_interleave(H // G, dim=1).reshape(2 * H * D, *t.shape[1:])
        state[key] = t
    mha.load_state_dict(state)
    ids_BL = ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(mha(ids_BL).logits, gqa(ids_BL).logits, atol=ATOL, rtol=0)
        assert (model_of(tiny(n_kv_heads=None), seed=1)(ids_BL).logits - gqa(ids_BL).logits).abs().max() > 1e-2


# ---------------------------------------------------------------- errors a person can act on

@pytest.mark.parametrize("fields,match", [
    (dict(d_model=30, n_heads=4), "divisible"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(n_heads=4, n_kv_heads=0), "n_kv_heads"),
    (dict(d_model=36, n_heads=4, pos="rope"), "even head_dim"),
    (dict(d_model=0), "d_model=0 must be >= 1"),
    (dict(window=0), "window"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_validation_names_the_fix(fields, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**fields)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny().d_model = 64


@pytest.mark.parametrize("bad", [[[0, V]], [[-1, 3]]], ids=["too_big", "negative"])
def test_token_ids_out_of_range_raise_input_error(bad):
    with pytest.raises(InputError, match="vocab|lie in"):
        model_of(tiny())(torch.tensor(bad))


def test_float_ids_raise_input_error():
    with pytest.raises(InputError, match="integer"):
        model_of(tiny())(torch.zeros(1, 3))


def test_sequence_longer_than_max_len_raises_input_error():
    model = model_of(tiny(max_len=8))
    model(ids(1, 8))                                                   # exactly max_len is fine
    with pytest.raises(InputError, match="max_len"):
        model(ids(1, 9))
    caches = model.new_caches(batch=1)
    model(ids(1, 8), caches=caches)
    with pytest.raises(InputError, match="max_len"):                  # the cached prefix counts too
        model(ids(1, 1), caches=caches)


def test_cache_overflow_raises_input_error():
    model = model_of(tiny())
    caches = model.new_caches(batch=1, max_len=4)
    model(ids(1, 4), caches=caches)
    with pytest.raises(InputError, match="overflow"):
        model(ids(1, 1), caches=caches)


# ---------------------------------------------------------------- training behaviour

@pytest.mark.parametrize("pos,mlp,norm", [("learned", "gelu", "layernorm"), ("rope", "swiglu", "rmsnorm")])
def test_overfits_one_batch(pos, mlp, norm):
    torch.manual_seed(0)
    model = GPT(tiny(pos=pos, mlp=mlp, norm=norm, d_model=64)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids_BL = ids(4, 17)
    first = None
    for _ in range(300):
        loss = model(ids_BL[:, :-1], ids_BL[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.05, (first, loss.item())


def test_loss_ignores_minus_100_and_matches_cross_entropy():
    model = model_of(tiny())
    ids_BL, targets_BL = ids(2, 6), ids(2, 6, seed=5)
    targets_BL[0, :3] = -100
    out = model(ids_BL, targets_BL)
    keep = targets_BL != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], targets_BL[keep])
    torch.testing.assert_close(out.loss, expected)


def test_dropout_active_in_train_mode_and_off_in_eval():
    model = model_of(tiny(dropout=0.5))
    ids_BL = ids(2, 8)
    model.train()
    a_BLV, b_BLV = model(ids_BL).logits, model(ids_BL).logits
    assert (a_BLV - b_BLV).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids_BL).logits, model(ids_BL).logits, atol=0, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_embeddings_share_storage(tie):
    model = model_of(tiny(tie_embeddings=tie))
    shared = model.head.weight.data_ptr() == model.tok.weight.data_ptr()
    assert shared == tie
    n_untied = model_of(tiny(tie_embeddings=False)).num_params()
    assert model.num_params() == (n_untied - V * 32 if tie else n_untied)


def test_last_only_returns_the_last_position():
    model = model_of(tiny())
    ids_BL = ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(ids_BL, last_only=True).logits, model(ids_BL).logits[:, -1:])
