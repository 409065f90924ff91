"""The encoder-decoder: parity with torch.nn.Transformer, padding, caching, tying, save/load.

Legend: B batch, S source length, L target length, C d_model, V vocab.
"""

import itertools

import pytest
import torch
from torch import nn

import qkv
from qkv import ModelConfig
from qkv.models import EncoderDecoder

from tiny_models import tiny_config

V = 40


def tiny(**overrides) -> ModelConfig:
    return tiny_config(V, **{"max_len": 32, "n_encoder_layers": 3, **overrides})


def model_of(cfg: ModelConfig, seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    return EncoderDecoder(cfg).eval()


def rand_ids(B: int, L: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(seed))


def copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    C = ours.wq.in_features
    w, b = theirs.in_proj_weight, theirs.in_proj_bias       # rows [q; k; v], as our wq and wkv = [k; v]
    ours.wq.weight.copy_(w[:C]), ours.wq.bias.copy_(b[:C])
    ours.wkv.weight.copy_(w[C:]), ours.wkv.bias.copy_(b[C:])
    ours.wo.weight.copy_(theirs.out_proj.weight), ours.wo.bias.copy_(theirs.out_proj.bias)


def copy_linear_norm(ours, theirs) -> None:
    ours.weight.copy_(theirs.weight), ours.bias.copy_(theirs.bias)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")   # nn.Transformer's own note about norm_first
@pytest.mark.parametrize("norm_first", [False, True])
def test_same_outputs_as_torch_nn_transformer(norm_first):
    """Post-norm and pre-norm, ReLU, the same weights: our decoder output equals nn.Transformer's.

    nn.Transformer always ends each stack with a LayerNorm. Pre-norm needs it (our final norm); the
    post-norm original has none, so for post-norm those two norms are removed from the reference."""
    cfg = tiny(norm_placement="pre" if norm_first else "post", mlp="relu", d_ff=48, pos="learned")
    ours = model_of(cfg)
    torch.manual_seed(1)
    ref = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=3, num_decoder_layers=2, dim_feedforward=48,
                         dropout=0.0, activation="relu", batch_first=True, norm_first=norm_first)
    with torch.no_grad():
        for mine, theirs in zip(ours.encoder.blocks, ref.encoder.layers):
            copy_attention(mine.attn, theirs.self_attn)
            for a, b in [(mine.mlp.up, theirs.linear1), (mine.mlp.down, theirs.linear2),
                         (mine.norm1, theirs.norm1), (mine.norm2, theirs.norm2)]:
                copy_linear_norm(a, b)
        for mine, theirs in zip(ours.decoder.blocks, ref.decoder.layers):
            copy_attention(mine.attn, theirs.self_attn)
            copy_attention(mine.cross, theirs.multihead_attn)
            for a, b in [(mine.mlp.up, theirs.linear1), (mine.mlp.down, theirs.linear2), (mine.norm1, theirs.norm1),
                         (mine.norm_cross, theirs.norm2), (mine.norm2, theirs.norm3)]:
                copy_linear_norm(a, b)
        if norm_first:
            copy_linear_norm(ours.encoder.norm_f, ref.encoder.norm)
            copy_linear_norm(ours.decoder.norm_f, ref.decoder.norm)
        else:
            ref.encoder.norm = ref.decoder.norm = None
    src_BS, tgt_BL = rand_ids(3, 9, seed=2), rand_ids(3, 7, seed=3)
    src_mask_BS = torch.ones(3, 9, dtype=torch.bool)
    src_mask_BS[1, 6:] = False                                # one padded source
    ref.train()                 # dropout is 0; train mode keeps nn.Transformer off its nested-tensor fast path
    with torch.no_grad():
        mine = ours(src_BS, tgt_BL, src_mask_BS=src_mask_BS).hidden
        x_src = ours.encoder.embed(src_BS, torch.arange(9)[None])
        x_tgt = ours.decoder.embed(tgt_BL, torch.arange(7)[None])
        expected = ref(x_src, x_tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(7),
                       src_key_padding_mask=~src_mask_BS, memory_key_padding_mask=~src_mask_BS,
                       tgt_is_causal=True)
    assert (mine - expected).abs().max().item() <= 1e-5


VARIANTS = list(itertools.product(["learned", "sinusoidal", "rope", "alibi"], ["pre", "post"], [None, 1]))


@pytest.mark.parametrize("pos,placement,kv_heads", VARIANTS)
def test_source_padding_changes_nothing(pos, placement, kv_heads):
    """A source padded to a longer batch gives the same target logits as the source alone."""
    model = model_of(tiny(pos=pos, norm_placement=placement, n_kv_heads=kv_heads))
    src_BS, tgt_BL = rand_ids(1, 6, seed=4), rand_ids(1, 5, seed=5)
    alone = model(src_BS, tgt_BL).logits
    padded_BS = torch.cat([src_BS, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask_BS = torch.tensor([[True] * 6 + [False] * 4])
    together = model(padded_BS, tgt_BL, src_mask_BS=mask_BS).logits
    assert torch.allclose(alone, together, atol=1e-5)


@pytest.mark.parametrize("pos,placement,kv_heads", VARIANTS)
def test_decoder_is_causal_and_cached_equals_uncached(pos, placement, kv_heads):
    model = model_of(tiny(pos=pos, norm_placement=placement, n_kv_heads=kv_heads))
    src_BS, tgt_BL = rand_ids(2, 7, seed=6), rand_ids(2, 6, seed=7)
    full = model(src_BS, tgt_BL).logits
    changed = tgt_BL.clone()
    changed[:, 4] = (changed[:, 4] + 1) % V
    assert torch.allclose(model(src_BS, changed).logits[:, :4], full[:, :4], atol=1e-6)   # no peeking ahead
    memory = model.encode(src_BS)
    caches = model.new_caches(2)
    steps = [model.decode(tgt_BL[:, :2], memory, caches)[0]]                  # a prefill, then one at a time
    steps += [model.decode(tgt_BL[:, i:i + 1], memory, caches)[0] for i in range(2, 6)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_source_matters_through_cross_attention():
    model = model_of(tiny())
    tgt_BL = rand_ids(1, 4, seed=8)
    a = model(rand_ids(1, 5, seed=9), tgt_BL).logits
    b = model(rand_ids(1, 5, seed=10), tgt_BL).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_joint_vocabulary_ties_source_target_and_head():
    model = model_of(tiny())
    assert model.encoder.tok.weight is model.decoder.tok.weight is model.head.weight
    separate = model_of(tiny(src_vocab_size=25, tie_embeddings=False))
    assert separate.encoder.tok.weight.shape == (25, 32)
    assert separate.head.weight is not separate.decoder.tok.weight


def test_attentions_are_returned_per_layer():
    model = model_of(tiny())
    out = model(rand_ids(2, 5, seed=11), rand_ids(2, 4, seed=12), return_attentions=True)
    assert len(out.encoder_attentions) == 3 and out.encoder_attentions[0].shape == (2, 4, 5, 5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 4, 4)
    assert out.cross_attentions[0].shape == (2, 4, 4, 5)
    assert torch.allclose(out.cross_attentions[1].sum(-1), torch.ones(2, 4, 4), atol=1e-5)


@pytest.mark.parametrize("src_vocab_size", [None, 25])
def test_save_and_load_round_trip(tmp_path, src_vocab_size):
    model = model_of(tiny(src_vocab_size=src_vocab_size))
    qkv.save(model, tmp_path / "m")
    loaded = qkv.load(tmp_path / "m")
    assert isinstance(loaded, EncoderDecoder)
    src_BS, tgt_BL = rand_ids(2, 5, seed=13) % 25, rand_ids(2, 4, seed=14)
    assert torch.equal(model(src_BS, tgt_BL).logits, loaded(src_BS, tgt_BL).logits)
    if src_vocab_size is None:
        assert loaded.encoder.tok.weight is loaded.decoder.tok.weight is loaded.head.weight


def test_label_smoothing_is_the_papers_mixture_and_skips_padding():
    """loss = (1 - eps) * NLL + eps * mean over the vocabulary of -log p, averaged over labelled positions."""
    model = model_of(tiny())
    src_BS, ids_BL = rand_ids(2, 5, seed=15), rand_ids(2, 6, seed=16)
    targets_BL = rand_ids(2, 6, seed=17)
    targets_BL[1, 4:] = -100                               # padding carries no loss
    eps = 0.1
    with torch.no_grad():
        out = model(src_BS, ids_BL, targets_BL, label_smoothing=eps)
        logp_NV = out.logits.log_softmax(-1)[targets_BL != -100]
        labels_N = targets_BL[targets_BL != -100]
        nll_N = -logp_NV.gather(1, labels_N[:, None]).squeeze(1)
        expected = ((1 - eps) * nll_N + eps * -logp_NV.mean(-1)).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_embed_scale_is_the_papers_sqrt_d_model_recipe():
    """Vaswani et al. sec. 3.4: token embeddings times sqrt(d_model), on the scale of sinusoidal positions."""
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(pos="sinusoidal", embed_scale=True, d_model=64)).eval()
    ids_BL = rand_ids(2, 5, seed=18)
    pos_BL = torch.arange(5)[None]
    stack = model.decoder
    expected = stack.tok(ids_BL) * 8.0 + stack.pos.embed(pos_BL)
    assert torch.allclose(stack.embed(ids_BL, pos_BL), expected, atol=1e-6)
    assert abs(stack.tok.weight.std().item() - 64 ** -0.5) < 0.02      # unit-scale after the multiplier
    plain = EncoderDecoder(tiny(pos="sinusoidal", d_model=64))
    assert torch.allclose(plain.decoder.embed(ids_BL, pos_BL),
                          plain.decoder.tok(ids_BL) + plain.decoder.pos.embed(pos_BL))
