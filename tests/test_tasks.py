"""Training objectives beyond next-token prediction: prefix LM, span corruption, translation, summarization."""

import json

import pytest
import sacrebleu
import torch

from qkv.cli import main
from qkv.data.lm import LMStream
from qkv.data.span_corruption import corrupt, spans_needed
from qkv.errors import ConfigError, DataError
from qkv.models import GPT
from qkv.train.optim import lr_at
from qkv.train.trainer import Trainer

from parallel_fixtures import DE, EN

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8
SEQ2SEQ = dict(max_len=32, n_layers=2, n_encoder_layers=2, d_model=32, n_heads=4)


RUN = dict(max_iters=12, eval_interval=6, eval_iters=2, warmup_iters=2)   # conftest's run_configs


# ---- prefix LM ----------------------------------------------------------------------------------------------
def test_prefix_batches_hide_the_prefix_from_the_loss():
    stream = LMStream(list(range(50)) * 4, context=10, val_fraction=0.2, seed=0, prefix=True)
    batch = stream.batch("train", 64)
    prefix_B = batch["prefix_len"]
    assert int(prefix_B.min()) >= 1 and int(prefix_B.max()) <= 9
    for row, p in zip(batch["targets_BL"], prefix_B.tolist()):
        assert (row[:p - 1] == -100).all() and (row[p - 1:] != -100).all()   # loss from the first non-prefix token


def test_prefix_objective_trains_a_prefix_mask_gpt(tmp_path, run_configs, corpus):
    trainer = Trainer(*run_configs("prefix", model=dict(mask="prefix"), data=str(corpus), objective="prefix",
                                   lr=3e-3, max_iters=30, eval_interval=15))
    first = trainer.evaluate()
    last = trainer.fit()
    assert isinstance(trainer.model, GPT) and last["val_loss"] < first - 0.5
    with pytest.raises(ConfigError, match="--mask prefix"):
        Trainer(*run_configs("bad", data=str(corpus), objective="prefix"))


# ---- span corruption --------------------------------------------------------------------------------------
def test_span_corruption_hides_spans_behind_sentinels():
    tokens = list(range(100, 140))
    sentinels = [1, 2, 3, 4, 5]
    source, target = corrupt(tokens, sentinels, torch.Generator().manual_seed(0))
    n_noise, n_spans = spans_needed(len(tokens))
    assert source.count(1) == 1 and sum(t in sentinels for t in source) == n_spans
    assert len(target) == n_noise + n_spans
    # Filling each sentinel in the source with its span from the target gives back the text.
    spans, current = {}, None
    for t in target:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in source for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == tokens


# ---- translation and summarization ------------------------------------------------------------------------
@pytest.mark.parametrize("joint", [True, False])
def test_translate_task_learns_and_translates_from_the_cli(tmp_path, run_configs, parallel, joint, capsys):
    trainer = Trainer(*run_configs("mt", model=SEQ2SEQ, task="translate", data=str(parallel), src_lang="de",
                                   tgt_lang="en", tokenizer="char", joint_vocab=joint, lr=3e-3, max_iters=240,
                                   eval_interval=120, label_smoothing=0.1, batch_size=16, warmup_iters=20))
    first = trainer.evaluate()
    last = trainer.fit()
    assert last["val_loss"] < first / 3
    assert (trainer.model.src_tokenizer is None) == joint
    capsys.readouterr()                                   # drop the training log
    (tmp_path / "src.de").write_text("ein hund läuft\nzwei katzen schlafen\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("a dog runs\ntwo cats sleep\n", encoding="utf-8")
    assert main(["translate", str(tmp_path / "mt"), "--file", str(tmp_path / "src.de"), "--ref",
                 str(tmp_path / "ref.en"), "--beam", "3", "--metrics-json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["a dog runs", "two cats sleep"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    expected = sacrebleu.corpus_bleu(out.out.splitlines(), [["a dog runs", "two cats sleep"]]).score
    assert metrics["bleu"] == round(expected, 2) and metrics["signature"].startswith("BLEU|nrefs:1")


def test_summarize_task_reads_jsonl_and_scores_rouge(tmp_path, run_configs, capsys):
    d = tmp_path / "sum"
    d.mkdir()
    docs = [{"source": [f"the {w} sat on the mat .", "it was warm ."], "target": [f"{w} on mat"]}
            for w in ("cat", "dog", "bird", "fox")] * 4
    (d / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs), encoding="utf-8")
    dev = [dict(docs[0], target=["cat on mat", "a cat sat"])]
    (d / "dev.jsonl").write_text(json.dumps(dev[0]) + "\n", encoding="utf-8")
    trainer = Trainer(*run_configs("s", model=dict(SEQ2SEQ, max_len=40), task="summarize", data=str(d),
                                   tokenizer="char", lr=5e-3, max_iters=120, eval_interval=60))
    trainer.fit()
    capsys.readouterr()
    assert main(["translate", str(tmp_path / "s"), "--jsonl", str(d / "dev.jsonl"), "--metrics-json",
                 str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out.strip() == "cat on mat"
    metrics = json.loads((tmp_path / "r.json").read_text())
    assert metrics["rouge1"] == 100.0 and {"rouge2", "rougeL"} <= set(metrics)


def test_inverse_sqrt_schedule_peaks_after_warmup_then_decays():
    lrs = [lr_at(0.0, s, 1.0, 100, 0.1, "inverse_sqrt") for s in range(400)]
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) in (99, 100)
    assert lrs[399] == pytest.approx(0.5)                 # sqrt(100 / 400)


# ---- bad input ----------------------------------------------------------------------------------------------
def test_parallel_files_of_different_lengths_name_the_line(tmp_path, run_configs, parallel):
    (parallel / "train.en").write_text("\n".join(EN[:39]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 40 has no partner"):
        Trainer(*run_configs("x", model=SEQ2SEQ, task="translate", data=str(parallel), src_lang="de",
                             tgt_lang="en", tokenizer="char"))


def test_empty_line_pair_is_named(tmp_path, run_configs, parallel):
    lines = DE[:40]
    lines[6] = "   "
    (parallel / "train.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 7 of .*train.de is empty"):
        Trainer(*run_configs("x", model=SEQ2SEQ, task="translate", data=str(parallel), src_lang="de",
                             tgt_lang="en", tokenizer="char"))


def test_sentence_longer_than_the_positions_is_named(tmp_path, run_configs, parallel):
    with pytest.raises(DataError, match="pair 5 has 22 source / 25 target .*raise --max-len"):
        Trainer(*run_configs("x", model=dict(SEQ2SEQ, max_len=23), task="translate", data=str(parallel),
                             src_lang="de", tgt_lang="en", tokenizer="char"))


def test_translate_needs_languages_and_data(tmp_path, run_configs, parallel):
    with pytest.raises(ConfigError, match="--src-lang and --tgt-lang"):
        Trainer(*run_configs("x", model=SEQ2SEQ, task="translate", data=str(parallel), tokenizer="char"))
    with pytest.raises(ConfigError, match="--data DIR"):
        Trainer(*run_configs("x", model=SEQ2SEQ, task="translate", src_lang="de", tgt_lang="en"))


def test_qkv_train_task_translate_from_the_command_line(tmp_path, parallel, capsys):
    """`qkv train --task translate` picks the multi30k preset; flags shrink it for the test."""
    out = tmp_path / "cli-mt"
    assert main(["train", "--task", "translate", "--src-lang", "de", "--tgt-lang", "en", "--data", str(parallel),
                 "--tokenizer", "char", "--d-model", "32", "--n-heads", "4", "--n-layers", "1",
                 "--n-encoder-layers", "1", "--d-ff", "64", "--max-len", "32", "--batch-size", "8",
                 "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--max-time", "none",
                 "--no-progress", "--out-dir", str(out)]) == 0
    assert "40 train / 8 val pairs" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qkv-seq2seq" and config["train"]["label_smoothing"] == 0.1   # from the preset


def test_objective_mlm_without_a_preset_picks_bert_mlm(tmp_path, corpus, capsys):
    out = tmp_path / "mlm"
    assert main(["train", "--objective", "mlm", "--data", str(corpus), "--max-iters", "2", "--eval-interval", "1",
                 "--eval-iters", "1", "--batch-size", "2", "--bpe-vocab-size", "200", "--max-len", "32",
                 "--no-progress", "--out-dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qkv-bert"
