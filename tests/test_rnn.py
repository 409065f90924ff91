"""The recurrent baselines: PyTorch's own cells, causal, trainable, configs that say what to fix."""

import pytest
import torch

from qkv import ConfigError
from qkv.models.rnn import RecurrentLM, RNNConfig


@pytest.mark.parametrize("cell, module", [("lstm", torch.nn.LSTM), ("rnn", torch.nn.RNN)])
def test_cells_are_torch_modules_and_causal(cell, module):
    torch.manual_seed(0)
    model = RecurrentLM(RNNConfig(vocab_size=11, d_model=16, n_layers=2, cell=cell)).eval()
    assert type(model.rnn) is module and model.rnn.num_layers == 2
    if cell == "rnn":
        assert model.rnn.nonlinearity == "tanh"
    else:                                               # forget-gate bias 1 (i, f, g, o gate order)
        total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
        assert torch.all(total[16:32] == 1) and not torch.all(total[:16] == 1)
    ids_BL = torch.randint(0, 11, (2, 9))
    edited_BL = ids_BL.clone()
    edited_BL[:, 5:] = (edited_BL[:, 5:] + 1) % 11                  # change only the future
    out = model(ids_BL)
    assert out.logits.shape == (2, 9, 11)
    assert torch.allclose(model(edited_BL).logits[:, :5], out.logits[:, :5])


def test_loss_ignores_unscored_positions_and_training_lowers_it():
    torch.manual_seed(0)
    model = RecurrentLM(RNNConfig(vocab_size=5, d_model=16))
    ids_BL = torch.randint(0, 5, (8, 6))
    targets_BL = torch.full_like(ids_BL, -100)
    targets_BL[:, 1:] = ids_BL[:, :-1]                              # copy the previous token
    manual = torch.nn.functional.cross_entropy(model(ids_BL).logits[:, 1:].reshape(-1, 5), ids_BL[:, :-1].reshape(-1))
    first = model(ids_BL, targets_BL).loss
    assert torch.allclose(first, manual)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(ids_BL, targets_BL).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first.item() / 2


@pytest.mark.parametrize("kwargs, words", [(dict(vocab_size=0), "vocab_size=0 must be >= 1"),
                                           (dict(vocab_size=5, cell="gru"), "cell='gru' must be one of"),
                                           (dict(vocab_size=5, d_model=2.5), "d_model=2.5 must be an integer")])
def test_bad_config_names_the_fix(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        RNNConfig(**kwargs)
