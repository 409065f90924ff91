"""The BERT family: bidirectionality, padding invariance, each head's shapes and loss, save/load, and
building a fine-tuning model from a pre-trained encoder. Tiny configs, seconds in all."""

import pytest
import torch
from torch.nn import functional as F

import qkv
from qkv import CheckpointError, ConfigError, InputError, ModelConfig, Tokenizer
from qkv.train.pretrained import from_pretrained_encoder
from qkv.models import BERT, GPT, BertClassifier, BertQA, BertTagger, Encoder

CORPUS = ["the cat sat on the mat", "a dog is sleeping in the sun", "cats and dogs play chess"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_wordpiece(CORPUS * 10, vocab_size=80)


def bert_cfg(vocab_size=60, **overrides):
    base = dict(vocab_size=vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4, norm_placement="post",
                mask="bidirectional", type_vocab_size=2, embed_norm=True, norm_eps=1e-12)
    return ModelConfig(**{**base, **overrides})


def ids(B, L, seed=0, V=60):
    return torch.randint(5, V, (B, L), generator=torch.Generator().manual_seed(seed))


def build(cls, cfg):
    return cls(cfg, ["O", "B-X", "I-X"]) if cls in (BertClassifier, BertTagger) else cls(cfg)


VARIANTS = [dict(), dict(norm_placement="pre"), dict(pos="rope"), dict(pos="alibi", norm="rmsnorm"),
            dict(pos="sinusoidal", n_kv_heads=2)]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_bidirectional_a_token_sees_later_tokens(overrides):
    torch.manual_seed(0)
    model = Encoder(bert_cfg(**overrides)).eval()
    ids_BL = ids(2, 10)
    edited_BL = ids_BL.clone()
    edited_BL[:, 7] = (edited_BL[:, 7] + 1) % 55 + 5                   # change only a later token
    with torch.no_grad():
        h_BLC, h2_BLC = model(ids_BL).hidden, model(edited_BL).hidden
    assert (h_BLC[:, :7] - h2_BLC[:, :7]).abs().max() > 1e-6          # a causal stack gives exactly 0


@pytest.mark.parametrize("overrides", VARIANTS)
def test_padding_invariance(overrides):
    torch.manual_seed(0)
    model = Encoder(bert_cfg(**overrides)).eval()
    long_L, short_L = 12, 7
    ids_BL = ids(2, long_L)
    types_BL = torch.zeros(2, long_L, dtype=torch.long)
    types_BL[:, 4:] = 1
    key_mask_BL = torch.ones(2, long_L, dtype=torch.bool)
    key_mask_BL[1, short_L:] = False                                   # row 1: 7 real tokens, then padding
    with torch.no_grad():
        batch_BLC = model(ids_BL, key_mask_BL=key_mask_BL, types_BL=types_BL).hidden
        alone_BLC = model(ids_BL[1:, :short_L], types_BL=types_BL[1:, :short_L]).hidden
        full_BLC = model(ids_BL[:1], types_BL=types_BL[:1]).hidden
        emb_BC = model.sentence_embeddings(ids_BL, key_mask_BL, types_BL)
        emb_alone_1C = model.sentence_embeddings(ids_BL[1:, :short_L], types_BL=types_BL[1:, :short_L])
    assert torch.allclose(batch_BLC[1, :short_L], alone_BLC[0], atol=1e-5)
    assert torch.allclose(batch_BLC[0], full_BLC[0], atol=1e-5)
    assert torch.allclose(emb_BC[1], emb_alone_1C[0], atol=1e-5)


def test_explicit_attention_path_equals_sdpa_with_padding():
    torch.manual_seed(0)
    model = Encoder(bert_cfg()).eval()
    ids_BL, key_mask_BL = ids(2, 9), torch.ones(2, 9, dtype=torch.bool)
    key_mask_BL[0, 5:] = False
    with torch.no_grad():
        fast = model(ids_BL, key_mask_BL=key_mask_BL)
        explicit = model(ids_BL, key_mask_BL=key_mask_BL, return_attentions=True)
    assert torch.allclose(fast.hidden, explicit.hidden, atol=1e-5)
    probs_BHLM = explicit.attentions[0]
    assert probs_BHLM.shape == (2, 4, 9, 9) and probs_BHLM[0, :, :, 5:].abs().max() == 0   # pads unseen


def test_mlm_loss_only_on_selected_positions_and_tied_decoder():
    torch.manual_seed(0)
    model = BERT(bert_cfg()).eval()
    assert model.head.decoder.weight is model.tok.weight and model.head.decoder.bias is not None
    ids_BL = ids(2, 10)
    labels_BL = torch.full_like(ids_BL, -100)
    labels_BL[0, 3], labels_BL[1, 8] = 11, 42
    out = model(ids_BL, labels_BL)
    full_BLV = model(ids_BL).logits                     # without labels: every position's logits
    assert full_BLV.shape == (2, 10, 60) and out.logits.shape == (2, 60)   # with labels: the scored ones
    scored_NV = torch.stack([full_BLV[0, 3], full_BLV[1, 8]])
    assert torch.allclose(out.logits, scored_NV, atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(scored_NV, torch.tensor([11, 42])), atol=1e-5)
    other_BL = labels_BL.clone()
    other_BL[0, 3] = 12
    assert not torch.allclose(model(ids_BL, other_BL).loss, out.loss)


def test_classifier_tagger_qa_shapes_and_losses():
    torch.manual_seed(0)
    cfg = bert_cfg()
    ids_BL, key_mask_BL = ids(3, 8), torch.ones(3, 8, dtype=torch.bool)
    key_mask_BL[2, 6:] = False
    clf = BertClassifier(cfg, ["neg", "pos"]).eval()
    out = clf(ids_BL, torch.tensor([0, 1, 1]), key_mask_BL=key_mask_BL)
    assert out.logits.shape == (3, 2) and torch.allclose(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 1, 1])))
    tagger = BertTagger(cfg, ["O", "B-X", "I-X"]).eval()
    tags_BL = torch.randint(0, 3, (3, 8))
    tags_BL[:, 0] = -100                                                # [CLS] carries no tag
    out = tagger(ids_BL, tags_BL, key_mask_BL=key_mask_BL)
    assert out.logits.shape == (3, 8, 3)
    keep = tags_BL != -100
    assert torch.allclose(out.loss, F.cross_entropy(out.logits[keep], tags_BL[keep]), atol=1e-6)
    qa = BertQA(cfg).eval()
    spans_B2 = torch.tensor([[1, 2], [3, 5], [4, 4]])
    out = qa(ids_BL, spans_B2, key_mask_BL=key_mask_BL)
    assert out.start_logits.shape == out.end_logits.shape == (3, 8)
    expected = (F.cross_entropy(out.start_logits, spans_B2[:, 0]) + F.cross_entropy(out.end_logits, spans_B2[:, 1])) / 2
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert qa(ids_BL).loss is None
    encoder = Encoder(cfg).eval()
    emb_BC = encoder.sentence_embeddings(ids_BL, key_mask_BL)
    with torch.no_grad():                       # mean of each row's real tokens' hidden states, unit length
        h_BLC = encoder(ids_BL, key_mask_BL=key_mask_BL).hidden
        mean_BC = torch.stack([h_BLC[b, key_mask_BL[b]].mean(0) for b in range(3)])
    torch.testing.assert_close(emb_BC, F.normalize(mean_BC, dim=-1), atol=1e-5, rtol=0)


def test_losses_backpropagate_into_the_encoder():
    torch.manual_seed(0)
    model = BertClassifier(bert_cfg(dropout=0.1), ["a", "b", "c"]).train()
    model(ids(2, 6), torch.tensor([0, 2])).loss.backward()
    assert model.tok.weight.grad is not None and model.blocks[0].attn.wq.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [Encoder, BERT, BertClassifier, BertTagger, BertQA])
def test_save_load_round_trip(cls, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build(cls, bert_cfg(vocab_size=tokenizer.vocab_size)).eval()
    qkv.save(model, tmp_path / "m", tokenizer)
    again = qkv.load(tmp_path / "m")
    assert type(again) is cls and again.model_type == cls.model_type
    assert getattr(again, "labels", None) == getattr(model, "labels", None)
    ids_BL = ids(2, 7, V=tokenizer.vocab_size)
    with torch.no_grad():
        a, b = model(ids_BL), again(ids_BL)
    assert torch.equal(a.hidden, b.hidden)
    if a.logits is not None:
        assert torch.equal(a.logits, b.logits)
    if cls is BERT:
        assert again.head.decoder.weight is again.tok.weight
    assert again.tokenizer.encode_for_model("the cat").ids == tokenizer.encode_for_model("the cat").ids


def test_from_pretrained_encoder_keeps_encoder_weights(tokenizer, tmp_path):
    torch.manual_seed(0)
    pre = BERT(bert_cfg(vocab_size=tokenizer.vocab_size, dropout=0.1))
    qkv.save(pre, tmp_path / "pre", tokenizer)
    for task, labels in (("classify", ["neg", "pos"]), ("tag", ["O", "B-PER"]), ("qa", None), ("embed", None)):
        model = from_pretrained_encoder(tmp_path / "pre", task, labels)
        assert model.training and model.tokenizer is not None
        ours = model.state_dict()
        for k, v in pre.state_dict().items():
            if not k.startswith("head."):
                assert torch.equal(ours[k], v), k
        assert getattr(model, "labels", None) == labels
    clf = from_pretrained_encoder(pre, "classify", ["neg", "pos"], tokenizer=tokenizer)   # a loaded model too
    assert clf.head.out.weight.shape == (2, 32)
    qkv.save(clf, tmp_path / "clf", tokenizer)
    assert qkv.load(tmp_path / "clf").labels == ["neg", "pos"]


def test_from_pretrained_encoder_errors(tokenizer, tmp_path):
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, max_len=16, n_layers=1, d_model=16, n_heads=2))
    qkv.save(gpt, tmp_path / "gpt", tokenizer)
    with pytest.raises(CheckpointError, match="not an encoder"):
        from_pretrained_encoder(tmp_path / "gpt", "classify", ["a", "b"])
    enc = Encoder(bert_cfg(vocab_size=tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="unknown head 'sentiment'"):
        from_pretrained_encoder(enc, "sentiment", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="at least 2 distinct string labels"):
        from_pretrained_encoder(enc, "classify", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="takes no labels"):
        from_pretrained_encoder(enc, "qa", ["x"], tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        from_pretrained_encoder(enc, "qa")
    small = Encoder(bert_cfg(vocab_size=10))
    with pytest.raises(CheckpointError, match="use the tokenizer saved with this encoder"):
        from_pretrained_encoder(small, "qa", tokenizer=tokenizer)


def test_bad_inputs_name_the_fix(tmp_path):
    model = Encoder(bert_cfg()).eval()
    with pytest.raises(InputError, match="segment ids must lie in"):
        model(ids(1, 5), types_BL=torch.full((1, 5), 2))
    with pytest.raises(InputError, match="key_mask_BL has shape"):
        model(ids(1, 5), key_mask_BL=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="exceeds the model's context"):
        model(ids(1, 40))
    with pytest.raises(InputError, match="no head to score labels"):
        model(ids(1, 5), torch.tensor([0]))
    with pytest.raises(ConfigError, match="mask='bidirectional'"):
        Encoder(bert_cfg(mask="causal"))
    clf = BertClassifier(bert_cfg(), ["a", "b"])
    qkv.save(clf, tmp_path / "clf")
    import json
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    del config["labels"]
    (tmp_path / "clf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="needs its 'labels' list"):
        qkv.load(tmp_path / "clf")


def test_embed_texts_uses_the_tokenizer(tokenizer):
    torch.manual_seed(0)
    model = Encoder(bert_cfg(vocab_size=tokenizer.vocab_size)).train()
    model.tokenizer = tokenizer
    emb_NC = model.embed_texts(["the cat sat", "the cat sat", "dogs play chess in the sun"], batch_size=2)
    assert model.training                                              # mode restored
    assert emb_NC.shape == (3, 32) and torch.allclose(emb_NC[0] @ emb_NC[1], torch.tensor(1.0), atol=1e-5)


def test_bench_encoder_smoke():
    from qkv.bench.encoder import run
    result = run(False, layers=1, batch=2, length=8, rounds=1, threads=1, hf=False)
    assert result["qkv"]["sentences_per_s"] > 0
