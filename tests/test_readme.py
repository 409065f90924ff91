"""The README's Python snippets run as written, against small stand-ins for the checkpoints they name."""

import re
from pathlib import Path

import pytest
import torch

import qkv
from qkv import GPT, ModelConfig, Tokenizer
from qkv.models import EncoderDecoder

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
TEXT = "ROMEO: JULIET: To be, or not to be. Ein Mann fährt Fahrrad. A man rides a bike.\n" * 4


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """runs/shakespeare-char (a char GPT) and runs/multi30k (an encoder-decoder with <pad> <bos> <eos>)."""
    torch.manual_seed(0)
    small = dict(max_len=128, n_layers=1, d_model=16, n_heads=2)
    chars = Tokenizer.train_char(TEXT)
    qkv.save(GPT(ModelConfig(vocab_size=chars.vocab_size, **small)), tmp_path / "runs" / "shakespeare-char", chars)
    pairs = Tokenizer.train_bpe([TEXT], vocab_size=300, special_tokens=("<pad>", "<bos>", "<eos>"))
    qkv.save(EncoderDecoder(ModelConfig(vocab_size=pairs.vocab_size, **small)), tmp_path / "runs" / "multi30k", pairs)
    monkeypatch.chdir(tmp_path)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.splitlines()[0][:40] for s in SNIPPETS])
def test_snippet_runs_as_written(stand_ins, snippet, capsys):
    namespace = {}
    exec(compile(snippet, str(README), "exec"), namespace)        # noqa: S102 - our own README
    if "out" in namespace:                                         # every snippet that calls a model
        assert namespace["out"].logits.ndim == 3 and namespace["out"].attentions is not None


DEMO_LINES = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```",
                                                                   README.read_text(encoding="utf-8"),
                                                                    flags=re.S)
              for line in block.splitlines() if line.startswith("qkv ") and " runs/shakespeare-char " in line
              and not line.startswith("qkv train")]


def test_the_readme_runs_commands_on_its_demo_model():
    assert len(DEMO_LINES) >= 2


@pytest.mark.parametrize("line", DEMO_LINES)
def test_each_demo_command_runs_on_the_demo_models_shape(tmp_path, monkeypatch, line):
    """Every `qkv ... runs/shakespeare-char` line of the README, on a model of the shape `make demo` trains
    (the shakespeare-char preset: 4 layers, 1 head): `--head 2` on it was an error."""
    import shlex
    from qkv.cli import main
    from qkv.presets import PRESETS
    chars = Tokenizer.train_char((Path(qkv.__file__).parent / "data" / "shakespeare.txt").read_text(encoding="utf-8"))
    model = GPT(ModelConfig(vocab_size=chars.vocab_size, **PRESETS["shakespeare-char"]["model"]))
    qkv.save(model, tmp_path / "runs" / "shakespeare-char", chars)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(line)[1:]) == 0, line


def test_the_code_map_names_every_folder_and_module():
    """"Reading the code" covers the tree: every package folder and module of src/qkv, and the repository's
    own folders (bench/, tests/, docs/, .ci/)."""
    root = README.parent
    block = re.search(r"## Reading the code\n\n```\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    named = set(re.findall(r"[\w.]+/|[\w.]+\.py", block.group(1)))
    package = root / "src" / "qkv"
    wanted = {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    wanted |= {p.name for p in package.glob("*.py") if p.name != "__main__.py"}
    wanted |= {f"{name}/" for name in ("bench", "tests", "docs", ".ci") if (root / name).is_dir()}
    assert wanted - named == set(), f"the README's code map leaves out {sorted(wanted - named)}"
