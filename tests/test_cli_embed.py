"""`qkv embed`: mean-pooled, unit-norm sentence vectors from an encoder checkpoint, via ``qkv.cli.main``."""

import json

import pytest
import torch

import qkv
from qkv import GPT, ModelConfig, Tokenizer
from qkv.cli import main
from qkv.models import BERT

CORPUS = ["the cat sat on the mat", "a dog is sleeping in the sun", "cats and dogs play chess"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train_wordpiece(CORPUS * 10, vocab_size=80)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4,
                      norm_placement="post", mask="bidirectional", type_vocab_size=2, embed_norm=True)
    d = tmp_path_factory.mktemp("embed") / "bert"
    qkv.save(BERT(cfg), d, tok)
    return d


def embed_json(capsys, *args):
    assert main(["embed", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_vectors_unit_norm_and_similarity(bert_dir, capsys):
    texts = ["the cat sat", "the cat sat", "dogs play chess in the sun"]
    out = embed_json(capsys, bert_dir, *[a for t in texts for a in ("--text", t)])
    emb_NC = torch.tensor(out["embeddings"])
    sim_NN = torch.tensor(out["similarity"])
    assert out["texts"] == texts and out["dim"] == 32 and emb_NC.shape == (3, 32)
    assert torch.allclose(emb_NC.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert sim_NN.shape == (3, 3) and abs(sim_NN[0, 1] - 1) < 1e-5 and sim_NN[0, 2] < 1 - 1e-4
    assert torch.allclose(sim_NN, emb_NC @ emb_NC.T, atol=1e-5)
    model = qkv.load(bert_dir)                                  # what the command prints is the model's output
    for text, emb_C in zip(texts, emb_NC):
        ids_1L = torch.tensor([model.tokenizer.encode_for_model(text).ids])
        with torch.no_grad():
            want_1C = model.sentence_embeddings(ids_1L, torch.ones_like(ids_1L, dtype=torch.bool))
        assert (emb_C - want_1C[0]).abs().max() <= 1e-5


def test_padding_invariance_alone_vs_batched_with_a_longer_one(bert_dir, capsys, tmp_path):
    short, long = "a cat", "the dog is sleeping in the sun and the cats play chess on the mat"
    alone = embed_json(capsys, bert_dir, "--text", short)["embeddings"][0]
    path = tmp_path / "sentences.txt"
    path.write_text(f"{long}\n\n{short}\n", encoding="utf-8")             # blank lines are skipped
    batched = embed_json(capsys, bert_dir, "--file", path)
    assert batched["texts"] == [long, short]
    assert torch.allclose(torch.tensor(batched["embeddings"][1]), torch.tensor(alone), atol=1e-5)


def test_table_output(bert_dir, capsys):
    assert main(["embed", str(bert_dir), "--text", "the cat", "--text", "a dog"]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity" in out and "1.000" in out and "a dog" in out


def test_errors_are_one_line(bert_dir, capsys, tmp_path):
    assert main(["embed", str(bert_dir)]) == 2
    assert "pass --text" in capsys.readouterr().err
    assert main(["embed", str(bert_dir), "--file", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    tok = Tokenizer.train_char("abc ")
    qkv.save(GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=8, n_layers=1, d_model=8, n_heads=2)),
             tmp_path / "gpt", tok)
    assert main(["embed", str(tmp_path / "gpt"), "--text", "abc"]) == 2
    assert "needs an encoder" in capsys.readouterr().err


def test_hugging_face_bert_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "a", "."]
    d = tmp_path / "hf"
    transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   max_position_embeddings=16)).save_pretrained(d)
    (d / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    out = embed_json(capsys, d, "--text", "The cat sat.", "--text", "a dog")
    assert out["model_type"] == "qkv-bert-encoder" and len(out["embeddings"][0]) == 16


def test_truncation_is_said_and_stdin_is_read(bert_dir, capsys, monkeypatch):
    long = " ".join(["the cat sat on the mat"] * 20)                  # ~120 tokens for 32 positions
    assert main(["embed", str(bert_dir), "--text", long, "--text", "a dog", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "note: 1 of 2 inputs were longer than the model's 32 positions" in err
    short = json.loads(out)
    import io
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"{long}\n\na dog\n".encode())))
    piped = embed_json(capsys, bert_dir, "--file", "-")
    assert piped["texts"] == [long, "a dog"] and piped["embeddings"] == short["embeddings"]
