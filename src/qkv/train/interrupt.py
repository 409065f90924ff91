"""Ctrl-C during training: finish the step, save, and say how to continue; a second Ctrl-C aborts at once.

    with StopRequest() as stop:          # installs the SIGINT handler for the loop's lifetime
        while training:
            step()
            if stop:                     # the person pressed Ctrl-C during this step
                save(); raise TrainingInterrupted(step, out_dir)

The first Ctrl-C only sets a flag, so the step in flight completes and the checkpoint written after it
resumes exactly. The handler then hands SIGINT back to Python's default, so a second Ctrl-C raises
``KeyboardInterrupt`` wherever the program is, even inside the save (which is atomic: the previous
checkpoint stays loadable). Outside the main thread signals cannot be caught; there the flag stays unset.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C after saving the run at ``step`` in ``out_dir``."""

    def __init__(self, step: int, out_dir: Path):
        super().__init__(f"interrupted at step {step}; the run is saved in {out_dir}")
        self.step, self.out_dir = step, out_dir


class StopRequest:
    def __init__(self):
        self.requested = False
        self._previous = None

    def __bool__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)     # the next Ctrl-C aborts at once

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
