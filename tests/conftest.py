import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors gain nothing from threads, and OpenMP spin-waits slow 100x when cores are shared.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def corpus(tmp_path, request):
    """The test module's ``TEXT`` written to a file, for tests that train on a corpus path."""
    path = tmp_path / "corpus.txt"
    path.write_text(request.module.TEXT, encoding="utf-8")
    return path
