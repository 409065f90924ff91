"""What several commands share: up-front checks (the checkpoint is of a family the command runs, an output
file can be written) that run before any slow work, so a mistake costs a second, not a training run; and
the default run directory of a training command."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..checkpoint import family
from ..config import TrainConfig, load_config_file
from ..errors import CheckpointError, InputError
from ..rundir import check_writable, free_dir

# what a person can run on each family instead
USES = {"decoder": "`qkv generate` or `qkv eval`",
        "encoder": "`qkv embed`, or `qkv finetune --init DIR` to train a task head on it",
        "fine-tuned encoder": "`qkv predict` or `qkv evaluate`",
        "encoder-decoder": "`qkv translate`",
        "image classifier": "`qkv predict --image` or `qkv evaluate`"}


def require_family(path: str | Path, command: str, *families: str) -> str:
    """The checkpoint's family, or a one-line error naming the command that fits it."""
    found, model_type = family(path)
    if found not in families:
        wanted = " or ".join(("an " if f[0] in "aeiou" else "a ") + f for f in families)
        raise CheckpointError(f"{path} holds {'an' if found[0] in 'aeiou' else 'a'} {found} model ({model_type}); "
                              f"qkv {command} needs {wanted}: use {USES[found]} for this one")
    return found


def check_output_file(path: str | Path | None, flag: str) -> None:
    """``path`` can be written as a file: not a directory, in a folder that exists or can be made."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {p} is a directory; give a file name (e.g. {p / 'out.txt'})")
    check_writable(p.parent, flag)


def say_truncated(cut: int, total: int, max_len: int) -> None:
    """One stderr line when inputs were cut to the model's positions (the output is still printed)."""
    if cut:
        print(f"note: {cut} of {total} inputs were longer than the model's {max_len} positions and were "
              f"truncated to fit", file=sys.stderr)


def default_out_dir(train_cfg: TrainConfig, config_file: str | None, train_overrides: dict) -> TrainConfig:
    """A run directory nobody named (the preset's runs/NAME) that is taken becomes runs/NAME-2, -3, ...:
    a new run never replaces an older one unless --out-dir names it (and then only with --overwrite)."""
    named = "out_dir" in train_overrides or (config_file and "out_dir" in load_config_file(config_file).get("train", {}))
    if named or train_cfg.overwrite:
        return train_cfg
    free = free_dir(train_cfg.out_dir)
    if str(free) != train_cfg.out_dir:
        print(f"{train_cfg.out_dir} is taken; this run goes to {free} (name the folder with --out-dir)")
    return dataclasses.replace(train_cfg, out_dir=str(free))
