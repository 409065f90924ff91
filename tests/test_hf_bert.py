"""Hugging Face BERT interop: parity with transformers on tiny random models (hidden states, MLM logits,
tokenizer ids), the older file layouts, fine-tuning from a HF encoder, and bad input.

Nothing downloads: every checkpoint is a random-init model written into tmp_path with a small vocab.txt.
"""

import json
import shutil

import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.train.pretrained import from_pretrained_encoder
from qkv.models import BERT, Encoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "is",
         "play", "##ing", "##s", "##ed", "cafe", "naive", "hello", "world", "ch", "##ess", "un", "##known",
         "Hello", "The", "Cafe", "café", ".", ",", "!", "?", "'", "-", "(", ")", "日", "本", "1", "##2", "3"]
TEXTS = ["Hello world!", "The cat sat on the mat.", "Naïve CAFÉ owners playing chess?", "café, Cafe (cafe)",
         "unknownword zzz qqq", "日本 dog's 123", "  spaced\tout\nlines  ", ""]
PAIRS = [("The cat", "sat on the mat"), ("hello", "Naïve world!"), ("dogs playing", "unknownword ?")]


def hf_config(transformers, **overrides):
    # A wide init (0.2, not BERT's 0.02): at 0.02 attention is nearly uniform (max probability 0.087 for 12
    # keys) and a wrong scale or head split would move hidden states by less than the tolerance; at 0.2 the
    # largest probability is 0.86 and the logits span +-3.5.
    return transformers.BertConfig(**{**dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                                             type_vocab_size=2, initializer_range=0.2), **overrides})


def write_tokenizer(transformers, d, lowercase=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    transformers.BertTokenizer(vocab=str(d / "vocab.txt"), do_lower_case=lowercase).save_pretrained(d)


@pytest.fixture(scope="module")
def hf_dirs(transformers, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    encoder = transformers.BertModel(hf_config(transformers)).eval()
    encoder.save_pretrained(root / "bert")
    write_tokenizer(transformers, root / "bert")
    mlm = transformers.BertForMaskedLM(hf_config(transformers)).eval()
    mlm.save_pretrained(root / "mlm")
    write_tokenizer(transformers, root / "mlm")
    return {"bert": (encoder, root / "bert"), "mlm": (mlm, root / "mlm")}


def batch():
    ids_BL = torch.randint(5, len(VOCAB), (3, 12), generator=torch.Generator().manual_seed(1))
    key_mask_BL = torch.ones(3, 12, dtype=torch.long)
    key_mask_BL[1, 7:] = 0
    key_mask_BL[2, 3:] = 0
    types_BL = torch.zeros(3, 12, dtype=torch.long)
    types_BL[:, 5:] = 1
    return ids_BL, key_mask_BL, types_BL


def test_hidden_states_match_bert_model(hf_dirs):
    hf_model, d = hf_dirs["bert"]
    model = qkv.load(d)
    assert type(model) is Encoder and model.cfg.norm_placement == "post" and model.cfg.norm_eps == 1e-12
    ids_BL, key_mask_BL, types_BL = batch()
    with torch.no_grad():
        want_BLC = hf_model(input_ids=ids_BL, attention_mask=key_mask_BL, token_type_ids=types_BL).last_hidden_state
        out = model(ids_BL, key_mask_BL=key_mask_BL.bool(), types_BL=types_BL, return_attentions=True)
    assert out.attentions[0].max() > 0.5                      # attention is far from uniform: it matters
    assert (out.hidden - want_BLC).abs().max() <= 1e-5        # measured 1.1e-6


def test_mlm_logits_match_bert_for_masked_lm(hf_dirs):
    hf_model, d = hf_dirs["mlm"]
    model = qkv.load(d)
    assert type(model) is BERT and model.head.decoder.weight is model.tok.weight
    ids_BL, key_mask_BL, types_BL = batch()
    with torch.no_grad():
        want_BLV = hf_model(input_ids=ids_BL, attention_mask=key_mask_BL, token_type_ids=types_BL).logits
        got_BLV = model(ids_BL, key_mask_BL=key_mask_BL.bool(), types_BL=types_BL).logits
    assert (got_BLV - want_BLV).abs().max() <= 3e-5           # measured 2.6e-6 on logits spanning +-3.5


@pytest.mark.parametrize("options", [
    dict(layer_norm_eps=1e-3, type_vocab_size=3, hidden_act="gelu_new", tie_word_embeddings=False),
    dict(layer_norm_eps=1e-2, hidden_act="relu", max_position_embeddings=24),
    # heads and FFN width off ModelConfig's own defaults (4 heads), so a loader that drops either is wrong
    dict(num_attention_heads=8, intermediate_size=48, hidden_act="gelu"),
])
def test_options_off_the_defaults_match_transformers(transformers, tmp_path, options):
    """eps, the type vocabulary, the activation and an untied decoder are read from config.json."""
    torch.manual_seed(0)
    cfg = hf_config(transformers, **options)
    hf_model = transformers.BertForMaskedLM(cfg).eval()
    hf_model.save_pretrained(tmp_path)
    model = qkv.load(tmp_path)
    assert model.cfg.max_len == cfg.max_position_embeddings and model.cfg.type_vocab_size == cfg.type_vocab_size
    assert (model.head.decoder.weight is model.tok.weight) == cfg.tie_word_embeddings
    ids_BL, key_mask_BL, types_BL = batch()
    types_BL[0, 8:] = cfg.type_vocab_size - 1
    with torch.no_grad():
        want_BLV = hf_model(input_ids=ids_BL, attention_mask=key_mask_BL, token_type_ids=types_BL).logits
        got_BLV = model(ids_BL, key_mask_BL=key_mask_BL.bool(), types_BL=types_BL).logits
    assert (got_BLV - want_BLV).abs().max() <= 3e-5


def test_old_bin_layout_without_prefix_with_gamma_beta_pooler_and_buffers(hf_dirs, tmp_path):
    hf_model, d = hf_dirs["mlm"]
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(d / "config.json", old / "config.json")
    sd = {}
    for k, t in hf_model.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        sd[k] = t.clone()
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    sd["bert.embeddings.position_ids"] = torch.arange(40)[None]
    sd["bert.pooler.dense.weight"], sd["bert.pooler.dense.bias"] = torch.randn(32, 32), torch.randn(32)
    sd["cls.seq_relationship.weight"], sd["cls.seq_relationship.bias"] = torch.randn(2, 32), torch.randn(2)
    torch.save(sd, old / "pytorch_model.bin")
    model = qkv.load(old)
    assert model.tokenizer is None and type(model) is BERT
    ids_BL, key_mask_BL, types_BL = batch()
    with torch.no_grad():
        want_BLV = hf_model(input_ids=ids_BL, attention_mask=key_mask_BL, token_type_ids=types_BL).logits
        got_BLV = model(ids_BL, key_mask_BL=key_mask_BL.bool(), types_BL=types_BL).logits
    assert (got_BLV - want_BLV).abs().max() <= 3e-5


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.txt"])
def test_tokenizer_ids_match_transformers(transformers, tmp_path, lowercase, files):
    d = tmp_path / "tok"
    write_tokenizer(transformers, d, lowercase)
    if files == "vocab.txt":
        (d / "tokenizer.json").unlink()                   # BERT's original files only
    theirs = transformers.BertTokenizer.from_pretrained(d)
    ours = qkv.Tokenizer.from_dir(d)
    assert ours.kind == "wordpiece" and (ours.cls_id, ours.sep_id, ours.mask_id, ours.unk_id) == (2, 3, 4, 1)
    for text in TEXTS:
        e = ours.encode_for_model(text)
        want = theirs(text)
        assert e.ids == want["input_ids"] and e.type_ids == want["token_type_ids"], text
    for text, pair in PAIRS:
        e = ours.encode_for_model(text, pair)
        want = theirs(text, pair)
        assert e.ids == want["input_ids"] and e.type_ids == want["token_type_ids"], (text, pair)


def test_fine_tune_from_hf_encoder_keeps_its_weights(hf_dirs):
    hf_model, d = hf_dirs["bert"]
    model = from_pretrained_encoder(d, "classify", ["neg", "pos"])
    assert torch.equal(model.tok.weight, hf_model.embeddings.word_embeddings.weight)
    assert torch.equal(model.blocks[1].mlp.down.weight, hf_model.encoder.layer[1].output.dense.weight)
    e = model.tokenizer.encode_for_model("the cat", "sat")
    ids_1L, types_1L = torch.tensor([e.ids]), torch.tensor([e.type_ids])
    model.eval()
    out = model(ids_1L, torch.tensor([1]), types_BL=types_1L)
    with torch.no_grad():                    # BERT's classifier read off transformers' hidden state at [CLS]
        cls_1C = hf_model(input_ids=ids_1L, token_type_ids=types_1L).last_hidden_state[:, 0]
        want_1K = model.head.out(torch.tanh(model.head.pool(cls_1C)))
    assert (out.logits - want_1K).abs().max() <= 1e-5 and out.loss.requires_grad
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])))


def copy_dir(src, dst, config_edit=None):
    shutil.copytree(src, dst)
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config.update(config_edit)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("option,value", [("position_embedding_type", "relative_key"), ("is_decoder", True),
                                          ("add_cross_attention", True), ("hidden_act", "silu")])
def test_unsupported_options_name_the_fix(hf_dirs, tmp_path, option, value):
    d = copy_dir(hf_dirs["bert"][1], tmp_path / "bad", {option: value})
    with pytest.raises(CheckpointError, match=f"{option}={value!r}"):
        qkv.load(d)


def test_bad_files_name_the_fix(hf_dirs, tmp_path, transformers):
    d = copy_dir(hf_dirs["bert"][1], tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*copy the weights"):
        qkv.load(d)
    d = copy_dir(hf_dirs["bert"][1], tmp_path / "layers", {"num_hidden_layers": 3})
    with pytest.raises(CheckpointError, match=r"no tensor 'encoder.layer.2.attention.self.query.weight'"):
        qkv.load(d)
    d = tmp_path / "classifier"
    transformers.BertForSequenceClassification(hf_config(transformers)).save_pretrained(d)
    with pytest.raises(CheckpointError, match="classifier.*save its .bert and fine-tune here"):
        qkv.load(d)
    d = copy_dir(hf_dirs["bert"][1], tmp_path / "vocab", {"vocab_size": 10})
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight' has shape \(42, 32\)"):
        qkv.load(d)
