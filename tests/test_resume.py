"""The resume contract, both halves (README, "A run directory is a checkpoint"):

- an iteration budget resumes bit-exact: interrupted + resumed ends with the weights and metrics of an
  uninterrupted run, for every kind of run (one test, parametrized: GPT, bf16, MLM, span corruption,
  translation with joint and separate vocabularies, image classification, fine-tuning's three families);
- a time budget (``max_time``) resumes from the saved elapsed time: the learning-rate schedule, which follows
  wall time, continues where it stopped instead of starting over. Wall time differs between runs, so the test
  gives the trainer a clock that advances by a fixed amount per reading: with the same clock readings an
  interrupted run then ends exactly as an uninterrupted one, which it could not if the elapsed time were lost.
"""

import json
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pytest
import torch

from qkv import load
from qkv.config import ModelConfig, TrainConfig, VisionConfig
from qkv.data.images import ImageDataConfig
from qkv.models import EncoderDecoder
from qkv.train import trainer as trainer_mod
from qkv.train.finetune import finetune_config, resume_finetune
from qkv.train.images import build_image_task, resume_images
from qkv.train.optim import lr_at
from qkv.train.trainer import Trainer

from finetune_fixtures import task_config, trainer_for
from vision_fixtures import write_mnist

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8


RUN_MODEL = dict(dropout=0.1)                       # dropout: the RNG must resume too (conftest's run_configs)
RUN = dict(max_iters=8, eval_interval=2, eval_iters=2, warmup_iters=2)
MLM_TEXT = ("the cat sat on the mat .\nthe dog ran to the park .\na bird sang in the tree .\n"
            "the sun rose over the hill .\nthe children played in the garden .\n") * 12


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


# ---- iteration budget: bit-exact, for every kind of run ----------------------------------------------------
class Runs:
    """What a kind of run is built from, made when a kind asks for it: the configs factory, the corpora, the
    fine-tuning task files (a session fixture that trains an encoder) and MNIST-format images."""

    def __init__(self, tmp_path, run_configs, request):
        self.tmp_path, self.configs, self.request = tmp_path, run_configs, request

    @cached_property
    def corpus(self) -> str:
        return str(self.request.getfixturevalue("corpus"))

    @cached_property
    def parallel(self) -> str:
        return str(self.request.getfixturevalue("parallel"))

    @cached_property
    def task_files(self) -> dict:
        return self.request.getfixturevalue("task_files")

    @cached_property
    def mlm(self) -> tuple[str, object]:
        """The MLM corpus and one tokenizer for both runs: the tokenizers library breaks WordPiece merge ties in
        hash order, so two trainings on the same text may number the vocabulary differently."""
        path = self.tmp_path / "mlm.txt"
        path.write_text(MLM_TEXT, encoding="utf-8")
        return str(path), Trainer(*self.mlm_configs("probe", str(path))).tokenizer

    def mlm_configs(self, name: str, data: str):
        return self.configs(name, "bert-mlm", dict(max_len=24), data=data, max_iters=12, eval_interval=4,
                            bpe_vocab_size=60, batch_size=4, eval_iters=2, warmup_iters=2, progress=False)

    def images(self, name: str) -> Trainer:
        cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, mask="bidirectional", dropout=0.1)
        train = TrainConfig(task="image-classification", data=str(self.mnist), batch_size=8, max_iters=6,
                            eval_interval=3, eval_iters=1, warmup_iters=1, lr=3e-3, out_dir=str(self.tmp_path / name),
                            progress=False)
        parts = build_image_task(cfg, VisionConfig(patch_size=7, pool="mean"), train,
                                 ImageDataConfig(test_in_train=20, val_images=10))
        return Trainer(parts.model_cfg, train, parts=parts)

    @cached_property
    def mnist(self):
        return write_mnist(self.tmp_path / "mnist")


@dataclass(frozen=True)
class Kind:
    """A kind of run: ``start(runs, name)`` builds a new run's Trainer, ``resume(run_dir)`` continues one; the
    interrupted run stops after ``stop_at`` steps; ``check(runs)`` is what else that kind must hold."""
    start: Callable
    stop_at: int
    resume: Callable = lambda run_dir: Trainer.resume(run_dir, log=lambda *a: None)
    check: Callable = lambda runs: None


def _bf16_really_ran(runs):
    Trainer(*runs.configs("fp32", data=runs.corpus)).fit()
    assert rows(runs.tmp_path / "fp32")[-1]["val_loss"] != rows(runs.tmp_path / "cut")[-1]["val_loss"]


def _span_model_and_sentinels(runs):
    a = load(runs.tmp_path / "straight")
    assert isinstance(a, EncoderDecoder) and a.tokenizer.backend.token_to_id("<extra_id_0>") is not None


def _translation(joint: bool) -> Kind:
    def start(runs, name):
        return Trainer(*runs.configs(name, model=dict(max_len=32, n_encoder_layers=2), task="translate",
                                     data=runs.parallel, src_lang="de", tgt_lang="en", tokenizer="char",
                                     joint_vocab=joint, label_smoothing=0.1, batch_size=8))

    def separate_vocabularies_kept(runs):
        assert (getattr(load(runs.tmp_path / "cut"), "src_tokenizer", None) is None) == joint
    return Kind(start, 5, check=separate_vocabularies_kept)


def _images_evaluated(runs):
    steps = rows(runs.tmp_path / "cut")
    assert [r["step"] for r in steps] == [3, 4, 6] and all(0 <= r["val_accuracy"] <= 1 for r in steps)


def _finetune(task: str) -> Kind:
    def same_task_config(runs):
        assert finetune_config(runs.tmp_path / "cut") == task_config(runs.task_files, task)
    return Kind(lambda runs, name: trainer_for(runs.task_files, runs.tmp_path, task, name), 4,
                resume=lambda run_dir: resume_finetune(run_dir, log=lambda *a: None), check=same_task_config)


KINDS = {
    "gpt": Kind(lambda runs, name: Trainer(*runs.configs(name, data=runs.corpus, max_iters=12, eval_interval=4)), 6),
    "gpt-bf16": Kind(lambda runs, name: Trainer(*runs.configs(name, data=runs.corpus, precision="bf16")), 3,
                     check=_bf16_really_ran),
    "mlm": Kind(lambda runs, name: Trainer(*runs.mlm_configs(name, runs.mlm[0]), tokenizer=runs.mlm[1]), 6),
    "span": Kind(lambda runs, name: Trainer(*runs.configs(name, model=dict(max_len=32, n_encoder_layers=2),
                                                          data=runs.corpus, objective="span", lr=3e-3,
                                                          max_iters=12, eval_interval=6)), 5,
                 check=_span_model_and_sentinels),
    "translate-joint-vocab": _translation(joint=True),
    "translate-separate-vocabs": _translation(joint=False),
    "images": Kind(lambda runs, name: runs.images(name), 4, resume=resume_images, check=_images_evaluated),
    **{f"finetune-{task}": _finetune(task) for task in ("sst2", "wnut17", "squad")},
}


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_an_interrupted_and_resumed_run_ends_as_an_uninterrupted_one(kind, tmp_path, run_configs, request):
    runs = Runs(tmp_path, run_configs, request)
    kind.start(runs, "straight").fit()
    kind.start(runs, "cut").fit(stop_at_step=kind.stop_at)
    resumed = kind.resume(tmp_path / "cut")
    assert resumed.step == kind.stop_at
    resumed.fit()
    assert_same_run(tmp_path / "straight", tmp_path / "cut", stopped_at=kind.stop_at)
    kind.check(runs)


# ---- time budget: the schedule continues from the saved elapsed time ----------------------------------------
class StepClock:
    """``time.perf_counter`` for the trainer: 0.125 s of wall time per optimizer step, from any origin (a new
    process's clock reads anything). Evaluations and saves take no time, so two runs read the same times."""

    strftime, gmtime = staticmethod(time.strftime), staticmethod(time.gmtime)

    def __init__(self, origin: float):
        self.origin, self.trainer = origin, None

    def perf_counter(self) -> float:
        return self.origin + 0.125 * (self.trainer.step if self.trainer else 0)


def test_time_budget_resume_continues_the_schedule_from_the_saved_elapsed_time(tmp_path, corpus, run_configs,
                                                                              monkeypatch):
    budget = dict(data=str(corpus), max_iters=10**6, max_time=2.0, eval_interval=1, warmup_iters=2)

    def run(trainer, origin, **fit):
        clock = StepClock(origin)
        clock.trainer = trainer
        monkeypatch.setattr(trainer_mod, "time", clock)
        return trainer.fit(**fit)
    run(Trainer(*run_configs("straight", **budget)), origin=0.0)
    run(Trainer(*run_configs("cut", **budget)), origin=0.0, stop_at_step=4)
    resumed = Trainer.resume(tmp_path / "cut", log=lambda *a: None)
    assert resumed.elapsed == 0.5                             # 4 steps of 0.125 s, as saved
    seen = []
    monkeypatch.setattr(trainer_mod, "lr_at", lambda *a, **k: seen.append(a) or lr_at(*a, **k))
    run(resumed, origin=1000.0)
    assert seen[0][:2] == (0.5 / 2.0, 4)                      # progress from the saved time, at step 4
    assert_same_run(tmp_path / "straight", tmp_path / "cut", stopped_at=4,
                    keys=("step", "elapsed_s", "train_loss", "val_loss", "lr"))
    assert [r["step"] for r in rows(tmp_path / "cut")] == list(range(1, 17))   # 16 x 0.125 s = max_time


def test_time_budget_resume_with_the_real_clock_keeps_the_elapsed_time(tmp_path, corpus, run_configs, monkeypatch):
    """With wall time, the resumed run starts its schedule at the saved elapsed time and ends once the total
    reaches max_time (the weights differ from an uninterrupted run's: no two runs share a clock)."""
    cfgs = run_configs("cut", data=str(corpus), max_iters=10**6, max_time=1.0, eval_interval=5, warmup_iters=0)
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


def test_max_iters_alone_continues_a_run_whose_time_budget_is_spent(tmp_path, corpus, run_configs, monkeypatch):
    """The README's `qkv train --resume RUN --max-iters N` after `make demo`'s --max-time run: the steps become
    the budget (said in one line) instead of a refusal; with no flag the spent run is still refused."""
    first = Trainer(*run_configs("timed", data=str(corpus), max_iters=10**6, max_time=0.3))
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
