"""`qkv generate`: streams the same text as the library, and every bad flag is one line + exit status 2."""

import pytest
import torch

import qkv
from qkv import GPT, ModelConfig, Tokenizer
from qkv.cli import main
from qkv.generate import generate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train_char("abcdefghijklmnopqrstuvwxyz .,\n", special_tokens=["<eos>"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4))
    return qkv.save(model, tmp_path_factory.mktemp("ckpt") / "tiny", tok)


def test_generate_prints_prompt_and_the_library_continuation(ckpt, capsys):
    assert main(["generate", str(ckpt), "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0",
                 "--stop", "zz", "--stop", "q"]) == 0
    model = qkv.load(ckpt)
    expected = generate(model, model.tokenizer, "the cat", max_new_tokens=12, temperature=0, stop=["zz", "q"])
    assert capsys.readouterr().out == "the cat" + expected + "\n"


def test_sampling_flags_and_seed_reproduce(ckpt, capsys):
    args = ["generate", str(ckpt), "--prompt", "a", "--max-new-tokens", "10", "--temperature", "0.9",
            "--top-k", "10", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty", "1.2",
            "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--seed", "3", "--ignore-eos"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args + ["--no-cache"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("flags,words", [
    (["--temperature", "-1"], "temperature=-1.0 must be >= 0"),
    (["--top-p", "1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--min-p", "2"], "min_p"),
    (["--repetition-penalty", "0"], "repetition_penalty"),
    (["--presence-penalty", "3"], "between -2 and 2"),
    (["--top-k", "abc"], "--top-k expects an integer, got 'abc'"),
    (["--temperature", "warm"], "--temperature expects a number"),
    (["--max-new-tokens", "40"], "--max-new-tokens) to at most 31"),
    (["--prompt", "ABC"], "never saw"),
])
def test_bad_flags_are_one_line_and_exit_2(ckpt, capsys, flags, words):
    argv = ["generate", str(ckpt), "--prompt", "a", *flags] if "--prompt" not in flags else \
        ["generate", str(ckpt), *flags]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""                                   # nothing printed before the error
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qkv generate: error:") and words in err[0]
    assert "Traceback" not in captured.err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
@pytest.mark.parametrize("device, says", [("cuda:x", "is not a device"), ("mps", "runs on cpu or cuda"),
                                          ("cuda", "sees no CUDA GPU")])
def test_a_device_the_machine_lacks_is_one_line_before_loading(tiny_run, capsys, monkeypatch, command, device, says):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)          # as on a CPU-only machine
    monkeypatch.setattr("qkv.loading.load", lambda *a, **k: pytest.fail("loaded before checking --device"))
    assert main([command, str(tiny_run), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "--device" in err


def test_context_shift_generates_past_the_context(ckpt, capsys):
    """max_len 32: 100 new tokens only with --context-shift, the same text as the library's."""
    args = ["generate", str(ckpt), "--prompt", "the", "--max-new-tokens", "100", "--temperature", "0", "--ignore-eos"]
    assert main(args) == 2
    assert "--context-shift" in capsys.readouterr().err
    assert main(args + ["--context-shift"]) == 0
    model = qkv.load(ckpt)
    expected = generate(model, model.tokenizer, "the", max_new_tokens=100, temperature=0, ignore_eos=True,
                        context_shift=True)
    assert capsys.readouterr().out == "the" + expected + "\n" and len(expected) == 100


@pytest.mark.parametrize("command", [["next", "--text", "ab"], ["attention", "--text", "ab", "--format", "html"]])
def test_next_and_attention_take_threads_and_quantized(ckpt, tmp_path, capsys, command, monkeypatch):
    """--threads sets torch's threads before the load; --quantized loads int8 modules (the output runs)."""
    from qkv.quant import Int8Linear
    loaded = []
    real_load = qkv.loading.load
    monkeypatch.setattr(qkv.loading, "load", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    out = ["--out", str(tmp_path / "a.html")] if command[0] == "attention" else []
    threads = torch.get_num_threads()
    try:
        assert main([command[0], str(ckpt), *command[1:], *out, "--threads", "1", "--quantized"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert any(isinstance(m, Int8Linear) for m in loaded[-1].modules())


def test_every_sampling_flag_is_a_generation_config_field():
    """The flags are generated from GenerationConfig: each one given reaches its field, and --help shows the
    field's comment with the default that applies (chat's own defaults for qkv chat)."""
    import argparse
    import typing
    from qkv.cli import build_parser
    from qkv.cli.generate import SAMPLING_FLAGS, sampling_config
    from qkv.generate import GenerationConfig
    assert {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "ignore_eos"} <= set(SAMPLING_FLAGS)
    hints, values, argv = typing.get_type_hints(GenerationConfig), {}, ["generate", "ck"]
    for name in SAMPLING_FLAGS:                 # a value valid for every field of its type, and no default
        flag, kind = "--" + name.replace("_", "-"), hints[name]
        values[name] = True if kind is bool else 3 if int in (kind, *typing.get_args(kind)) else 0.5
        argv += [flag] if kind is bool else [flag, str(values[name])]
    cfg = sampling_config(build_parser().parse_args(argv))
    assert {name: getattr(cfg, name) for name in SAMPLING_FLAGS} == values
    assert sampling_config(build_parser().parse_args(["generate", "ck"])) == GenerationConfig()
    chat = next(a for a in build_parser()._subparsers._group_actions[0].choices["chat"]._actions
                if a.dest == "temperature")
    assert chat.help.startswith("0 = greedy") and "(default 0.7)" in chat.help
    assert argparse.SUPPRESS == chat.default                            # not given: the defaults apply
