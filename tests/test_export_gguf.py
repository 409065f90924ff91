"""`qkv export --format gguf`: the file transformers' GGUF loader and ``qkv.load`` read back with one model's
logits; quantized types within their block's error of the float weights; the tokenizer's ids unchanged."""

import numpy as np
import pytest
import torch

import qkv
from qkv import GPT, CheckpointError, ModelConfig, Tokenizer
from qkv.cli import main
from qkv.conversation import render_chat
from qkv.interop.export_gguf import permute_rows, write_gguf
from qkv.interop.gguf import GGUFFile, unpermute_rows
from qkv.interop.gguf_vocab import gguf_vocab

from gguf_fixtures import random_llama, write_llama_gguf
from export_fixtures import TEXT, TEXTS, chat_bpe, wide

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
# per type: the largest error one weight may have, from its 32-weight block (amax: max |w|, lo/hi: min/max)
STEP = {"f16": lambda b: b.abs() * 2 ** -11 + 2 ** -24,                # half an ulp, subnormals included
        "q8_0": lambda b: b.abs().amax(-1, keepdim=True) * (0.5 / 127 + 1e-3),
        "q4_0": lambda b: b.abs().amax(-1, keepdim=True) * (1 / 8 + 1e-3),
        "q4_1": lambda b: (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) * (0.5 / 15 + 1e-3)
        + b.amin(-1, keepdim=True).abs() * 1e-3}


@pytest.fixture(scope="module")
def bpe():
    return chat_bpe()


def llama(vocab, **axes):
    return wide(GPT(ModelConfig(**{**dict(vocab_size=vocab, max_len=32, n_layers=2, d_model=64, n_heads=4,
                                          n_kv_heads=2, norm_eps=2e-3, pos_base=777.0, **LLAMA), **axes})))


def _ids(vocab):
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(1))


def test_permute_rows_is_the_readers_inverse():
    rows = np.arange(8 * 16 * 3).reshape(8 * 16, 3)
    assert (unpermute_rows(permute_rows(rows, 8), 8) == rows).all()
    assert not (permute_rows(rows, 8) == rows).all()


@pytest.mark.parametrize("kind, axes", [("f32", dict(tie_embeddings=False)), ("f32", dict(n_heads=2, d_head=16)),
                                        ("f16", {}), ("q8_0", dict(tie_embeddings=False)), ("q4_0", {}),
                                        ("q4_1", {})], ids=["f32", "f32-head-dim", "f16", "q8_0", "q4_0", "q4_1"])
def test_each_type_reads_back_with_one_models_logits(tmp_path, bpe, kind, axes):
    model = llama(bpe.vocab_size + 3, **axes)
    counts = write_gguf(tmp_path / "m.gguf", model, kind, bpe)
    vocabulary = 1 + (not model.cfg.tie_embeddings)                  # the embedding, an untied head
    assert counts[kind.upper()] >= 7 * 2 and sum(counts.values()) == 7 * 2 + vocabulary + 2 * 2 + 1   # + the norms
    if kind.startswith("q4"):
        assert counts["Q8_0"] == vocabulary                           # kept at 8 bits, as llama.cpp's Q4 files
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ours = qkv.load(tmp_path / "m.gguf")
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max() < 1e-4        # measured 1.2e-6 .. 1.6e-6
    if kind == "f32":
        assert (ours(ids).logits - model(ids).logits).abs().max() < 1e-5
        return
    for name, w in model.state_dict().items():
        if w.ndim != 2:
            continue
        stored = "q8_0" if name in ("tok.weight", "head.weight") and kind.startswith("q4") else kind
        T = gguf.GGMLQuantizationType[stored.upper()]
        got = ours.state_dict()[name]
        # qkv's block readers give what the gguf package's own dequantization gives, bit for bit
        assert torch.equal(got, torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), T), T)))
        blocks_OQk, err_OQk = w.view(w.shape[0], -1, 32), (got - w).abs().view(w.shape[0], -1, 32)
        assert (err_OQk <= STEP[stored](blocks_OQk)).all(), name


def test_the_tokenizer_and_chat_template_read_back(tmp_path, bpe):
    write_gguf(tmp_path / "m.gguf", llama(bpe.vocab_size + 3), "f32", bpe)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    back = qkv.load(tmp_path / "m.gguf").tokenizer
    for text in TEXTS:
        assert theirs(text, add_special_tokens=False).input_ids == bpe.encode(text) == back.encode(text)
        assert back.prompt_ids(text) == bpe.prompt_ids(text)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ça va ? 🙂"}]
    assert render_chat(back.chat_template, messages) == render_chat(bpe.chat_template, messages)
    assert (back.bos_id, back.eos_id, back.pad_id, back.stop_ids) == (bpe.bos_id, bpe.eos_id, bpe.pad_id, bpe.stop_ids)
    f = GGUFFile(tmp_path / "m.gguf")
    assert f.get("tokenizer.ggml.pre") == "gpt-2" and f.get("tokenizer.ggml.token_type")[bpe.eos_id] == 3


def test_char_tokenizers_are_refused_with_the_reason(tmp_path):
    """An ASCII char vocabulary would be exact as a merge-free byte-level BPE (built here as the GGUF reader
    builds one: GPT-2's split, the byte alphabet); llama.cpp refuses a GGUF without merges, so it is refused."""
    from tokenizers import Regex, decoders, models
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers as pre
    from qkv.interop.gguf_tokenizer import GPT2_SPLIT
    chars = Tokenizer.train_char("First Citizen:\nBefore we proceed any further, hear me speak.\n\t$&!")
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    pieces = {byte_level.pre_tokenize_str(t)[0][0]: i for t, i in chars.backend.get_vocab().items()}
    bpe = Backend(models.BPE(pieces, []))
    bpe.pre_tokenizer = pre.Sequence([pre.Split(Regex(GPT2_SPLIT), behavior="isolated"), byte_level])
    bpe.decoder = decoders.ByteLevel()
    for text in ("First Citizen:\nhear me  speak!", "\t$& we\n\n"):
        assert bpe.encode(text).ids == chars.encode(text) and bpe.decode(chars.encode(text)) == text
    with pytest.raises(CheckpointError, match="llama.cpp refuses a GGUF without tokenizer.ggml.merges"):
        write_gguf(tmp_path / "m.gguf", llama(chars.vocab_size), "f32", chars)
    wider = Tokenizer.train_char("naïve café")
    with pytest.raises(CheckpointError, match="the character 'é' is 2 bytes in UTF-8"):
        write_gguf(tmp_path / "w.gguf", llama(wider.vocab_size), "f32", wider)
    wordpiece = Tokenizer.train_wordpiece([TEXT], vocab_size=90)
    with pytest.raises(CheckpointError, match="GGUF cannot hold this tokenizer exactly"):
        gguf_vocab(wordpiece, wordpiece.vocab_size)
    assert not any(tmp_path.iterdir())                               # no temp file left by a refusal


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm"])
def test_a_gguf_read_by_qkv_exports_back_with_its_split_rule(tmp_path, pre):
    write_llama_gguf(tmp_path / "in.gguf", random_llama(transformers, tie=False), pre=pre)
    model = qkv.load(tmp_path / "in.gguf")
    write_gguf(tmp_path / "out.gguf", model, "f32")
    back = qkv.load(tmp_path / "out.gguf")
    assert GGUFFile(tmp_path / "out.gguf").get("tokenizer.ggml.pre") == pre
    for text in TEXTS:
        assert back.tokenizer.encode(text) == model.tokenizer.encode(text)
    ids = _ids(300)
    assert (back(ids).logits - model(ids).logits).abs().max() < 1e-6


GGUF_REFUSED = [(dict(pos="learned", norm="layernorm", mlp="gelu", bias=True), "pos='learned'"),
                (dict(window=8), "window=8"), (dict(bias=True), "bias=True"), (dict(qkv_bias=True), "qkv_bias=True"),
                (dict(norm="layernorm"), "norm='layernorm'")]


@pytest.mark.parametrize("axes, words", GGUF_REFUSED, ids=[w for _, w in GGUF_REFUSED])
def test_what_gguf_llama_cannot_hold_is_refused_by_its_axis(tmp_path, axes, words):
    with pytest.raises(CheckpointError, match="GGUF architecture qkv reads back") as e:
        write_gguf(tmp_path / "m.gguf", llama(40, **axes))
    assert words in str(e.value) and "--format hf" in str(e.value) and not any(tmp_path.iterdir())


def test_a_run_trained_here_exports_and_the_readers_agree(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    run, out = tmp_path / "run", tmp_path / "m.gguf"
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "corpus.txt"), "--out-dir", str(run),
                 "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "1", "--max-len", "24", "--tokenizer",
                 "bpe", "--bpe-vocab-size", "300", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
                 "--no-bias", "--n-kv-heads", "2", "--no-tie-embeddings"]) == 0
    assert main(["export", str(run), str(out), "--type", "q8_0"]) == 0
    assert "Q8_0" in capsys.readouterr().out
    ours, theirs = qkv.load(out), transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
    ids_BL = torch.tensor([qkv.load(run).tokenizer.encode(TEXT[:20])])
    assert ours.tokenizer.encode(TEXT[:20]) == ids_BL[0].tolist()
    with torch.no_grad():
        assert (theirs.eval()(ids_BL).logits - ours(ids_BL).logits).abs().max() < 1e-4
    before = out.read_bytes()
    assert main(["export", str(run), str(out)]) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), str(out), "--overwrite"]) == 0 and out.read_bytes() != before   # f32 now
    (tmp_path / "mine.gguf").write_text("a person's file")
    assert main(["export", str(run), str(tmp_path / "mine.gguf"), "--overwrite"]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    assert (tmp_path / "mine.gguf").read_text() == "a person's file"
