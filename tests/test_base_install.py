"""The base install (`pip install qkv`, no extras) runs the core commands, and a command that needs an extra
refuses in one line naming it (status 2), never with a traceback.

The dev environment has every extra installed, so the commands run in a fresh interpreter whose import
system answers for the optional packages as a base install would (``ModuleNotFoundError``): the DRIVER below
runs a list of commands through ``qkv.cli.main`` in that one process (one start-up, seconds in all). The
real base install, a throw-away venv with only pyproject.toml's dependencies, is `.ci/base_install.sh`.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest

import qkv
from qkv.cli import build_parser

from vision_fixtures import write_mnist

OPTIONAL = ("fastapi", "uvicorn", "llguidance", "prometheus_client", "gguf", "PIL", "matplotlib", "tensorboard",
            "sacrebleu", "seqeval", "rouge_score", "transformers")   # every extra's modules, and dev's

# argv: the blocked module names, a JSON list of [argv, stdin], the file for the results: one
# [status, stdout, stderr] per command.
DRIVER = r"""
import contextlib, io, json, sys

BLOCKED = set(json.loads(sys.argv[1]))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None                                         # the other finders look as usual


sys.meta_path.insert(0, NotInstalled())
import torch
torch.set_num_threads(1)
from qkv.cli import main

results = []
for argv, stdin in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    sys.stdin = io.StringIO(stdin)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    results.append([status, out.getvalue(), err.getvalue()])
with open(sys.argv[3], "w") as fh:
    json.dump(results, fh)
"""


def _without_extras(commands: list[list[str]], cwd, stdin: dict[int, str] | None = None) -> list[tuple]:
    """(status, stdout, stderr) of each command, run in order in one interpreter without the OPTIONAL modules."""
    stdin = stdin or {}
    steps = [[argv, stdin.get(i, "")] for i, argv in enumerate(commands)]
    results = cwd / "results.json"
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(OPTIONAL), json.dumps(steps), str(results)],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "QKV_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]          # the driver itself: a traceback lands here
    return [tuple(r) for r in json.loads(results.read_text())]


def test_import_qkv_and_the_parser_import_no_optional_package():
    """Checked in a fresh interpreter: this one has imported them for other tests."""
    code = ("import sys, json, qkv, qkv.cli; qkv.cli.build_parser(); "
            f"print(json.dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == []


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple = ()) -> list[tuple]:
    """('train',), ('bench',), ('bench', 'train'), ...: every command and nested command."""
    sub = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    paths = []
    for name, p in sub.items():
        paths += [prefix + (name,)] + _command_paths(p, prefix + (name,))
    return paths


def test_every_help_without_the_extras(tmp_path):
    paths = _command_paths(build_parser())
    assert len(paths) > 20 and ("serve",) in paths and ("bench", "serve") in paths
    results = _without_extras([["--version"], ["--help"]] + [[*p, "--help"] for p in paths], tmp_path)
    assert results[0] == (0, f"qkv {qkv.__version__}\n", "")
    for argv, (status, out, err) in zip([()] + paths, results[1:]):
        assert (status, err) == (0, ""), (argv, err)
        assert out.startswith(f"usage: qkv {' '.join(argv)}".rstrip()), (argv, out[:200])


TEXT = "the quick brown fox jumps over the lazy dog. " * 40
TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"   # chars of TEXT only: a char tokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny text run (with a chat template) and a tiny MNIST classifier, trained without the extras."""
    d = tmp_path_factory.mktemp("base")
    (d / "corpus.txt").write_text(TEXT)
    write_mnist(d / "mnist")
    results = _without_extras([
        ["train", "--preset", "tiny", "--data", "corpus.txt", "--out-dir", "run", "--max-len", "24",
         "--max-iters", "4", "--eval-interval", "2"],
        ["train", "--task", "image-classification", "--model", "cnn", "--data", "mnist", "--test-in-train", "20",
         "--val-images", "10", "--max-iters", "2", "--eval-interval", "2", "--batch-size", "8", "--d-model", "4",
         "--out-dir", "img"],
    ], d)
    assert results[0][0] == 0, results[0]
    # an image run without matplotlib: eval.json, and a note naming the extra instead of confusion.png
    status, out, err = results[1]
    assert status == 0 and "eval.json in img" in out, results[1]
    assert err == "note: confusion.png needs the plots extra: pip install 'qkv[plots]' (or pip install " \
                  "matplotlib); eval.json holds the matrix\n"
    assert (d / "img" / "eval.json").is_file() and not (d / "img" / "confusion.png").exists()
    (d / "run" / "chat_template.jinja").write_text(TEMPLATE)
    (d / "s.json").write_text('{"type": "object"}')
    (d / "m.gguf").write_bytes(b"GGUF")
    (d / "x.png").write_bytes(b"not read: Pillow is missing")
    return d


CORE = {   # name: argv, what stdout holds
    "generate": (["generate", "run", "--prompt", "the", "--max-new-tokens", "8", "--seed", "0"], "the"),
    "eval": (["eval", "run", "--data", "corpus.txt"], "perplexity"),
    "info": (["info", "run"], "decoder (qkv-gpt)"),
    "next": (["next", "run", "--text", "the"], "rank"),
    "attention page": (["attention", "run", "--text", "the fox", "--out", "a.html"], "wrote a.html"),
    "chat": (["chat", "run", "--max-new-tokens", "4", "--seed", "0"], ""),
    "quantize": (["quantize", "run", "q8", "--bits", "8"], "wrote q8"),
    "generate quantized": (["generate", "q8", "--prompt", "the", "--max-new-tokens", "4"], "the"),
    "export": (["export", "run", "hf"], "wrote hf: GPT2LMHeadModel"),
    "evaluate images": (["evaluate", "img"], "eval.json in img/evaluate"),
}
NEEDS_EXTRA = {   # name: argv, the extra its one error line names
    "serve": (["serve", "run"], "serve"),
    "bench serve": (["bench", "serve", "run", "--clients", "1"], "serve"),
    "json schema": (["generate", "run", "--prompt", "the", "--json-schema", "s.json"], "serve"),
    "attention png": (["attention", "run", "--text", "the fox", "--out", "a.png"], "plots"),
    "next png": (["next", "run", "--text", "the", "--out", "n.png"], "plots"),
    "plot": (["plot", "run", "--out", "c.png"], "plots"),
    "experiment": (["experiment", "kv-cache", "--quick", "--out-dir", "ex"], "plots"),
    "tensorboard": (["train", "--preset", "tiny", "--data", "corpus.txt", "--out-dir", "tb", "--max-iters", "2",
                     "--tensorboard"], "tensorboard"),
    "image file": (["predict", "img", "--image", "x.png"], "vision"),
    "gguf": (["info", "m.gguf"], "gguf"),
    "export gguf": (["export", "run", "run.gguf"], "gguf"),
}


@pytest.fixture(scope="module")
def results(runs):
    names = list(CORE) + list(NEEDS_EXTRA)
    argvs = [{**CORE, **NEEDS_EXTRA}[name][0] for name in names]
    return dict(zip(names, _without_extras(argvs, runs, stdin={names.index("chat"): "the fox\nthe dog\n"})))


@pytest.mark.parametrize("name", CORE)
def test_core_commands_run_without_the_extras(results, name):
    status, out, err = results[name]
    assert status == 0, (name, err)
    assert CORE[name][1] in out
    if name == "chat":
        assert len(out.splitlines()) == 2                    # a reply per turn


@pytest.mark.parametrize("name", NEEDS_EXTRA)
def test_a_command_that_needs_an_extra_names_it_in_one_line(results, runs, name):
    status, out, err = results[name]
    extra = NEEDS_EXTRA[name][1]
    assert status == 2 and out == "", (name, out, err)
    assert err.count("\n") == 1 and err.startswith("qkv ") and f"pip install 'qkv[{extra}]'" in err, err
    assert not (runs / "tb").exists() and not (runs / "ex").exists()     # refused before any work
