"""The decoder axes Qwen3, Phi-3 and Gemma brought (qk_norm, norm_offset, sandwich placement, geglu,
global_every, pos_base_local, attn_scale, attn_softcap, logit_softcap): the invariants of test_model.py
over them, the attention paths against each other, and the config errors that name the fix.

Legend: B batch, L length, V vocab, H heads, G key/value heads, M keys, D head dim.
"""

import pytest
import torch

from qkv import GPT, ModelConfig
from qkv.errors import ConfigError
from qkv.nn.attention import attend
from qkv.nn.masks import build_mask

V, ATOL = 50, 1e-5
GEMMA = dict(norm="rmsnorm", norm_offset=1.0, norm_placement="sandwich", mlp="geglu", pos="rope", window=3,
             global_every=2, attn_scale=0.3, attn_softcap=2.0, logit_softcap=3.0, embed_scale=True, bias=False)
VARIANTS = {
    "gemma2": GEMMA,
    "gemma3": {**GEMMA, "qk_norm": True, "attn_softcap": None, "logit_softcap": None, "pos_base_local": 100.0,
               "global_every": 3, "n_layers": 4},
    "qwen3": dict(norm="rmsnorm", mlp="swiglu", pos="rope", qk_norm=True, d_head=12, bias=False),
}


def model_of(variant: str, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=V, max_len=24, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2),
                         **VARIANTS[variant], **overrides})
    model = GPT(cfg).eval()
    with torch.no_grad():                       # norms away from their identity, so every one counts
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.2, 0.3)
    return model


def ids(B: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causal_cached_and_explicit_paths_agree(variant):
    model = model_of(variant)
    ids_BL = ids(2, 12)
    with torch.no_grad():
        full_BLV = model(ids_BL).logits
        edited_BL = ids_BL.clone()
        edited_BL[:, 8:] = (edited_BL[:, 8:] + 1) % V
        torch.testing.assert_close(model(edited_BL).logits[:, :8], full_BLV[:, :8], atol=ATOL, rtol=0)
        caches = model.new_caches(batch=2, max_len=12)
        steps_BLV = torch.cat([model(ids_BL[:, t:t + 1], caches=caches).logits for t in range(12)], dim=1)
        torch.testing.assert_close(steps_BLV, full_BLV, atol=ATOL, rtol=0)
        explicit = model(ids_BL, return_attentions=True)
    torch.testing.assert_close(explicit.logits, full_BLV, atol=ATOL, rtol=0)
    if model.cfg.logit_softcap:
        assert full_BLV.abs().max() < model.cfg.logit_softcap


@pytest.mark.parametrize("variant", ["gemma2", "gemma3"])
def test_left_padded_batch_equals_each_sequence_alone(variant):
    model = model_of(variant)
    short, long = ids(1, 5, seed=2)[0], ids(1, 9, seed=3)[0]
    batch_BL = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    key_mask_BM = batch_BL != -1
    key_mask_BM[0, :4] = False
    with torch.no_grad():
        batch_BLV = model(batch_BL, key_mask_BM=key_mask_BM).logits
        torch.testing.assert_close(batch_BLV[0, 4:], model(short[None]).logits[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(batch_BLV[1], model(long[None]).logits[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("L,M", [(6, 6), (1, 9)])
def test_sdpa_and_explicit_attention_agree_with_a_scale_and_a_cap(L, M):
    """attn_scale goes to SDPA as its scale; a soft-cap runs the explicit path (SDPA cannot cap), and a cap
    far above every score changes nothing."""
    g = torch.Generator().manual_seed(0)
    q_BHLD, k_BGMD, v_BGMD = torch.randn(2, 4, L, 8, generator=g), torch.randn(2, 2, M, 8, generator=g), \
        torch.randn(2, 2, M, 8, generator=g)
    mask = build_mask(L, M, "causal", window=4)
    fast, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask, scale=0.7)
    explicit, probs = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True, scale=0.7)
    torch.testing.assert_close(fast, explicit, atol=ATOL, rtol=0)
    loose, _ = attend(q_BHLD, k_BGMD, v_BGMD, mask, scale=0.7, softcap=1e4)
    torch.testing.assert_close(loose, fast, atol=ATOL, rtol=0)
    capped, capped_probs = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs=True, scale=0.7, softcap=0.5)
    assert capped_probs is not None and (capped - fast).abs().max() > 1e-2
    assert attend(q_BHLD, k_BGMD, v_BGMD, mask, scale=0.7, softcap=0.5)[1] is None


def test_each_axis_changes_the_logits():
    """So the parity tests against transformers test every field they read."""
    base = model_of("gemma3")
    ids_BL = ids(1, 12)
    with torch.no_grad():
        want = base(ids_BL).logits
        for change in (dict(norm_offset=0.0), dict(global_every=None), dict(pos_base_local=None),
                       dict(attn_scale=None), dict(attn_softcap=1.0), dict(logit_softcap=1.0), dict(qk_norm=False),
                       dict(mlp="swiglu"), dict(embed_scale=False)):
            other = model_of("gemma3", **change)
            state = {k: v for k, v in base.state_dict().items() if k in other.state_dict()}
            other.load_state_dict(state, strict=False)
            assert (other(ids_BL).logits - want).abs().max() > 1e-3, change


@pytest.mark.parametrize("fields,match", [
    (dict(norm="layernorm", norm_offset=1.0), "norm_offset=1.0 scales RMSNorm only; set norm='rmsnorm'"),
    (dict(global_every=2), "global_every=2 picks the layers that skip the window, but window is None"),
    (dict(pos_base_local=100.0), "pos_base_local=100.0 is the RoPE base of windowed layers; it needs pos='rope'"),
    (dict(attn_softcap=0.0), "attn_softcap=0.0 must be > 0"),
    (dict(logit_softcap=-1.0), "logit_softcap=-1.0 must be > 0"),
    (dict(window=4, global_every=0), "global_every=0 must be >= 1"),
])
def test_config_validation_names_the_fix(fields, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(vocab_size=V, pos="rope", **fields)


def test_layer_window_follows_the_pattern():
    cfg = ModelConfig(vocab_size=V, n_layers=6, window=4, global_every=3, pos="rope")
    assert [cfg.layer_window(i) for i in range(6)] == [4, 4, None, 4, 4, None]
    assert [ModelConfig(vocab_size=V, window=4).layer_window(i) for i in range(2)] == [4, 4]
