"""Mutation testing: how many small bugs planted in a module do its fast tests catch?

    python bench/mutation.py                      # every module below (`make mutation`)
    python bench/mutation.py nn/masks.py --workers 1

For each module, mutmut (pinned in the ``mutation`` extra) rewrites it into hundreds of mutants (``<`` becomes
``<=``, ``+`` becomes ``-``, a constant changes, a call argument becomes None, ...) and runs the tests that
cover it against each one. A mutant is *killed* when a test fails. The score is killed / all mutants;
survivors are either gaps in the tests or equivalent mutants (the same behaviour), which bench/mutation.md
lists with reasons. Each module runs in its own scratch copy of the repository restricted to its covering
tests, so one module takes minutes, not hours. Not part of CI: it is slow.

Two things mutmut does not do by itself, added here:
- it leaves decorated functions alone; functions decorated only with ``torch.inference_mode()`` or
  ``torch.no_grad()`` (the decode loops and the beam search) are mutated too, the decorator kept;
- tests that start a fresh ``python`` (kill -9 during a save, ``qkv serve`` stopped by SIGTERM) import the
  mutated copy (PYTHONPATH), and what such a process calls counts as covered by the test that started it;
- a test's calls are recorded after its teardown, not before: mutmut picks the tests to run against a mutant
  from which tests called its function, and a server's shutdown (``Engine.stop``, the engine thread's last
  events, uvicorn's exit) runs when a fixture is torn down, which mutmut would credit to the next test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module (under src/qkv) -> the fast tests that cover it
MODULES = {
    "nn/attention.py": ["tests/test_layers.py", "tests/test_seq2seq.py",
                        "tests/test_model.py::test_cached_decode_equals_full_recompute"],
    "nn/masks.py": ["tests/test_layers.py", "tests/test_model.py::test_fast_path_equals_explicit_path",
                    "tests/test_model.py::test_cached_decode_equals_full_recompute"],
    "nn/position.py": ["tests/test_layers.py", "tests/test_model.py::test_cached_decode_equals_full_recompute",
                       "tests/test_model.py::test_left_padded_batch_equals_each_sequence_alone"],
    "nn/kv_cache.py": ["tests/test_layers.py", "tests/test_model.py::test_cached_decode_equals_full_recompute",
                       "tests/test_translate.py"],
    "generate.py": ["tests/test_generate.py", "tests/test_sampling.py"],
    "translate.py": ["tests/test_translate.py"],
    "checkpoint.py": ["tests/test_checkpoint.py", "tests/test_encoder.py::test_save_load_round_trip",
                      "tests/test_seq2seq.py::test_save_and_load_round_trip",
                      "tests/test_hf_gpt2.py::test_qkv_load_dispatches_gpt2",
                      "tests/test_hf_bert.py::test_hidden_states_match_bert_model",
                      "tests/test_hf_bert.py::test_fine_tune_from_hf_encoder_keeps_its_weights",
                      "tests/test_translate.py::test_translate_reads_sources_with_the_source_vocabulary",
                      "tests/test_quant.py::test_swap_save_and_load_round_trip"],
    "rundir.py": ["tests/test_rundir.py", "tests/test_checkpoint.py"],
    # serving: the server through the openai client and raw HTTP; batching and the engine's rows
    "serve/app.py": ["tests/test_serve.py", "tests/test_serve_hardening.py", "tests/test_serve_routes.py",
                     "tests/test_serve_batching.py", "tests/test_grammar.py::test_server_response_format"],
    "serve/routes.py": ["tests/test_serve.py", "tests/test_serve_routes.py", "tests/test_serve_hardening.py",
                        "tests/test_grammar.py::test_server_response_format"],
    "serve/responses.py": ["tests/test_serve_routes.py", "tests/test_serve.py", "tests/test_serve_hardening.py"],
    "serve/openai_api.py": ["tests/test_serve.py", "tests/test_grammar.py::test_server_response_format"],
    "serve/schemas.py": ["tests/test_serve.py", "tests/test_serve_hardening.py", "tests/test_serve_routes.py"],
    "serve/config.py": ["tests/test_serve.py", "tests/test_serve_batching.py", "tests/test_serve_hardening.py"],
    "serve/engine.py": ["tests/test_serve_batching.py", "tests/test_serve.py", "tests/test_serve_hardening.py",
                        "tests/test_grammar.py::test_server_response_format"],
    "serve/rows.py": ["tests/test_serve_batching.py", "tests/test_serve.py"],
    "serve/events.py": ["tests/test_serve_batching.py", "tests/test_serve.py", "tests/test_serve_routes.py"],
    "serve/prometheus.py": ["tests/test_serve.py", "tests/test_serve_batching.py"],
    "serve/middleware.py": ["tests/test_serve.py", "tests/test_serve_hardening.py"],
    # quantization: the modules, the swap, GGUF's blocks
    "quant/__init__.py": ["tests/test_quant.py"],
    "quant/linear.py": ["tests/test_quant.py", "tests/test_gguf.py::test_quantized_load_keeps_blocks_and_stays_close",
                        "tests/test_gguf_options.py::test_quantized_untied_head_keeps_the_files_codes"],
    "quant/gguf_blocks.py": ["tests/test_gguf.py", "tests/test_gguf_options.py"],
    # interop: every loader against transformers (and the gguf package) on files made in the test
    "interop/gguf.py": ["tests/test_gguf.py", "tests/test_gguf_options.py"],
    "interop/gguf_quant.py": ["tests/test_gguf.py::test_quantized_load_keeps_blocks_and_stays_close",
                              "tests/test_gguf_options.py"],
    "interop/gguf_tokenizer.py": ["tests/test_gguf.py::test_tokenizer_and_chat_template_match_transformers",
                                  "tests/test_gguf.py::test_unsupported_tensor_type_and_tokenizer",
                                  "tests/test_gguf_options.py::test_special_ids_and_add_bos_come_from_the_file"],
    "interop/hf_files.py": ["tests/test_hf_llama.py", "tests/test_hf_gpt2.py", "tests/test_hf_bert.py",
                            "tests/test_hf_vision.py"],
    "interop/hf_gpt2.py": ["tests/test_hf_gpt2.py"],
    "interop/hf_bert.py": ["tests/test_hf_bert.py"],
    "interop/hf_llama.py": ["tests/test_hf_llama.py"],
    "interop/hf_vit.py": ["tests/test_hf_vision.py"],
    "interop/hf_swin.py": ["tests/test_hf_vision.py"],
    # conversation: templates against transformers' apply_chat_template, sessions against fresh chats
    "conversation/template.py": ["tests/test_conversation.py",
                                 "tests/test_gguf.py::test_tokenizer_and_chat_template_match_transformers"],
    "conversation/session.py": ["tests/test_conversation.py",
                                "tests/test_cli_chat.py::test_chat_loop_turns_reset_and_exit",
                                "tests/test_cli_chat.py::test_chat_context_overflow_is_one_line_and_the_chat_goes_on"],
}
# Where a module's tests would take minutes per mutant, only the fast ones run (`-k` expressions).
DESELECT = {"translate.py": "not copy_task", "nn/kv_cache.py": "not copy_task"}

PATCH = r'''
import os
import sys
from pathlib import Path

import libcst as cst
from mutmut.mutation import file_mutation

GRAD_MODES = ("torch.inference_mode()", "torch.no_grad()")
HITS = Path(os.environ["QKV_MUTATION_HITS"])
original = file_mutation.MutationVisitor._skip_node_and_children


def skip(self, node):
    """Mutate functions whose only decorators are grad modes: the copies keep the decorator."""
    if isinstance(node, cst.FunctionDef) and node.decorators and all(
            cst.Module([]).code_for_node(d.decorator) in GRAD_MODES for d in node.decorators):
        return original(self, node.with_changes(decorators=[]))
    return original(self, node)


file_mutation.MutationVisitor._skip_node_and_children = skip

from mutmut.runners import harness  # noqa: E402
from mutmut.state import state  # noqa: E402

execute_pytest = harness.PytestRunner.execute_pytest


def after_teardown(record, hits):
    """``record`` (mutmut's per-test bookkeeping of trampoline hits) run after the test's teardown, with the
    hits of the fresh Pythons the test started (files in ``hits``) added."""
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item, nextitem):
        yield
        for f in sorted(hits.glob("*.txt")):
            state()._stats.update(f.read_text().split())
            f.unlink()
        record(item, nextitem)
    return pytest_runtest_teardown


def execute(self, params, **kwargs):
    for plugin in kwargs.get("plugins") or ():
        record = getattr(plugin, "pytest_runtest_teardown", None)
        if record is not None and not hasattr(record, "pytest_impl"):
            plugin.pytest_runtest_teardown = after_teardown(record, HITS)
    return execute_pytest(self, params, **kwargs)


harness.PytestRunner.execute_pytest = execute
from mutmut.__main__ import cli  # noqa: E402
sys.argv = ["mutmut", *sys.argv[1:]]
cli()
'''


# Imported by every fresh Python a test starts (it is on their PYTHONPATH): while mutmut collects which tests
# call which functions, the functions such a process calls are written to QKV_MUTATION_HITS/<pid>.txt as they
# are first called (a server killed by a signal runs no atexit), and credited to the test that started it.
SITECUSTOMIZE = """
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("QKV_MUTATION_HITS"):
    import mutmut.mutation.trampoline as _trampoline

    _seen = set()
    _path = os.path.join(os.environ["QKV_MUTATION_HITS"], str(os.getpid()) + ".txt")

    def _record(name, caller=None):
        if name not in _seen:
            _seen.add(name)
            with open(_path, "a") as f:
                f.write(name + "\\n")

    _trampoline.record_trampoline_hit = _record
"""


def scratch_copy(module: str, tests: list[str], work: Path, timeout_multiplier: float = 15.0) -> Path:
    """The repository's files (as in the work tree) in ``work``, with a mutmut config for one module."""
    if work.exists():
        shutil.rmtree(work)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "src", "tests", "pyproject.toml"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    # the compiled kernels (qkv.native, built by pip install, git-ignored): without them the mutants run
    # PyTorch's kernels only and the default path on this machine goes untested
    built = subprocess.run(["git", "ls-files", "-coi", "--exclude-standard", "src"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    files += [f for f in built if f.endswith((".so", ".pyd", ".dylib"))]
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    missing = [t for t in tests if not (work / t.split("::")[0]).is_file()]
    if missing:
        raise SystemExit(f"{module}: no test file {missing}; fix MODULES in bench/mutation.py")
    selection = "\n    ".join(tests)
    deselect = f"\n    -k\n    {DESELECT[module]}" if module in DESELECT else ""
    (work / "setup.cfg").write_text(f"""[mutmut]
source_paths = src
only_mutate = src/qkv/{module}
timeout_multiplier = {timeout_multiplier}
pytest_add_cli_args_test_selection =
    {selection}
pytest_add_cli_args =
    -p
    no:randomly
    -p
    no:cacheprovider{deselect}
""")
    return work


def run_module(module: str, workers: int, work_root: Path, collect_only: bool = False,
               timeout_multiplier: float = 15.0) -> dict:
    """Mutate ``module`` and test every mutant (or, with ``collect_only``, read a finished run's results)."""
    work = work_root / module.replace("/", "_").removesuffix(".py")
    log = work / "mutmut.log"
    if not collect_only:
        scratch_copy(module, MODULES[module], work, timeout_multiplier)
        # Made before Python starts: a PYTHONPATH entry missing at start-up is never searched again.
        (work / "mutants" / "src").mkdir(parents=True)
        (work / "mutants" / "src" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (work / "hits").mkdir()
        env = {**os.environ, "PYTHONPATH": str(work / "mutants" / "src"), "CI": "",
               "QKV_MUTATION_HITS": str(work / "hits")}
        env.pop("PYTEST_ADDOPTS", None)
        with open(log, "w") as out:
            subprocess.run([sys.executable, "-c", PATCH, "run", "--max-children", str(workers)], cwd=work,
                           env=env, stdout=out, stderr=subprocess.STDOUT)
    meta = work / "mutants" / "src" / "qkv" / (module + ".meta")
    if not meta.is_file():
        raise SystemExit(f"mutmut produced no results for {module}; see {log}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if codes and all(code is None for code in codes.values()):
        raise SystemExit(f"mutmut tested no mutant of {module} (the clean test run failed?); see {log}")
    from mutmut.stats import status_by_exit_code
    status = {name: status_by_exit_code[code] for name, code in codes.items()}
    killed = sum(s in ("killed", "timeout", "segfault") for s in status.values())
    survivors = sorted(name for name, s in status.items() if s not in ("killed", "timeout", "segfault"))
    return {"module": module, "mutants": len(status), "killed": killed,
            "timeouts": sum(s == "timeout" for s in status.values()),
            "score": round(killed / max(len(status), 1), 4), "survivors": {n: status[n] for n in survivors},
            "work": str(work)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", default=list(MODULES), help="modules under src/qkv (default: all)")
    p.add_argument("--workers", type=int, default=1, help="mutants tested at once (the machine is shared)")
    p.add_argument("--work", default=str(ROOT / ".mutation"), help="scratch folder (one copy per module)")
    p.add_argument("--json", default=str(ROOT / ".mutation" / "results.json"), help="write the scores here")
    p.add_argument("--collect", action="store_true", help="only read the results of runs already in --work")
    p.add_argument("--timeout-multiplier", type=float, default=15.0,
                   help="a mutant times out (and counts as killed) after this many times its tests' clean run "
                        "time, plus a second; mutmut's default 15 makes each mutant that hangs a server's tests "
                        "wait minutes")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    results_path = Path(args.json)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for module in args.modules:
        r = run_module(module, args.workers, Path(args.work), collect_only=args.collect,
                       timeout_multiplier=args.timeout_multiplier)
        results[module] = r
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{module:18} {r['killed']:4d} / {r['mutants']:4d} killed = {100 * r['score']:5.1f}% "
              f"({r['timeouts']} by timeout)", flush=True)
    print(f"survivors: `mutmut show NAME` in {args.work}/<module>; scores in {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
