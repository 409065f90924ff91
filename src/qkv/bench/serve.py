"""Serving speed: ``qkv serve``'s continuous batching under N concurrent streaming clients, against the same
N requests one at a time, and against transformers' batched ``generate`` on the same prompts in one call.

    qkv bench serve SmolLM2-135M-Instruct.Q4_1.gguf --clients 16 [--quantized] [--json]

The server runs in this process on a loopback port (uvicorn, as ``qkv serve`` runs it) and the clients are
threads speaking raw HTTP with ``stream: true``. Every request is a different chat question rendered with
the model's template, greedy, exactly --max-tokens new tokens (``ignore_eos``), so every side generates the
same number of tokens. Figures:

    tokens/s     all generated tokens / wall time from the first request sent to the last token received
    TTFT         request sent -> first text chunk, p50 and p99 over the requests
    ITL          gap between consecutive text chunks of one request, p50 and p99 over all gaps

transformers runs ``generate`` once on the N left-padded prompts (greedy, min = max new tokens) with the
same weights (a GGUF is dequantized to float32 by transformers' own loader; it has no CPU path for the
quantized codes) and the same thread count. When PATH is a GGUF file and llama-cpp-python is installed (the
optional ``bench`` extra), llama.cpp also runs the same N prompts one at a time, server-free, on the same
file and thread count (greedy, eos ignored; in its own process, as ``qkv bench decode --model`` runs it):
a reference for what one C++ decode loop does without batching. Timed sides alternate over --rounds;
medians are reported.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from ..padding import pad_left

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "How many legs does a spider have?",
             "What is photosynthesis?", "Give me a synonym for happy.", "Why is the sky blue?",
             "What is 12 times 12?", "Who wrote Romeo and Juliet?", "What is the boiling point of water?",
             "Name a planet in our solar system.", "What does a thermometer measure?",
             "Translate 'thank you' into Spanish.", "What is the largest ocean?", "How do bees make honey?",
             "What is a prime number?", "Suggest a name for a cat."]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _stream(port: int, body: dict) -> tuple[float, list[float]]:
    """One streaming request: (time sent, arrival time of each text chunk)."""
    data = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"the server answered {resp.status}: {resp.read()[:200]!r}")
    arrivals, buffer = [], b""
    while True:
        part = resp.read1(65536)
        if not part:
            break
        buffer += part
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data: {"):
                chunk = json.loads(event[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    arrivals.append(time.perf_counter())
    conn.close()
    return sent, arrivals


def _serve_side(port: int, bodies: list[dict], concurrent: bool) -> dict:
    results: list = [None] * len(bodies)

    def one(i):
        results[i] = _stream(port, bodies[i])
    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(bodies)):
            one(i)
    wall = max(a[-1] for _, a in results if a) - start
    ttft = [a[0] - s for s, a in results if a]
    itl = [b - a for _, arr in results for a, b in zip(arr, arr[1:])]
    return {"wall_s": wall, "ttft": ttft, "itl": itl}


def _hf_side(path: str, prompts: list[list[int]], pad_id: int, max_tokens: int):
    """A callable timing transformers' batched generate on the same prompts, or None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    p = Path(path)
    if p.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name)
    elif (p / "config.json").is_file() and "qkv_version" not in json.loads((p / "config.json").read_text()):
        model = transformers.AutoModelForCausalLM.from_pretrained(p)
    else:
        return None                                    # a qkv checkpoint: transformers has no loader for it
    model.eval()
    ids_BL, key_mask_BL = pad_left(prompts, pad_id)
    L, mask_BL = ids_BL.shape[1], key_mask_BL.long()          # transformers' attention_mask is 0/1

    def run() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids_BL, attention_mask=mask_BL, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad_id)
        assert out.shape[1] == L + max_tokens
        return time.perf_counter() - start
    return run


def _llama_cpp_side(path: str, prompts: list[list[int]], max_tokens: int, threads: int):
    """A callable timing llama.cpp on the prompts one after another, or None (not a GGUF, or not installed)."""
    if Path(path).suffix != ".gguf":
        return None
    from .decode_model import llama_cpp_worker
    try:
        ask, version = llama_cpp_worker(Path(path))
    except ImportError:
        return None
    n_ctx = max(len(x) for x in prompts) + max_tokens + 8          # one engine for every prompt
    ask({"ids": prompts[0], "new_tokens": 2, "threads": threads, "n_ctx": n_ctx})          # load, warm up

    def run() -> float:
        start = time.perf_counter()
        for ids in prompts:
            ask({"ids": ids, "new_tokens": max_tokens, "threads": threads, "n_ctx": n_ctx})
        return time.perf_counter() - start
    run.version = version
    return run


SIDES = ["concurrent", "one_at_a_time", "hf_batched", "llama_cpp_one_at_a_time"]


def run(path: str, as_json: bool, clients: int = 16, max_tokens: int = 64, quantized: bool = False,
        threads: int | None = None, rounds: int = 1, hf: bool = True, llama_cpp: bool = True) -> dict:
    from .. import load
    from ..serve import require_serve_extra

    uvicorn = require_serve_extra("qkv bench serve")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = load(path, quantized=quantized)
    tok = model.tokenizer
    bodies, prompts = _requests(tok, clients, max_tokens)
    hf_run = _hf_side(path, prompts, tok.pad_id if tok.pad_id is not None else tok.eos_id, max_tokens) if hf else None
    llama_run = _llama_cpp_side(path, prompts, max_tokens, threads) if llama_cpp else None
    with _serving(uvicorn, model, clients, max_tokens) as port:
        sides = _time_sides(port, bodies, rounds, hf_run, llama_run)
    report = {"bench": "serve", "model": str(path), "quantized": quantized, "clients": clients,
              "max_tokens": max_tokens, "threads": threads, "rounds": rounds, "cpu": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    report.update(_figures(sides, clients * max_tokens))
    c = report["concurrent"]["tokens_per_s"]
    report["concurrent_vs_one_at_a_time"] = c / report["one_at_a_time"]["tokens_per_s"]
    if "hf_batched" in report:
        report["concurrent_vs_hf_batched"] = c / report["hf_batched"]["tokens_per_s"]
    if "llama_cpp_one_at_a_time" in report:
        report["llama_cpp_version"] = llama_run.version
        report["concurrent_vs_llama_cpp_one_at_a_time"] = c / report["llama_cpp_one_at_a_time"]["tokens_per_s"]
    if as_json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return report


def _requests(tok, clients: int, max_tokens: int) -> tuple[list[dict], list[list[int]]]:
    """The clients' request bodies (greedy, exactly max_tokens each) and the same prompts as token ids."""
    from ..conversation import render_chat
    from ..serve.openai_api import DEFAULT_TEMPLATE
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(clients)]
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": max_tokens, "temperature": 0,
               "ignore_eos": True, "stream": True} for q in questions]
    prompts = [tok.encode(render_chat(tok.chat_template or DEFAULT_TEMPLATE, [{"role": "user", "content": q}], True,
                                      tok.specials)) for q in questions]
    return bodies, prompts


@contextlib.contextmanager
def _serving(uvicorn, model, clients: int, max_tokens: int):
    """Yield the loopback port of ``qkv serve``'s app over ``model``, run by uvicorn in a thread."""
    from ..serve import ServeConfig, create_app
    app = create_app(model, ServeConfig(model_name="bench", max_batch=clients, max_queue=4 * clients,
                                        max_tokens_cap=max_tokens))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


def _time_sides(port: int, bodies: list[dict], rounds: int, hf_run, llama_run) -> dict[str, list]:
    """{side: its runs} over ``rounds``, the sides in alternating order; a side without its callable is left out."""
    sides: dict[str, list] = {side: [] for side in SIDES}
    _serve_side(port, bodies[:2], concurrent=True)                       # warm up
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            if side == "hf_batched":
                if hf_run is not None:
                    sides[side].append({"wall_s": hf_run()})
            elif side == "llama_cpp_one_at_a_time":
                if llama_run is not None:
                    sides[side].append({"wall_s": llama_run()})
            else:
                sides[side].append(_serve_side(port, bodies, concurrent=side == "concurrent"))
    return sides


def _figures(sides: dict[str, list], total_tokens: int) -> dict[str, dict]:
    """{side: tokens/s and wall time (medians over rounds), with TTFT and ITL percentiles for the server}."""
    out = {}
    for side, runs in sides.items():
        if not runs:
            continue
        wall = statistics.median(x["wall_s"] for x in runs)
        figures = {"tokens_per_s": total_tokens / wall, "wall_s": wall}
        if "ttft" in runs[0]:
            ttft = [v for x in runs for v in x["ttft"]]
            itl = [v for x in runs for v in x["itl"]]
            figures.update(ttft_p50_ms=1e3 * _percentile(ttft, 50), ttft_p99_ms=1e3 * _percentile(ttft, 99),
                           itl_p50_ms=1e3 * _percentile(itl, 50), itl_p99_ms=1e3 * _percentile(itl, 99))
        out[side] = figures
    return out


def _print_table(report: dict) -> None:
    print(f"{report['model']} ({'quantized' if report['quantized'] else 'as stored'}), {report['clients']} clients "
          f"x {report['max_tokens']} tokens, {report['threads']} threads, median of {report['rounds']} round(s)")
    print(f"{'side':<24} {'tokens/s':>9} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>8}   (ms)")
    for side in SIDES:
        if side in report:
            f = report[side]
            lat = "".join(f" {f[k]:8.0f}" for k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")) \
                if "ttft_p50_ms" in f else ""
            print(f"{side:<24} {f['tokens_per_s']:9.1f}{lat}")
    print(f"concurrent / one at a time: {report['concurrent_vs_one_at_a_time']:.2f}x" +
          (f"; concurrent / transformers batched generate: {report['concurrent_vs_hf_batched']:.2f}x"
           if "concurrent_vs_hf_batched" in report else "") +
          (f"; concurrent / llama.cpp one at a time: {report['concurrent_vs_llama_cpp_one_at_a_time']:.2f}x"
           if "concurrent_vs_llama_cpp_one_at_a_time" in report else ""))
