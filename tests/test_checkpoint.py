import json

import pytest
import torch

from qkv import GPT, ModelConfig, Tokenizer, load, save
from qkv.checkpoint import write_model_files
from qkv.rundir import atomic_dir
from qkv.errors import CheckpointError


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, max_len=16, n_layers=2, d_model=16, n_heads=2, pos="rope"))
    save(model, tmp_path / "ck", Tokenizer.train_char("abcdefghijklmnopqrst"))
    return model, tmp_path / "ck"


def test_round_trip_same_logits_and_layout(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qkv-gpt" and config["model"]["pos"] == "rope"
    again = load(path)
    ids = torch.randint(0, 20, (2, 10))
    assert torch.equal(model.eval()(ids).logits, again(ids).logits)
    assert again.head.weight.data_ptr() == again.tok.weight.data_ptr()          # still tied
    assert again.tokenizer.vocab_size == 20 and not again.training


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_save_replaces_its_files_and_keeps_the_others(saved, tmp_path, exchange):
    model, path = saved
    (path / "notes.txt").write_text("a person's notes")
    (path / "evaluate").mkdir()
    (path / "evaluate" / "eval.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"an older save")
    swap = (lambda a, b: False) if exchange == "two renames" else None
    with atomic_dir(path, **({"exchange": swap} if swap else {})) as tmp:
        write_model_files(tmp, model, None)
    assert (path / "notes.txt").read_text() == "a person's notes"
    assert (path / "evaluate" / "eval.json").read_text() == "{}"
    assert torch.equal(load(path).head.weight, model.head.weight)        # the weights are the new save's
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]                 # no temp or .old left behind


def test_overwrite_save_drops_the_old_entries(saved, tmp_path):
    model, path = saved
    (path / "eval.json").write_text("{}")
    with atomic_dir(path, carry_over=False) as tmp:
        write_model_files(tmp, model, None)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_error_inside_atomic_dir_keeps_old(saved, tmp_path):
    _, path = saved
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_dir(path) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (path / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "missing"),
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:300]),
     "truncated or corrupt"),
    (lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}"),
     "truncated or corrupt"),
    (lambda p: (p / "config.json").write_text('{"model_type": "qkv-gpt", "model": {"vocab_size": 20,'),
     "not valid JSON"),
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text(json.dumps(
        {"model_type": "qkv-gpt", "model": {"vocab_size": 20, "max_len": 16, "n_layers": 2, "d_model": 32,
                                            "n_heads": 2, "pos": "rope"}})), "do(es)? not match"),
    (lambda p: (p / "config.json").write_text(json.dumps(
        {"model_type": "qkv-gpt", "model": {"vocab_size": 20, "max_len": 16, "n_layers": 3, "d_model": 16,
                                            "n_heads": 2, "pos": "rope"}})), "do(es)? not match"),
    (lambda p: (p / "config.json").write_text(json.dumps({"model_type": "qkv-gpt", "model": {"colour": 1}})),
     "unknown ModelConfig key"),
    (lambda p: (p / "config.json").write_text(json.dumps({"model_type": "llama"})), "not supported"),
    (lambda p: (p / "tokenizer.json").write_text("{}"), "not a valid tokenizer.json"),
])
def test_damaged_checkpoint_gives_named_error(saved, damage, message):
    _, path = saved
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_tokenizer_larger_than_vocab_is_rejected(saved):
    model, path = saved
    Tokenizer.train_char("abcdefghijklmnopqrstuvwxyz").save(path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="belongs to another model"):
        load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load(tmp_path / "nothing")


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    """A real kill -9 at an arbitrary moment of a save loop: the directory always loads."""
    import signal
    import subprocess
    import sys
    import time
    script = f"""
import torch, qkv
torch.manual_seed(0)
m = qkv.GPT(qkv.ModelConfig(vocab_size=64, max_len=64, n_layers=4, d_model=128, n_heads=4))
qkv.save(m, {str(tmp_path / 'ck')!r})
print('ready', flush=True)
while True:
    for p in m.parameters():
        p.data.add_(1.0)
    qkv.save(m, {str(tmp_path / 'ck')!r})
"""
    for delay in (0.05, 0.2, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = load(tmp_path / "ck")
        # every tensor comes from one save: all were shifted by the same whole number of steps
        shift = (model.blocks[0].norm1.weight - 1.0).mean().item()
        assert abs(shift - round(shift)) < 1e-3
        assert torch.allclose(model.norm_f.weight, model.blocks[3].norm2.weight)
