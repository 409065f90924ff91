"""An experiment's report: a Markdown file with its figures, the exact configuration, the seed and the machine.

    OUT_DIR/report.md      question, setup, results (tables, figures), what they show, configuration (JSON)
    OUT_DIR/*.png          the figures the report shows

The directory is written whole or not at all (a temp directory swapped in when the run ends), and only
where nothing else lives: a new or empty directory, or an earlier report of the same experiment.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from .. import __version__
from ..errors import InputError

MARKER = "<!-- qkv experiment: {name} -->"
FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX"}


def cpu_description() -> str:
    """The CPU's model name and its vector extensions, read at run time (Linux), else the platform's words."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    found = [word for flag, word in FLAGS.items() if flag in flags]
    return name + (f" ({', '.join(found)})" if found else "")


def check_out_dir(out_dir: Path, name: str) -> None:
    """Refuse a directory that holds anything but an earlier report of experiment ``name``."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file; choose a directory for the report")
    if out_dir.resolve() == Path.cwd().resolve():
        raise InputError(f"--out-dir {out_dir} is the current directory; choose a folder for the report")
    if not any(out_dir.iterdir()):
        return
    report = out_dir / "report.md"
    if not report.is_file() or MARKER.format(name=name) not in report.read_text(encoding="utf-8", errors="replace"):
        raise InputError(f"--out-dir {out_dir} already holds other files; choose a new or empty directory "
                         f"(an earlier report of {name} may be replaced)")


class Report:
    """Collects Markdown blocks and figure names while an experiment runs, then writes report.md."""

    def __init__(self, directory: Path, name: str, title: str, config, quick: bool):
        self.dir, self.name, self.title, self.config, self.quick = Path(directory), name, title, config, quick
        self.blocks: list[str] = []
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def text(self, markdown: str) -> None:
        self.blocks.append(markdown.strip())

    def section(self, heading: str, markdown: str = "") -> None:
        self.blocks.append(f"## {heading}" + (f"\n\n{markdown.strip()}" if markdown else ""))

    def table(self, header: list[str], rows: list[list]) -> None:
        def cell(x):
            return f"{x:.4g}" if isinstance(x, float) else str(x)
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
        self.blocks.append("\n".join(lines))

    def figure(self, filename: str, caption: str) -> Path:
        """The path to draw ``filename`` at; the report shows it with ``caption``."""
        self.blocks.append(f"![{caption}]({filename})\n\n*{caption}*")
        return self.dir / filename

    def write(self) -> Path:
        elapsed, cpu = time.perf_counter() - self.started, time.process_time() - self.cpu_started
        command = f"qkv experiment {self.name}" + (" --quick" if self.quick else "")
        config = json.dumps(dataclasses.asdict(self.config), indent=2)
        header = [f"# {self.title}", MARKER.format(name=self.name),
                  f"Made by `{command} --seed {self.config.seed}` in {elapsed:.0f} s ({cpu:.0f} s of CPU time) on "
                  f"{cpu_description()}, "
                  f"{torch.get_num_threads()} threads (a machine shared with other jobs: times are noisy, "
                  f"compare within one run), qkv {__version__}, torch {torch.__version__}, "
                  f"Python {platform.python_version()}." + (" **Quick mode**: a smaller, shorter version "
                                                               "for tests; run without --quick for the "
                                                               "real figures." if self.quick else "")]
        footer = ["## Configuration", f"Everything the run used (seed included); "
                  f"`qkv experiment {self.name}` with these values reproduces it.",
                  f"```json\n{config}\n```"]
        path = self.dir / "report.md"
        path.write_text("\n\n".join(header + self.blocks + footer) + "\n", encoding="utf-8")
        return path
