"""Where a command may write, and how it writes there without losing anything.

Two rules keep a person's files safe:

1. **Claiming an output directory** (``claim_out_dir``), as transformers' Trainer and most tools do it: a
   directory is used only if it does not exist, is empty, or is the run being resumed. A directory that
   holds a qkv run is replaced only with ``overwrite`` (``--overwrite``); a folder holding anything else,
   a plain file, the folder you are standing in, or the checkpoint the command reads (or a folder inside
   it, or one around it) is never used. A default name that is taken gets a fresh suffix instead
   (``free_dir``: ``runs/shakespeare-char-2``), so a new run never replaces an old one. A single output
   file (``claim_out_file``: a PNG, a page, a translation) follows the same rule: an existing file is
   replaced only with ``--overwrite``, and a checkpoint's own files (its config.json, its weights) never.

2. **Writing atomically** (``atomic_dir``): the files go to a fresh temp directory beside the target, which
   then trades places with the target in one ``renameat2(RENAME_EXCHANGE)`` call. A kill at any moment
   leaves the old or the new checkpoint, never a mix. Entries of the old directory that the new one does not
   contain (a report, an ``evaluate/`` folder, a person's notes) are hard-linked into the new one before
   the swap, so they are never deleted, nor hidden by a kill.

   Where the kernel lacks ``renameat2`` the swap takes two renames: target -> ``.NAME.old``, temp -> target.
   A kill between them leaves only ``.NAME.old``: every read finds it (``resolve_dir``), and ``recover``
   (called before every write and by ``Trainer.resume``) puts it back. A kill while the temp directory is
   being filled leaves a hidden ``.NAME.tmp-*`` beside the target, which ``recover`` removes. A single
   file goes the same way (``write_atomic``): a temp file beside it, renamed over it when it is whole.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from typing import Callable, Iterable

from .errors import CheckpointError

# What qkv writes into a run directory: a folder holding only these (and config.json naming a qkv model)
# is a qkv run that --overwrite may replace.
RUN_ENTRIES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_src.json", "tokenizer_config.json",
               "generation_config.json", "trainer_state.pt",
               "metrics.jsonl", "eval.json", "predictions.json", "predictions.jsonl", "evaluate", "best",
               "confusion.png"}
# What a checkpoint directory (qkv's or Hugging Face's) is read from: a single-file output never replaces
# one of these beside a config.json, with --overwrite or without (a PNG over config.json, or weights
# replaced by a page, leave the checkpoint unloadable). Weights files are refused wherever they are.
CHECKPOINT_FILES = RUN_ENTRIES | {"vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json",
                                  "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                                  "model.safetensors.index.json", "pytorch_model.bin", "adapter_config.json",
                                  "adapter_model.safetensors", "src_tokenizer.json"}
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


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


def read_json(path: Path, missing: str) -> dict:
    """The JSON object in ``path``; ``missing`` is the error message (with its fix) when the file is absent."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt, fix or re-save it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; fix or re-save it")
    return data


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
                  flag: str = "--out-dir", reads: Iterable[str | Path | None] = ()) -> Path:
    """Check that a run may write to ``path`` (rule 1 above) and that its parent is writable; return it.

    ``resuming``: the run directory being continued (writing there is always allowed).
    ``reads``: the checkpoints the command reads. Writing over one of them, inside it or around it is
    refused even with ``overwrite``: ``qkv quantize RUN RUN`` would leave RUN's trainer_state.pt beside
    weights it no longer describes, and a later ``--resume`` would fail.
    """
    path = Path(path)
    where = path.resolve()
    if resuming is not None and where == Path(resuming).resolve():
        return path
    for source in reads:
        if source is None:
            continue
        src = Path(source).resolve()
        if where == src or src in where.parents or where in src.parents:
            relation = "is" if where == src else "is inside" if src in where.parents else "holds"
            raise CheckpointError(f"{flag} {path} {relation} the checkpoint {source} this command reads; "
                                  f"write the new checkpoint to a folder of its own (e.g. {src.name}-out)")
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


def claim_report_dir(path: str | Path, flag: str = "--out-dir") -> Path:
    """Check that a command may write its report files (eval.json, predictions, confusion.png) into the
    folder ``path``: a new one, or one holding only what qkv writes (an earlier report, a run), whose
    report files it replaces; never a folder of a person's other files."""
    path = Path(path)
    where = path.resolve()
    if where.exists() and not where.is_dir():
        raise CheckpointError(f"{flag} {path} is a file; give a folder for eval.json and the predictions")
    if where.is_dir():
        others = sorted(e.name for e in where.iterdir() if e.name not in RUN_ENTRIES)
        if others:
            raise CheckpointError(f"{flag} {path} already holds files that qkv did not write ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder")
    check_writable(where, flag)
    return path


def claim_out_file(path: str | Path, overwrite: bool = False, flag: str = "--out",
                   reads: Iterable[str | Path | None] = ()) -> Path:
    """Check that a command may write the single file ``path`` (rule 1 above), before any work; return it.

    An existing file is replaced only with ``overwrite`` (it may be a person's own: qkv cannot tell); a
    checkpoint's own files and any weights file, never; nor a file the command reads (``reads``).
    """
    path = Path(path)
    where = path.resolve()
    if where.is_dir():
        raise CheckpointError(f"{flag} {path} is a directory; give a file name (e.g. {path / 'out.txt'})")
    if any(source is not None and where == Path(source).resolve() for source in reads):
        raise CheckpointError(f"{flag} {path} is also this command's input; write to another file")
    if where.suffix.lower() in WEIGHT_SUFFIXES or (where.name in CHECKPOINT_FILES and
                                                    (where.parent / "config.json").is_file()):
        raise CheckpointError(f"{flag} {path} is a file of the checkpoint in {where.parent}; qkv never writes "
                              f"over a checkpoint's files (even with --overwrite): choose another file name")
    if where.exists() and not overwrite:
        raise CheckpointError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another "
                              f"file name")
    check_writable(where.parent, flag)
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


def write_atomic(path: str | Path, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then rename it into place: readers (and a
    kill at any moment) see the old file or the new one, never half of one; a failure leaves no temp file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the folder {path.parent} ({e.strerror}); choose another output "
                              f"path") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())             # mkstemp makes 0600; an output is for sharing
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_atomic`` of a UTF-8 text file."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
