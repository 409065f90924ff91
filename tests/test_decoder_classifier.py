"""Sequence classification with a decoder (qkv.models.GPTClassifier): logits equal to transformers'
LlamaForSequenceClassification with the same weights (right-padded rows: the last real token), and
`qkv finetune --task sst2` from a Llama directory, with LoRA."""

import json

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.models import GPTClassifier

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def llama_config(**overrides):
    return transformers.LlamaConfig(**{**dict(vocab_size=70, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                                              num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=64,
                                              rms_norm_eps=1e-4, rope_theta=2000.0, initializer_range=0.1,
                                              pad_token_id=0, tie_word_embeddings=False), **overrides})


def test_logits_equal_llama_for_sequence_classification(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.LlamaForSequenceClassification(llama_config(num_labels=3)).eval()
    lm = transformers.LlamaForCausalLM(llama_config())
    lm.model.load_state_dict(theirs.model.state_dict())
    lm.save_pretrained(tmp_path / "lm")
    ours = GPTClassifier.from_decoder(qkv.load(tmp_path / "lm"), ["a", "b", "c"]).eval()
    with torch.no_grad():
        ours.head.weight.copy_(theirs.score.weight)
    ids = torch.tensor([[5, 9, 13, 22, 7, 41, 3], [8, 30, 2, 0, 0, 0, 0], [11, 12, 0, 0, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask.long()).logits
        got = ours(ids, key_mask_BL=mask).logits
        alone = ours(ids[1:2, :3]).logits                          # padding changes nothing
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], got[1], atol=2e-5, rtol=1e-4)


def test_finetune_sst2_from_a_llama_directory_with_lora(tmp_path):
    from qkv import Tokenizer
    rows = [("a good film", "1"), ("a bad film", "0"), ("very good", "1"), ("so bad", "0")] * 10
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t} \t{label}\n" for t, label in rows), encoding="utf-8")
    tok = Tokenizer.train_bpe([" ".join(t for t, _ in rows)] * 3, vocab_size=280, special_tokens=("<eos>",))
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(llama_config(vocab_size=tok.vocab_size, pad_token_id=None)).save_pretrained(
        tmp_path / "llama")
    tok.save(tmp_path / "llama" / "tokenizer.json")
    run = tmp_path / "run"
    assert main(["finetune", "--task", "sst2", "--init", str(tmp_path / "llama"), "--data", str(data), "--eval-data",
                 str(data), "--lora", "--lora-rank", "4", "--lora-targets", "q_proj,v_proj", "--max-iters", "40",
                 "--eval-interval", "20", "--eval-iters", "1", "--batch-size", "8", "--lr", "1e-2",
                 "--precision", "fp32", "--out-dir", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["accuracy"] == 1.0     # separable by one word
    model = qkv.load(run)
    assert isinstance(model, GPTClassifier) and (run / "adapter" / "adapter_config.json").is_file()
