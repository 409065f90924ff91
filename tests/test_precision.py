"""--precision auto (qkv.train.precision): bf16 exactly where the hardware computes it natively, decided once,
printed first and stored; bf16 stays close to fp32 on a tiny model; weights and AdamW moments stay fp32."""

import json
import re

import pytest
import torch

from qkv.config import resolve
from qkv.train import precision as precision_mod
from qkv.train.precision import choose_precision
from qkv.train.trainer import Trainer

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8


def cpu_with(monkeypatch, avx512_bf16: bool, amx: bool = False):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(precision_mod, "_cpu_flags", lambda: set())


@pytest.mark.parametrize("avx512_bf16, amx, chosen", [(True, False, "bf16"), (False, True, "bf16"),
                                                      (False, False, "fp32")])
def test_auto_follows_the_cpu(monkeypatch, avx512_bf16, amx, chosen):
    cpu_with(monkeypatch, avx512_bf16, amx)
    p = choose_precision("auto", "cpu")
    assert p.chosen == chosen and p.warning is None
    assert p.describe().startswith(f"precision {chosen} (auto: this CPU ")


def test_cpuinfo_flags_are_the_fallback_probe(monkeypatch):
    cpu_with(monkeypatch, False)
    monkeypatch.setattr(precision_mod, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert choose_precision("auto", "cpu").chosen == "bf16"


def test_forced_bf16_on_emulated_hardware_warns_and_still_runs(monkeypatch):
    cpu_with(monkeypatch, False)
    p = choose_precision("bf16", "cpu")
    assert p.chosen == "bf16" and "emulated" in p.warning and "slower than fp32" in p.warning
    assert choose_precision("fp32", "cpu").chosen == "fp32" and choose_precision("fp32", "cpu").warning is None


def test_this_machine_is_probed_by_torch_and_cpuinfo_alike():
    """The two probes agree here (whichever kind of CPU runs the tests)."""
    flags = precision_mod._cpu_flags()
    if flags:
        assert torch.cpu._is_avx512_bf16_supported() == ("avx512_bf16" in flags)


def test_the_decision_is_the_first_line_and_in_config_json(tmp_path, corpus, monkeypatch, capsys):
    cpu_with(monkeypatch, True)
    lines = []
    cfgs = resolve("tiny", train=dict(data=str(corpus), out_dir=str(tmp_path / "run"), precision="auto",
                                      max_iters=2, eval_interval=2))
    Trainer(*cfgs, log=lines.append).fit()
    assert re.fullmatch(r"precision bf16 \(auto: this CPU has AVX-512 BF16\); device cpu; "
                        r"\d+ threads? \(the cores other processes leave idle\)", lines[0])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["precision"] == {"requested": "auto", "chosen": "bf16", "hardware": "this CPU has AVX-512 BF16"}
    assert config["train"]["precision"] == "auto"
    from qkv.cli import main
    assert main(["info", str(tmp_path / "run")]) == 0                 # qkv info says what the run computed in
    assert "batch 4, bf16 (auto), seed 1337" in capsys.readouterr().out


def test_bf16_loss_curve_stays_near_fp32_with_fp32_weights_and_moments(tmp_path, corpus):
    curves = {}
    for precision in ("fp32", "bf16"):
        losses = []
        cfgs = resolve("tiny", model=dict(max_len=16, n_layers=2, d_model=32, n_heads=4),
                       train=dict(data=str(corpus), out_dir=str(tmp_path / precision), precision=precision,
                                  max_iters=40, eval_interval=40, lr=3e-3))
        trainer = Trainer(*cfgs, log=lambda *a: None)
        trainer.fit(on_step=lambda step, loss: losses.append(loss))
        curves[precision] = losses
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        moments = [v for s in trainer.optimizer.state.values() for k, v in s.items() if k.startswith("exp_avg")]
        assert moments and all(m.dtype == torch.float32 for m in moments)
    gaps = [abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"])]
    assert max(gaps) < 0.05                                       # bf16 keeps ~3 significant digits
    assert curves["bf16"][-1] < curves["bf16"][0] - 0.5           # and both learn
    assert gaps != [0.0] * len(gaps)                              # bf16 really ran: the curves are not identical


def test_the_cli_warns_once_when_bf16_is_forced_on_emulated_hardware(tmp_path, corpus, monkeypatch, capsys):
    from qkv.cli import main
    cpu_with(monkeypatch, False)
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out-dir", str(tmp_path / "run"),
                 "--precision", "bf16", "--max-iters", "2", "--eval-interval", "2"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "emulated" in warnings[0] and "15-35x on AVX2" in warnings[0]
    assert captured.out.splitlines()[0].startswith("precision bf16 (forced; this CPU has no AVX-512 BF16 or AMX")
