"""The fine-tuning tests' tiny task files: every family's format written small, with an MLM encoder trained
for a few steps on their text (conftest's ``task_files`` fixture builds them once a session)."""

import json
import random

import torch

from qkv.cli import main
from qkv.config import resolve
from qkv.train.finetune import FinetuneConfig, build_finetune_task, new_model
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


def make_task_files(d):
    """{task: (train file, eval file or None)} plus the tiny MLM encoder (trained here) under "encoder"."""
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
