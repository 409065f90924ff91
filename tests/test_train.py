import json
import math
import time

import pytest
import torch

from qkv import load
from qkv.config import resolve
from qkv.errors import CheckpointError, ConfigError, DataError
from qkv.train import trainer as trainer_mod
from qkv.train.optim import lr_at
from qkv.train.trainer import Trainer

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8


RUN_MODEL = dict(dropout=0.1)                          # conftest's run_configs: the tiny model, dropout on
RUN = dict(max_iters=12, eval_interval=4)


def test_metrics_rows_and_loss_goes_down(tmp_path, run_configs, corpus):
    trainer = Trainer(*run_configs("run", data=str(corpus), max_iters=40, eval_interval=20, lr=3e-3))
    start = trainer.evaluate()
    assert abs(start - math.log(trainer.model_cfg.vocab_size)) < 0.3          # an untrained model guesses
    last = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40] and rows[-1] == last
    for r in rows:
        assert {"step", "elapsed_s", "tokens", "train_loss", "val_loss", "lr"} <= set(r)
    assert rows[-1]["tokens"] == 40 * 4 * 16
    assert start - 0.5 > rows[0]["val_loss"] > rows[1]["val_loss"]           # down, and still going down
    assert rows[0]["train_loss"] > rows[1]["train_loss"]
    assert rows[0]["elapsed_s"] < rows[1]["elapsed_s"] and rows[0]["lr"] > rows[1]["lr"]   # cosine decay


def test_max_time_stops_the_run(tmp_path, run_configs, corpus):
    trainer = Trainer(*run_configs("timed", data=str(corpus), max_iters=10**6, max_time=1.0))
    last = trainer.fit()
    assert last["step"] < 10**6 and 0.5 < trainer.elapsed <= 1.0 + 0.25   # stopped on time
    assert last["step"] == trainer.step                   # and the last row is the final state


def test_max_time_keeps_the_final_evaluation_within_the_budget(tmp_path, run_configs, corpus, monkeypatch):
    """Evaluations of 0.4 s every 5 steps: training stops while the last one measured still fits, so the
    final evaluation and save end within max_time (they used to start at max_time and overrun by 0.4 s)."""
    trainer = Trainer(*run_configs("timed", data=str(corpus), max_iters=10**6, max_time=2.0, eval_interval=5))
    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda: time.sleep(0.4) or evaluate())
    trainer.fit()
    assert trainer.eval_s >= 0.4
    assert 2.0 - 0.4 - 0.3 < trainer.elapsed <= 2.0 + 0.1      # the slack: one training step
    state = torch.load(tmp_path / "timed" / "trainer_state.pt", weights_only=True)
    assert state["eval_s"] == trainer.eval_s                      # a resume keeps it in hand too


def test_failed_save_leaves_previous_checkpoint(tmp_path, run_configs, corpus, monkeypatch):
    trainer = Trainer(*run_configs("run", data=str(corpus)))
    trainer.fit(stop_at_step=4)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):                          # dies after writing part of the new checkpoint
        (args[0] / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer_mod, "write_model_files", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert load(tmp_path / "run") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "run"]   # no temp dir left behind


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0.0, 0, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(0.0, 9, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(0.0, 10, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(0.5, 50, 1.0, 10, 0.1) == pytest.approx(0.55)
    assert lr_at(1.0, 99, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_bad_data_is_named(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    with pytest.raises(DataError, match="shorter than one block"):
        Trainer(*resolve("tiny", train=dict(data=str(short))))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        Trainer(*resolve("tiny", train=dict(data=str(latin))))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        Trainer(*resolve("tiny", train=dict(data=str(empty))))


def test_resume_needs_a_run(tmp_path, run_configs, corpus):
    Trainer(*run_configs("run", data=str(corpus))).fit()
    (tmp_path / "run" / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="not a resumable run"):
        Trainer.resume(tmp_path / "run")


def test_vocab_size_smaller_than_tokenizer_is_rejected(tmp_path, corpus):
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        Trainer(*resolve("tiny", model=dict(vocab_size=5), train=dict(data=str(corpus))))


def test_bpe_tokenizer_run(tmp_path, run_configs, corpus):
    last = Trainer(*run_configs("bpe", data=str(corpus), tokenizer="bpe", bpe_vocab_size=300)).fit()
    model = load(tmp_path / "bpe")
    assert model.tokenizer.kind == "bpe" and model.cfg.vocab_size == 300 and last["val_loss"] > 0


def test_tensorboard_writes_event_files(tmp_path, run_configs, corpus):
    pytest.importorskip("tensorboard")
    Trainer(*run_configs("tb", data=str(corpus), tensorboard=True, max_iters=4, eval_interval=2)).fit()
    events = list((tmp_path / "tb-tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_bf16_mixed_precision_trains_with_fp32_weights(tmp_path, run_configs, corpus, monkeypatch):
    """precision=bf16 runs the forward under autocast (its matmuls in bf16) and keeps fp32 parameters."""
    seen, linear = [], torch.nn.functional.linear

    def recording_linear(x, *args):
        out = linear(x, *args)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    trainer = Trainer(*run_configs("bf16", data=str(corpus), precision="bf16", max_iters=30, eval_interval=30, lr=3e-3))
    last = trainer.fit()
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert last["val_loss"] < 3.0                                           # it learns (log(vocab) ~ 3.3)
    with pytest.raises(ConfigError, match="precision"):
        resolve("tiny", train={"precision": "fp16"})
