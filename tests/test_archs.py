"""Every architecture beyond Llama, from a Hugging Face directory and from GGUF files of the same weights:
logits equal to transformers', greedy continuations equal, cache == recompute, and the fast paths honest.

Each case is a random transformers model whose hyper-parameters are off their defaults (GQA, an explicit
head_dim, a window shorter than the 24 test ids, eps, rope theta, random norms and biases). The GGUF
reference is transformers' own GGUF reading (its dequantization, tensor names and row handling) given the
source config.json: its GGUF config reader misses keys for some architectures (Qwen3's key_length, Phi-3's
and Mistral's sliding_window), which would test its defaults rather than the file. Mistral files are
architecture ``llama``, which transformers reads as a Llama: its tensors go into the Mistral model.
"""

import dataclasses
import json

import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.generate import GenerationConfig, generate_ids
from qkv.native.fused import is_fused, unfusable
from qkv.quant import Int4Linear, quantize_model

from gguf_arch_fixtures import random_model, write_gguf

CASES = {   # name -> (model_type, config overrides)
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=24)),
    "phi3-window": ("phi3", dict(sliding_window=5)),
    "mistral-window": ("mistral", dict(sliding_window=5)),
    # Gemma: query_pre_attn_scalar = head_dim, as llama.cpp's converter can carry it (no GGUF key; see
    # test_gemma_keys_only_a_directory_carries); 4 / 6 layers: two of each kind, one global of six
    "gemma2": ("gemma2", dict(head_dim=24, query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=7.0,
                              final_logit_softcapping=4.0, num_hidden_layers=4, tie_word_embeddings=True)),
    "gemma3": ("gemma3_text", dict(head_dim=24, query_pre_attn_scalar=24, sliding_window=5,
                                   final_logit_softcapping=5.0, num_hidden_layers=6)),
}
TYPES = {"f32": {}, "f16": {"blk": "F16"}, "q8_0": {"blk": "Q8_0", "token_embd": "Q8_0"},
         "q4_0": {"blk": "Q4_0", "output": "Q8_0"}}
ATOL = 2e-5                 # measured 1.4e-6 to 4.3e-6 (fp32)


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("gguf")
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def made(transformers, tmp_path_factory):
    """{case: (hf model, its save_pretrained directory, {type: GGUF path})}, built on first use."""
    cache = {}

    def make(case):
        if case not in cache:
            kind, options = CASES[case]
            hf = random_model(transformers, kind, **options)
            d = tmp_path_factory.mktemp(case)
            hf.save_pretrained(d / "hf")
            files = {t: write_gguf(d / f"{t}.gguf", hf, kinds) for t, kinds in TYPES.items()}
            cache[case] = hf, d / "hf", files
        return cache[case]
    return make


def _ids(n=24, seed=1):
    return torch.randint(0, 300, (2, n), generator=torch.Generator().manual_seed(seed))


def _max_diff(model, reference, ids_BL=None) -> float:
    ids_BL = _ids() if ids_BL is None else ids_BL
    with torch.no_grad():
        return float((model(ids_BL).logits - reference(ids_BL).logits).abs().max())


def reference_from_gguf(transformers, hf, path):
    """transformers' model of ``path`` (its GGUF reading) with the source config."""
    config = hf.config
    if config.model_type == "mistral":
        llama_config = transformers.LlamaConfig.from_dict({k: v for k, v in config.to_dict().items()
                                                            if k not in ("model_type", "architectures")})
        llama = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=llama_config)
        model = type(hf)(config)
        model.load_state_dict(llama.state_dict())
        return model.eval()
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config).eval()


def _greedy_equal(ours, hf, n=12):
    prompt_BL = _ids()[:1, :6]
    with torch.no_grad():
        want = hf.generate(prompt_BL, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(prompt_BL),
                           pad_token_id=0)[:, 6:]
    assert torch.equal(generate_ids(ours, prompt_BL, GenerationConfig(max_new_tokens=n, temperature=0)), want)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_directory_logits_and_greedy_match_transformers(made, case):
    hf, d, _ = made(case)
    ours = qkv.load(d)
    assert type(ours) is qkv.GPT
    assert _max_diff(ours, hf) < ATOL
    _greedy_equal(ours, hf)


@pytest.mark.parametrize("kind", sorted(TYPES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_gguf_logits_match_transformers_reading_the_same_file(transformers, made, case, kind):
    hf, _, files = made(case)
    ours = qkv.load(files[kind])
    want = qkv.load(made(case)[1]).cfg                      # the file's eps is a float32
    assert type(ours) is qkv.GPT and ours.cfg == dataclasses.replace(want, norm_eps=ours.cfg.norm_eps)
    assert _max_diff(ours, reference_from_gguf(transformers, hf, files[kind])) < ATOL
    if kind == "f32":                       # and the model the file was written from
        assert _max_diff(ours, hf) < ATOL
        _greedy_equal(ours, hf)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_decoding_equals_recomputing(made, case):
    """Token by token through the KV cache (windows and all) gives the logits of one full forward."""
    model = qkv.load(made(case)[2]["q8_0"])
    ids_BL = _ids()
    caches = model.new_caches(batch=2, max_len=24)
    with torch.no_grad():
        full_BLV = model(ids_BL).logits
        steps_BLV = torch.cat([model(ids_BL[:, t:t + 1], caches=caches).logits for t in range(24)], dim=1)
    assert (steps_BLV - full_BLV).abs().max() < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_quantized_gguf_and_quantize_model(made, case):
    """The file's 4-bit blocks load into Int4Linear and stay close; int8 quantize_model of the float model too."""
    files = made(case)[2]
    fp = qkv.load(files["q4_0"])
    q = qkv.load(files["q4_0"], quantized=True)
    assert any(isinstance(m, Int4Linear) for m in q.modules())
    with torch.no_grad():
        scale = float(fp(_ids()).logits.abs().max())
    assert _max_diff(q, fp) < 0.05 * scale
    int8, fp = qkv.load(files["f32"]), qkv.load(files["f32"])
    quantize_model(int8, bits=8)
    assert _max_diff(int8, fp) < 0.1 * scale               # measured 3-4%, 7% on the 6-layer Gemma 3


@pytest.mark.parametrize("case, why", [("qwen3", "qk_norm=True"), ("gemma2", "not a Llama-family decoder"),
                                       ("gemma3", "not a Llama-family decoder")])
def test_for_inference_leaves_new_axes_to_pytorch(made, case, why):
    """The fused decode step computes none of these axes: a quantized Qwen3 / Gemma keeps its PyTorch blocks,
    and for_inference changes no logit (float: still transformers'; quantized: decoding as before)."""
    hf, d, files = made(case)
    assert _max_diff(qkv.for_inference(qkv.load(d)), hf) < ATOL
    model = qkv.for_inference(qkv.load(files["q4_0"], quantized=True))
    assert not is_fused(model) and why in unfusable(model)
    plain = qkv.load(files["q4_0"], quantized=True)
    config = GenerationConfig(max_new_tokens=8, temperature=0)
    assert torch.equal(generate_ids(model, _ids()[:1, :6], config), generate_ids(plain, _ids()[:1, :6], config))


def test_the_new_axes_are_exercised(made):
    """Q/K norms and Phi-3's window change the logits, so the parity above tests them (the Gemma axes:
    tests/test_model_axes.py)."""
    hf, d, _ = made("qwen3")
    model = qkv.load(d)
    for block in model.blocks:
        block.attn.q_norm.weight.data.fill_(1.0)
    assert _max_diff(model, hf) > 1e-2
    hf, d, _ = made("phi3-window")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "sliding_window": None}))
    assert _max_diff(qkv.load(d), hf) > 1e-2
    (d / "config.json").write_text(json.dumps(cfg))


def test_unsupported_model_types_are_refused_with_the_list(tmp_path):
    from qkv.interop import LOADERS
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(CheckpointError, match=f"model_type 'qwen3_moe' in .* is not supported; qkv loads .*"
                                              f"{sorted(LOADERS)[0]}"):
        qkv.load(tmp_path)


@pytest.mark.parametrize("kind, options", [
    ("gemma2", dict(query_pre_attn_scalar=40, tie_word_embeddings=False, attn_logit_softcapping=3.0)),
    ("gemma3_text", dict(query_pre_attn_scalar=40, rope_local_base_freq=50.0, sliding_window_pattern=2,
                         tie_word_embeddings=True)),
])
def test_gemma_keys_only_a_directory_carries(transformers, tmp_path, kind, options):
    """query_pre_attn_scalar other than head_dim, the local RoPE base, another layer pattern, an untied
    Gemma 2 head, a tied Gemma 3: read from config.json (llama.cpp's converter writes none of them)."""
    hf = random_model(transformers, kind, head_dim=24, sliding_window=5, num_hidden_layers=4, **options)
    hf.save_pretrained(tmp_path)
    ours = qkv.load(tmp_path)
    assert ours.cfg.attn_scale == 40 ** -0.5 and ours.cfg.global_every == 2
    assert _max_diff(ours, hf) < ATOL
    _greedy_equal(ours, hf)


def test_gemma_refusals_name_the_fix(transformers, tmp_path):
    hf = random_model(transformers, "gemma2", head_dim=24, num_hidden_layers=4)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, phrase in [
        (dict(model_type="gemma3"), "model_type 'gemma3' in .* is not supported \\(a multimodal Gemma 3 "
                                    "\\(Gemma3ForConditionalGeneration\\): save its text model"),
        (dict(layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"]),
         "makes layers \\[1, 2\\] global, which is no every-N-th-layer pattern"),
        (dict(hidden_activation="gelu"), "hidden_activation='gelu'; qkv's GeGLU uses gelu_pytorch_tanh"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 1000.0}), "RoPE scaling 'linear'"),
        (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "sets attn_logit_softcapping for Gemma 3, "
         "which transformers ignores and llama.cpp refuses; set it to null"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(CheckpointError, match=phrase):
            qkv.load(tmp_path)
