"""Hugging Face Llama / Qwen2 / Mistral / Qwen3 / Phi-3 directories: parity with transformers on tiny random models.

Every checkpoint is made and saved by transformers inside the test; the logits of the two libraries on
the same ids must agree to float32 rounding (measured ~2e-7 at these sizes; the bound is 2e-6), and
greedy continuations must be identical. Every hyper-parameter the loader reads is off transformers' default
(eps, rope theta, G != H, sizes, window), so a value read from the wrong key cannot pass by matching it; a
config.json holding only the sizes checks the defaults themselves against transformers'.
"""

import json

import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.generate import GenerationConfig, generate_ids

V = 120


def _hf_model(transformers, kind: str, **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-3, rope_theta=500.0,
                  tie_word_embeddings=False, initializer_range=0.1, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    common.update(extra)
    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM"),
                             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                             "phi3": ("Phi3Config", "Phi3ForCausalLM")}[kind]
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**common)).eval()
    with torch.no_grad():                     # transformers initializes biases to zero and norms to one:
        for name, p in model.named_parameters():      # make them count
            if name.endswith("bias"):
                p.normal_(std=0.5)
            if name.endswith("norm.weight") and kind in ("qwen3", "phi3"):
                p.normal_(1.0, 0.3)
    return model


CASES = {   # name -> (model type, config overrides)
    "llama-gqa-untied": ("llama", {}),
    "llama-tied-head_dim": ("llama", dict(tie_word_embeddings=True, head_dim=24)),   # 8 x 24 != 64
    "llama-biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "qwen2-qkv-bias": ("qwen2", {}),
    "mistral-window": ("mistral", dict(sliding_window=5)),                            # shorter than 24 ids
    "qwen3-qk-norm-head_dim": ("qwen3", dict(head_dim=24)),
    "qwen3-tied": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "phi3-fused": ("phi3", {}),
    "phi3-window": ("phi3", dict(sliding_window=5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_greedy_match_transformers(transformers, tmp_path, case):
    kind, extra = CASES[case]
    hf = _hf_model(transformers, kind, **extra)
    hf.save_pretrained(tmp_path)
    ours = qkv.load(tmp_path)
    assert type(ours) is qkv.GPT
    ids_BL = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_BLV = hf(ids_BL).logits
    got_BLV = ours(ids_BL).logits
    # float rounding: 32 ulps of the largest logit (the matmuls sum in another order on each CPU kind; an
    # absolute 2e-6 failed on a Zen 3 by 4e-9)
    assert (got_BLV - want_BLV).abs().max() < 32 * torch.finfo(torch.float32).eps * want_BLV.abs().max()
    assert ours.cfg.max_len == hf.config.max_position_embeddings
    prompt_BL = ids_BL[:1, :6]
    with torch.no_grad():
        want = hf.generate(prompt_BL, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt_BL),
                           pad_token_id=0)[:, 6:]
    got = generate_ids(ours, prompt_BL, GenerationConfig(max_new_tokens=20, temperature=0))
    assert torch.equal(got, want)


def test_the_axes_are_exercised(transformers, tmp_path):
    """The sliding window and the q/k/v biases change the logits (so the parity above tests them)."""
    hf = _hf_model(transformers, "mistral", sliding_window=5)
    hf.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert qkv.load(tmp_path / "m").cfg.window == 5
    cfg["sliding_window"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    ids_BL = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        windowed = hf(ids_BL).logits
    assert (qkv.load(tmp_path / "m")(ids_BL).logits - windowed).abs().max() > 1e-2
    qwen = qkv.load(_saved(transformers, "qwen2", tmp_path / "q"))
    assert qwen.cfg.has_qkv_bias and not qwen.cfg.bias and qwen.blocks[0].attn.wo.bias is None


def _saved(transformers, kind, d, **extra):
    _hf_model(transformers, kind, **extra).save_pretrained(d)
    return d


@pytest.mark.parametrize("tie", [False, True])
def test_sharded_and_bin_checkpoints(transformers, tmp_path, tie):
    """Shards; and the older pytorch_model.bin with what transformers < 4.31 kept in it: the RoPE inv_freq
    buffers and, for a tied model, lm_head.weight beside the embedding."""
    hf = _hf_model(transformers, "llama", tie_word_embeddings=tie)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    sd = {k: t.clone() for k, t in hf.state_dict().items()}
    assert "lm_head.weight" in sd
    for i in range(2):
        sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(4)
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    ids_BL = torch.randint(0, V, (1, 10))
    with torch.no_grad():
        want = hf(ids_BL).logits
    for d in ("sharded", "bin"):
        model = qkv.load(tmp_path / d)
        assert (model(ids_BL).logits - want).abs().max() < 2e-6
        assert (model.head.weight is model.tok.weight) == tie


def test_tokenizer_and_chat_template_from_the_directory(transformers, tmp_path):
    """tokenizer.json + tokenizer_config.json: the special tokens and the template come along."""
    from tokenizers import Tokenizer as Backend, models, pre_tokenizers, decoders
    backend = Backend(models.BPE(vocab={chr(i + 33): i for i in range(90)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<s>", "<|end|>"])
    d = _saved(transformers, "llama", tmp_path / "m")
    backend.save(str(d / "tokenizer.json"))
    template = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "<|end|>"}, "chat_template": template, "add_bos_token": True}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [91, 7]}))
    tok = qkv.load(d).tokenizer
    assert (tok.bos_id, tok.eos_id, tok.chat_template, tok.stop_ids) == (90, 91, template, (91, 7))
    assert tok.prompt_ids("ab") == [90] + tok.encode("ab")


@pytest.mark.parametrize("kind, change, phrase", [
    ("llama", dict(model_type="falcon"), "model_type 'falcon' in"),
    ("llama", dict(hidden_size=32), "the weights in {d}: tensor 'model.embed_tokens.weight' has shape \\(120, 64\\) "
     "but config.json \\(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, "
     "num_key_value_heads=2, head_dim=8, intermediate_size=96\\) expects \\(120, 32\\)"),
    ("llama", dict(num_hidden_layers=3), "the weights in {d} has no tensor 'model.layers.2.input_layernorm.weight'"),
    ("llama", dict(num_hidden_layers=1), "the weights in {d} has tensors a Llama-family causal LM with config.json "
     "\\(vocab_size=120, .*\\) does not: \\['model.layers.1.*; fix config.json \\(num_hidden_layers, biases, "
     "tie_word_embeddings\\) to match them$"),
    ("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "{d}/config.json uses RoPE scaling 'yarn'"),
    ("llama", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0}), "RoPE scaling 'yarn'"),
    ("llama", dict(hidden_act="gelu"), "{d}/config.json sets hidden_act='gelu'; qkv's SwiGLU uses silu only"),
    ("llama", dict(attention_bias=True), "{d}/config.json sets attention_bias=True but mlp_bias=False; qkv biases "
     "every Linear or none \\(or q/k/v alone, as Qwen2\\)$"),
    ("qwen2", dict(use_sliding_window=True), "{d}/config.json sets use_sliding_window=true \\(a window on some layers "
     "only\\), which qkv does not implement; set it to false to load with full attention$"),
    ("qwen3", dict(use_sliding_window=True), "{d}/config.json sets use_sliding_window=true"),
    ("qwen3", dict(attention_bias=True), "{d}/config.json sets attention_bias=true \\(q/k/v/o biased, the MLP not\\)"),
    ("phi3", dict(rope_parameters={"rope_type": "longrope", "rope_theta": 500.0, "short_factor": [1.0] * 4,
                                   "long_factor": [1.0] * 4}), "{d}/config.json uses RoPE scaling 'longrope'"),
    ("phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}),
     "{d}/config.json rotates a part \\(0.5\\) of each head \\(partial_rotary_factor\\); qkv's RoPE rotates every"),
    ("phi3", dict(model_type="phi3small"), "model_type 'phi3small' in .* is not supported; qkv loads "),
])
def test_bad_directories_raise_one_clear_error(transformers, tmp_path, kind, change, phrase):
    d = _saved(transformers, kind, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    cfg.pop("rope_parameters", None) if "rope_scaling" in change else None
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=phrase.replace("{d}", str(d))):
        qkv.load(d)


def test_the_config_reader_names_the_file_and_the_types_it_reads(tmp_path):
    from qkv.interop.hf_llama import config_from_hf, load_llama
    with pytest.raises(CheckpointError, match="^config.json has model_type='falcon'; load_llama reads "
                                              "\\['llama', 'mistral', 'qwen2', 'qwen3', 'phi3'\\]$"):
        config_from_hf({"model_type": "falcon"})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=f"^{tmp_path}/config.json has model_type='gpt2'"):
        load_llama(tmp_path)


def test_eps_and_theta_are_read_not_assumed(transformers, tmp_path):
    """The fixtures' eps and rope theta change the logits: at the loader's defaults the parity above fails."""
    d = _saved(transformers, "llama", tmp_path / "m")
    ids_BL = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(1))
    want = qkv.load(d)(ids_BL).logits
    cfg = json.loads((d / "config.json").read_text())
    for change in (dict(rms_norm_eps=1e-6), dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        assert (qkv.load(d)(ids_BL).logits - want).abs().max() > 1e-3, change


# phi3 is left out: its default pad id, 32000, fits no small vocabulary
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_config_with_only_the_sizes_takes_transformers_defaults(transformers, tmp_path, kind):
    """Keys left out of config.json (older or hand-written files) mean what they mean to transformers."""
    # Llama's num_key_value_heads defaults to the head count; Mistral's (8) and Qwen2's (32) fit no small model
    d = _saved(transformers, kind, tmp_path / "m", **(dict(num_key_value_heads=8) if kind == "llama" else {}))
    sizes = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads") + (() if kind == "llama" else ("num_key_value_heads",))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({k: cfg[k] for k in sizes}))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    ours = qkv.load(d)
    assert (ours.cfg.max_len, ours.cfg.kv_heads, ours.cfg.window) == (
        theirs.config.max_position_embeddings, theirs.config.num_key_value_heads,
        getattr(theirs.config, "sliding_window", None) if kind == "mistral" else None)
    ids_BL = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids_BL).logits - theirs(ids_BL).logits).abs().max() < 2e-6


def test_a_transformers_4_config_with_top_level_rope_theta(transformers, tmp_path):
    """transformers < 5 wrote rope_theta (and rope_scaling) at the top level, not in rope_parameters."""
    hf = _hf_model(transformers, "llama")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["rope_scaling"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids_BL = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (qkv.load(tmp_path)(ids_BL).logits - hf(ids_BL).logits).abs().max() < 2e-6
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json uses RoPE scaling 'linear', which qkv does not"):
        qkv.load(tmp_path)
