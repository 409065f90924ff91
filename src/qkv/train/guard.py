"""The NaN guard: a step whose loss or gradient norm is not finite changes nothing, and a run that keeps
producing them stops with the likely fixes instead of training on garbage.

One inf/NaN step (a bad batch, an overflow in a bf16 product) would otherwise reach AdamW and turn every
weight and moment into NaN for good. So the trainer checks the step's loss (averaged over the ranks) and its
gradient norm (global: computed after the gradients are exchanged), both before the optimizer runs:

    finite       -> clip, AdamW step, step += 1, the in-a-row count resets
    not finite   -> gradients dropped, weights and AdamW moments untouched, the step is retried on the next
                    batch; counted ("skipped_steps" in metrics.jsonl); after ``max_bad_steps`` in a row:
                    TrainingDiverged, with nothing written (the last checkpoint on disk is the last good one)
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import QkvError


class TrainingDiverged(QkvError):
    """Too many non-finite steps in a row; the message names the step, the last good save and the fixes."""


class NonFiniteGuard:
    def __init__(self, max_in_a_row: int, skipped: int = 0):
        self.max_in_a_row = max_in_a_row
        self.skipped = skipped           # over the whole run (saved with the trainer state)
        self.in_a_row = 0

    def check(self, loss: float, grad_norm: float) -> bool:
        """True when the step may update the weights; False (and counted) when it must be skipped."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        return False

    @property
    def gave_up(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def error(self, step: int, loss: float, grad_norm: float, saved_step: int | None, out_dir: Path,
              lr: float, warmup_iters: int, precision: str) -> TrainingDiverged:
        saved = (f"the last good checkpoint (step {saved_step}) in {out_dir} is untouched and loadable"
                 if saved_step is not None else "nothing was saved yet")
        fixes = [f"a lower --lr (this step's was {lr:.3g})", f"a longer --warmup-iters (now {warmup_iters})"]
        if precision == "bf16":
            fixes.insert(1, "--precision fp32")
        return TrainingDiverged(f"step {step + 1}: loss {loss:g}, gradient norm {grad_norm:g}: {self.in_a_row} "
                                f"non-finite steps in a row (--max-bad-steps {self.max_in_a_row}), so the run "
                                f"stopped; {saved}; try {', '.join(fixes[:-1])} or {fixes[-1]}")
