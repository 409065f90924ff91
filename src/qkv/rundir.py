"""Where a command may write, and how it writes there without losing anything.

Two rules keep a person's files safe:

1. **Claiming an output directory** (``claim_out_dir``), as transformers' Trainer and most tools do it: a
   directory is used only if it does not exist, is empty, or is the run being resumed. A directory that
   holds a qkv run is replaced only with ``overwrite`` (``--overwrite``); a folder holding anything else,
   a plain file, or the folder you are standing in is never used. A default name that is taken gets a
   fresh suffix instead (``free_dir``: ``runs/shakespeare-char-2``), so a new run never replaces an old one.

2. **Writing atomically** (``atomic_dir``): the files go to a fresh temp directory beside the target, which
   then trades places with the target in one ``renameat2(RENAME_EXCHANGE)`` call. A kill at any moment
   leaves the old or the new checkpoint, never a mix. Entries of the old directory that the new one does not
   contain (a report, an ``evaluate/`` folder, a person's notes) are hard-linked into the new one before
   the swap, so they are never deleted, nor hidden by a kill.

   Where the kernel lacks ``renameat2`` the swap takes two renames: target -> ``.NAME.old``, temp -> target.
   A kill between them leaves only ``.NAME.old``: every read finds it (``resolve_dir``), and ``recover``
   (called before every write and by ``Trainer.resume``) puts it back. A kill while the temp directory is
   being filled leaves a hidden ``.NAME.tmp-*`` beside the target, which ``recover`` removes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError

# What qkv writes into a run directory: a folder holding only these (and config.json naming a qkv model)
# is a qkv run that --overwrite may replace.
RUN_ENTRIES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_src.json", "tokenizer_config.json",
               "generation_config.json", "trainer_state.pt",
               "metrics.jsonl", "eval.json", "predictions.json", "predictions.jsonl", "evaluate", "best",
               "confusion.png"}


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def _old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _link_extras(old: Path, new: Path) -> None:
    """Give ``new`` every entry of ``old`` that it lacks, as hard links (no copy, and ``old`` stays whole)."""
    for entry in old.iterdir():
        dest = new / entry.name
        if dest.exists() or dest.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dest)


def _link_or_copy(src, dest) -> None:
    try:
        os.link(src, dest)
    except OSError:                                  # a filesystem without hard links
        shutil.copy2(src, dest)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def recover(target: str | Path) -> None:
    """Clean up after a save that a kill interrupted (see the module docstring)."""
    target = Path(target)
    old = _old_copy(target)
    if old.is_dir():
        if not target.exists():
            os.rename(old, target)                   # killed between the two renames: the old one is current
        else:
            shutil.rmtree(old)                       # killed before the old copy was dropped
    if target.parent.is_dir():
        for entry in target.parent.iterdir():       # killed while a save was being written
            if entry.name.startswith(_temp_prefix(target)) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def resolve_dir(target: str | Path) -> Path:
    """The directory to read ``target`` from: itself, or its old copy while an interrupted swap is pending."""
    target = Path(target)
    old = _old_copy(target)
    return old if not target.exists() and old.is_dir() else target


@contextmanager
def atomic_dir(target: str | Path, carry_over: bool = True, exchange=None):
    """Yield a temp directory to fill; on success it replaces ``target`` atomically; on error it vanishes.

    ``carry_over=False`` drops the old directory's other entries instead (``--overwrite`` of a whole run).
    ``exchange`` is the atomic swap (default ``_exchange``, looked up at each save, so a test can replace
    it); one that returns False exercises the two-rename path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):                     # data on disk before the directory becomes visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, target, carry_over, exchange or _exchange)


def swap_in(tmp: Path, target: Path, carry_over: bool, exchange) -> None:
    """Make the filled ``tmp`` the ``target``: one rename when there is none, else a swap (rule 2 above)."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if carry_over:
        _link_extras(target, tmp)
    if exchange(tmp, target):
        shutil.rmtree(tmp)                           # the swap left the old contents at the temp path
    else:
        old = _old_copy(target)
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)


def is_qkv_run(path: Path) -> bool:
    """True for a directory holding only what qkv writes, with a config.json."""
    return path.is_dir() and (path / "config.json").is_file() and \
        all(entry.name in RUN_ENTRIES for entry in path.iterdir())


def claim_out_dir(path: str | Path, overwrite: bool = False, resuming: str | Path | None = None,
                  flag: str = "--out-dir") -> Path:
    """Check that a run may write to ``path`` (rule 1 above) and that its parent is writable; return it.

    ``resuming``: the run directory being continued (writing there is always allowed).
    """
    path = Path(path)
    where = path.resolve()
    if resuming is not None and where == Path(resuming).resolve():
        return path
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise CheckpointError(f"{flag} {path} is the folder you are working in (or one above it); a run replaces "
                              f"its output directory, so choose a new folder such as runs/NAME")
    if where.exists() and not where.is_dir():
        raise CheckpointError(f"{flag} {path} is a file, not a directory; choose a new folder such as runs/NAME")
    if where.is_dir() and any(where.iterdir()):
        if not is_qkv_run(where):
            others = sorted(e.name for e in where.iterdir() if e.name not in RUN_ENTRIES)
            raise CheckpointError(f"{flag} {path} already holds files that are not a qkv run ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}); nothing was written: choose a new or empty "
                                  f"folder")
        if not overwrite:
            raise CheckpointError(f"{flag} {path} already holds a qkv run; pass --resume {path} to continue it, "
                                  f"--overwrite to replace it, or choose another {flag}")
    check_writable(where, flag)
    return path


def check_writable(where: Path, flag: str) -> None:
    """Fail now, not after hours of training, when ``where`` (a folder, made if missing) cannot be written."""
    existing = Path(where).resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{flag} {where}: {existing} is a file, so no folder can be made below it")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".qkv-write-test-").cleanup()
    except OSError as e:
        raise CheckpointError(f"{flag} {where} cannot be written ({e.strerror} in {existing}); choose a folder "
                              f"you can write to") from None


def free_dir(path: str | Path) -> Path:
    """``path`` if it is free (missing or empty), else the first free ``path-2``, ``path-3``, ..."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file through a temp file and a rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
