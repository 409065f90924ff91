import dataclasses
import json

import pytest
import torch

import qkv
from qkv import GPT, ModelConfig, Tokenizer, load, save
from qkv.checkpoint import write_model_files
from qkv.family import Family
from qkv.interop import is_gguf
from qkv.loading import family_of, model_type_of
from qkv.rundir import atomic_dir, recover, resolve_dir
from qkv.errors import CheckpointError, ConfigError, InputError


def family(path):
    """(family, model_type) of a checkpoint, read from its config.json (or a GGUF file's name or magic)."""
    return family_of(path), model_type_of(path)


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
    (lambda p: (p / "config.json").write_text(json.dumps({"model_type": "falcon"})), "not supported"),
    (lambda p: (p / "tokenizer.json").write_text("{}"), "not a valid tokenizer.json"),
])
def test_damaged_checkpoint_gives_named_error(saved, damage, message):
    _, path = saved
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_family_reads_only_the_config(tmp_path):
    for model_type, fam in (("gpt2", "decoder"), ("bert", "encoder"), ("qkv-gpt", "decoder"),
                            ("qkv-seq2seq", "encoder-decoder"), ("qkv-bert-tag", "fine-tuned encoder")):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert family(tmp_path / model_type) == (fam, model_type)          # no weights needed
    (tmp_path / "model.gguf").write_bytes(b"GGUF")                 # llama.cpp's format: a decoder
    assert family(tmp_path / "model.gguf") == ("decoder", "gguf")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(CheckpointError, match=r"model_type 't5' in .*config.json is not supported; qkv loads "
                                              r"\[.*'qkv-gpt'.*'bert'.*'gpt2'.*\]"):
        family(tmp_path / "t5")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        family(tmp_path / "list")
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no 'model_type'"):
        family(tmp_path / "untyped")


def test_family_of_a_model_is_its_class_s_and_a_checkpoint_s_the_same(tmp_path):
    from qkv.models import BERT, BertTagger, EncoderDecoder
    cfg = ModelConfig(vocab_size=16, max_len=8, n_layers=1, d_model=8, n_heads=2)
    for model, fam in ((GPT(cfg), Family.DECODER), (EncoderDecoder(cfg), Family.ENCODER_DECODER),
                       (BERT(dataclasses.replace(cfg, mask="bidirectional")), Family.ENCODER),
                       (BertTagger(dataclasses.replace(cfg, mask="bidirectional"), ["O", "B-X"]),
                        Family.FINETUNED_ENCODER)):
        save(model, tmp_path / model.model_type)
        assert family_of(model) is fam and family_of(tmp_path / model.model_type) is fam
        assert f"a {fam} model" == f"a {fam.value} model" and fam == fam.value          # the CLI's words
    with pytest.raises(InputError, match="Linear is not a qkv model"):
        family_of(torch.nn.Linear(2, 2))


def test_a_model_saved_without_tokenizer_loads_without_one(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, max_len=16, n_layers=1, d_model=16, n_heads=2, tie_embeddings=False))
    assert save(model, tmp_path / "m") == tmp_path / "m"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = load(str(tmp_path / "m"), device="cpu")
    assert again.tokenizer is None and again.head.weight is not again.tok.weight
    assert torch.equal(again.head.weight, model.head.weight) and torch.equal(again.tok.weight, model.tok.weight)
    config_text = (tmp_path / "m" / "config.json").read_text(encoding="utf-8")
    config = json.loads(config_text)
    assert config["qkv_version"] == qkv.__version__ and config["model"] == dataclasses.asdict(model.cfg)
    assert config_text == json.dumps(config, indent=2) + "\n"          # readable by a person: one key a line
    from safetensors import safe_open
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as f:    # what transformers expects of a file
        assert f.metadata() == {"format": "pt"}


def test_tokenizer_larger_than_vocab_is_rejected(saved):
    model, path = saved
    Tokenizer.train_char("abcdefghijklmnopqrstuvwxyz").save(path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="belongs to another model"):
        load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load(tmp_path / "nothing")


# ---- kill -9 inside a save, at each point where the disk is in a different state ------------------------
# A forked child process saves a model (the old checkpoint, weights as initialized), shifts every weight by
# 1 and saves again (the new one), and kills itself with SIGKILL at one point inside that second save.
def save_then_die_inside_the_next_save(directory: str, point: str, marker: str) -> None:
    import os
    import shutil
    import signal
    from qkv import checkpoint, rundir
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, max_len=32, n_layers=2, d_model=64, n_heads=4))
    save(model, directory)
    open(os.path.join(directory, "notes.txt"), "w").write("a person's notes")
    for p in model.parameters():
        p.data.add_(1.0)

    def kill():
        open(marker, "w").write(point)                     # proof that the kill landed at this point
        os.kill(os.getpid(), signal.SIGKILL)

    def after(fn, when=lambda *a: True):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if when(*args):
                kill()
            return out
        return wrapped

    if point == "writing the weights":
        checkpoint.save_file = after(checkpoint.save_file)
    elif point == "carrying the other files over":
        rundir._link_extras = after(rundir._link_extras)
    elif point == "after the exchange":
        rundir._exchange = after(rundir._exchange)
    else:                                                  # filesystems without renameat2: two renames
        rundir._exchange = lambda a, b: False
        if point == "between the two renames":
            os.rename = after(os.rename, lambda src, dst: str(dst).endswith(".old"))
        else:                                              # killed before the old copy is removed
            rmtree = shutil.rmtree
            shutil.rmtree = lambda path, *a, **k: kill() if str(path).endswith(".old") else rmtree(path, *a, **k)
    save(model, directory)
    open(marker, "w").write("the save finished")


# point -> which checkpoint a reader sees after the kill, and what the kill left beside it
KILL_POINTS = {
    "writing the weights": ("old", [".ck.tmp-"]),
    "carrying the other files over": ("old", [".ck.tmp-"]),
    "after the exchange": ("new", [".ck.tmp-"]),              # the old contents wait at the temp path
    "between the two renames": ("old", [".ck.old", ".ck.tmp-"]),   # no ck at all: readers use .ck.old
    "dropping the old copy": ("new", [".ck.old"]),
}


def weight_shift(model) -> float:
    """0 for the old save, 1 for the new one; every tensor must agree (one save, never a mix)."""
    shifts = {round(p.mean().item() - q.mean().item(), 4) for p, q in zip(model.parameters(), reference_params())}
    assert len(shifts) == 1, f"the checkpoint mixes saves: shifts {shifts}"
    return shifts.pop()


def reference_params():
    torch.manual_seed(0)
    return list(GPT(ModelConfig(vocab_size=64, max_len=32, n_layers=2, d_model=64, n_heads=4)).parameters())


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_during_a_save_leaves_one_whole_checkpoint_and_the_next_save_recovers(tmp_path, point):
    import multiprocessing
    import signal
    ck, marker = tmp_path / "ck", tmp_path.parent / f"{tmp_path.name}.marker"
    child = multiprocessing.get_context("fork").Process(target=save_then_die_inside_the_next_save,
                                                        args=(str(ck), point, str(marker)))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert marker.read_text() == point                        # the kill landed inside the save, at that point
    seen, left = KILL_POINTS[point]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "ck")
    assert len(leftovers) == len(left) and all(n.startswith(x) for n, x in zip(leftovers, left)), leftovers
    assert ck.exists() == (point != "between the two renames")
    model = load(ck)                                          # readers find a whole checkpoint either way
    assert weight_shift(model) == (0.0 if seen == "old" else 1.0)
    assert (resolve_dir(ck) / "notes.txt").read_text() == "a person's notes"
    save(model, ck)                                           # the next save cleans up after the kill
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert (ck / "notes.txt").read_text() == "a person's notes"
    assert weight_shift(load(ck)) == weight_shift(model)


def test_resume_recovers_a_swap_cut_between_the_two_renames(tmp_path):
    """recover() alone (as Trainer.resume calls it): the old copy becomes the directory again."""
    ck = tmp_path / "ck"
    save(GPT(ModelConfig(vocab_size=8, max_len=8, n_layers=1, d_model=8, n_heads=2)), ck)
    ck.rename(tmp_path / ".ck.old")
    (tmp_path / ".ck.tmp-abc").mkdir()
    assert resolve_dir(ck) == tmp_path / ".ck.old" and family(ck) == ("decoder", "qkv-gpt")
    recover(ck)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"] and resolve_dir(ck) == ck
    recover(ck)                                               # nothing to do: nothing changes
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


# ---- GGUF detection, quantized loads and encoders to fine-tune (the branches qkv.load dispatches on) ----------
def test_gguf_is_told_by_its_name_or_its_magic_bytes(tmp_path):
    (tmp_path / "renamed.bin").write_bytes(b"GGUF" + b"\x00" * 12)    # llama.cpp's magic, any name
    (tmp_path / "plain.bin").write_bytes(b"GGUG" + b"\x00" * 12)
    (tmp_path / "folder.gguf").mkdir()
    assert is_gguf(tmp_path / "renamed.bin") and is_gguf(tmp_path / "not-yet-there.gguf")
    assert is_gguf(tmp_path / "folder.gguf")                           # the name decides before the disk
    assert not is_gguf(tmp_path / "plain.bin") and not is_gguf(tmp_path) and not is_gguf(tmp_path / "nothing")
    assert family(tmp_path / "renamed.bin") == ("decoder", "gguf")
    with pytest.raises(CheckpointError, match=r"plain.bin is a file; pass a checkpoint directory or a \.gguf file"):
        load(tmp_path / "plain.bin")


def test_quantized_load_swaps_linears_and_keeps_the_logits_close(saved):
    from qkv.quant import Int8Linear, is_quantized
    model, path = saved
    ids = torch.randint(0, 20, (2, 10))
    float_logits = load(path)(ids).logits
    int8 = load(path, quantized=True)
    assert is_quantized(int8) and isinstance(int8.blocks[0].attn.wq, Int8Linear)
    assert not is_quantized(load(path))                                 # only when asked
    error = (int8(ids).logits - float_logits).abs().max() / float_logits.abs().max()
    assert 0 < error < 0.02                                             # int8 per channel, bf16 activations


def test_an_invalid_quantization_layout_is_a_named_error(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "quantization": {"blocks.0.attn.wq": "int3"}}))
    with pytest.raises(CheckpointError, match=r"config.json has an invalid quantization layout .*re-run qkv quantize"):
        load(path)


@pytest.fixture
def encoder_dir(tmp_path):
    from qkv.models import BERT
    torch.manual_seed(0)
    tok = Tokenizer.train_wordpiece(["the cat sat on the mat", "a dog ran home"] * 10, vocab_size=60)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_len=16, n_layers=1, d_model=16, n_heads=2,
                      mask="bidirectional", type_vocab_size=2)
    save(BERT(cfg), tmp_path / "bert", tok)
    return tmp_path / "bert"


def test_from_pretrained_encoder_copies_the_trunk_and_makes_a_new_head(encoder_dir):
    from qkv.train.pretrained import from_pretrained_encoder
    from qkv.models import BertClassifier, BertQA
    source = load(encoder_dir)
    model = from_pretrained_encoder(encoder_dir, "classify", ["neg", "pos"])
    assert type(model) is BertClassifier and model.labels == ["neg", "pos"] and model.training
    trunk = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())
    assert model.tokenizer.vocab_size == source.tokenizer.vocab_size
    qa = from_pretrained_encoder(source, "qa")                        # a loaded encoder works too
    assert type(qa) is BertQA and torch.equal(qa.tok.weight, source.tok.weight)


@pytest.mark.parametrize("args, error, message", [
    (("mystery",), ConfigError, "unknown head 'mystery'; choose one of"),
    (("qa", ["a", "b"]), ConfigError, "head 'qa' takes no labels; pass labels only for 'classify' and 'tag'"),
    (("classify", ["only"]), ConfigError, "needs at least 2 distinct string labels"),
])
def test_from_pretrained_encoder_refuses_what_does_not_fit(encoder_dir, args, error, message):
    from qkv.train.pretrained import from_pretrained_encoder
    with pytest.raises(error, match=message):
        from_pretrained_encoder(encoder_dir, *args)


def test_from_pretrained_encoder_needs_an_encoder_and_its_tokenizer(encoder_dir, saved, tmp_path):
    from qkv.train.pretrained import from_pretrained_encoder
    _, gpt = saved
    with pytest.raises(CheckpointError, match=r"holds a 'qkv-gpt' model, not an encoder; fine-tune from"):
        from_pretrained_encoder(gpt, "classify", ["a", "b"])
    (encoder_dir / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no tokenizer \(tokenizer.json or vocab.txt\)"):
        from_pretrained_encoder(encoder_dir, "classify", ["a", "b"])
    big = Tokenizer.train_wordpiece(["lots of other words here now", "and more words still"] * 40, vocab_size=200)
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ tokens but the encoder only \d+"):
        from_pretrained_encoder(encoder_dir, "classify", ["a", "b"], tokenizer=big)


def test_load_reads_a_gguf_by_name_or_by_magic_bytes_and_keeps_it_quantized_when_asked(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gguf_fixtures import random_llama, write_llama_gguf
    from qkv.quant import is_quantized
    path = write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers), {"attn_q": "Q8_0"})
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(path.read_bytes())                              # llama.cpp's magic, another name
    ids = torch.randint(0, 300, (1, 12))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    with torch.no_grad():
        expected = reference(ids).logits
        for p in (path, renamed):
            model = load(p)
            assert not is_quantized(model) and model.tokenizer is not None
            assert (model(ids).logits - expected).abs().max() < 1e-4
        kept = load(renamed, quantized=True)
        assert is_quantized(kept)                                       # the Q8_0 tensor stays int8
        assert 0 < (kept(ids).logits - expected).abs().max() < 0.05 * expected.abs().max()


LOAD_THREADS_PROBE = """
import os, sys, torch
os.getloadavg = lambda: (64.0, 0.0, 0.0)                          # every core is busy with other processes
import qkv
qkv.save(qkv.GPT(qkv.ModelConfig(vocab_size=20, max_len=16, n_layers=1, d_model=16, n_heads=2)), sys.argv[1])
if sys.argv[2] == "user":
    torch.set_num_threads(3)                                     # not torch's default on any machine we run
qkv.load(sys.argv[1])
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("who", ["qkv", "user"])
def test_load_takes_the_idle_cores_unless_the_user_chose(tmp_path, who):
    """qkv.load in a fresh process follows qkv.runtime (one thread when the cores are busy: a GGUF's
    dequantization took 12-14 s on two contended threads, 2-3 s on one), unless the program set a count."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", LOAD_THREADS_PROBE, str(tmp_path / "m"), who],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) == (3 if who == "user" else 1)


def test_model_from_state_builds_without_init_casts_and_ties_again():
    """The one way every loader builds a model: the tensors given (cast to each module's dtype), the tied
    head the embedding itself again, no random init spent (a model whose init ran would differ)."""
    from qkv.weights import model_from_state, tied_aliases
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, max_len=16, n_layers=2, d_model=16, n_heads=2, pos="rope", tie_embeddings=True)
    source = GPT(cfg)
    state = {k: v.to(torch.bfloat16) for k, v in source.state_dict().items() if k not in tied_aliases(source)}
    assert "head.weight" not in state                         # saved once, as safetensors needs it
    model = model_from_state(lambda: GPT(cfg), state, "the test's tensors")
    assert model.head.weight is model.tok.weight and tied_aliases(model) == {"head.weight": "tok.weight"}
    for name, p in model.state_dict().items():
        assert p.dtype == torch.float32 and not p.is_meta, name
        if name in state:
            assert torch.equal(p, state[name].float()), name
    assert torch.equal(model.pos.cos_PD, source.pos.cos_PD)   # buffers rebuilt, not left on the meta device
    with pytest.raises(CheckpointError, match="the test's tensors do not fit the model"):
        model_from_state(lambda: GPT(cfg), {**state, "extra.weight": torch.zeros(1)}, "the test's tensors")
