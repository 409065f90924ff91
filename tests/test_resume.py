"""The resume contract, both halves (README, "A run directory is a checkpoint"):

- an iteration budget resumes bit-exact: interrupted + resumed ends with the weights and metrics of an
  uninterrupted run (here for bf16 mixed precision and the translation task; the GPT, MLM, span-corruption
  and fine-tuning runs are held to it in their own test files);
- a time budget (``max_time``) resumes from the saved elapsed time: the learning-rate schedule, which follows
  wall time, continues where it stopped instead of starting over. Wall time differs between runs, so the test
  gives the trainer a clock that advances by a fixed amount per reading: with the same clock readings an
  interrupted run then ends exactly as an uninterrupted one, which it could not if the elapsed time were lost.
"""

import json
import time

import pytest
import torch

from qkv import load
from qkv.config import resolve
from qkv.train import trainer as trainer_mod
from qkv.train.optim import lr_at
from qkv.train.trainer import Trainer

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8


def tiny(tmp_path, name, model=None, **train):
    model = dict(max_len=16, n_layers=2, d_model=32, n_heads=4, dropout=0.1) | (model or {})  # dropout: RNG too
    options = dict(out_dir=str(tmp_path / name), max_iters=8, eval_interval=2, eval_iters=2, warmup_iters=2)
    return resolve("tiny", model=model, train={**options, **train})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b, stopped_at: int, keys=("step", "val_loss", "lr")):
    """Same weights, bit for bit, and the same evaluations (the interrupted run adds one at its stop; its
    train_loss, a mean since the previous evaluation, differs at the next one)."""
    sa, sb = load(a).state_dict(), load(b).state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "the weights differ"
    rows_a = [[r[k] for k in keys] for r in rows(a)]
    rows_b = [[r[k] for k in keys] for r in rows(b) if r["step"] != stopped_at or r["step"] in
              [r["step"] for r in rows(a)]]
    assert rows_a == rows_b


def interrupted_then_resumed(tmp_path, cfgs, stop_at: int, before_resume=lambda: None):
    Trainer(*cfgs).fit(stop_at_step=stop_at)
    before_resume()
    resumed = Trainer.resume(tmp_path / "cut", log=lambda *a: None)
    assert resumed.step == stop_at
    resumed.fit()


# ---- iteration budget: bit-exact -------------------------------------------------------------------------
def test_bf16_run_resumes_bit_exact(tmp_path, corpus):
    Trainer(*tiny(tmp_path, "straight", data=str(corpus), precision="bf16")).fit()
    interrupted_then_resumed(tmp_path, tiny(tmp_path, "cut", data=str(corpus), precision="bf16"), stop_at=3)
    assert_same_run(tmp_path / "straight", tmp_path / "cut", stopped_at=3)
    fp32 = tmp_path / "fp32"
    Trainer(*tiny(tmp_path, "fp32", data=str(corpus))).fit()
    assert rows(fp32)[-1]["val_loss"] != rows(tmp_path / "cut")[-1]["val_loss"]   # bf16 really ran


@pytest.mark.parametrize("joint", [True, False], ids=["joint-vocab", "separate-vocabs"])
def test_translation_run_resumes_bit_exact(tmp_path, parallel, joint):
    model = dict(max_len=32, n_encoder_layers=2)
    train = dict(task="translate", data=str(parallel), src_lang="de", tgt_lang="en", tokenizer="char",
                 joint_vocab=joint, label_smoothing=0.1, batch_size=8)
    Trainer(*tiny(tmp_path, "straight", model, **train)).fit()
    interrupted_then_resumed(tmp_path, tiny(tmp_path, "cut", model, **train), stop_at=5)
    assert_same_run(tmp_path / "straight", tmp_path / "cut", stopped_at=5)
    assert (getattr(load(tmp_path / "cut"), "src_tokenizer", None) is None) == joint


# ---- time budget: the schedule continues from the saved elapsed time ----------------------------------------
class StepClock:
    """``time.perf_counter`` for the trainer: 0.125 s of wall time per optimizer step, from any origin (a new
    process's clock reads anything). Evaluations and saves take no time, so two runs read the same times."""

    strftime, gmtime = staticmethod(time.strftime), staticmethod(time.gmtime)

    def __init__(self, origin: float):
        self.origin, self.trainer = origin, None

    def perf_counter(self) -> float:
        return self.origin + 0.125 * (self.trainer.step if self.trainer else 0)


def test_time_budget_resume_continues_the_schedule_from_the_saved_elapsed_time(tmp_path, corpus, monkeypatch):
    budget = dict(data=str(corpus), max_iters=10**6, max_time=2.0, eval_interval=1, warmup_iters=2)

    def run(trainer, origin, **fit):
        clock = StepClock(origin)
        clock.trainer = trainer
        monkeypatch.setattr(trainer_mod, "time", clock)
        return trainer.fit(**fit)
    run(Trainer(*tiny(tmp_path, "straight", **budget)), origin=0.0)
    run(Trainer(*tiny(tmp_path, "cut", **budget)), origin=0.0, stop_at_step=4)
    resumed = Trainer.resume(tmp_path / "cut", log=lambda *a: None)
    assert resumed.elapsed == 0.5                             # 4 steps of 0.125 s, as saved
    seen = []
    monkeypatch.setattr(trainer_mod, "lr_at", lambda *a, **k: seen.append(a) or lr_at(*a, **k))
    run(resumed, origin=1000.0)
    assert seen[0][:2] == (0.5 / 2.0, 4)                      # progress from the saved time, at step 4
    assert_same_run(tmp_path / "straight", tmp_path / "cut", stopped_at=4,
                    keys=("step", "elapsed_s", "train_loss", "val_loss", "lr"))
    assert [r["step"] for r in rows(tmp_path / "cut")] == list(range(1, 17))   # 16 x 0.125 s = max_time


def test_time_budget_resume_with_the_real_clock_keeps_the_elapsed_time(tmp_path, corpus, monkeypatch):
    """With wall time, the resumed run starts its schedule at the saved elapsed time and ends once the total
    reaches max_time (the weights differ from an uninterrupted run's: no two runs share a clock)."""
    cfgs = tiny(tmp_path, "cut", data=str(corpus), max_iters=10**6, max_time=1.0, eval_interval=5, warmup_iters=0)
    Trainer(*cfgs).fit(stop_at_step=3)
    state = torch.load(tmp_path / "cut" / "trainer_state.pt", weights_only=True)
    resumed = Trainer.resume(tmp_path / "cut", log=lambda *a: None)
    assert resumed.elapsed == state["elapsed_s"] > 0 and resumed.progress() == state["elapsed_s"] / 1.0
    seen = []
    monkeypatch.setattr(trainer_mod, "lr_at", lambda *a, **k: seen.append(a) or lr_at(*a, **k))
    last = resumed.fit()
    assert seen[0][0] == state["elapsed_s"] / 1.0                 # not 0: the schedule goes on from there
    assert resumed.elapsed > 1.0 - resumed.eval_s - 0.25 and last["step"] == resumed.step > 3   # the total ran out


def test_threads_follow_the_idle_cores_and_a_resume_keeps_them(tmp_path, corpus, monkeypatch):
    """No --threads: the cores other processes leave idle (qkv.runtime), said in the first line and kept in
    config.json; the resumed run uses the same count (another count sums in another order), and an explicit
    --threads wins."""
    import json as json_
    import qkv.train.distributed as distributed
    from qkv.config import resolve
    from qkv.train.trainer import Trainer
    monkeypatch.setattr(distributed, "idle_cores", lambda: 3)
    lines = []
    cfgs = resolve("tiny", train=dict(data=str(corpus), out_dir=str(tmp_path / "run"), max_iters=2,
                                      eval_interval=2, precision="fp32"))
    Trainer(*cfgs, log=lines.append).fit()
    assert lines[0].endswith("; 3 threads (the cores other processes leave idle)") and torch.get_num_threads() == 3
    assert json_.loads((tmp_path / "run" / "config.json").read_text())["threads"] == 3
    monkeypatch.setattr(distributed, "idle_cores", lambda: 1)
    lines.clear()
    Trainer.resume(tmp_path / "run", {"max_iters": 4}, log=lines.append).fit()
    assert "; 3 threads (as the run being resumed)" in lines[0]
    lines.clear()
    Trainer.resume(tmp_path / "run", {"max_iters": 6, "threads": 2}, log=lines.append).fit()
    assert "; 2 threads (--threads)" in lines[0]
    torch.set_num_threads(1)


def test_max_iters_alone_continues_a_run_whose_time_budget_is_spent(tmp_path, corpus, monkeypatch):
    """The README's `qkv train --resume RUN --max-iters N` after `make demo`'s --max-time run: the steps become
    the budget (said in one line) instead of a refusal; with no flag the spent run is still refused."""
    first = Trainer(*tiny(tmp_path, "timed", data=str(corpus), max_iters=10**6, max_time=0.3))
    clock = StepClock(0.0)                   # 0.125 s a step, evaluations and saves free: it stops at step 3
    clock.trainer = first
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "time", clock)
        first.fit()
    assert Trainer.resume(tmp_path / "timed", log=lambda *a: None).done()          # nothing extended
    said = []
    step = rows(tmp_path / "timed")[-1]["step"]
    resumed = Trainer.resume(tmp_path / "timed", {"max_iters": step + 3}, log=said.append)
    assert resumed.train_cfg.max_time is None and not resumed.done()
    assert said[-1:] == [f"the run's --max-time 0.3 s is spent: continuing to step {step + 3} on steps alone "
                    f"(add --max-time SECONDS to keep a time budget)"]
    assert resumed.fit()["step"] == step + 3
    both = Trainer.resume(tmp_path / "timed", {"max_iters": step + 9, "max_time": 0.3}, log=lambda *a: None)
    assert both.train_cfg.max_time == 0.3 and both.done()                      # both given: both kept
