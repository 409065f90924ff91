"""Every code block in docs/*.md runs (docs/snippets.py), against a small model trained first.

The tour loads ``runs/shakespeare-char``, the model `make demo` trains; here the blocks run in a temp
directory holding a tiny stand-in of that name (conftest's ``tiny_run``), so their figures go to its
docs/figures and the repository's own are never touched.
"""

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load_runner():
    spec = importlib.util.spec_from_file_location("snippets", DOCS / "snippets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workdir(tiny_run):
    return tiny_run.parent.parent                          # holds runs/shakespeare-char


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_block_runs(workdir, monkeypatch, page):
    monkeypatch.chdir(workdir)
    runner = load_runner()
    ran = runner.run_markdown(DOCS / page, echo=lambda *a: None)
    assert ran > 0
    if page == "tour.md":
        figures = {p.name for p in (workdir / "docs" / "figures").iterdir()}
        linked = {line.split("](figures/")[1].split(")")[0] for line in (DOCS / page).read_text().splitlines()
                  if "](figures/" in line}
        assert linked <= figures and all((DOCS / "figures" / name).is_file() for name in linked)


def test_runner_refuses_what_it_cannot_run(tmp_path):
    runner = load_runner()
    page = tmp_path / "x.md"
    page.write_text("```bash\nrm -rf /\n```\n")
    with pytest.raises(ValueError, match="only `qkv ...` commands"):
        runner.run_markdown(page, echo=lambda *a: None)
    page.write_text("```python\nassert 1 == 2\n```\n```text\nnot run\n```\n")
    with pytest.raises(AssertionError):
        runner.run_markdown(page, echo=lambda *a: None)
