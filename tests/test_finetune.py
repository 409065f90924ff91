"""Fine-tuning on the trainer: every task family's data, labels on first sub-words, truncation counts,
eval labels never seen in training, squad's article split, exact resume.

The tiny task files here are written to tmp_path (test_cli_finetune.py reuses the writers); the encoder
is a 2-layer MLM run trained for a few steps on their text, so every test takes seconds.
"""

import json
import random

import pytest
import torch

from qkv import load
from qkv.cli import main
from qkv.config import resolve
from qkv.errors import ConfigError, DataError
from qkv.tasks import TASKS, get_task
from qkv.tasks.batches import item_logits
from qkv.train.finetune import (FinetuneConfig, build_finetune_task, evaluate, finetune_config, new_model,
                                resume_finetune)
from qkv.train.trainer import Trainer

POS = ["great", "wonderful", "good", "fine", "lovely"]
NEG = ["bad", "awful", "dull", "poor", "boring"]
NOUNS = ["movie", "film", "story", "show", "play"]
TAGGED = [[("the", "DET"), ("cat", "NOUN"), ("sat", "VERB"), (".", "PUNCT")],
          [("a", "DET"), ("dog", "NOUN"), ("ran", "VERB"), ("home", "ADV"), (".", "PUNCT")],
          [("the", "DET"), ("bird", "NOUN"), ("sang", "VERB"), ("loudly", "ADV"), (".", "PUNCT")]]
NER = [[("john", "B-person"), ("lives", "O"), ("in", "O"), ("paris", "B-location")],
       [("mary", "B-person"), ("smith", "I-person"), ("visited", "O"), ("new", "B-location"), ("york", "I-location")],
       [("we", "O"), ("like", "O"), ("london", "B-location")]]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = ["paris", "rome", "oslo", "lima", "cairo", "quito"]
TINY_TRAIN = ["--max-iters", "6", "--eval-interval", "3", "--eval-iters", "1", "--batch-size", "4", "--no-progress"]
TINY_MODEL = ["--max-len", "48", "--n-layers", "2", "--d-model", "32", "--n-heads", "4"]


# ---- tiny task files -----------------------------------------------------------------------------------
def sentiment_rows(n, seed):
    rng = random.Random(seed)
    return [(f"the {rng.choice(NOUNS)} was {rng.choice(POS if i % 2 else NEG)} .", str(i % 2)) for i in range(n)]


def write_sst2(path, n, seed, extra=()):
    rows = sentiment_rows(n, seed) + list(extra)
    path.write_text("sentence\tlabel\n" + "".join(f"{s} \t{label}\n" for s, label in rows), encoding="utf-8")
    return path


def write_cola(path, n, seed):
    rows = sentiment_rows(n, seed)
    path.write_text("".join(f"src\t{label}\t{'' if label == '1' else '*'}\t{s}\n" for s, label in rows),
                    encoding="utf-8")
    return path


def write_conllu(path, n, replace_first_tag=None):
    out = []
    for i in range(n):
        out.append(f"# sent_id = {i}")
        for j, (word, tag) in enumerate(TAGGED[i % len(TAGGED)], start=1):
            tag = replace_first_tag if replace_first_tag and j == 1 else tag
            out.append(f"{j}\t{word}\t{word}\t{tag}\t_\t_\t0\tdep\t_\t_")
        out.append("")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def write_bio(path, n):
    out = []
    for i in range(n):
        out += [f"{w}\t{t}" for w, t in NER[i % len(NER)]] + [""]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def write_squad(path, n_articles=4):
    data = []
    for a in range(n_articles):
        who, city = NAMES[a % 6], CITIES[a % 6]
        context = f"{who} was born in {city} in the spring . later {who} moved to the coast and wrote books ."
        qas = [{"id": f"q{a}a", "question": f"where was {who} born ?",
                "answers": [{"text": city, "answer_start": context.index(city)}]},
               {"id": f"q{a}b", "question": f"what did {who} write ?",
                "answers": [{"text": "books", "answer_start": context.index("books")}]}]
        data.append({"title": f"article {a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"data": data, "version": "1.1"}), encoding="utf-8")
    return path


def corpus_text():
    lines = [s for s, _ in sentiment_rows(40, 0)] + [" ".join(w for w, _ in s) for s in TAGGED + NER]
    lines += [f"{w} was born in {c} in the spring . later {w} moved to the coast and wrote books ."
              for w, c in zip(NAMES, CITIES)]
    return "\n".join(lines * 3) + "\n"


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """{task: (train file, eval file or None)} plus the tiny MLM encoder under "encoder"."""
    d = tmp_path_factory.mktemp("tasks")
    (d / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    torch.set_num_threads(1)
    assert main(["train", "--preset", "bert-mlm", "--data", str(d / "corpus.txt"), "--bpe-vocab-size", "200",
                 "--out-dir", str(d / "encoder"), *TINY_TRAIN, *TINY_MODEL]) == 0
    return {"encoder": d / "encoder",
            "sst2": (write_sst2(d / "train.tsv", 40, 1), write_sst2(d / "test.tsv", 10, 2)),
            "cola": (write_cola(d / "in_domain_train.tsv", 40, 1), write_cola(d / "in_domain_dev.tsv", 10, 2)),
            "upos": (write_conllu(d / "train.conllu", 12), write_conllu(d / "test.conllu", 4)),
            "wnut17": (write_bio(d / "train.bio", 12), write_bio(d / "test.bio", 4)),
            "squad": (write_squad(d / "squad.json"), None)}


def task_config(task_files, task, **options) -> FinetuneConfig:
    train, eval_ = task_files[task]
    extra = {"n_eval_articles": 1, "stride": 8, "max_seq_len": 32} if task == "squad" else {"eval_data": str(eval_)}
    return FinetuneConfig(task=task, data=str(train), init=str(task_files["encoder"]), **{**extra, **options})


def trainer_for(task_files, tmp_path, task, name="run", **train):
    fcfg = task_config(task_files, task)
    options = dict(max_iters=8, eval_interval=4, eval_iters=1, batch_size=4, progress=False,
                   out_dir=str(tmp_path / name), **train)
    model_cfg, train_cfg = resolve("bert-finetune", train=options)
    task, _ = build_finetune_task(fcfg, train_cfg, new_model(fcfg, model_cfg, train_cfg))
    return Trainer(task.model_cfg, train_cfg, parts=task)


# ---- tests ---------------------------------------------------------------------------------------------
def test_task_names_are_one_list():
    import typing
    assert typing.get_args(typing.get_type_hints(FinetuneConfig)["task"]) == tuple(TASKS)
    with pytest.raises(ConfigError, match="sst2, cola, upos, wnut17, squad"):
        get_task("mnli")


@pytest.mark.parametrize("task", list(TASKS))
def test_batches_have_the_heads_label_shapes(task_files, tmp_path, task):
    trainer = trainer_for(task_files, tmp_path, task)
    batch = trainer.data.batch("train", 4)
    ids_BL, labels = batch["ids_BL"], batch["labels"]
    assert batch["key_mask_BL"].shape == ids_BL.shape == batch["types_BL"].shape
    expected = {"B": (4,), "BL": tuple(ids_BL.shape), "B2": (4, 2)}[get_task(task).layout]
    assert tuple(labels.shape) == expected
    assert (ids_BL[:, 0] == trainer.tokenizer.cls_id).all()
    assert trainer.model(**batch).loss.isfinite()


def test_tag_labels_sit_on_first_subwords(task_files):
    spec = get_task("upos")
    model = load(task_files["encoder"])
    words, tags = ["the", "loudly", "unbelievably"], ["DET", "ADV", "ADV"]
    items, _ = spec.encode([(words, tags)], model.tokenizer, 48, ["ADV", "DET"], None)
    item = items[0]
    firsts = [i for i, w in enumerate(item.word_ids) if w is not None and w != item.word_ids[i - 1]]
    assert [item.labels[i] for i in firsts] == [1, 0, 0]
    assert all(label == -100 for i, label in enumerate(item.labels) if i not in firsts)
    assert len(item.ids) > len(words) + 2                 # "unbelievably" is more than one piece here


def test_truncation_is_counted(task_files):
    spec = get_task("sst2")
    model = load(task_files["encoder"])
    examples = spec.read_train(FinetuneConfig(task="sst2", data=str(task_files["sst2"][0]), eval_data="x"))
    items, notes = spec.encode(examples, model.tokenizer, 6, ["0", "1"], None)
    assert notes["truncated"] == len(examples) and all(len(it.ids) == 6 for it in items)
    assert all(it.ids[-1] == model.tokenizer.sep_id for it in items)


def test_unseen_eval_labels_are_errors(task_files, tmp_path):
    bad = write_sst2(tmp_path / "bad.tsv", 4, 3, extra=[("an odd film .", "2")])
    with pytest.raises(DataError, match="label '2' never occurs in the training data"):
        trainer_for({**task_files, "sst2": (task_files["sst2"][0], bad)}, tmp_path, "sst2")
    bad = write_conllu(tmp_path / "bad.conllu", 2, replace_first_tag="SYM")
    with pytest.raises(DataError, match="tag 'SYM', which never occurs in the training data"):
        trainer_for({**task_files, "upos": (task_files["upos"][0], bad)}, tmp_path, "upos")


def test_eval_data_required_except_squad():
    with pytest.raises(ConfigError, match="needs --eval-data"):
        FinetuneConfig(task="upos", data="train.conllu")
    assert FinetuneConfig(task="squad", data="dev.json").eval_data is None


def test_squad_holds_out_the_last_articles(task_files):
    fcfg = task_config(task_files, "squad")
    spec = get_task("squad")
    train, held_out = spec.read_train(fcfg), spec.read_eval(fcfg, None, None)
    assert {e.title for e in held_out} == {"article 3"} and "article 3" not in {e.title for e in train}
    assert spec.read_eval(fcfg, fcfg.data, None) == held_out          # `qkv evaluate` on the training file


@pytest.mark.parametrize("task", ["sst2", "wnut17", "squad"])
def test_resume_equals_uninterrupted(task_files, tmp_path, task):
    trainer_for(task_files, tmp_path, task, "straight").fit()
    trainer_for(task_files, tmp_path, task, "interrupted").fit(stop_at_step=4)
    resumed = resume_finetune(tmp_path / "interrupted", log=lambda *a: None)
    assert resumed.step == 4
    resumed.fit()
    a, b = load(tmp_path / "straight").state_dict(), load(tmp_path / "interrupted").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert finetune_config(tmp_path / "interrupted") == task_config(task_files, task)


@pytest.mark.parametrize("task", ["upos", "wnut17"])
def test_evaluate_is_deterministic_and_padding_free(task_files, tmp_path, task):
    """Batched evaluation (sentences of different lengths padded together) gives every item the logits it
    gets alone, and so the same predictions and report."""
    trainer = trainer_for(task_files, tmp_path, task)
    fcfg = task_config(task_files, task)
    spec, model = get_task(task), trainer.model
    examples = spec.read_eval(fcfg, fcfg.eval_data, model.labels)
    items, _ = spec.encode(examples, model.tokenizer, fcfg.max_seq_len, model.labels, fcfg)
    assert len({len(item.ids) for item in items}) > 1                     # padding happens in a batch
    batched = item_logits(model, items, model.tokenizer.pad_id, batch_size=len(items))
    alone = item_logits(model, items, model.tokenizer.pad_id, batch_size=1)
    for a, b in zip(batched, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    one, preds_one = evaluate(model, fcfg, fcfg.eval_data)
    two, preds_two = evaluate(model, FinetuneConfig(**{**vars(fcfg), "eval_batch_size": 1}), fcfg.eval_data)
    assert preds_one == preds_two and one[spec.metric] == two[spec.metric]
