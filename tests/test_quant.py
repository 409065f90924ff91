"""Weight-only quantization: the modules against their own dequantized weights and the float layer, the
module swap, and a quantized checkpoint that loads back bit for bit."""

import os

import pytest
import torch

import qkv
from qkv import GPT, ConfigError, ModelConfig
from qkv.quant import Int4Linear, Int8Linear, QuantEmbedding, apply_layout, check_bits, is_quantized, quantize_model


def _linear(O=192, K=128, bias=True):
    torch.manual_seed(0)
    layer = torch.nn.Linear(K, O, bias=bias)
    torch.nn.init.normal_(layer.weight, std=0.05)
    return layer


@pytest.mark.parametrize("kind", ["int8", "int4/32", "int4/64", "int4/128"])
def test_module_equals_its_dequantized_weights_and_is_near_the_float_layer(kind):
    layer = _linear()
    q = Int8Linear.from_float(layer.weight, layer.bias) if kind == "int8" else \
        Int4Linear.from_float(layer.weight, layer.bias, int(kind[5:]))
    x_NI = torch.randn(3, 5, 128)
    want = torch.nn.functional.linear(x_NI, q.dequantize(), layer.bias)
    # the kernels read x in bfloat16 (rounding 2^-9 relative): measured 3e-3 of the largest output
    assert (q(x_NI) - want).abs().max() < 1e-2 * want.abs().max()
    step = q.scales.float().max() if kind == "int8" else q.scales.float().max()
    assert (q.dequantize() - layer.weight).abs().max() <= 0.5 * step * 1.01    # at most half a step
    rel = (q(x_NI) - layer(x_NI)).norm() / layer(x_NI).norm()
    assert rel < (0.02 if kind == "int8" else 0.15)                   # measured 0.7% / 7.5-9.6% (g 32-128)


def test_state_dict_is_portable_and_reloads_exactly():
    layer = _linear()
    q = Int4Linear.from_float(layer.weight, layer.bias, 32)
    sd = q.state_dict()
    assert sd["weight"].dtype == torch.uint8 and sd["weight"].shape == (192, 64)
    assert sd["scales"].shape == sd["zeros"].shape == (192, 4)
    fresh = Int4Linear(128, 192, 32, bias=True)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 128)
    assert torch.equal(fresh(x), q(x))
    low, high = sd["weight"] & 15, sd["weight"] >> 4                  # column 2j low nibble, 2j + 1 high
    assert torch.equal(q.codes()[:, 0::2], low.int()) and torch.equal(q.codes()[:, 1::2], high.int())


def _gpt(tie=True, bias=False):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=96, max_len=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                            norm="rmsnorm", mlp="swiglu", pos="rope", bias=bias, tie_embeddings=tie)).eval()
    with torch.no_grad():                       # GPT's init zeroes the biases: a dropped one would not show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.5)
    return model


@pytest.mark.parametrize("bits,tie,bias", [(8, True, False), (4, True, False), (8, False, True), (4, False, True)])
def test_swap_save_and_load_round_trip(tmp_path, bits, tie, bias):
    model = _gpt(tie, bias)
    ids_BL = torch.randint(0, 96, (2, 20))
    want = model(ids_BL).logits
    layout = quantize_model(model, bits)
    assert is_quantized(model) and not any(type(m) is torch.nn.Linear for m in model.modules())
    assert isinstance(model.tok, QuantEmbedding) == tie            # a tied head is int8: the embedding reads it
    assert layout["head"] == "int8"                                 # (untied: 96 rows do not fit 4-bit's 64-row blocks)
    if bits == 4:
        assert layout["blocks.0.mlp.up"] == "int4/32"
    got = model(ids_BL).logits
    assert (got - want).norm() / want.norm() < (0.02 if bits == 8 else 0.15)
    qkv.save(model, tmp_path / "q", None)
    loaded = qkv.load(tmp_path / "q")
    assert torch.equal(loaded(ids_BL).logits, got)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(loaded, 8)


def test_quantized_generation_and_cache(tmp_path):
    model = _gpt()
    quantize_model(model, 4)
    prompt = torch.randint(0, 96, (1, 5))
    cfg = dict(max_new_tokens=10, temperature=0)
    from qkv.generate import GenerationConfig, generate_ids
    assert torch.equal(generate_ids(model, prompt, GenerationConfig(**cfg)),
                       generate_ids(model, prompt, GenerationConfig(**cfg, use_cache=False)))
    assert model.new_caches(1, 8)[0].k_BGMD.dtype == torch.float32


def test_bad_bits_group_and_layouts():
    with pytest.raises(ConfigError, match="--bits 3 is not supported"):
        quantize_model(_gpt(), 3)
    with pytest.raises(ConfigError, match="--group-size 48"):
        quantize_model(_gpt(), 4, 48)
    with pytest.raises(ConfigError, match="not a Linear"):
        apply_layout(_gpt(), {"blocks.0.norm1": "int8"})
    with pytest.raises(ConfigError, match="unknown quantization 'int3'"):
        apply_layout(_gpt(), {"blocks.0.mlp.up": "int3"})


def test_any_module_with_linears_and_the_defaults():
    """A model without ``cfg`` (or with a ``head`` of its own) is swapped like any other; bits 8 and group 32 by
    default, and the group size asked for is the one used."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    assert quantize_model(plain) == {"0": "int8", "2": "int8"}
    headed = torch.nn.Module()
    headed.body, headed.head = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    assert quantize_model(headed, 4) == {"body": "int4/32", "head": "int4/32"}
    assert quantize_model(_gpt(tie=False), 4, 64)["blocks.0.mlp.up"] == "int4/64"
    check_bits(8)
    check_bits(4, 128)


def test_layout_errors_name_the_entry():
    for name, kind in [("blocks.0.nothing", "int8"), ("blocks.0.mlp.up", "int3/32"), ("blocks.0.mlp.up", "int4/x2")]:
        with pytest.raises(ConfigError, match=f"{name}|{kind}"):
            apply_layout(_gpt(), {name: kind})
    model = _gpt()
    quantize_model(model, 8)
    with pytest.raises(ConfigError,
                       match="^this model is already quantized; quantize the float checkpoint it came from$"):
        quantize_model(model, 4)


# from the mutation survivors of quant/linear.py (bench/mutation.md)
def test_defaults_shapes_and_the_size_message():
    from qkv.quant.linear import quantize_linear
    layer = _linear(bias=False)
    assert Int4Linear(128, 64).group_size == 32 and Int4Linear(128, 64).bias is None
    assert Int8Linear(128, 64).bias is None
    assert Int4Linear.from_float(layer.weight).group_size == 32
    assert quantize_linear(layer, 4).group_size == 32
    for q in (Int4Linear.from_float(layer.weight), Int8Linear.from_float(layer.weight)):
        assert q.bias is None
    with pytest.raises(ConfigError, match=r"in_features \(100\) divisible by the group size \(32\) and "
                                          r"out_features \(64\) by 64"):
        Int4Linear(100, 64)
    fresh = Int4Linear(128, 192)
    fresh.load_state_dict({k: v for k, v in Int4Linear.from_float(layer.weight).state_dict().items()})
    assert fresh.weight.dtype == torch.uint8


@pytest.mark.parametrize("kernels", ["torch", None])
def test_both_kernel_paths_and_their_caches(monkeypatch, kernels):
    """PyTorch's packed kernels (QKV_KERNELS=torch) and qkv's own (the default where built): both near the
    dequantized product, their caches not in the state dict, and rebuilt after a load."""
    if kernels is None:
        monkeypatch.delenv("QKV_KERNELS", raising=False)
    else:
        monkeypatch.setenv("QKV_KERNELS", kernels)
    layer = _linear()
    x_NI = torch.randn(3, 128)
    for q in (Int8Linear.from_float(layer.weight, layer.bias), Int4Linear.from_float(layer.weight, layer.bias)):
        want = torch.nn.functional.linear(x_NI, q.dequantize(), layer.bias)
        got = q(x_NI)
        assert (got - want).abs().max() < 1e-2 * want.abs().max()
        assert set(q.state_dict()) == ({"weight", "scales", "bias"} if isinstance(q, Int8Linear)
                                       else {"weight", "scales", "zeros", "bias"})
        other = type(q).from_float(-layer.weight, layer.bias)       # new codes: the caches must not be reused
        q.load_state_dict(other.state_dict())
        assert torch.equal(q(x_NI), other(x_NI))
        if kernels == "torch":      # the packed kernels read x in bfloat16: x rounded first gives the same bits
            assert torch.equal(q(x_NI), q(x_NI.bfloat16().float()))


def test_int4_codes_are_picked_for_the_stored_scales_and_zeros():
    """Each group's range sets its scale (bfloat16), and the codes are the nearest for the scales and
    zeros as stored; weights far from 0 make the rounding of the zeros move codes past 0 and 15."""
    torch.manual_seed(1)
    w_OI = 10 + 0.01 * torch.randn(64, 128)
    q = Int4Linear.from_float(w_OI, group_size=32)
    w_OGg = w_OI.view(64, 4, 32)
    lo, hi = w_OGg.amin(-1), w_OGg.amax(-1)
    assert torch.equal(q.scales, ((hi - lo) / 15).to(torch.bfloat16))
    assert torch.equal(q.zeros, (lo + 8 * q.scales.float()).to(torch.bfloat16))
    s, z = q.scales.float()[..., None], q.zeros.float()[..., None]
    raw = ((w_OGg - z) / s + 8).round()
    assert (raw < 0).any() and (raw > 15).any()                   # the clamp is needed here
    assert torch.equal(q.codes(), raw.clamp(0, 15).view(64, 128).int())


@pytest.mark.parametrize("make", [lambda w, b: Int4Linear.from_float(w, b, group_size=32), Int8Linear.from_float])
def test_a_device_without_packed_kernels_takes_the_plain_product(make):
    """Off the CPU (CUDA; here the meta device, which has no packed kernels either) a quantized layer computes
    x @ dequantize().T + bias: the shape, dtype and device of that product, from a mutation survivor."""
    torch.manual_seed(0)
    layer = make(torch.randn(64, 64), torch.randn(64))
    y = layer.to("meta")(torch.randn(3, 5, 64, device="meta"))
    assert (y.shape, y.dtype, y.device.type) == ((3, 5, 64), torch.float32, "meta")


@pytest.mark.parametrize("in_features", [8, 24, 40, 56])
def test_int8_layers_of_any_width_run_under_every_cpu_kind(in_features, tmp_path):
    """PyTorch's AVX-512 int8 kernel crashes (SIGSEGV) on rows whose length is not a multiple of 16: such a
    layer (and `qkv eval --bits 8` on a model with d_ff 40) must compute, and alike under every kind."""
    import subprocess
    import sys
    script = ("import sys, torch\nfrom qkv.quant.linear import Int8Linear\ntorch.manual_seed(0)\n"
              f"layer = Int8Linear.from_float(torch.randn(16, {in_features}), torch.randn(16))\n"
              f"x = torch.randn(4, {in_features})\n"
              "torch.save((layer(x), x @ layer.dequantize().t() + layer.bias), sys.argv[1])\n")
    kinds = {"DEFAULT": ["default"], "AVX2": ["default", "avx2"], "AVX512": ["default", "avx2", "avx512"]}
    outputs = []
    for kind in kinds[torch.backends.cpu.get_cpu_capability()]:
        for kernels in ("torch", "default"):
            env = {**os.environ, "ATEN_CPU_CAPABILITY": kind}
            env.pop("QKV_KERNELS", None) if kernels == "default" else env.update(QKV_KERNELS=kernels)
            out = tmp_path / f"{kind}-{kernels}.pt"
            done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{kind}/{kernels}: exit {done.returncode}\n{done.stderr[-2000:]}"
            y, plain = torch.load(out)
            assert torch.allclose(y, plain, atol=1e-4), (kind, kernels)
            outputs.append(y)
    assert all(torch.allclose(outputs[0], y, atol=1e-5) for y in outputs)     # float matmuls: rounding apart
