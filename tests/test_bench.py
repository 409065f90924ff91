"""Smoke tests of the benchmark entry points: they run end to end and print one JSON line whose figures
agree with each other (rates from their rounds, the bound from bandwidth and bytes, ratios from their parts).

The figures themselves are measured by `qkv bench ...` (see bench/README.md), never asserted here."""

import json

import pytest
import torch

from qkv import GPT, ModelConfig
from qkv.cli import main


def test_bench_train_json(capsys):
    assert main(["bench", "train", "--json", "--no-hf", "--rounds", "1", "--steps", "1", "--warmup", "1",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    ours = result["qkv"]
    assert ours["tok_s"] > 0 and result["tokens_per_s"] == ours["tok_s"] == max(ours["rounds_tok_s"])
    assert len(ours["rounds_tok_s"]) == 1
    auto = result["qkv_auto"] if result["precision_auto"] == "bf16" else ours      # auto = fp32: the same side
    assert result["tokens_per_s_auto"] == auto["tok_s"] and auto["precision"] == result["precision_auto"]
    assert ours["params"] == GPT(ModelConfig(**ours["config"])).num_params()      # the model it says it timed
    shape = result["shape"]
    assert (shape["n_layers"], shape["d_model"], shape["vocab_size"]) == (ours["config"]["n_layers"],
                                                                           ours["config"]["d_model"], 65)


def test_bench_decode_run_returns_bound():
    from qkv.bench.decode import run
    result = run(False, prompt_len=4, new_tokens=2, rounds=1, hf=False, plain=False, threads=1)
    assert result["tokens_per_s"] == result["timing"]["rounds_tok_s"]["qkv"][0] > 0
    weight_bytes = result["sides"]["qkv"]["weight_bytes_per_token"]
    assert result["weight_mb_per_token"] == pytest.approx(weight_bytes / 1e6, abs=0.05)
    # the bound: one read of every weight per token at the measured copy bandwidth
    assert result["bound_tokens_per_s"] == pytest.approx(result["bandwidth_gb_s"] * 1e9 / weight_bytes, rel=0.01)
    assert result["fraction_of_bound"] == pytest.approx(result["tokens_per_s"] / result["bound_tokens_per_s"],
                                                        abs=0.01)


def test_bench_beam_json(capsys):
    assert main(["bench", "beam", "--json", "--sentences", "2", "--batch", "2", "--rounds", "1",
                 "--max-new-tokens", "2", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seconds = result["s_per_sentence"]
    assert set(seconds) == {"greedy", "beam4"} and min(seconds.values()) > 0
    assert result["beam_over_greedy"] == pytest.approx(seconds["beam4"] / seconds["greedy"], rel=2e-3)


def test_bench_ddp_json(capsys):
    """Three real launches (1 process x 1 thread, 1 x all cores, torchrun 2 x half); the figures agree."""
    assert main(["bench", "ddp", "--json", "--steps", "1", "--warmup", "1", "--batch", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = result["runs"]
    assert sorted(r["processes"] for r in runs.values()) == [1, 1, 2]
    two = next(r for r in runs.values() if r["processes"] == 2)
    base = next(r for name, r in runs.items() if r["processes"] == 1 and r["threads"] == two["threads"])
    assert result["scaling_efficiency"] == pytest.approx(two["tok_s"] / (2 * base["tok_s"]), abs=1e-3)
    p, m = result["prediction"], result["measured"]
    assert p["wire_s"] == pytest.approx(2 * 7 / 8 * two["grad_bytes"] / 1.25e9, abs=1e-4)
    assert p["step_s"] == pytest.approx(m["machine_step_s"] + p["wire_s"] + m["allreduce_s"], abs=1e-3)
    assert 0 < p["efficiency"] <= 1 and m["compute_s"] > 0 and m["allreduce_s"] > 0


def test_bench_ddp_refuses_an_odd_batch(capsys):
    assert main(["bench", "ddp", "--batch", "3"]) == 2
    assert "--batch 3 must be even" in capsys.readouterr().err


def test_bench_serve_json(tmp_path, capsys):
    import qkv
    from qkv import Tokenizer
    import torch
    tok = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog. " * 20], vocab_size=300)
    torch.manual_seed(0)
    qkv.save(GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=64, n_layers=1, d_model=16, n_heads=2)),
             tmp_path / "gpt", tok)
    assert main(["bench", "serve", str(tmp_path / "gpt"), "--json", "--clients", "3", "--max-tokens", "4",
                 "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "hf_batched" not in result                         # a qkv checkpoint: transformers cannot load it
    assert "llama_cpp_one_at_a_time" not in result            # nor llama.cpp (GGUF files only)
    for side in ("concurrent", "one_at_a_time"):
        f = result[side]
        assert f["tokens_per_s"] == pytest.approx(3 * 4 / f["wall_s"])
        assert 0 < f["ttft_p50_ms"] <= f["ttft_p99_ms"] and 0 <= f["itl_p50_ms"] <= f["itl_p99_ms"]
    assert result["concurrent_vs_one_at_a_time"] == pytest.approx(
        result["concurrent"]["tokens_per_s"] / result["one_at_a_time"]["tokens_per_s"])


@pytest.mark.parametrize("argv", [["bench", "train", "--device", "cuda:x"], ["bench", "decode", "--device", "tpu"],
                                  ["bench", "decode", "--model", "m.gguf", "--device", "cuda"]])
def test_a_bad_device_is_one_line_before_any_work(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device" in err


def test_cuda_without_a_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)          # as on a CPU-only machine
    assert main(["bench", "train", "--device", "cuda"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_bench_finetune_json_on_tiny_models(tmp_path, capsys):
    """Both sides end to end (qkv's Trainer.fit paired step by step with a transformers loop) on tiny
    random BERT / Llama directories; the figures come from `qkv bench finetune` (bench/README.md)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "very"]
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=24,
                                                   max_position_embeddings=16)).save_pretrained(bert)
    (bert / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    llama = tmp_path / "llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32)).save_pretrained(llama)
    sst2 = tmp_path / "train.tsv"
    sst2.write_text("sentence\tlabel\n" + "a good film \t1\na very bad film \t0\n" * 20, encoding="utf-8")
    assert main(["bench", "finetune", "--json", "--encoder", str(bert), "--data", str(sst2), "--decoder",
                 str(llama), "--batch", "4", "--decoder-batch", "2", "--length", "8", "--steps", "2",
                 "--warmup", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1                                  # --json: exactly one line
    result = json.loads(out[0])
    for side in ("encoder", "decoder"):
        assert len(result[side]["qkv_steps_s"]) == len(result[side]["hf_steps_s"]) == 2
        assert result[side]["ratio"] > 0
    pytest.importorskip("peft")
    assert main(["bench", "finetune", "--json", "--only", "decoder", "--decoder", str(llama), "--lora", "3",
                 "--decoder-batch", "2", "--length", "8", "--steps", "1", "--warmup", "1"]) == 0
    lora = json.loads(capsys.readouterr().out.strip())["decoder"]
    assert lora["lora"]["rank"] == 3 and 0 < lora["trainable_params"] < 5000     # adapters only


def test_bench_decode_counts_the_cache_a_step_reads():
    """The bound's cache bytes: a prompt's worth of keys and values is what a preallocated cache holds."""
    from qkv import GPT, ModelConfig
    from qkv.bench.decode_model import cache_bytes
    cfg = ModelConfig(vocab_size=50, max_len=40, n_layers=3, d_model=48, n_heads=4, n_kv_heads=2)
    caches = GPT(cfg).new_caches(1, 24)
    held = sum(c.k_BGMD.numel() * c.k_BGMD.element_size() + c.v_BGMD.numel() * c.v_BGMD.element_size()
               for c in caches)
    assert cache_bytes(cfg, 24, 0, 4) == held
    assert cache_bytes(cfg, 20, 8, 2) == held // 2                 # mean length 20 + 8 / 2, float16
