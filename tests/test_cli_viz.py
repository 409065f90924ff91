"""`qkv attention`, `qkv next`, `qkv plot`, `qkv experiment` end to end.

Their bad inputs (one line, status 2, nothing touched) are rows of tests/test_cli_hardening.py.
"""

import json

import pytest
import torch

import qkv
from qkv import ModelConfig, Tokenizer
from qkv.cli import main
from qkv.models.seq2seq import EncoderDecoder


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run                                       # a real `qkv train` run: 2 layers, 4 heads, 64 positions


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory):
    tok = Tokenizer.train_char("abcdefghijklmnopqrstuvwxyz ", special_tokens=["<pad>", "<bos>", "<eos>"])
    torch.manual_seed(0)
    model = EncoderDecoder(ModelConfig(vocab_size=tok.vocab_size, max_len=24, n_layers=2, d_model=32, n_heads=4))
    return qkv.save(model, tmp_path_factory.mktemp("s2s") / "model", tok)


def test_attention_png_html_bertviz(run_dir, tmp_path, capsys):
    for name in ("grid.png", "one.png", "page.html", "attn.pt"):
        extra = ["--layer", "1", "--head", "0"] if name == "one.png" else []
        extra += ["--format", "bertviz"] if name == "attn.pt" else []
        assert main(["attention", str(run_dir), "--text", "First Citizen", "--out", str(tmp_path / name), *extra]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "wrote" in out and "2 layers x 4 heads, 13 x 13 tokens" in out
    assert "default-src 'none'" in (tmp_path / "page.html").read_text()
    assert torch.load(tmp_path / "attn.pt", weights_only=True)["tokens"][:5] == list("First")


def test_attention_encoder_decoder_translates_when_no_target(seq2seq_dir, tmp_path, capsys):
    assert main(["attention", str(seq2seq_dir), "--source", "a dog", "--out", str(tmp_path / "x.html")]) == 0
    assert "cross-attention" in capsys.readouterr().out
    assert main(["attention", str(seq2seq_dir), "--source", "a dog", "--text", "ein", "--map", "encoder",
                 "--out", str(tmp_path / "enc.png")]) == 0


def test_next_table_lens_png_and_json(run_dir, tmp_path, capsys):
    assert main(["next", str(run_dir), "--text", "First Cit", "--top", "5", "--lens", "--out",
                 str(tmp_path / "next.png")]) == 0
    out = capsys.readouterr().out
    assert "rank  token" in out and "logit lens at token 8" in out and "layer 2" in out
    assert (tmp_path / "next.png").stat().st_size > 5000
    assert main(["next", str(run_dir), "--text", "First Cit", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = qkv.load(run_dir)
    with torch.no_grad():
        probs_V = model(torch.tensor([model.tokenizer.encode("First Cit")])).logits[0, -1].softmax(-1)
    assert len(result["top"]) == 10 and result["top"][0]["id"] == int(probs_V.argmax())
    assert result["top"][0]["prob"] == pytest.approx(float(probs_V.max()), abs=1e-6)
    # issue 20: the JSON carries each token's text; the glyph a space is drawn as is the label's alone
    assert result["context"] == list("First Cit") and result["labels"][5] == "␣"
    assert all(c["token"] == model.tokenizer.decode([c["id"]]) for c in result["top"])


def test_plot_overlays_runs(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), str(run_dir), "--x", "tokens", "--out", str(tmp_path / "c.png")]) == 0
    assert "2 runs" in capsys.readouterr().out and (tmp_path / "c.png").stat().st_size > 5000


def test_experiment_quick_writes_a_report(tmp_path, capsys):
    out = tmp_path / "kv"
    assert main(["experiment", "kv-cache", "--quick", "--out-dir", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "qkv experiment kv-cache --quick --seed 0" in report and "![" in report and '"positions": 128' in report
    assert (out / "decode_time.png").stat().st_size > 5000
    assert main(["experiment", "kv-cache", "--quick", "--out-dir", str(out), "--seed", "1"]) == 0   # a re-run
    assert "--seed 1" in (out / "report.md").read_text()


def test_an_existing_picture_is_replaced_whole(run_dir, tmp_path):
    """Only with --overwrite (issue 20: qkv cannot tell a person's picture from its own), and then whole."""
    (tmp_path / "keep.png").write_bytes(b"old picture")
    argv = ["attention", str(run_dir), "--text", "First", "--out", str(tmp_path / "keep.png")]
    assert main(argv) == 2 and (tmp_path / "keep.png").read_bytes() == b"old picture"
    assert main(argv + ["--overwrite"]) == 0
    assert (tmp_path / "keep.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
