"""qkv.rundir's two rules, function by function: which directories a run may claim, and atomic writes
(the kill -9 tests of a whole save are in test_checkpoint.py; the command line's in test_cli_runs.py)."""

import os

import pytest

from qkv.errors import CheckpointError
from qkv.rundir import (atomic_dir, check_writable, claim_out_dir, free_dir, is_qkv_run, recover, resolve_dir,
                        write_text_atomic)


def make_run(path, *extra):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qkv-gpt"}')
    (path / "model.safetensors").write_bytes(b"weights")
    for name in extra:
        (path / name).write_text("x")
    return path


# ---- rule 1: claiming an output directory -------------------------------------------------------------------
def test_a_run_directory_is_only_what_qkv_writes_with_a_config(tmp_path):
    assert is_qkv_run(make_run(tmp_path / "run", "metrics.jsonl", "eval.json"))
    assert not is_qkv_run(make_run(tmp_path / "notes", "todo.txt"))
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "model.safetensors").write_bytes(b"")
    assert not is_qkv_run(tmp_path / "noconfig")
    (tmp_path / "file").write_text("x")
    assert not is_qkv_run(tmp_path / "file") and not is_qkv_run(tmp_path / "missing")


def test_claim_accepts_new_empty_and_resumed_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert claim_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()                     # claiming writes nothing
    (tmp_path / "empty").mkdir()
    assert claim_out_dir(tmp_path / "empty") == tmp_path / "empty"
    run = make_run(tmp_path / "run")
    assert claim_out_dir("run", resuming=run) == run.relative_to(tmp_path)     # the same place, spelled otherwise
    assert claim_out_dir(run, overwrite=True) == run


@pytest.mark.parametrize("case,flag,message", [
    ("run", "--out-dir", "--out-dir {path} already holds a qkv run; pass --resume {path} to continue it, "
                         "--overwrite to replace it"),
    ("notes", "--out", "--out {path} already holds files that are not a qkv run (a.txt, b.txt, c.txt, ...)"),
    ("file", "--out-dir", "--out-dir {path} is a file, not a directory"),
    ("cwd", "--out-dir", "is the folder you are working in"),
    ("parent", "--out-dir", "is the folder you are working in (or one above it)"),
])
def test_claim_refuses_what_it_must_not_replace(tmp_path, monkeypatch, case, flag, message):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    if case == "run":
        path = make_run(tmp_path / "run")
    elif case == "notes":
        path = tmp_path / "notes"
        path.mkdir()
        for name in ("a.txt", "b.txt", "c.txt", "d.txt", "config.json"):
            (path / name).write_text("mine")
    elif case == "file":
        path = tmp_path / "file"
        path.write_text("mine")
    else:
        path = tmp_path / "work" if case == "cwd" else tmp_path
    before = sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_text()
    with pytest.raises(CheckpointError) as e:                     # --out-dir is the default flag
        claim_out_dir(path, overwrite=case in ("notes", "cwd", "parent"),
                      **({} if flag == "--out-dir" else {"flag": flag}))
    assert message.format(path=path) in str(e.value)
    assert (sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_text()) == before


def test_a_folder_with_few_other_files_lists_them_all(tmp_path):
    (tmp_path / "notes").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "notes" / name).write_text("mine")
    with pytest.raises(CheckpointError, match=r"not a qkv run \(a.txt, b.txt, c.txt\); nothing was written"):
        claim_out_dir(tmp_path / "notes")


def test_check_writable_names_the_folder_and_the_reason(tmp_path):
    with pytest.raises(CheckpointError, match=r"^--out /proc/qkv-run cannot be written \(.+ in /proc\); choose a "
                                              r"folder you can write to$"):
        claim_out_dir("/proc/qkv-run", flag="--out")             # even root cannot write there
    check_writable(tmp_path / "a" / "b", "--out-dir")              # made later: its nearest parent is writable
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"--out-dir .*file/sub: .*file is a file, so no folder can be made"):
        check_writable(tmp_path / "file" / "sub", "--out-dir")
    if os.geteuid() != 0:                                         # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(CheckpointError, match="cannot be written"):
            check_writable(tmp_path / "ro" / "run", "--out")


def test_free_dir_takes_the_first_free_suffix(tmp_path):
    assert free_dir(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "run").mkdir()
    assert free_dir(tmp_path / "run") == tmp_path / "run"         # empty is free
    (tmp_path / "run" / "x").write_text("x")
    assert free_dir(tmp_path / "run") == tmp_path / "run-2"
    (tmp_path / "run-2").write_text("a file")
    make_run(tmp_path / "run-3")
    assert free_dir(tmp_path / "run") == tmp_path / "run-4"


# ---- rule 2: writing atomically --------------------------------------------------------------------------------
def test_atomic_dir_creates_parents_and_leaves_no_temp(tmp_path):
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        assert tmp.parent == tmp_path / "a" and tmp.name.startswith(".b.tmp-")
        (tmp / "f").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "g").write_text("deep")
    assert (tmp_path / "a" / "b" / "sub" / "g").read_text() == "deep"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


@pytest.mark.parametrize("exchange", [None, lambda a, b: False], ids=["renameat2", "two renames"])
def test_a_swap_carries_over_files_links_and_folders(tmp_path, exchange):
    target = tmp_path / "t"
    target.mkdir()
    (target / "f").write_text("old")
    (target / "notes").write_text("mine")
    (target / "dir").mkdir()
    (target / "dir" / "inner").write_text("kept")
    os.symlink("inner", target / "dir" / "inner-link")            # links stay links, in folders too
    os.symlink("notes", target / "link")
    with atomic_dir(target, exchange=exchange) as tmp:
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "new" and (target / "notes").read_text() == "mine"
    assert (target / "dir" / "inner").read_text() == "kept" and os.readlink(target / "link") == "notes"
    assert os.readlink(target / "dir" / "inner-link") == "inner"
    assert (target / "notes").stat().st_nlink == 1                # the old directory is gone, its links too
    with atomic_dir(target, carry_over=False, exchange=exchange) as tmp:
        (tmp / "f").write_text("newer")
    assert sorted(p.name for p in target.iterdir()) == ["f"] and sorted(os.listdir(tmp_path)) == ["t"]


def test_recover_resolve_dir_and_stale_temps(tmp_path):
    target = tmp_path / "t"
    old = tmp_path / ".t.old"
    old.mkdir()
    (old / "f").write_text("old")
    (tmp_path / ".t.tmp-1").mkdir()
    (tmp_path / ".tt.tmp-1").mkdir()                              # another target's temp: not ours to remove
    (tmp_path / ".t.tmp-file").write_text("a file, not a save")
    assert resolve_dir(target) == old
    recover(target)
    assert (target / "f").read_text() == "old" and resolve_dir(target) == target
    assert sorted(os.listdir(tmp_path)) == [".t.tmp-file", ".tt.tmp-1", "t"]
    old.mkdir()                                                  # both: the old copy was about to be dropped
    recover(target)
    assert sorted(os.listdir(tmp_path)) == [".t.tmp-file", ".tt.tmp-1", "t"]
    recover(tmp_path / "missing" / "x")                          # no parent: nothing to do, no error


def test_write_text_atomic_replaces_a_file_whole(tmp_path):
    path = tmp_path / "out" / "deeper" / "report.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second, café 日本")
    assert path.read_bytes() == "second, café 日本".encode("utf-8")
    assert os.listdir(tmp_path / "out" / "deeper") == ["report.json"]
