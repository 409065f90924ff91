"""qkv's own integer-dot kernels (qkv.native): every variant this CPU runs gives the same bits as the
scalar reference, within 8-bit activation rounding of the float64 product of the dequantized weights; a
row's output does not depend on its batch; the layers use them for decode-sized batches and fall back to
PyTorch's kernels when the library is absent or QKV_KERNELS=torch; a bad override is one clear error."""

import pytest
import torch

import qkv
from qkv import GPT, ConfigError, ModelConfig
from qkv import native
from qkv.quant import Int4Linear, Int8Linear, quantize_model

pytestmark = pytest.mark.skipif(native.library() is None, reason="qkv's kernels are not built (no C compiler)")
RUNS = native.supported()


def _layers(O, I, g, seed=0):
    torch.manual_seed(seed)
    w_OI = torch.randn(O, I) * 0.05
    w_OI[: O // 4] *= 8                                    # rows of another magnitude: scales differ per row
    return Int4Linear.from_float(w_OI, None, g), Int8Linear.from_float(w_OI)


def _products(x_NI, q4, q8):
    return (native.q4_matmul(x_NI, q4.weight, q4.scales.float(), q4.zeros.float(), q4.group_size),
            native.q8_matmul(x_NI, q8.weight, q8.scales.float()))


@pytest.mark.parametrize("O, I, g", [(192, 576, 32), (64, 1536, 64), (128, 256, 128), (64, 96, 32)])
def test_every_variant_equals_the_scalar_reference_and_the_float64_product(monkeypatch, O, I, g):
    """I = 576 and 96 leave blocks past the last whole group of eight: the tail path is tested too."""
    q4, q8 = _layers(O, I, g)
    x_NI = torch.randn(3, I) * torch.tensor([[1.0], [30.0], [0.01]])     # rows of different ranges
    monkeypatch.setenv(native.OVERRIDE, "scalar")
    want4, want8 = _products(x_NI, q4, q8)
    for kind, want, w_OI in (("4-bit", want4, q4.dequantize()), ("int8", want8, q8.dequantize())):
        exact_NO = x_NI.double() @ w_OI.double().t()
        # 8-bit activations: each block's x is off by at most half a step, max|x_block| / 254
        bound_NO = (x_NI.abs().amax(1, keepdim=True).double() / 254) * w_OI.double().abs().sum(1)
        assert ((want.double() - exact_NO).abs() <= bound_NO * 1.01 + 1e-6).all(), kind
    for variant in RUNS:
        monkeypatch.setenv(native.OVERRIDE, variant)
        got4, got8 = _products(x_NI, q4, q8)
        assert torch.equal(got4, want4) and torch.equal(got8, want8), variant


@pytest.mark.parametrize("variant", RUNS)
def test_a_row_gives_the_same_bits_alone_and_in_a_batch(monkeypatch, variant):
    """One row alone takes the SIMD variants' two-output-rows-at-a-time path, a batch the general one."""
    monkeypatch.setenv(native.OVERRIDE, variant)
    q4, q8 = _layers(128, 320, 32, seed=1)
    x_NI = torch.randn(5, 320)
    batch4, batch8 = _products(x_NI, q4, q8)
    for m in range(5):
        alone4, alone8 = _products(x_NI[m:m + 1], q4, q8)
        assert torch.equal(alone4[0], batch4[m]) and torch.equal(alone8[0], batch8[m])


def test_only_big_products_split_over_threads_and_a_split_keeps_the_bits(monkeypatch):
    q4, q8 = _layers(128, 320, 32, seed=3)
    x_NI = torch.randn(3, 320)
    monkeypatch.setenv(native.OVERRIDE, RUNS[-1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert native.product_threads(1536, 576) == 1                   # a layer of SmolLM2: the calling thread
        assert native.product_threads(49152, 576) == 2                  # its head: PyTorch's thread count
        torch.set_num_threads(1)
        alone4, alone8 = _products(x_NI, q4, q8)
        monkeypatch.setattr(native, "SPLIT_WEIGHTS", 0)                 # every product split over the pool
        for t in (2, 3):
            torch.set_num_threads(t)
            got4, got8 = _products(x_NI, q4, q8)
            assert torch.equal(got4, alone4) and torch.equal(got8, alone8), t
    finally:
        torch.set_num_threads(threads)


def test_layers_use_the_kernels_for_decode_batches_and_torch_beyond(monkeypatch):
    q4, q8 = _layers(128, 256, 32)
    calls = []
    monkeypatch.setattr(native, "q4_matmul", lambda *a: calls.append("q4") or torch.zeros(a[0].shape[0], 128))
    monkeypatch.setenv(native.OVERRIDE, RUNS[-1])
    q4(torch.randn(2, native.MAX_ROWS, 256)[:1])                     # 16 rows: the kernels
    assert calls == ["q4"]
    out = q4(torch.randn(native.MAX_ROWS + 1, 256))                   # a longer prompt: PyTorch's kernel
    assert calls == ["q4"] and out.abs().sum() > 0
    monkeypatch.setenv(native.OVERRIDE, "torch")
    q4(torch.randn(1, 256))
    assert calls == ["q4"]


def test_a_quantized_model_is_close_to_the_torch_path_and_greedy_agrees(monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=128, max_len=64, n_layers=2, d_model=128, n_heads=4, n_kv_heads=2,
                            norm="rmsnorm", mlp="swiglu", pos="rope", tie_embeddings=False)).eval()
    quantize_model(model, bits=4)
    ids_BL = torch.randint(0, 128, (1, 12))
    monkeypatch.setenv(native.OVERRIDE, "torch")
    want = model(ids_BL).logits
    monkeypatch.setenv(native.OVERRIDE, RUNS[-1])
    got = model(ids_BL).logits
    assert (got - want).abs().max() < 0.02 * want.abs().max()        # bf16 activations vs 8-bit blocks
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_without_the_library_the_layers_run_on_torch(monkeypatch):
    q4, q8 = _layers(64, 128, 32)
    x = torch.randn(1, 128)
    monkeypatch.setenv(native.OVERRIDE, "torch")
    want = q4(x), q8(x)
    monkeypatch.delenv(native.OVERRIDE)
    monkeypatch.setattr(native, "library", lambda: None)
    native._chosen.cache_clear()
    try:
        assert native.variant() == "torch" and native.supported() == ()
        assert torch.equal(q4(x), want[0]) and torch.equal(q8(x), want[1])
    finally:
        native._chosen.cache_clear()


@pytest.mark.parametrize("value, says", [("avx9", "is not a kernel variant"), ("neon", "is not a kernel variant")])
def test_a_bad_override_is_one_error(monkeypatch, value, says):
    monkeypatch.setenv(native.OVERRIDE, value)
    with pytest.raises(ConfigError, match=says):
        native.variant()


def test_the_default_follows_the_cpu_and_pytorchs_kind():
    """Unset, the best variant this CPU runs, but no better than ATEN_CPU_CAPABILITY's kind (the ISA tests
    rerun this file under weaker kinds: tests/test_cpu_kinds.py)."""
    cap = torch.backends.cpu.get_cpu_capability()
    want = {"DEFAULT": "scalar", "AVX2": "avx2"}.get(cap, RUNS[-1])
    assert native._chosen(None) == (want if want in RUNS else RUNS[-1])
    assert "scalar" in RUNS


def test_the_real_model_decodes_the_same_text_on_every_variant(monkeypatch):
    """SmolLM2's Q4_1 file, quantized in memory: every variant writes the same greedy reply."""
    from gguf_fixtures import smollm2_path
    model = qkv.load(smollm2_path(), quantized=True)
    replies = set()
    for variant in RUNS:
        monkeypatch.setenv(native.OVERRIDE, variant)
        replies.add(qkv.generate(model, model.tokenizer, "The capital of France is", max_new_tokens=12,
                                 temperature=0))
    assert len(replies) == 1 and "Paris" in replies.pop()


@pytest.mark.parametrize("variant", RUNS)
def test_float16_rows_convert_as_torch_does_in_every_variant(variant):
    """half.c (the fused step's float16 KV cache): every float16 bit pattern widens to torch's float32, and
    float32 values narrow to torch's .half() (nearest, ties to even): the halfway points between halves,
    subnormals, the overflow edge at 65520, infinities, signed zeros, NaN, and random bit patterns."""
    lib, v = native.library(), native.VARIANTS.index(variant)
    every_half = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    wide = torch.empty(every_half.numel(), dtype=torch.float32)
    lib.qkv_half_to_float(v, every_half.data_ptr(), wide.data_ptr(), wide.numel())
    want = every_half.float()
    assert torch.equal(wide.isnan(), want.isnan()) and torch.equal(wide[~want.isnan()], want[~want.isnan()])
    finite = every_half[every_half.isfinite()].float().sort().values
    halfway = (finite[1:].double() + finite[:-1].double()) / 2           # exactly representable in float32
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.996, 65520.0, 1e30, float("inf"), float("-inf"), 2.0 ** -25,
                          2.0 ** -24 * 1.5, 6.1e-5, float("nan")])
    randoms = torch.randint(-2 ** 31, 2 ** 31 - 1, (100_000,), generator=torch.Generator().manual_seed(5),
                            dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([halfway.float(), finite, edges, randoms]).contiguous()
    narrow = torch.empty(x.numel(), dtype=torch.float16)
    lib.qkv_float_to_half(v, x.data_ptr(), narrow.data_ptr(), x.numel())
    want = x.half()
    assert torch.equal(narrow.isnan(), want.isnan())
    assert torch.equal(narrow[~want.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16))
