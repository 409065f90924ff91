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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real `qkv train` run directory (tiny preset, 64 positions, bundled shakespeare, seconds to train),
    named runs/shakespeare-char inside its own folder as the tour expects; shared by the tests that need one."""
    from qkv.cli import main
    out = tmp_path_factory.mktemp("tiny-run") / "runs" / "shakespeare-char"
    assert main(["train", "--preset", "tiny", "--max-len", "64", "--max-iters", "20", "--eval-interval", "10",
                 "--threads", "1", "--out-dir", str(out)]) == 0
    return out
