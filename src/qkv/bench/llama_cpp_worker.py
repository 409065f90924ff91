"""llama.cpp's side of ``qkv bench decode --model``, in its own process.

llama-cpp-python's engine and PyTorch each bring an OpenMP runtime; in one process the first ``eval``
crashed (segmentation fault in ``llama_decode``, measured with llama-cpp-python 0.3.36 and torch 2.13).
So the benchmark starts this file as a script (``python llama_cpp_worker.py``: it never imports qkv, hence
never torch) and talks to it over pipes: one JSON request per line in, one JSON result per line out.

    {"model": PATH, "ids": [...], "new_tokens": 64, "threads": 1}   -> {"prefill": tok/s, "decode": tok/s,
                                                                        "decode_cpu_s": CPU seconds of the decode}
    (optional "n_ctx": the context to allocate, when later requests bring longer prompts)
    {"version": true}                                                -> {"version": "0.3.36"}
"""

import json
import sys
import time

import numpy as np


def main() -> None:
    from llama_cpp import Llama, __version__
    engines = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("version"):
            print(json.dumps({"version": __version__}), flush=True)
            continue
        ids, new_tokens, threads = request["ids"], request["new_tokens"], request["threads"]
        n_ctx = request.get("n_ctx", len(ids) + new_tokens + 8)
        key = (request["model"], threads, n_ctx)
        if key not in engines:
            engines[key] = Llama(request["model"], n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                 n_batch=n_ctx, verbose=False)
        llm = engines[key]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1, c1 = time.perf_counter(), time.process_time()
        for _ in range(new_tokens - 1):                      # greedy, one eval per token, eos ignored
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2, c2 = time.perf_counter(), time.process_time()
        print(json.dumps({"prefill": len(ids) / (t1 - t0), "decode": (new_tokens - 1) / (t2 - t1),
                          "decode_cpu_s": c2 - c1}), flush=True)


if __name__ == "__main__":
    main()
