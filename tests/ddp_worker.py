"""One training run for tests/test_distributed.py, alone or under torchrun: the per-step losses to a JSON file.

    python tests/ddp_worker.py OUT.json '{"train": {...}, "model": {...}}' [resume]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT.json '...'

Rank 0 writes OUT.json: {"losses": [...], "world": N, "step": final step, "threads": torch threads}.
"""

import json
import sys

import torch

from qkv.config import resolve
from qkv.train.distributed import shutdown
from qkv.train.trainer import Trainer


def main(out: str, options: str, mode: str = "new") -> None:
    cfg = json.loads(options)
    losses = []
    if mode == "resume":
        trainer = Trainer.resume(cfg["train"]["out_dir"], cfg.get("overrides"), log=lambda *a: None)
    else:
        trainer = Trainer(*resolve("tiny", model=cfg.get("model"), train=cfg["train"]), log=lambda *a: None)
    trainer.fit(stop_at_step=cfg.get("stop_at"), on_step=lambda step, loss: losses.append(loss))
    if trainer.world.is_main:
        with open(out, "w") as f:
            json.dump({"losses": losses, "world": trainer.world.size, "step": trainer.step,
                       "threads": torch.get_num_threads(), "first_step": trainer.step - len(losses)}, f)
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
