"""Masked-LM pre-training: BERT's 15% / 80-10-10 masking by the numbers, specials never masked, loss only on
selected tokens, the [CLS] A [SEP] B [SEP] layout, loss going down through the Trainer (exact resume:
tests/test_resume.py)."""

import json

import pytest
import torch

from qkv import load
from qkv.config import resolve
from qkv.data.mlm import MaskedLMStream, mask_tokens
from qkv.errors import ConfigError, DataError
from qkv.models import BERT
from qkv.train.trainer import Trainer

TEXT = ("the cat sat on the mat .\nthe dog ran to the park .\na bird sang in the tree .\n"
        "the sun rose over the hill .\nthe children played in the garden .\n") * 12


RUN_MODEL = dict(max_len=24, dropout=0.1)              # conftest's run_configs: the tiny model, longer
RUN = dict(max_iters=12, eval_interval=4, bpe_vocab_size=60, batch_size=4, eval_iters=2, warmup_iters=2,
           progress=False)


def test_masking_proportions_on_100k_tokens():
    g = torch.Generator().manual_seed(0)
    V, mask_id = 1000, 4
    ids_BL = torch.randint(5, V, (100, 1000), generator=g)
    ids_BL[:, 0], ids_BL[:, -1] = 2, 3                          # [CLS] ... [SEP]
    maskable_BL = ids_BL > 4
    inputs_BL, labels_BL = mask_tokens(ids_BL, maskable_BL, mask_id, torch.arange(5, V), g)
    selected = labels_BL != -100
    n = int(maskable_BL.sum())
    assert abs(int(selected.sum()) / n - 0.15) < 0.005                              # 15% selected
    masked = inputs_BL[selected] == mask_id
    kept = inputs_BL[selected] == ids_BL[selected]
    randomized = ~masked & ~kept
    k = int(selected.sum())
    assert abs(int(masked.sum()) / k - 0.8) < 0.01                                  # 80% -> [MASK]
    assert abs(int(randomized.sum()) / k - 0.1) < 0.01                              # ~10% -> random
    assert abs(int(kept.sum()) / k - 0.1) < 0.011                                    # ~10% unchanged (+ 1/V)
    assert torch.equal(inputs_BL[~selected], ids_BL[~selected])                     # the rest untouched
    assert torch.equal(labels_BL[selected], ids_BL[selected])
    assert not selected[~maskable_BL].any()                                         # specials never
    assert int(inputs_BL[selected][~masked].min()) >= 5                             # random picks are not specials


def test_every_row_gets_a_selection():
    g = torch.Generator().manual_seed(1)
    ids_BL = torch.randint(5, 50, (200, 3), generator=g)
    _, labels_BL = mask_tokens(ids_BL, torch.ones_like(ids_BL, dtype=torch.bool), 4, torch.arange(5, 50), g)
    assert (labels_BL != -100).any(dim=1).all()


def stream(max_len=12, seed=0):
    lines = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14, 15, 16]] * 20
    return MaskedLMStream(lines, max_len, 0.2, seed, cls_id=2, sep_id=3, pad_id=0, mask_id=4, vocab_size=20,
                          special_ids={0, 1, 2, 3, 4})


def test_batch_layout_cls_a_sep_b_sep():
    data = stream()
    for _ in range(20):
        batch = data.batch("train", 8)
        ids_BL, types_BL, key_mask_BL, labels = (batch[k] for k in ("ids_BL", "types_BL", "key_mask_BL", "labels"))
        original_BL = torch.where(labels != -100, labels, ids_BL)
        for row in range(8):
            n = int(key_mask_BL[row].sum())
            assert key_mask_BL[row, :n].all() and not key_mask_BL[row, n:].any()    # right padding
            tokens = original_BL[row, :n].tolist()
            assert tokens[0] == 2 and tokens[-1] == 3 and tokens.count(3) == 2 and 2 not in tokens[1:]
            sep = tokens.index(3)
            assert 1 < sep < n - 2                                                    # A and B non-empty
            assert types_BL[row, :sep + 1].eq(0).all() and types_BL[row, sep + 1:n].eq(1).all()
            assert (labels[row, n:] == -100).all() and (ids_BL[row, n:] == 0).all()
            assert (labels[row, [0, sep, n - 1]] == -100).all()                       # [CLS], [SEP]s
        assert (labels != -100).sum() > 0


def test_short_split_is_an_error():
    with pytest.raises(DataError, match="fewer than one example"):
        MaskedLMStream([[5, 6, 7]], 64, 0.1, 0, cls_id=2, sep_id=3, pad_id=0, mask_id=4, vocab_size=20,
                       special_ids={0, 1, 2, 3, 4})


def test_mlm_needs_an_encoder_config(tmp_path, corpus):
    with pytest.raises(ConfigError, match="bidirectional"):
        Trainer(*resolve("tiny", train=dict(objective="mlm", tokenizer="wordpiece", data=str(corpus))))
    with pytest.raises(ConfigError, match="wordpiece"):
        Trainer(*resolve("tiny", model=dict(mask="bidirectional", type_vocab_size=2),
                         train=dict(objective="mlm", data=str(corpus))))


def test_loss_goes_down_and_checkpoint_is_a_bert(tmp_path, run_configs, corpus):
    trainer = Trainer(*run_configs("run", "bert-mlm", data=str(corpus), max_iters=80, eval_interval=40, lr=3e-3))
    before = trainer.evaluate()
    last = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [40, 80]
    assert 0 < rows[-1]["tokens"] < 80 * 4 * 24 * 0.3                 # only the selected ~15% are counted
    model = load(tmp_path / "run")
    assert isinstance(model, BERT) and model.tokenizer.kind == "wordpiece"
    assert last["val_loss"] < before - 0.5
