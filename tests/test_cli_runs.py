"""What the command line promises about a person's runs and files: Ctrl-C saves and says how to resume,
runs never replace each other by accident, and the small things a real CLI does (stdin, --version, info)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from qkv import load
from qkv.cli import main

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 12
TINY = ["--preset", "tiny", "--max-len", "16", "--eval-iters", "1"]


def qkv_process(*args, cwd=None, **kwargs):
    """`python -m qkv` as a person runs it: the real entry point, signals and pipes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "qkv", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state_step(run_dir) -> int:
    import torch
    return torch.load(run_dir / "trainer_state.pt", weights_only=True)["step"]


def test_ctrl_c_saves_the_step_and_names_the_resume_command(tmp_path, corpus):
    run = tmp_path / "run"
    p = qkv_process("train", *TINY, "--data", corpus, "--out-dir", run, "--max-iters", "100000",
                    "--eval-interval", "5")
    for line in p.stdout:                              # training has started once it reports a step
        if line.startswith("step"):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    step = int(err.split("step ")[1].split()[0])
    assert f"continue with `qkv train --resume {run}`" in err
    assert state_step(run) == step >= 5                # the step the message names is the one on disk
    assert main(["train", "--resume", str(run), "--max-iters", str(step + 2)]) == 0
    assert state_step(run) == step + 2


def test_a_second_ctrl_c_aborts_at_once_and_the_last_checkpoint_stays(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "4"]) == 0
    before = (run / "model.safetensors").read_bytes()
    p = qkv_process("train", "--resume", run, "--max-iters", "100000000", "--eval-interval", "100000000")
    for line in p.stdout:
        if line.startswith("resuming"):
            break
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    import qkv
    qkv.load(run)                                      # whichever save won, the directory loads
    assert state_step(run) >= 4 and ((run / "model.safetensors").read_bytes() == before or state_step(run) > 4)


# `qkv train` on a filesystem without renameat2, killed with SIGKILL between the two renames of its second save
def train_and_die_mid_swap(args: list[str]) -> None:
    from qkv import rundir
    rundir._exchange = lambda a, b: False
    rename = os.rename

    def rename_then_die(src, dst):
        rename(src, dst)
        if str(dst).endswith(".old"):                     # the run directory has just been moved aside
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename_then_die
    main(args)


def test_a_run_killed_mid_save_resumes_from_the_previous_checkpoint_exactly(tmp_path, corpus, capsys):
    args = ["train", *TINY, "--data", str(corpus), "--max-iters", "8", "--eval-interval", "2", "--dropout", "0.1"]
    import multiprocessing
    killed = multiprocessing.get_context("fork").Process(target=train_and_die_mid_swap,
                                                         args=([*args, "--out-dir", str(tmp_path / "cut")],))
    killed.start()
    killed.join(300)
    assert killed.exitcode == -signal.SIGKILL
    assert not (tmp_path / "cut").exists() and state_step(tmp_path / ".cut.old") == 2   # the step-4 save was cut
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    assert "resuming" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "cut"]
    assert main([*args, "--out-dir", str(tmp_path / "straight")]) == 0
    cut, straight = load(tmp_path / "cut").state_dict(), load(tmp_path / "straight").state_dict()
    assert all(torch.equal(cut[k], straight[k]) for k in straight)
    assert [r["val_loss"] for r in rows(tmp_path / "cut")] == [r["val_loss"] for r in rows(tmp_path / "straight")]


def test_a_default_run_directory_is_never_replaced(tmp_path, corpus, monkeypatch, capsys):
    """Named after the data when --data gives it (corpus.txt -> runs/corpus), else after the preset."""
    monkeypatch.chdir(tmp_path)
    args = ["train", *TINY, "--data", str(corpus), "--max-iters", "2"]
    assert main(args) == 0 and main(args) == 0
    assert "runs/corpus is taken; this run goes to runs/corpus-2" in capsys.readouterr().out
    assert (tmp_path / "runs" / "corpus").is_dir() and (tmp_path / "runs" / "corpus-2" / "model.safetensors").is_file()
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(corpus.read_text())
    assert main(["train", *TINY, "--data", "books/", "--max-iters", "1"]) == 0
    assert (tmp_path / "runs" / "books" / "model.safetensors").is_file()
    assert main(["train", *TINY, "--max-iters", "1"]) == 0                   # the bundled corpus: the preset's
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").is_file()


def test_overwrite_replaces_a_run_whole(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "4"]) == 0
    (run / "eval.json").write_text("{}")               # from the old run: gone with it
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "2",
                 "--overwrite"]) == 0
    assert not (run / "eval.json").exists() and rows(run)[-1]["step"] == 2


def test_saves_keep_what_a_person_put_in_the_run(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "2"]) == 0
    (run / "evaluate").mkdir()
    (run / "evaluate" / "notes.txt").write_text("mine")
    assert main(["train", "--resume", str(run), "--max-iters", "6", "--eval-interval", "2"]) == 0
    assert (run / "evaluate" / "notes.txt").read_text() == "mine" and rows(run)[-1]["step"] == 6


def test_resume_into_another_directory_leaves_the_first_as_it_was(tmp_path, corpus, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(first), "--max-iters", "4"]) == 0
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert main(["train", "--resume", str(first), "--max-iters", "6", "--out-dir", str(second)]) == 0
    assert f"writing to {second}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [r["step"] for r in rows(second)][-1] == 6 and state_step(second) == 6


def test_resume_from_another_working_directory_finds_the_data(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "text.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path / "project")
    assert main(["train", *TINY, "--data", "text.txt", "--out-dir", "run", "--max-iters", "2"]) == 0
    monkeypatch.chdir(tmp_path)                        # the stored path is absolute, so this still works
    assert main(["train", "--resume", "project/run", "--max-iters", "4"]) == 0
    assert json.loads((tmp_path / "project" / "run" / "config.json").read_text())["train"]["data"] == \
        str(tmp_path / "project" / "text.txt")


def test_keep_best_keeps_the_lowest_validation_loss(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "12",
                 "--eval-interval", "3", "--keep-best", "--lr", "0.01", "--save-interval", "12"]) == 0
    best = min(rows(run), key=lambda r: r["val_loss"])
    saved = json.loads((run / "best" / "config.json").read_text())["best"]
    assert saved == {"step": best["step"], "val_loss": best["val_loss"]}
    import qkv
    assert qkv.load(run / "best").cfg == qkv.load(run).cfg


def test_generate_stop_takes_backslash_escapes_and_a_closed_pipe_is_quiet(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "30",
                 "--lr", "0.01"]) == 0
    p = qkv_process("generate", run, "--prompt", "All:", "--max-new-tokens", "10", "--temperature", "0",
                    "--stop", "\\n")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "\n" not in out.rstrip("\n")                # the continuation stopped before its first newline
    assert out.startswith("All:")
    command = f"{sys.executable} -m qkv generate {run} --prompt All --max-new-tokens 12 --seed 0 | head -c 2"
    shell = subprocess.run(command,
                           shell=True, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert len(shell.stdout) == 2 and shell.stderr == ""


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path, corpus, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "2"]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)                                 # the reader is gone before the first byte
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(["generate", str(run), "--prompt", "All", "--max-new-tokens", "3"]) == 141
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_stdin_version_info_and_eval_json(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(corpus), "--out-dir", str(run), "--max-iters", "2"]) == 0
    capsys.readouterr()
    p = qkv_process("eval", run, "--data", "-", "--json", stdin=subprocess.PIPE)
    out, err = p.communicate(TEXT, timeout=120)
    from_stdin = json.loads(out)
    assert main(["eval", str(run), "--data", str(corpus), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_stdin["loss"] == pytest.approx(from_file["loss"], abs=1e-6) and from_file["tokens"] == len(TEXT) - 1
    assert from_file["perplexity"] == pytest.approx(2.718281828459045 ** from_file["loss"], rel=1e-9)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qkv {__import__('qkv').__version__}"
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "decoder" and info["training"]["steps"] == 2 and info["train"]["max_iters"] == 2
    assert info["parameters"] == sum(p.numel() for p in __import__("qkv").load(run).parameters())
    assert main(["info", str(run)]) == 0
    assert "decoder (qkv-gpt)" in capsys.readouterr().out


def test_progress_is_one_line_per_evaluation_off_a_terminal(tmp_path, corpus):
    p = qkv_process("train", *TINY, "--data", corpus, "--out-dir", tmp_path / "run", "--max-iters", "6",
                    "--eval-interval", "3")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "\r" not in out + err and "it/s" not in err            # no progress bar redraws in a log
    assert [line.split("|")[0].split()[1] for line in out.splitlines() if line.startswith("step")] == ["3", "6"]


def test_help_shows_the_defaults_of_the_preset_that_would_run(capsys):
    assert main(["train", "--preset", "multi30k", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 64)" in text and "--preset multi30k" in text        # multi30k's batch size, not 16
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-time MAX_TIME seconds;" in text and "--preset shakespeare-char" in text


def test_a_bug_is_one_line_with_a_way_to_see_more(monkeypatch, capsys):
    import qkv.loading
    monkeypatch.setattr(qkv.loading, "family_of", lambda path: 1 / 0)
    assert main(["info", "anything"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qkv info: internal error: ZeroDivisionError") and "QKV_DEBUG=1" in err
    monkeypatch.setenv("QKV_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info", "anything"])
