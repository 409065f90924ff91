"""`qkv export --format hf`: transformers loads what qkv writes, with qkv's logits and qkv's token ids.

Every model is built with axes off their defaults (GQA, untied heads, eps, RoPE base, head width, biases on
q/k/v only, a window) and weights wide enough (std 0.3) for attention to matter, then read back by
``transformers.AutoModel*.from_pretrained`` and, where qkv has a loader for the class, by ``qkv.load``.
"""

import dataclasses
import json

import pytest
import torch

import qkv
from qkv import GPT, CheckpointError, ModelConfig, Tokenizer
from qkv.checkpoint import write_model_files
from qkv.cli import main
from qkv.conversation import render_chat
from qkv.generate import GenerationConfig, generate_ids
from qkv.interop.export_hf import hf_class, write_hf_files
from qkv.interop.export_axes import LATER_AXES_OFF
from qkv.models import BERT, BertClassifier, BertQA, BertTagger, Encoder
from qkv.rundir import atomic_dir

from export_fixtures import TEXT, TEXTS, chat_bpe, wide

transformers = pytest.importorskip("transformers")
ROPE_RMS = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
DECODERS = {   # name: (axes, the class transformers gives)
    "gpt2": (dict(mlp="gelu_tanh", norm_eps=1e-3, tie_embeddings=False), "GPT2LMHeadModel"),
    "gpt2-no-bias": (dict(mlp="relu", bias=False), "GPT2LMHeadModel"),
    "neox": (dict(pos="rope", pos_base=500.0, mlp="relu", bias=False), "GPTNeoXForCausalLM"),
    "neox-untied-qkv-unbiased": (dict(pos="rope", mlp="gelu", qkv_bias=False, tie_embeddings=False),
                                 "GPTNeoXForCausalLM"),
    "llama-gqa": (dict(ROPE_RMS, n_kv_heads=2, norm_eps=2e-3, pos_base=777.0, tie_embeddings=False),
                  "LlamaForCausalLM"),
    "llama-biases-head-dim": (dict(ROPE_RMS, bias=True, qkv_bias=False, d_head=16), "LlamaForCausalLM"),
    "qwen2-mqa": (dict(ROPE_RMS, qkv_bias=True, n_kv_heads=1), "Qwen2ForCausalLM"),
    "mistral-window": (dict(ROPE_RMS, window=5, n_kv_heads=2), "MistralForCausalLM"),
}
QKV_READS = ("gpt2", "llama", "qwen2", "mistral")          # the classes qkv.load reads back


@pytest.fixture(scope="module")
def bpe():
    return chat_bpe()


def _ids(vocab, n=20):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_logits_match_transformers(tmp_path, bpe, name):
    axes, want = DECODERS[name]
    model = wide(GPT(ModelConfig(vocab_size=bpe.vocab_size + 4, max_len=32, n_layers=2, d_model=32, n_heads=4, **axes)))
    assert write_hf_files(tmp_path, model, bpe) == want
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == want
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-5        # measured 4e-7 .. 8e-7
    if json.loads((tmp_path / "config.json").read_text())["model_type"] in QKV_READS:
        assert (qkv.load(tmp_path)(ids).logits - model(ids).logits).abs().max() < 1e-6   # the loader's inverse


@pytest.mark.parametrize("name", ["gpt2", "neox", "llama-gqa", "qwen2-mqa"])
def test_a_decoder_classifier_is_the_familys_sequence_classifier(tmp_path, bpe, name):
    from qkv.models import GPTClassifier
    axes, want = DECODERS[name]
    cfg = ModelConfig(vocab_size=bpe.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4, **axes)
    model = wide(GPTClassifier(cfg, ["neg", "pos", "mixed"]))
    assert write_hf_files(tmp_path, model, bpe) == want.replace("LMHeadModel", "ForSequenceClassification") \
        .replace("ForCausalLM", "ForSequenceClassification")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = _ids(bpe.vocab_size)
    ids[ids == bpe.pad_id] += 1                                     # no pad inside a text: its last token scores
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-5
    assert [theirs.config.id2label[i] for i in range(3)] == model.labels


def test_tokenizer_files_give_qkv_ids_and_chat_template(tmp_path, bpe):
    model = wide(GPT(ModelConfig(vocab_size=bpe.vocab_size, max_len=64, n_layers=1, d_model=16, n_heads=2, **ROPE_RMS)))
    write_hf_files(tmp_path, model, bpe)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert theirs(text, add_special_tokens=False).input_ids == bpe.encode(text)
        assert theirs(text).input_ids == bpe.prompt_ids(text)                      # bos first, as qkv prompts
        assert theirs.decode(bpe.encode(text)) == bpe.decode(bpe.encode(text))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 🙂"},
                {"role": "user", "content": "Ça va ?"}]
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        render_chat(bpe.chat_template, messages)
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    generation = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert generation.eos_token_id == list(bpe.stop_ids) and generation.pad_token_id == bpe.pad_id
    back = qkv.load(tmp_path).tokenizer                            # and qkv reads the same tokenizer back
    assert back.encode(TEXTS[1]) == bpe.encode(TEXTS[1]) and back.stop_ids == bpe.stop_ids and back.add_bos


ENCODERS = {   # name: (model, the Auto class, what to compare)
    "mlm": (lambda c: BERT(c), "AutoModelForMaskedLM", "logits"),
    "bare": (lambda c: Encoder(c), "AutoModel", "hidden"),
    "classifier": (lambda c: BertClassifier(c, ["neg", "pos", "mixed"]), "AutoModelForSequenceClassification",
                   "logits"),
    "tagger": (lambda c: BertTagger(c, ["O", "B-x", "I-x"]), "AutoModelForTokenClassification", "logits"),
    "qa": (lambda c: BertQA(c), "AutoModelForQuestionAnswering", "span"),
    "mlm-no-segments-no-bias-untied": (lambda c: BERT(dataclasses.replace(c, type_vocab_size=0, bias=False,
                                                                          tie_embeddings=False)),
                                       "AutoModelForMaskedLM", "logits"),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_heads_match_transformers(tmp_path, name):
    make, auto, what = ENCODERS[name]
    wordpiece = Tokenizer.train_wordpiece([TEXT.lower()], vocab_size=90)
    cfg = ModelConfig(vocab_size=wordpiece.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4,
                      mask="bidirectional", norm_placement="post", embed_norm=True, type_vocab_size=2,
                      norm_eps=1e-7, mlp="gelu_tanh")
    model = wide(make(cfg))
    write_hf_files(tmp_path, model, wordpiece)
    theirs = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    enc = wordpiece.encode_for_model("the quick fox", "over the dog")
    ids_BL = torch.tensor([enc.ids])
    types_BL = torch.tensor([enc.type_ids]) if model.cfg.type_vocab_size else None
    with torch.no_grad():
        out = theirs(input_ids=ids_BL, token_type_ids=types_BL if types_BL is not None else torch.zeros_like(ids_BL))
        ours = model(ids_BL, types_BL=types_BL)
    got, want = {"logits": (lambda: out.logits, lambda: ours.logits),
                 "hidden": (lambda: out.last_hidden_state, lambda: ours.hidden),
                 "span": (lambda: torch.stack([out.start_logits, out.end_logits], -1), lambda: ours.logits)}[what]
    assert (got() - want()).abs().max() < 1e-5                                    # measured 2e-7 .. 5e-7
    if hasattr(model, "labels"):
        assert [theirs.config.id2label[i] for i in range(len(model.labels))] == model.labels
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok("the quick fox", "over the dog").input_ids == enc.ids                # [CLS] a [SEP] b [SEP]


REFUSED = [   # axes no transformers class has, and the words the one line must hold
    (dict(pos="alibi"), "pos='alibi'"), (dict(pos="sinusoidal"), "pos='sinusoidal'"),
    (dict(norm_placement="post"), "norm_placement='post'"), (dict(mask="prefix"), "mask='prefix'"),
    (dict(embed_scale=True), "embed_scale=True"), (dict(pos="rope", mlp="swiglu"), "mlp='swiglu'"),
    (dict(ROPE_RMS, mlp="gelu"), "mlp='gelu'"), (dict(n_kv_heads=2), "n_kv_heads=2"), (dict(window=4), "window=4"),
    (dict(ROPE_RMS, window=4, qkv_bias=True), "window=4"), (dict(pos="learned", norm="rmsnorm"), "norm='rmsnorm'"),
    # Qwen3's and Gemma's axes, on an otherwise Llama-shaped model: refused, never written without them
    (dict(ROPE_RMS, qk_norm=True), "qk_norm=True"),
    (dict(ROPE_RMS, norm_offset=1.0), "norm_offset=1.0"),
    (dict(ROPE_RMS, window=4, global_every=2), "global_every=2"),
    (dict(ROPE_RMS, window=4, pos_base_local=500.0), "pos_base_local=500.0"),
    (dict(ROPE_RMS, attn_scale=0.3), "attn_scale=0.3"),
    (dict(ROPE_RMS, attn_softcap=20.0), "attn_softcap=20.0"),
    (dict(ROPE_RMS, logit_softcap=15.0), "logit_softcap=15.0"),
]


@pytest.mark.parametrize("axes, words", REFUSED, ids=[w for _, w in REFUSED])
def test_a_decoder_no_class_holds_is_refused_by_its_axis(axes, words):
    later = any(a in LATER_AXES_OFF for a in axes)          # Qwen3's / Gemma's: a class exists, export does not
    with pytest.raises(CheckpointError, match="does not write the classes" if later else
                       "no transformers decoder class holds") as e:
        hf_class(GPT(ModelConfig(vocab_size=40, max_len=16, n_layers=1, d_model=16, n_heads=4, **axes)))
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("axes, words", [(dict(norm_placement="pre"), "norm_placement='pre'"),
                                         (dict(embed_norm=False), "embed_norm=False"),
                                         (dict(pos="rope"), "pos='rope'")])
def test_an_encoder_no_bert_class_holds_is_refused_by_its_axis(axes, words):
    cfg = ModelConfig(**{**dict(vocab_size=40, max_len=16, n_layers=1, d_model=16, n_heads=4, mask="bidirectional",
                                norm_placement="post", embed_norm=True), **axes})
    with pytest.raises(CheckpointError, match="BERT") as e:
        hf_class(BERT(cfg))
    assert words in str(e.value)


def _train(tmp_path, name, *flags):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / name
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "6",
                 "--eval-interval", "3", "--eval-iters", "1", "--max-len", "24", *flags]) == 0
    return out


@pytest.mark.parametrize("flags, want", [
    (["--tokenizer", "bpe", "--bpe-vocab-size", "300", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
      "--no-bias", "--n-kv-heads", "2", "--no-tie-embeddings"], "LlamaForCausalLM"),
    (["--pos", "rope", "--mlp", "relu", "--no-bias", "--n-heads", "1"], "GPTNeoXForCausalLM"),   # shakespeare-char's
])
def test_a_run_trained_here_exports_and_transformers_agrees(tmp_path, capsys, flags, want):
    run = _train(tmp_path, "run", *flags)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert want in capsys.readouterr().out
    ours = qkv.load(run)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids_BL = torch.tensor([ours.tokenizer.encode(TEXT[:20])])
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXT[:20]).input_ids == ids_BL[0].tolist()
    with torch.no_grad():
        assert (theirs(ids_BL).logits - ours(ids_BL).logits).abs().max() < 1e-5
        greedy = theirs.generate(ids_BL[:, :4], max_new_tokens=6, min_new_tokens=6, do_sample=False)[:, 4:]
    assert greedy.tolist() == generate_ids(ours, ids_BL[:, :4], GenerationConfig(max_new_tokens=6,
                                                                                   temperature=0)).tolist()


def test_a_lora_run_exports_merged_or_is_refused(tmp_path, bpe, capsys):
    from qkv.adapters import LoRAConfig, add_lora
    model = wide(GPT(ModelConfig(vocab_size=bpe.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4,
                                 n_kv_heads=2, **ROPE_RMS)))
    add_lora(model, LoRAConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj")))
    wide(model, seed=3)                                            # B != 0: the adapters change the logits
    with atomic_dir(tmp_path / "lora") as tmp:
        write_model_files(tmp, model, bpe, {"lora": dataclasses.asdict(model.lora_config)})
    assert main(["export", str(tmp_path / "lora"), str(tmp_path / "hf")]) == 2
    assert "pass --merge" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["export", str(tmp_path / "lora"), str(tmp_path / "hf"), "--merge"]) == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = _ids(bpe.vocab_size)
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-5


def test_overwrite_replaces_an_earlier_export_whole(tmp_path, bpe, capsys):
    qkv.save(wide(GPT(ModelConfig(vocab_size=bpe.vocab_size, max_len=16, n_layers=1, d_model=16, n_heads=2))),
             tmp_path / "run", bpe)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "run"), str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]            # no temp directory left


def test_smollm2_from_its_gguf_exports_as_llama_with_transformers_logits(tmp_path):
    """A real model: SmolLM2-135M-Instruct's Q4_1 GGUF (dequantized by qkv.load) as LlamaForCausalLM."""
    from gguf_fixtures import smollm2_path
    pytest.importorskip("gguf")
    model = qkv.load(smollm2_path())
    from qkv.interop.export_hf import save_hf
    assert save_hf(model, tmp_path / "hf") == "LlamaForCausalLM"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render_chat(model.tokenizer.chat_template, messages, specials=model.tokenizer.specials)
    ids_BL = torch.tensor([model.tokenizer.encode(text)])
    assert tok(text, add_special_tokens=False).input_ids == ids_BL[0].tolist()
    with torch.no_grad():
        assert (theirs(ids_BL).logits - model(ids_BL).logits).abs().max() < 1e-3        # measured 6.3e-5
