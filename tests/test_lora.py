"""LoRA adapters (qkv.adapters): PEFT's files both ways, logits equal to transformers + PEFT on the same
base, merging, QLoRA's backward, and bad adapters. Tiny random Llama / BERT bases with non-default
hyper-parameters, written with save_pretrained; adapters with non-default rank, alpha and targets, their B
matrices randomized (PEFT starts B at zero, which would make any adapter look right)."""

import json

import pytest
import torch

import qkv
from qkv.adapters import LoRAConfig, add_lora, load_adapter, merge_lora, save_adapter
from qkv.adapters.lora import adapted
from qkv.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()


def llama_dir(path, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**dict(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                             rms_norm_eps=1e-4, rope_theta=5000.0, tie_word_embeddings=False,
                                             initializer_range=0.1), **overrides})
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def bert_dir(path, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=56, max_position_embeddings=40, layer_norm_eps=1e-7,
                                  hidden_act="gelu", initializer_range=0.2)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


def randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in adapted(model):
            for b in module.lora.B.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)


IDS = torch.tensor([[3, 17, 5, 42, 8, 23, 11, 60, 2, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


@pytest.mark.parametrize("targets", [("q_proj", "v_proj", "down_proj"), ("k_proj", "o_proj", "gate_proj", "up_proj")])
def test_llama_adapter_saved_by_qkv_gives_peft_the_same_logits(tmp_path, targets):
    base = llama_dir(tmp_path / "base")
    model = qkv.load(base)
    names = add_lora(model, LoRAConfig(rank=3, alpha=7.0, targets=targets))
    assert len(names) == 2 * len(targets)              # every layer, each target
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if ".lora." in n}
    randomize(model)
    save_adapter(model, tmp_path / "adapter", base=str(base))
    hf = transformers.LlamaForCausalLM.from_pretrained(base).eval()
    plain_BLV = hf(IDS).logits
    hf_lora = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours_BLV, theirs_BLV = model(IDS).logits, hf_lora(input_ids=IDS).logits
    assert (theirs_BLV - plain_BLV).abs().max() > 1e-2          # the adapter changes the logits ...
    torch.testing.assert_close(ours_BLV, theirs_BLV, atol=2e-4, rtol=1e-4)      # ... and both sides agree


def test_peft_trained_adapter_loads_into_qkv(tmp_path):
    base = llama_dir(tmp_path / "base", seed=3)
    hf = transformers.LlamaForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(hf, peft.LoraConfig(r=5, lora_alpha=3, target_modules=["k_proj", "up_proj"],
                                                   lora_dropout=0.0))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    lora.save_pretrained(tmp_path / "adapter")
    model = qkv.load(base, adapter=tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, lora.eval()(input_ids=IDS).logits, atol=2e-4, rtol=1e-4)
    merged = merge_lora(qkv.load(base, adapter=tmp_path / "adapter"))
    assert not adapted(merged) and not any(".lora." in k for k in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, model(IDS).logits, atol=2e-4, rtol=1e-4)


def test_bert_adapter_gives_peft_the_same_hidden_states(tmp_path):
    base = bert_dir(tmp_path / "bert")
    model = qkv.load(base)
    add_lora(model, LoRAConfig(rank=2, alpha=5.0, targets=("query", "value", "dense")))
    randomize(model)
    save_adapter(model, tmp_path / "adapter")
    hf = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(base), tmp_path / "adapter").eval()
    ids = IDS % 40
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ours = model(ids, key_mask_BL=mask.bool()).hidden
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[0], theirs[0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1, :7], theirs[1, :7], atol=2e-4, rtol=1e-4)


def test_qlora_backward_reaches_the_adapters_below_a_quantized_layer(tmp_path):
    model = qkv.load(llama_dir(tmp_path / "base"), quantized=True)        # int8 weights, frozen
    add_lora(model, LoRAConfig(rank=2, alpha=4.0, targets=("q_proj",)))
    randomize(model)
    model.train()
    loss = model(IDS, targets_BL=IDS).loss
    loss.backward()
    first = model.blocks[0].attn.wq.lora.A
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.values())


def test_bad_targets_rank_and_another_base(tmp_path):
    base = llama_dir(tmp_path / "base")
    with pytest.raises(ConfigError, match="matches no module.*q_proj"):
        add_lora(qkv.load(base), LoRAConfig(targets=("qproj",)))
    with pytest.raises(ConfigError, match="rank=0 must be a positive integer"):
        LoRAConfig(rank=0)
    model = qkv.load(base)
    add_lora(model, LoRAConfig(rank=2, targets=("q_proj",)))
    save_adapter(model, tmp_path / "adapter")
    wider = llama_dir(tmp_path / "wider", hidden_size=60, num_attention_heads=6, num_key_value_heads=2)
    with pytest.raises(CheckpointError, match="trained on another base"):
        qkv.load(wider, adapter=tmp_path / "adapter")
    deeper_adapter = tmp_path / "deep"
    deep = qkv.load(llama_dir(tmp_path / "deep-base", num_hidden_layers=3))
    add_lora(deep, LoRAConfig(rank=2, targets=("q_proj",)))
    save_adapter(deep, deeper_adapter)
    with pytest.raises(CheckpointError, match="trained on another base"):
        load_adapter(qkv.load(base), deeper_adapter)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_adapter(qkv.load(base), tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA"


def test_for_inference_leaves_a_quantized_base_s_adapters_hooked(tmp_path):
    model = qkv.load(llama_dir(tmp_path / "base"), quantized=True)
    add_lora(model, LoRAConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj")))
    randomize(model)
    with torch.no_grad():
        before = model.eval()(IDS).logits
        ready = qkv.for_inference(model)
        assert adapted(ready)                                  # int8 codes cannot absorb them: still hooks
        torch.testing.assert_close(ready(IDS).logits, before)
