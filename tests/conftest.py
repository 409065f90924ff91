import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors gain nothing from threads, and OpenMP spin-waits slow 100x when cores are shared.
    torch.set_num_threads(1)
    yield
