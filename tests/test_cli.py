"""The command line end to end on a tiny corpus, and every bad input as one line + non-zero exit."""

import json
import re
import subprocess
import sys

import pytest

from qkv.cli import main

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 6


@pytest.fixture
def run_dir(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out-dir", str(out), "--max-len", "24",
                 "--max-iters", "30", "--eval-interval", "15"]) == 0
    return out


def cli(*args):
    """Run `python -m qkv` in a subprocess: the real entry point, real exit code, real stderr."""
    return subprocess.run([sys.executable, "-m", "qkv", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_a_command_imports_its_own_module_and_no_other_commands():
    """Start-up: the parser lists every command but builds (imports) only the one on the line."""
    code = ("import sys, io, contextlib; from qkv.cli import COMMANDS, main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(sys.argv[1:])\n"
            "print(' '.join(n for n, (m, _) in COMMANDS.items() if m in sys.modules))")
    for argv, imported in ((["info", "--help"], "info"), (["--help"], ""), (["trian"], "")):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == imported, (argv, proc.stdout, proc.stderr[-2000:])
    assert "invalid choice: 'trian'" in proc.stderr and "'train'" in proc.stderr


def test_train_prints_val_loss_last_and_writes_run(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out-dir", str(run_dir),
                 "--max-iters", "10"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "val_loss" in out[-1]
    final = float(re.findall(r"val_loss (\d+\.\d+)", out[-1])[-1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] == pytest.approx(final, abs=1e-4)
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                     "trainer_state.pt", "metrics.jsonl"}


def test_resume_extends_the_run(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--max-iters", "40", "--eval-interval", "5"]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[1]["step"] == 30


def test_config_file_json_and_toml(tmp_path, corpus):
    toml = tmp_path / "c.toml"
    toml.write_text(f'preset = "tiny"\n[model]\npos = "alibi"\nmax_len = 24\n[train]\ndata = "{corpus}"\n'
                    f'out_dir = "{tmp_path / "t"}"\nmax_iters = 4\n', encoding="utf-8")
    assert main(["train", "--config", str(toml), "--norm", "rmsnorm"]) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["model"]["pos"] == "alibi" and cfg["model"]["norm"] == "rmsnorm" and cfg["train"]["max_iters"] == 4
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "tiny", "model": {"max_len": 24, "mlp": "swiglu"},
                              "train": {"data": str(corpus), "out_dir": str(tmp_path / "j"), "max_iters": 2}}))
    assert main(["train", "--config", str(js)]) == 0
    assert json.loads((tmp_path / "j" / "config.json").read_text())["model"]["mlp"] == "swiglu"


def test_eval_prints_loss_and_perplexity(run_dir, corpus):
    result = cli("eval", run_dir, "--data", corpus)
    assert result.returncode == 0, result.stderr
    loss = float(result.stdout.split("loss")[1].split()[0])
    ppl = float(result.stdout.split("perplexity")[1].split()[0])
    assert 0 < loss < 4.5 and ppl == pytest.approx(2.718281828 ** loss, rel=1e-3)


def test_eval_shows_progress_only_on_a_terminal(run_dir, corpus, monkeypatch, capsys):
    """A bar of tokens scored, on stderr, when it is a terminal (as training's); none in a log or a pipe."""
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["eval", str(run_dir), "--data", str(corpus), "--batch-size", "1"]) == 0
    assert re.search(r"\| *[\d.]+k?/[\d.]+k? \[.*tok/s\]", terminal.getvalue()), terminal.getvalue()
    monkeypatch.undo()
    assert main(["eval", str(run_dir), "--data", str(corpus)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "tiny", "--max-iters", "many"], "--max-iters expects an integer"),
    (["train", "--preset", "tiny", "--pos", "spiral"], "invalid choice"),
    (["train", "--preset", "tiny", "--d-model", "30", "--n-heads", "4"], "must be divisible"),
    (["train", "--preset", "tiny", "--data", "{missing}"], "does not exist"),
    (["train", "--preset", "tiny", "--data", "{empty}"], "is empty"),
    (["train", "--preset", "tiny", "--data", "{short}"], "shorter than one block"),
    (["train", "--preset", "tiny", "--data", "{latin}"], "not UTF-8"),
    (["train", "--config", "{badkey}"], "unknown TrainConfig key"),
    (["eval", "{missing}", "--data", "{short}"], "no checkpoint directory"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    files = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt",
             "short": tmp_path / "short.txt", "latin": tmp_path / "latin.txt", "badkey": tmp_path / "bad.json"}
    files["empty"].write_text("")
    files["short"].write_text("abc")
    files["latin"].write_bytes("Très bien".encode("latin-1") * 100)
    files["badkey"].write_text(json.dumps({"train": {"learning_rate": 1.0}}))
    result = cli(*[a.format(**files) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2          # argparse adds a usage line; we add none
