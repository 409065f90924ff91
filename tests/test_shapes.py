"""The shape legend (qkv.shapes) is the one every tensor name uses: each suffix letter in the package is one
of its letters, and every nn/ and models/ file (and any other file with a legend) lists the letters it uses."""

import re
from pathlib import Path

import pytest

from qkv.shapes import LEGEND

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "qkv"
SUFFIX = re.compile(r"\b[a-z][a-z0-9_]*_([A-Z0-9][A-Za-z0-9]*)\b")     # x_BLC, yx_2L, w_OGk (k: a local size)
LEGEND_LINE = re.compile(r"^Legend: (.*?)(?:\n\n|\n {4})", re.S | re.M)


def letters_used(source: str) -> set[str]:
    return {c for suffix in SUFFIX.findall(source) if re.search("[A-Z]", suffix) for c in suffix if c.isupper()}


def letters_listed(source: str) -> set[str]:
    """The letters a file's ``Legend:`` paragraph names: each item's leading capitals (``Y X image rows``)."""
    found = LEGEND_LINE.search(source)
    listed = set()
    for item in re.split(r"[,;()]", found.group(1) if found else ""):
        words = item.split()
        while words and re.fullmatch(r"[A-Z]", words[0]):
            listed.add(words.pop(0))
    return listed


def test_the_helpers_read_names_and_legends():
    assert letters_used("q_BHLD = k_BGMD; yx_2L; w_OGk; MAX_ROWS; x_1; ids") == set("BHLDGMOG") | {"L"}
    assert letters_listed('"""x.\n\nLegend: B batch, Y X rows and columns (K classes), N rows.\n\n"""') == set("BYXKN")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_suffix_letter_is_in_the_legend(path):
    unknown = letters_used(path.read_text()) - set(LEGEND)
    assert not unknown, f"{path.name} uses shape letters {sorted(unknown)} that qkv.shapes does not define"


LAYERS_AND_MODELS = [*PACKAGE.glob("nn/*.py"), *PACKAGE.glob("models/*.py")]
WITH_A_LEGEND = [p for p in PACKAGE.rglob("*.py") if LEGEND_LINE.search(p.read_text())]


@pytest.mark.parametrize("path", sorted(set(LAYERS_AND_MODELS) | set(WITH_A_LEGEND)),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layer_and_model_files_list_the_letters_they_use(path):
    """nn/ and models/ files must have a legend; any other file that has one lists every letter it uses."""
    source = path.read_text()
    missing = letters_used(source) - letters_listed(source)
    assert not missing, f"{path.name}'s legend does not list {sorted(missing)}"
