"""Data parallelism on CPU with 2 processes (gloo), against 1 process (qkv.train.distributed):

- 2 processes x b rows give the per-step losses of 1 process x 2b rows, and of 1 process with b rows and 2
  gradient-accumulation steps (to 1e-5: only the order of the floating-point sums differs);
- the run is written once, by rank 0, and resumes with another world size on the same batch stream;
- each process runs on its share of the cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkv import load
from qkv.runtime import available_cores

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8
WORKER = str(Path(__file__).with_name("ddp_worker.py"))
MODEL = dict(max_len=16, n_layers=2, d_model=32, n_heads=4, dropout=0.0)


def launch(tmp_path, name, processes: int, mode="new", env=None, **train) -> dict:
    options = dict(data=str(tmp_path / "corpus.txt"), out_dir=str(tmp_path / name), max_iters=10,
                   eval_interval=5, eval_iters=2, warmup_iters=2) | train
    out = tmp_path / f"{name}-{mode}.json"
    spec = {"train": options, "model": MODEL, "stop_at": train.pop("stop_at", None),
            "overrides": train.pop("overrides", None)}
    spec["train"].pop("stop_at", None), spec["train"].pop("overrides", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    done = subprocess.run(launcher + [WORKER, str(out), json.dumps(spec), mode], capture_output=True, text=True,
                          timeout=600, env=os.environ | (env or {}))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_equal_one_with_the_whole_batch_and_with_accumulation(tmp_path, corpus):
    two = launch(tmp_path, "ddp", 2, batch_size=8)
    whole = launch(tmp_path, "one", 1, batch_size=8)
    accumulated = launch(tmp_path, "accum", 1, batch_size=4, grad_accum=2)
    assert two["world"] == 2 and whole["world"] == 1
    assert len(two["losses"]) == len(whole["losses"]) == len(accumulated["losses"]) == 10
    assert max(abs(a - b) for a, b in zip(two["losses"], whole["losses"])) <= 1e-5
    assert max(abs(a - b) for a, b in zip(whole["losses"], accumulated["losses"])) <= 1e-5
    assert two["losses"][0] > two["losses"][-1] + 0.1              # it trained: the losses are not constant
    assert 1 <= two["threads"] <= max(1, available_cores() // 2)   # 2 processes share this machine's idle cores
    a, b = load(tmp_path / "ddp").state_dict(), load(tmp_path / "one").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_rank_zero_alone_writes_and_resume_changes_world_size(tmp_path, corpus):
    """Stopped at step 4 under 2 processes, resumed under 1: the same batches and losses as a run that never
    stopped (a 1-process run here; the previous test ties it to the 2-process one)."""
    straight = launch(tmp_path, "straight", 1, batch_size=8)
    first = launch(tmp_path, "cut", 2, batch_size=8, stop_at=4)
    run = tmp_path / "cut"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cut")) == \
        ["cut", "cut-new.json"]                                       # one run directory, no per-rank copies
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and rows[0]["skipped_steps"] == 0
    config = json.loads((run / "config.json").read_text())
    assert config["world"] == {"processes": 2, "backend": "gloo"}
    rest = launch(tmp_path, "cut", 1, mode="resume", batch_size=8)
    assert rest["first_step"] == 4 and rest["step"] == 10
    losses = first["losses"] + rest["losses"]
    assert max(abs(a - b) for a, b in zip(losses, straight["losses"])) <= 1e-5 and len(losses) == 10


def test_fsdp2_shards_give_the_same_losses_and_resume(tmp_path, corpus):
    """FSDP2's code path (fully_shard per block, full state gathered to rank 0 for the save, scattered back on
    resume) on gloo: `--fsdp` refuses CPUs (nothing to gain there), QKV_FSDP_ON_CPU=1 lets a test run it."""
    fsdp = {"QKV_FSDP_ON_CPU": "1"}
    first = launch(tmp_path, "fsdp", 2, env=fsdp, batch_size=8, fsdp=True, stop_at=5)
    rest = launch(tmp_path, "fsdp", 2, mode="resume", env=fsdp, batch_size=8)
    whole = launch(tmp_path, "one", 1, batch_size=8)
    losses = first["losses"] + rest["losses"]
    assert len(losses) == 10 and max(abs(a - b) for a, b in zip(losses, whole["losses"])) <= 1e-5
    state = torch.load(tmp_path / "fsdp" / "trainer_state.pt", weights_only=True)
    assert state["optimizer_format"] == "full" and state["step"] == 10
    a, b = load(tmp_path / "fsdp").state_dict(), load(tmp_path / "one").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_a_resume_whose_world_cannot_split_the_batch_says_what_to_change(tmp_path, corpus):
    launch(tmp_path, "odd", 1, batch_size=3, max_iters=2, eval_interval=2)
    spec = {"train": {"out_dir": str(tmp_path / "odd")}, "overrides": {"max_iters": 4}}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           WORKER, str(tmp_path / "x.json"), json.dumps(spec), "resume"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "batch_size 3 does not split over 2 processes" in done.stderr and "--batch-size 4" in done.stderr


# ---- every objective and task under torchrun -------------------------------------------------------------
from parallel_fixtures import write_parallel  # noqa: E402

TINY = ["--max-iters", "4", "--eval-interval", "2", "--eval-iters", "2", "--batch-size", "4", "--no-progress",
        "--n-layers", "1", "--d-model", "32", "--n-heads", "4", "--warmup-iters", "1"]
RUNS = {
    "prefix": ["train", "--preset", "tiny", "--objective", "prefix", "--mask", "prefix", "--max-len", "16"],
    "span": ["train", "--preset", "tiny", "--objective", "span", "--tokenizer", "bpe", "--bpe-vocab-size", "120",
             "--max-len", "24"],
    "mlm": ["train", "--objective", "mlm", "--bpe-vocab-size", "200", "--max-len", "32"],
    "translate": ["train", "--task", "translate", "--src-lang", "de", "--tgt-lang", "en", "--bpe-vocab-size", "150",
                  "--max-len", "32", "--d-ff", "64", "--n-encoder-layers", "1", "--max-time", "none"],
}


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "qkv", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", list(RUNS))
def test_every_objective_trains_under_torchrun(tmp_path, corpus, name):
    data = str(corpus)
    if name == "translate":
        data = write_parallel(tmp_path / "para")
    done = torchrun([*RUNS[name], *TINY, "--data", str(data), "--out-dir", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("precision ") == 1 and "2 processes (gloo)" in done.stdout     # rank 0 alone logs
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(r["val_loss"] > 0 for r in rows)
    assert load(tmp_path / "run") is not None


def test_finetune_under_torchrun_scores_once(tmp_path, task_files):
    train, eval_ = task_files["sst2"]
    out = tmp_path / "sst2"
    done = torchrun(["finetune", "--task", "sst2", "--init", str(task_files["encoder"]), "--data", str(train),
                     "--eval-data", str(eval_), "--out-dir", str(out), "--max-iters", "4", "--eval-interval", "2",
                     "--eval-iters", "1", "--batch-size", "4", "--no-progress"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sst2 on") == 1                       # the summary line: rank 0 scored it
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 4 and report["examples"] == 10


def test_a_time_budget_stops_every_rank_on_the_same_step(tmp_path, corpus):
    """--max-time under torchrun: the ranks share one clock (averaged in the step's all-reduce), so they stop
    together; with separate clocks one rank would leave while the other waits in an all-reduce forever."""
    done = torchrun(["train", "--preset", "tiny", "--data", str(corpus), "--max-iters", "100000", "--max-time", "2",
                     "--eval-interval", "1000", "--out-dir", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 2.0 <= last["elapsed_s"] < 10 and last["step"] > 1
