"""``qkv.for_inference``: the one speed step every inference command takes, and no loader takes.

Legend: B batch, L length, V vocab.
"""

import pytest
import torch
from torch import nn

import qkv
from qkv import GPT, ModelConfig, Tokenizer
from qkv.cli import main
from qkv.models import BERT
from qkv.quant import quantize_model
from qkv.runtime import inference
from qkv.runtime.onednn import OneDNNLinear, onednn_pays

TEXT = "the cat sat on the mat. a dog is sleeping in the sun. cats and dogs play chess.\n" * 8


def column_major(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.stride(0) == 1}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A decoder and an encoder on disk, with tokenizers (sizes not the defaults: wide q/k/v and FFN)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("inference")
    char = Tokenizer.train_char(TEXT)
    gpt = GPT(ModelConfig(vocab_size=64, max_len=48, n_layers=2, d_model=32, n_heads=4, d_ff=96))
    qkv.save(gpt, root / "gpt", char)
    words = Tokenizer.train_wordpiece(TEXT.split(". ") * 5, vocab_size=80)
    bert = BERT(ModelConfig(vocab_size=words.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4,
                            norm_placement="post", mask="bidirectional", type_vocab_size=2, embed_norm=True))
    qkv.save(bert, root / "bert", words)
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return root


def test_load_gives_the_model_as_saved_and_for_inference_only_changes_speed(checkpoints):
    model = qkv.load(checkpoints / "gpt")
    assert not model.training and column_major(model) == set()              # no loader makes the swaps
    ids_BL = torch.randint(0, model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        before_BLV = model(ids_BL).logits
        assert inference.for_inference(model.train()) is model and not model.training
        assert column_major(model) == {"blocks.0.attn.wkv", "blocks.1.attn.wkv", "blocks.0.mlp.up",
                                       "blocks.1.mlp.up", "head"}
        assert not any(isinstance(m, OneDNNLinear) for m in model.modules())  # a decoder decodes: no oneDNN
        assert torch.allclose(model(ids_BL).logits, before_BLV, atol=1e-5)


def test_encoders_get_onednn_where_it_pays(checkpoints):
    model = qkv.load(checkpoints / "bert")
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    ids_BL = torch.randint(0, model.cfg.vocab_size, (3, 16))
    with torch.inference_mode():
        before_BLC = model(ids_BL).logits
        inference.for_inference(model)
        assert any(isinstance(m, OneDNNLinear) for m in model.modules()) == onednn_pays()
        assert torch.allclose(model(ids_BL).logits, before_BLC, atol=1e-5)


def test_quantizing_a_loaded_model_is_quantizing_the_saved_one(tmp_path):
    """The layout ``qkv.load`` once made is what broke ``quantize_model`` after it: a loaded model is now the
    saved one, module for module and stride for stride."""
    torch.manual_seed(0)
    saved = GPT(ModelConfig(vocab_size=96, max_len=16, n_layers=2, d_model=32, n_heads=4, d_ff=64))
    qkv.save(saved, tmp_path / "gpt")
    loaded = qkv.load(tmp_path / "gpt")
    for model in (saved, loaded):
        quantize_model(model, bits=8)
    assert saved.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b) and a.stride() == b.stride(), name


@pytest.fixture
def swaps_seen(monkeypatch):
    """The models for_inference was called on, by family, in order."""
    seen = []
    monkeypatch.setattr(inference, "SWAPS", [*inference.SWAPS, lambda m: seen.append(m.family) or m])
    return seen


@pytest.mark.parametrize("command,family", [
    (["generate", "{gpt}", "--prompt", "the", "--max-new-tokens", "3", "--seed", "1"], "decoder"),
    (["next", "{gpt}", "--text", "the cat"], "decoder"),
    (["eval", "{gpt}", "--data", "{text}"], "decoder"),
    (["eval", "{gpt}", "--data", "{text}", "--bits", "8"], "decoder"),
    (["attention", "{gpt}", "--text", "the cat", "--out", "{out}/a.html"], "decoder"),
    (["embed", "{bert}", "--text", "the cat sat"], "encoder"),
])
def test_every_inference_command_takes_the_step_once(checkpoints, swaps_seen, tmp_path, command, family):
    paths = {"gpt": checkpoints / "gpt", "bert": checkpoints / "bert", "text": checkpoints / "text.txt",
             "out": tmp_path}
    assert main([a.format(**paths) for a in command]) == 0
    assert swaps_seen == [family]


@pytest.mark.parametrize("command", [["info", "{gpt}"], ["quantize", "{gpt}", "{out}/q", "--bits", "8"]])
def test_commands_that_do_not_run_the_model_leave_it_plain(checkpoints, swaps_seen, tmp_path, command):
    paths = {"gpt": checkpoints / "gpt", "out": tmp_path}
    assert main([a.format(**paths) for a in command]) == 0
    assert swaps_seen == []


@pytest.mark.parametrize("model,family", [("gpt", "decoder"), ("bert", "encoder")])
def test_the_server_takes_the_step_for_its_embeddings_too(checkpoints, swaps_seen, monkeypatch, model, family):
    """`qkv serve` readies what it serves (an encoder's /v1/embeddings get oneDNN where it pays), up to the
    point where uvicorn would start serving."""
    import socket

    import uvicorn
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options["port"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", str(checkpoints / model), "--port", str(port)]) == 0
    assert served == [port] and swaps_seen == [family]
