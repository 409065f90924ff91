"""`qkv finetune`, `qkv evaluate` and `qkv predict` end to end on every task family, on tiny files.

Each run must exit 0 and leave eval.json (the right metric keys) and the predictions file in its run
directory, and the metric must be what the field's libraries (scikit-learn, seqeval) compute from that
predictions file; SQuAD's official rule has no library, and test_metrics holds ours to hand-worked cases.
"""

import json

import pytest

from qkv.cli import main
from qkv.data.squad import read_squad, split_by_article
from qkv.metrics import squad_em_f1
from finetune_fixtures import TINY_MODEL, TINY_TRAIN, sentiment_rows, write_sst2

KEYS = {"sst2": {"accuracy"}, "cola": {"accuracy", "mcc"}, "upos": {"accuracy"},
        "wnut17": {"precision", "recall", "f1"}, "squad": {"exact_match", "f1"}}


def finetune_args(task_files, task, out, init=None):
    train, eval_ = task_files[task]
    args = ["finetune", "--task", task, "--init", str(init or task_files["encoder"]), "--data", str(train),
            "--out-dir", str(out), *TINY_TRAIN]
    if eval_ is None:
        return args + ["--n-eval-articles", "1", "--stride", "8", "--max-seq-len", "32"]
    return args + ["--eval-data", str(eval_)]


def recomputed(task, out, task_files) -> dict:
    """The report's numbers again, from the predictions file, by libraries that did not produce them."""
    if task == "squad":
        predictions = json.loads((out / "predictions.json").read_text())
        held_out = split_by_article(read_squad(task_files["squad"][0]), 1)[1]
        assert set(predictions) == {e.id for e in held_out}
        return squad_em_f1(predictions, held_out)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    if task in ("sst2", "cola"):
        preds, golds = [r["prediction"] for r in rows], [r["label"] for r in rows]
        assert all(0.0 <= r["probability"] <= 1.0 for r in rows)
        return {"accuracy": sklearn_metrics.accuracy_score(golds, preds),
                **({"mcc": sklearn_metrics.matthews_corrcoef(golds, preds)} if task == "cola" else {})}
    preds, golds = [r["predictions"] for r in rows], [r["tags"] for r in rows]
    assert all(len(p) == len(r["words"]) for p, r in zip(preds, rows))
    if task == "upos":
        return {"accuracy": sklearn_metrics.accuracy_score(sum(golds, []), sum(preds, []))}
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    return {"precision": seqeval_metrics.precision_score(golds, preds),
            "recall": seqeval_metrics.recall_score(golds, preds), "f1": seqeval_metrics.f1_score(golds, preds)}


@pytest.mark.parametrize("task", list(KEYS))
def test_finetune_writes_report_and_predictions(task_files, tmp_path, task, capsys):
    out = tmp_path / task
    assert main(finetune_args(task_files, task, out)) == 0
    report = json.loads((out / "eval.json").read_text())
    assert KEYS[task] <= set(report) and report["task"] == task and report["score"] == report[report["metric"]]
    for key, value in recomputed(task, out, task_files).items():
        assert report[key] == pytest.approx(value, abs=1e-12)
    assert (out / "metrics.jsonl").is_file() and (out / "trainer_state.pt").is_file()
    assert task in capsys.readouterr().out
    assert main(["info", str(out)]) == 0                          # what ran, not the pre-training defaults
    described = capsys.readouterr().out
    assert f"fine-tuned: task {task} from " in described and "bundled corpus" not in described
    assert "task lm" not in described

    assert main(["evaluate", str(out)]) == 0                      # the run's own eval data, read from config
    again = json.loads((out / "evaluate" / "eval.json").read_text())
    assert {k: again[k] for k in KEYS[task]} == {k: report[k] for k in KEYS[task]}


def test_scratch_baseline_trains_its_own_tokenizer(task_files, tmp_path):
    train, eval_ = task_files["sst2"]
    out = tmp_path / "scratch"
    assert main(["finetune", "--task", "sst2", "--scratch", "--data", str(train), "--eval-data", str(eval_),
                 "--bpe-vocab-size", "100", "--out-dir", str(out), *TINY_TRAIN, *TINY_MODEL]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["finetune"]["init"] is None and config["model"]["n_layers"] == 2
    assert config["model"]["vocab_size"] <= 100 and json.loads((out / "eval.json").read_text())["examples"] == 10


def test_resume_and_budget_flags(task_files, tmp_path):
    out = tmp_path / "run"
    assert main(finetune_args(task_files, "sst2", out)) == 0
    assert main(["finetune", "--resume", str(out), "--max-iters", "9"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 9 and (out / "eval.json").is_file()


def test_predict_each_family(task_files, tmp_path, capsys):
    for task in ("sst2", "upos", "squad"):
        assert main(finetune_args(task_files, task, tmp_path / task)) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "sst2"), "--text", "the film was great .", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["prediction"] in ("0", "1") and 0.5 <= record["probability"] <= 1.0
    assert record["name"] == {"0": "negative", "1": "positive"}[record["prediction"]]       # GLUE's meaning
    config = json.loads((tmp_path / "sst2" / "config.json").read_text())
    assert config["label_names"] == {"0": "negative", "1": "positive"}                    # stored by the run
    assert main(["predict", str(tmp_path / "sst2"), "--text", "the film was great ."]) == 0
    assert capsys.readouterr().out.split("\t")[0] == record["name"]                         # shown as the name
    assert main(["predict", str(tmp_path / "upos"), "--text", "the dog sat ."]) == 0
    pairs = capsys.readouterr().out.split()
    assert [p.split("/")[0] for p in pairs] == ["the", "dog", "sat", "."]
    assert all(p.split("/")[1] in {"DET", "NOUN", "VERB", "ADV", "PUNCT"} for p in pairs)
    context = "bob was born in rome in the spring ."
    assert main(["predict", str(tmp_path / "squad"), "--question", "where was bob born ?", "--context", context,
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)["0"]
    assert answer in context
    assert main(["predict", str(tmp_path / "squad"), "--text", "hello"]) == 2
    assert "--question Q about --context C" in capsys.readouterr().err


def test_bad_input_errors(task_files, tmp_path, capsys):
    assert main(["finetune", "--task", "mnli", "--init", "none", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mnli'" in err and all(t in err for t in KEYS)             # names every task
    args = finetune_args(task_files, "sst2", tmp_path / "a")
    assert main([a for a in args if a not in ("--init", str(task_files["encoder"]))]) == 2
    assert "--init DIR" in capsys.readouterr().err
    bad = write_sst2(tmp_path / "bad.tsv", 4, 3, extra=[("an odd film .", "neutral")])
    args = finetune_args({**task_files, "sst2": (task_files["sst2"][0], bad)}, "sst2", tmp_path / "b")
    assert main(args) == 2
    assert "label 'neutral' never occurs in the training data" in capsys.readouterr().err
    assert main(finetune_args(task_files, "upos", tmp_path / "c") + ["--max-seq-len", "4096"]) == 2
    assert "exceeds the model's 48 positions" in capsys.readouterr().err
    assert main(["evaluate", str(task_files["encoder"])]) == 2                # an MLM run: no task head
    assert "needs a fine-tuned encoder or an image classifier: use `qkv embed`" in capsys.readouterr().err
    assert main(finetune_args(task_files, "sst2", tmp_path / "d") + ["--d-model", "64"]) == 2
    assert "describe the --init none model" in capsys.readouterr().err


def test_truncation_is_reported(task_files, tmp_path, capsys):
    out = tmp_path / "short"
    assert main(finetune_args(task_files, "sst2", out) + ["--max-seq-len", "5"]) == 0
    assert "40 training inputs (40 truncated" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["truncated"] == 10


def test_init_from_a_hugging_face_bert_directory(task_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    words = sorted({w for s, _ in sentiment_rows(40, 0) for w in s.split()})
    d = tmp_path / "hf-bert"
    d.mkdir()
    (d / "vocab.txt").write_text("".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    transformers.BertTokenizer(vocab=str(d / "vocab.txt")).save_pretrained(d)
    config = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=40)
    transformers.BertModel(config).save_pretrained(d)
    out = tmp_path / "run"
    assert main(finetune_args(task_files, "sst2", out, init=d)) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "qkv-bert-classify" and saved["model"]["max_len"] == 40
    assert json.loads((out / "eval.json").read_text())["examples"] == 10


def test_help_shows_required_flags_and_the_preset_defaults(capsys):
    assert main(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--data DATA the training file (squad: a v1.1 JSON, split by article) (required)" in text
    assert "MISSING" not in text
    assert "BERT's (default wordpiece)" in text                     # --tokenizer: bert-finetune's, not TrainConfig's
