"""The oneDNN Linear swap: the same outputs, gradients and state dict as nn.Linear, fused activations included.

Legend: B batch, L length, V vocab.
"""

import pytest
import torch
from torch import nn

from qkv import GPT, ModelConfig
from qkv.models.encoder import BERT, BertClassifier
from qkv.runtime.onednn import OneDNNLinear, onednn_pays, use_onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def encoder_cfg(mlp: str) -> ModelConfig:
    return ModelConfig(vocab_size=60, max_len=16, n_layers=2, d_model=32, n_heads=4, mask="bidirectional",
                       norm_placement="post", type_vocab_size=2, embed_norm=True, mlp=mlp, dropout=0.0)


def twins(make):
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    return plain, use_onednn(make(), force=True)


@pytest.mark.parametrize("mlp", ["gelu", "gelu_tanh", "relu", "swiglu"])
@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_same_outputs_and_state_dict(family, mlp):
    make = (lambda: BERT(encoder_cfg(mlp))) if family == "bert" else \
        (lambda: GPT(ModelConfig(vocab_size=60, max_len=16, n_layers=2, d_model=32, n_heads=4, mlp=mlp)))
    plain, fast = twins(make)
    assert not any(type(m) is nn.Linear for m in fast.modules())
    assert any(isinstance(m, OneDNNLinear) and m.post != "none" for m in fast.modules()) == (mlp != "swiglu")
    assert plain.state_dict().keys() == fast.state_dict().keys()
    if family == "bert":
        assert fast.head.decoder.weight is fast.tok.weight                       # the tie survives the swap
    ids_BL = torch.randint(0, 60, (3, 12))
    with torch.inference_mode():
        assert torch.allclose(fast(ids_BL).logits, plain(ids_BL).logits, atol=1e-5)


def test_training_through_the_swap_is_nn_linear_training():
    plain, fast = twins(lambda: BertClassifier(encoder_cfg("gelu"), ["neg", "pos"]))
    ids_BL, labels_B = torch.randint(0, 60, (4, 10)), torch.tensor([0, 1, 1, 0])
    for model in (plain, fast):
        model(ids_BL, labels_B).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    with torch.no_grad():                                  # a weight update is seen by the next inference
        for p, q in zip(plain.parameters(), fast.parameters()):
            p -= 0.1 * p.grad
            q -= 0.1 * q.grad
        assert torch.allclose(fast(ids_BL).logits, plain(ids_BL).logits, atol=1e-5)


def test_without_force_it_swaps_only_where_it_pays():
    fast = use_onednn(BERT(encoder_cfg("gelu")))
    assert any(isinstance(m, OneDNNLinear) for m in fast.modules()) == onednn_pays()
