"""One behaviour on every CPU: PyTorch picks its kernels (and with them the int4 packing) by the CPU's
features, and ``ATEN_CPU_CAPABILITY=default|avx2|avx512`` makes a process run another kind's kernels. So an
AVX-512 machine tests the AVX2 and scalar paths here, and an AVX2 machine the scalar one:

- a 4-bit checkpoint written under any kind holds the same bytes and reloads under any kind with the logits
  it had in memory (the kernels' private packing never reaches a file);
- the tests of every ISA-dependent path pass under each kind below this machine's own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv import GPT, ModelConfig

KINDS = ("default", "avx2", "avx512")                       # ATEN_CPU_CAPABILITY's values, weakest first
HERE = {"DEFAULT": "default", "AVX2": "avx2", "AVX512": "avx512"}[torch.backends.cpu.get_cpu_capability()]
RUNNABLE = KINDS[: KINDS.index(HERE) + 1]                   # a process may run this CPU's kind or a weaker one

# Where a CPU feature changes which kernel runs: quantized matmuls and their packing (int4, int8, GGUF
# blocks, the real Q4_1 model, qkv's own kernels: their default follows the kind), oneDNN's fused Linear,
# bf16 autocast's choice, the decode weight layout.
ISA_DEPENDENT = ["tests/test_quant.py", "tests/test_native.py", "tests/test_gguf.py", "tests/test_onednn.py",
                 "tests/test_precision.py",
                 "tests/test_generate.py::test_decode_layout_changes_strides_not_results",
                 "tests/test_cli_chat.py::test_quantize_writes_a_checkpoint_that_loads_quantized",
                 "tests/test_smollm2.py::test_quantized_modules_match_the_dequantized_weights"]
ROOT = Path(__file__).resolve().parents[1]

WRITE = """
import json, sys, torch, qkv
from qkv.quant import quantize_model
model = qkv.load(sys.argv[1])
quantize_model(model, bits=4, group_size=64)
ids = torch.tensor(json.loads(sys.argv[3]))
torch.save(model(ids).logits, sys.argv[2] + ".logits.pt")
qkv.save(model, sys.argv[2], None)
"""
READ = """
import json, sys, torch, qkv
kind, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
for path in sys.argv[3:]:
    torch.save(qkv.load(path)(ids).logits, f"{path}.read-{kind}.pt")
"""


def _python(kind: str, script: str, *args: str) -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kind}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"under ATEN_CPU_CAPABILITY={kind}:\n{done.stderr[-3000:]}"


def test_a_4bit_checkpoint_is_the_same_file_and_the_same_logits_under_every_kind(tmp_path):
    torch.manual_seed(0)
    float_model = GPT(ModelConfig(vocab_size=128, max_len=32, n_layers=2, d_model=128, n_heads=4, n_kv_heads=2,
                                  norm="rmsnorm", mlp="swiglu", pos="rope", bias=True, tie_embeddings=False))
    with torch.no_grad():                                   # biases at init are zeros: give them values
        for name, p in float_model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    qkv.save(float_model, tmp_path / "float", None)
    ids = json.dumps(torch.randint(0, 128, (2, 24)).tolist())
    written = {kind: tmp_path / f"q4-{kind}" for kind in RUNNABLE}
    for kind, path in written.items():
        _python(kind, WRITE, str(tmp_path / "float"), str(path), ids)
    reference = load_file(written[HERE] / "model.safetensors")
    assert any(t.dtype == torch.uint8 for t in reference.values())            # 4-bit codes were written
    for kind, path in written.items():
        tensors = load_file(path / "model.safetensors")
        assert tensors.keys() == reference.keys()
        for name, t in tensors.items():
            assert torch.equal(t, reference[name]), f"{name} written under {kind} differs from {HERE}'s"
    for kind in RUNNABLE:
        _python(kind, READ, kind, ids, *map(str, written.values()))
    for writer, path in written.items():
        in_memory = torch.load(str(path) + ".logits.pt")
        for reader in RUNNABLE:
            got = torch.load(str(path) + f".read-{reader}.pt")
            if reader == writer:                            # the same kernels on the same codes: bit for bit
                assert torch.equal(got, in_memory), f"written and read under {writer}"
            else:                                           # other kernels sum in another order
                err = (got - in_memory).abs().max() / in_memory.abs().max()
                assert err < 1e-2, f"written under {writer}, read under {reader}: {err:.2%} off"


@pytest.mark.parametrize("kind", [k for k in RUNNABLE if k != HERE])
def test_the_isa_dependent_tests_pass_under_a_weaker_kind(kind):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kind}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ISA_DEPENDENT],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"under ATEN_CPU_CAPABILITY={kind}:\n{done.stdout[-6000:]}"
