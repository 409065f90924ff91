"""Each experiment's --quick mode runs, writes its report, and its result points the robust way.

The quick modes are small (seconds); only results that hold at that size are asserted: those the argument
predicts by a wide margin (a chance-level LSTM against a perfect transformer, a 4x-per-doubling memory),
never close calls or timings that a busy machine could flip, except where the gap is an order of magnitude.
"""

import statistics

import pytest

from qkv.experiments import EXPERIMENTS, run_experiment


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Run each experiment once in quick mode (on first use) and keep its results and report."""
    root, done = tmp_path_factory.mktemp("experiments"), {}

    def get(name):
        if name not in done:
            results = run_experiment(name, root / name, quick=True, log=lambda *a: None)
            done[name] = (results, (root / name / "report.md").read_text(encoding="utf-8"), root / name)
        return done[name]
    return get


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_report_has_figures_config_and_seed(quick, name):
    _, report, folder = quick(name)
    assert f"<!-- qkv experiment: {name} -->" in report and f"qkv experiment {name} --quick --seed 0" in report
    assert "## What it shows" in report and '"seed": 0' in report
    figures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert figures and all((folder / f).stat().st_size > 5000 for f in figures)


def test_long_range_lstm_falls_with_distance_faster_than_the_transformer(quick):
    r, _, _ = quick("long-range")
    near, far = 4, 32
    acc = r["accuracy"]
    assert acc["transformer"][far] > 0.9                              # one attention hop reaches any d
    lstm_drop = acc["LSTM"][near] - acc["LSTM"][far]
    assert lstm_drop > 0.4 and lstm_drop > acc["transformer"][near] - acc["transformer"][far] + 0.3
    assert acc["LSTM"][far] < r["chance"] + 0.1 and acc["tanh RNN"][far] < r["chance"] + 0.1
    g = r["grad_init"]                                                # vanishing through W_hh: geometric
    assert g["tanh RNN"][far] / g["tanh RNN"][near] < 1e-4
    assert g["tanh RNN"][far] / g["tanh RNN"][near] < g["transformer"][far] / g["transformer"][near] / 100


def test_prenorm_trains_without_warmup_where_postnorm_stalls(quick):
    r, _, _ = quick("prenorm-warmup")
    v = r["val_loss"]
    assert v["pre-norm, no warm-up"] < v["post-norm, no warm-up"] - 0.1
    assert v["post-norm, no warm-up"] > r["unigram_loss"] - 0.2      # stuck near character frequencies
    assert len(r["grad_init"]["post"]) == len(r["grad_init"]["pre"]) == 6


def test_attention_memory_grows_as_n_squared_only_on_the_explicit_path(quick):
    r, _, _ = quick("attention-cost")
    assert r["explicit"]["memory_exponent"] > 1.6 and r["fused"]["memory_exponent"] < 1.2
    n = max(r["explicit"]["bytes"])
    assert r["explicit"]["bytes"][n] > 8 * r["fused"]["bytes"][n]
    assert r["explicit"]["seconds"][n] > 4 * r["explicit"]["seconds"][min(r["explicit"]["seconds"])]


def test_kv_cache_keeps_decode_time_flat(quick):
    r, _, _ = quick("kv-cache")
    cached, plain = r["with cache"]["seconds"], r["without cache"]["seconds"]
    # the work: the cached call runs the new position alone, the other the whole prefix again
    T = len(plain)
    assert r["with cache"]["token_passes"] == [1] * T
    assert r["without cache"]["token_passes"] == list(range(1, T + 1))
    # the time follows it (about 3x each on an idle Zen 4, 1.9x on a Zen 3 where a call's fixed cost weighs
    # more at this size; 1.25x leaves room for load from other processes: the figures are the report's)
    assert statistics.median(plain[-16:]) > 1.25 * statistics.median(plain[:16])     # re-reading the prefix
    assert statistics.median(plain[-16:]) > 1.25 * statistics.median(cached[-16:])
    # (not the totals: a sum of wall times takes every stall of a shared machine; the medians do not)
    assert r["without cache"]["total"] == pytest.approx(sum(plain))
    assert r["with cache"]["total"] == pytest.approx(sum(cached))


def test_alibi_extrapolates_best(quick):
    r, _, _ = quick("positions")
    first, last = list(r["buckets"]["alibi"])[0], list(r["buckets"]["alibi"])[-1]
    growth = {s: r["buckets"][s][last] - r["buckets"][s][first] for s in r["buckets"]}
    assert growth["alibi"] < growth["learned"] and growth["alibi"] < growth["rope"]
    sinusoidal = r["maps"]["sinusoidal"]                     # depends only on |i - j|
    assert abs(float(sinusoidal[3, 7] - sinusoidal[10, 14])) < 1e-5 and abs(float(sinusoidal[5, 5]) - 1) < 1e-5
    rope = r["maps"]["rope"]
    assert abs(float(rope[2, 9] - rope[12, 19])) < 1e-5


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_question_names_no_unplaceable_source(name):
    """A report's Question (its module docstring's second paragraph) says what it tests in words a reader
    can place: never "the seeds'" (the project's own notes, which no reader has)."""
    import importlib
    from pathlib import Path
    question = importlib.import_module(EXPERIMENTS[name]).__doc__.split("\n\n")[1]
    report = Path(__file__).parents[1] / "docs" / "experiments" / name / "report.md"
    for text in [question] + ([report.read_text(encoding="utf-8")] if report.is_file() else []):
        assert "seeds" not in text.lower().replace("--seed", ""), name
