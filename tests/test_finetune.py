"""Fine-tuning on the trainer: every task family's data, labels on first sub-words, truncation counts,
eval labels never seen in training, squad's article split (exact resume: tests/test_resume.py).

The tiny task files (tests/finetune_fixtures.py, conftest's ``task_files``) are written once a session; the
encoder is a 2-layer MLM run trained for a few steps on their text, so every test takes seconds.
"""

import pytest
import torch

from qkv import load
from qkv.errors import ConfigError, DataError
from qkv.tasks import TASKS, get_task
from qkv.tasks.batches import item_logits
from qkv.train.finetune import FinetuneConfig, evaluate

from finetune_fixtures import task_config, trainer_for, write_conllu, write_sst2


# ---- tests ---------------------------------------------------------------------------------------------
def test_task_names_are_one_list():
    import typing
    assert typing.get_args(typing.get_type_hints(FinetuneConfig)["task"]) == tuple(TASKS)
    with pytest.raises(ConfigError, match="sst2, cola, upos, wnut17, squad"):
        get_task("mnli")


@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].head is not None])   # encoder heads (chat: its own file)
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
