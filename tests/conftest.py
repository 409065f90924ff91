import os

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


from tiny_models import TINY_MODEL  # noqa: E402  (every training test's model: 2 x 32, 16 positions)


@pytest.fixture
def run_configs(tmp_path, request):
    """The one factory of training configs: ``run_configs(name, preset="tiny", model=None, **train)`` is the
    (ModelConfig, TrainConfig) of a run writing to tmp_path/name: ``preset``, then TINY_MODEL, the test
    module's ``RUN_MODEL`` and ``model``; its ``RUN`` options, then ``train``."""
    from qkv.config import resolve
    module_model, module_train = getattr(request.module, "RUN_MODEL", {}), getattr(request.module, "RUN", {})

    def make(name: str, preset: str = "tiny", model: dict | None = None, **train):
        return resolve(preset, model={**TINY_MODEL, **module_model, **(model or {})},
                       train={"out_dir": str(tmp_path / name), **module_train, **train})
    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real `qkv train` run directory (tiny preset, 64 positions, bundled shakespeare, seconds to train),
    named runs/shakespeare-char inside its own folder as the tour expects; shared by the tests that need one."""
    from qkv.cli import main
    out = tmp_path_factory.mktemp("tiny-run") / "runs" / "shakespeare-char"
    assert main(["train", "--preset", "tiny", "--max-len", "64", "--max-iters", "20", "--eval-interval", "10",
                 "--threads", "1", "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """{task: (train file, eval file or None)} plus the tiny MLM encoder under "encoder" (finetune_fixtures)."""
    from finetune_fixtures import make_task_files
    return make_task_files(tmp_path_factory.mktemp("tasks"))


@pytest.fixture
def parallel(tmp_path):
    """A tiny German-English corpus: DIR/{train,val}.{de,en} (parallel_fixtures)."""
    from parallel_fixtures import write_parallel
    return write_parallel(tmp_path / "para")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped test fails the run: a dependency missing from the ``dev`` extra must not
    silently drop the parity tests that need it (``.ci/run`` sets CI=true)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if in_ci() and skipped and session.exitstatus == 0:
        reporter.ensure_newline()
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            reporter.write_line(f"CI=true: skipped {report.nodeid}: {reason}", red=True)
        reporter.write_line(f"CI=true: {len(skipped)} skipped test(s) fail the run; add the missing "
                            f"dependency to the dev extra in pyproject.toml", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def transformers():
    """transformers, the reference most parity tests hold qkv to (skipped only where it is truly absent)."""
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    return tf


@pytest.fixture(scope="session")
def sp_files(transformers, tmp_path_factory):
    """SentencePiece models trained here, each written into a GGUF with random weights (gguf_fixtures)."""
    pytest.importorskip("gguf")
    pytest.importorskip("sentencepiece")
    from gguf_fixtures import write_sentencepiece_files
    return write_sentencepiece_files(transformers, tmp_path_factory.mktemp("sp"))
