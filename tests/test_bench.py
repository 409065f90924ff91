"""Smoke tests of the benchmark entry points: they run end to end and print one JSON line.

The figures themselves are measured by `qkv bench ...` (see bench/README.md), never asserted here."""

import json

from qkv.cli import main


def test_bench_train_json(capsys):
    assert main(["bench", "train", "--json", "--no-hf", "--rounds", "1", "--steps", "1", "--warmup", "1",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["qkv"]["tok_s"] > 0 and result["tokens_per_s"] == result["qkv"]["tok_s"]


def test_bench_decode_run_returns_bound():
    from qkv.bench.decode import run
    result = run(False, prompt_len=4, new_tokens=2, rounds=1, hf=False, plain=False, threads=1)
    assert result["tokens_per_s"] > 0 and 0 < result["fraction_of_bound"]
    assert result["bound_tokens_per_s"] > 0


def test_bench_beam_json(capsys):
    assert main(["bench", "beam", "--json", "--sentences", "2", "--batch", "2", "--rounds", "1",
                 "--max-new-tokens", "2", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["s_per_sentence"]) == {"greedy", "beam4"} and result["beam_over_greedy"] > 0
