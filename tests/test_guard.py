"""The NaN guard (qkv.train.guard): a non-finite step changes nothing and is counted; too many in a row stop
the run with one line naming the step and the fixes, and the last good checkpoint stays loadable."""

import json

import pytest
import torch

from qkv import load
from qkv.cli import main
from qkv.config import resolve
from qkv.train.guard import TrainingDiverged
from qkv.train.trainer import Trainer

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8


def poison(trainer, calls: set[int]):
    """Make the loss NaN on the given forward calls (counted from 1) of the training loop."""
    count = [0]

    def hook(module, args, kwargs, output):
        if module.training:
            count[0] += 1
            if count[0] in calls:
                output.loss = output.loss * float("nan")
        return output
    trainer.model.register_forward_hook(hook, with_kwargs=True)


def run(tmp_path, name, **train):
    options = dict(data=str(tmp_path / "corpus.txt"), out_dir=str(tmp_path / name), max_iters=6, eval_interval=3)
    return Trainer(*resolve("tiny", train=options | train), log=lambda *a: None)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, corpus):
    clean, poisoned = run(tmp_path, "clean"), run(tmp_path, "poisoned")
    poison(poisoned, {3})                       # the 3rd batch: step 3 is retried on the 4th batch
    clean.fit()
    poisoned.fit()
    assert poisoned.step == 6 and poisoned.guard.skipped == 1
    rows = [json.loads(line) for line in (tmp_path / "poisoned" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 1]
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())
    assert poisoned.tokens == 6 * 4 * 32                          # the skipped batch's tokens are not counted
    # the retried step trained on the next batch of the stream, so the run differs from the clean one
    clean_rows = [json.loads(line) for line in (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] != clean_rows[-1]["val_loss"] and clean_rows[-1]["skipped_steps"] == 0


def test_weights_and_moments_are_untouched_by_a_skipped_step(tmp_path, corpus):
    trainer = run(tmp_path, "run", max_iters=3)
    trainer.fit(stop_at_step=2)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in trainer.optimizer.state.items()}
    poison(trainer, {1})
    trainer.guard.max_in_a_row = 1                      # stop at the first bad step, right after the check
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())
    for p, s in trainer.optimizer.state.items():
        assert all(torch.equal(moments[id(p)][k], v) for k, v in s.items())


def test_too_many_in_a_row_stop_with_one_line_and_the_checkpoint_loads(tmp_path, corpus):
    trainer = run(tmp_path, "run", max_iters=20, max_bad_steps=3)
    poison(trainer, set(range(5, 100)))                 # steps 1-4 train; every batch after that is NaN
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit()
    message = str(e.value)
    assert "\n" not in message and message.startswith("step 5: loss nan")
    assert "3 non-finite steps in a row" in message and "(step 3)" in message
    assert "--lr" in message and "--warmup-iters" in message
    assert trainer.step == 4 and trainer.guard.skipped == 3
    model = load(tmp_path / "run")                      # saved at step 3 (the eval interval), whole
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3


def test_the_cli_prints_the_stop_as_one_line(tmp_path, corpus, capsys, monkeypatch):
    """`qkv train` with a learning rate that overflows: one error line naming the fixes, status 2."""
    code = main(["train", "--preset", "tiny", "--data", str(corpus), "--out-dir", str(tmp_path / "run"),
                 "--lr", "1e38", "--warmup-iters", "0", "--max-iters", "30", "--max-bad-steps", "2",
                 "--precision", "bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len([line for line in err if "error" in line]) == 1
    assert "non-finite steps in a row" in err[-1] and "--precision fp32" in err[-1]
