"""Run the code in a Markdown file the way a reader would, top to bottom: a doctest for documentation.

    python docs/snippets.py docs/tour.md            # from the repository root, after `make demo`

Every ```python block runs, in order, in one shared namespace (so a later block uses what an earlier one
made); every line of a ```bash block is a `qkv ...` command, run through ``qkv.cli.main`` and required to
succeed. Blocks in any other fence (```text, ```json) are shown, not run. The test suite runs docs/*.md
this way against a small model it trains first (tests/test_docs.py); run from the repository root with
the demo model, this script also remakes the tour's figures (they are written under docs/figures).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def code_blocks(markdown: str) -> list[tuple[str, str, int]]:
    """(language, code, line number of the opening fence) for every fenced block."""
    return [(m[1], m[2], markdown.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(markdown)]


def run_markdown(path: str | Path, echo=print) -> int:
    """Run the python and bash blocks of ``path`` in the current directory; return how many ran."""
    from qkv.cli import main

    path = Path(path)
    namespace: dict = {"__name__": "__tour__"}
    ran = 0
    for language, code, line in code_blocks(path.read_text(encoding="utf-8")):
        where = f"{path}:{line}"
        if language == "python":
            echo(f"{where}: python block")
            exec(compile(code, where, "exec"), namespace)
        elif language == "bash":
            for command in code.splitlines():
                argv = shlex.split(command, comments=True)
                if not argv:
                    continue
                if argv[0] != "qkv":
                    raise ValueError(f"{where}: only `qkv ...` commands can run here, not {command!r}; "
                                     f"fence it as ```text if it is not meant to run")
                echo(f"{where}: {command.strip()}")
                status = main(argv[1:])
                if status != 0:
                    raise AssertionError(f"{where}: `{command.strip()}` exited with status {status}")
        else:
            continue
        ran += 1
    return ran


if __name__ == "__main__":
    for name in sys.argv[1:] or ["docs/tour.md"]:
        print(f"{name}: {run_markdown(name)} blocks ran")
