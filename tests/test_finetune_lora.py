"""`qkv finetune --lora` on the trainer: only the adapters and the new head change, the run's adapter is
PEFT's files, a LoRA run resumes exactly (also after a Ctrl-C), and qkv.load reads the run and the adapter.
The tiny encoder and task files are conftest's ``task_files``; the LoRA has non-default rank, alpha, targets."""

import json
import os
import signal

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.config import resolve
from qkv.train.finetune import FinetuneConfig, build_finetune_task, new_model, resume_finetune
from qkv.train.interrupt import TrainingInterrupted
from qkv.train.trainer import Trainer

LORA = dict(lora=True, lora_rank=3, lora_alpha=5.0, lora_dropout=0.1,
            lora_targets=("query", "value", "intermediate.dense"))


def lora_trainer(task_files, out, **train):
    train_file, eval_file = task_files["sst2"]
    fcfg = FinetuneConfig(task="sst2", data=str(train_file), eval_data=str(eval_file), init=str(task_files["encoder"]),
                          **LORA)
    _, train_cfg = resolve("bert-finetune", train=dict(max_iters=8, eval_interval=4, eval_iters=1, batch_size=4,
                                                      progress=False, lr=1e-2, out_dir=str(out), **train))
    parts, _ = build_finetune_task(fcfg, train_cfg, new_model(fcfg, None, train_cfg))
    return Trainer(parts.model_cfg, train_cfg, parts=parts, log=lambda *a: None)


def test_lora_trains_adapters_and_head_only(task_files, tmp_path):
    base = qkv.load(task_files["encoder"]).state_dict()
    trainer = lora_trainer(task_files, tmp_path / "run")
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n or n.startswith("head.") for n in trainable)
    assert any(".attn.wkv.lora." in n for n in trainable) and not any(".attn.wo.lora." in n for n in trainable)
    trainer.fit()
    after = qkv.load(tmp_path / "run").state_dict()
    for name, tensor in base.items():
        if name in after and not name.startswith("head."):
            assert torch.equal(after[name], tensor), name                  # the base is frozen
    lora_B = [t for n, t in after.items() if ".lora.B." in n]
    assert lora_B and all(t.abs().sum() > 0 for t in lora_B)              # the adapters moved from zero


def test_resume_after_ctrl_c_equals_uninterrupted(task_files, tmp_path):
    lora_trainer(task_files, tmp_path / "straight").fit()
    cut = lora_trainer(task_files, tmp_path / "cut")

    def ctrl_c(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        cut.fit(on_step=ctrl_c)
    assert 3 <= stopped.value.step < 8                  # the step running when Ctrl-C came is finished, saved
    resumed = resume_finetune(tmp_path / "cut", log=lambda *a: None)
    assert resumed.step == stopped.value.step
    resumed.fit()
    a, b = qkv.load(tmp_path / "straight").state_dict(), qkv.load(tmp_path / "cut").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_lora_run_writes_a_peft_adapter_that_loads_on_the_base(task_files, tmp_path, capsys):
    train_file, eval_file = task_files["sst2"]
    run = tmp_path / "run"
    assert main(["finetune", "--task", "sst2", "--init", str(task_files["encoder"]), "--data", str(train_file),
                 "--eval-data", str(eval_file), "--lora", "--lora-rank", "2", "--lora-alpha", "3",
                 "--lora-targets", "key,intermediate.dense", "--max-iters", "4", "--eval-interval", "4",
                 "--eval-iters", "1", "--batch-size", "4", "--lr", "1e-2", "--out-dir", str(run)]) == 0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (2, 3.0, "LORA")
    tuned = qkv.load(run)
    on_base = qkv.load(task_files["encoder"], adapter=run / "adapter")
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.no_grad():
        torch.testing.assert_close(on_base(ids).hidden, tuned.encode(ids)[0])  # the trunk: base + adapter
        assert not torch.allclose(on_base(ids).hidden, qkv.load(task_files["encoder"])(ids).hidden)
    merged = tmp_path / "merged"
    assert main(["merge-adapter", str(run), str(merged)]) == 0
    plain = qkv.load(merged)
    assert not any(".lora." in k for k in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, tuned(ids).logits, atol=1e-5, rtol=1e-5)
    assert main(["evaluate", str(merged), "--data", str(eval_file), "--out-dir", str(tmp_path / "ev")]) == 0


def test_for_inference_keeps_the_adapters_effect(task_files, tmp_path):
    """The inference swaps (oneDNN Linears, the fused decode step) replace or bypass Linears: adapters on float
    layers are folded in first, so `qkv predict RUN` computes what the run trained."""
    import copy
    from qkv.adapters.lora import adapted
    lora_trainer(task_files, tmp_path / "run").fit()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 5, 3, 0]])
    mask = ids != 0
    run = qkv.load(tmp_path / "run").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, module in adapted(run):                       # a delta large enough to see in the logits
            for b in module.lora.B.values():
                b.copy_(torch.randn(b.shape, generator=g))
        hooked = run(ids, key_mask_BL=mask).hidden
        plain = copy.deepcopy(run)
        for _, module in adapted(plain):
            module.lora.scale = 0.0
        assert (plain(ids, key_mask_BL=mask).hidden - hooked).abs().max() > 1e-2
        ready = qkv.for_inference(run)
        assert not adapted(ready)
        torch.testing.assert_close(ready(ids, key_mask_BL=mask).hidden, hooked, atol=1e-4, rtol=1e-4)
