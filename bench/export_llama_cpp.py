"""Does llama.cpp run what `qkv export --format gguf` writes? A model trained here, exported at each --type,
run by llama-cpp-python next to qkv: the prompt's token ids, every position's logits, and greedy tokens.

Not in CI: llama-cpp-python compiles llama.cpp from source (minutes on 2 cores). Install it beside the venv:

    pip install --target /tmp/export23_llama llama-cpp-python
    python bench/export_llama_cpp.py --llama-cpp /tmp/export23_llama [--run RUN] [--types f32 f16 q8_0 q4_0 q4_1]

Without --run it trains a small Llama-shaped decoder (RoPE, RMSNorm, SwiGLU, GQA, byte-level BPE) on the
bundled tiny shakespeare first. For each type the logits are compared twice: with qkv reading the same GGUF
(the same quantized weights: only the arithmetic differs) and with the float run (adds the quantization).

llama.cpp runs in a child process that never imports torch (``--worker``): with both OpenMP runtimes in one
process its ``llama_decode`` crashes (``qkv/bench/llama_cpp_worker.py`` says more). It feeds one token per
``eval``, so each position's logits are the last ones, as llama.cpp computes them while decoding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "ROMEO:\nWhat light through yonder window breaks? It is the east, and"
TRAIN = ["--preset", "tiny", "--tokenizer", "bpe", "--bpe-vocab-size", "512", "--pos", "rope", "--norm", "rmsnorm",
         "--mlp", "swiglu", "--no-bias", "--n-layers", "2", "--d-model", "64", "--n-heads", "4", "--n-kv-heads", "2",
         "--max-len", "128", "--max-iters", "150", "--eval-interval", "150", "--eval-iters", "2", "--batch-size", "8"]


def worker(llama_cpp_dir: str) -> None:
    """One request on stdin ({"model", "prompt", "ids", "greedy"}), one answer on stdout: llama.cpp's ids for
    the prompt, its logits at every position of ``ids`` and ``greedy`` more tokens by argmax."""
    sys.path.append(llama_cpp_dir)                   # last: the venv's numpy and jinja2 stay in front
    from llama_cpp import Llama, __version__, llama_get_logits
    request = json.loads(sys.stdin.readline())
    llm = Llama(request["model"], n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)

    def last_logits(token: int) -> np.ndarray:            # without logits_all, llama.cpp keeps the last row only
        llm.eval([token])
        return np.ctypeslib.as_array(llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).copy()
    rows = [last_logits(token) for token in request["ids"]]
    greedy = []
    for _ in range(request["greedy"]):
        greedy.append(int(np.argmax(rows[-1])))
        rows.append(last_logits(greedy[-1]))
    rows = [r.tolist() for r in rows[: len(request["ids"])]]
    print(json.dumps({"version": __version__, "logits": rows, "greedy": greedy,
                      "ids": llm.tokenize(request["prompt"].encode("utf-8"), add_bos=False, special=True),
                      "text": llm.detokenize(greedy).decode("utf-8", "replace")}))


def llama_cpp_run(llama_cpp_dir: str, model: Path, ids: list[int], greedy: int) -> dict:
    answer = subprocess.run([sys.executable, __file__, "--worker", "--llama-cpp", llama_cpp_dir], text=True,
                            input=json.dumps({"model": str(model), "prompt": PROMPT, "ids": ids, "greedy": greedy}),
                            capture_output=True, check=True)
    return json.loads(answer.stdout.strip().splitlines()[-1])


def qkv_logits(model, ids: list[int], greedy: int) -> tuple[np.ndarray, list[int]]:
    import torch
    from qkv.generate import GenerationConfig, generate_ids
    ids_BL = torch.tensor([ids])
    with torch.no_grad():
        logits = model(ids_BL).logits[0].float().numpy()
    new = generate_ids(model, ids_BL, GenerationConfig(max_new_tokens=greedy, temperature=0))
    return logits, new[0].tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", default="/tmp/export23_llama", help="where llama-cpp-python is installed (--target)")
    p.add_argument("--run", default=None, help="a Llama-shaped qkv run (default: train one here)")
    p.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0", "q4_0", "q4_1"])
    p.add_argument("--greedy", type=int, default=16, help="greedy tokens compared after the prompt")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.llama_cpp)
        return 0
    import qkv
    from qkv.cli import main as qkv_main
    work = Path(tempfile.mkdtemp(prefix="export-llama-cpp-"))
    run = Path(args.run) if args.run else work / "run"
    if args.run is None and qkv_main(["train", *TRAIN, "--out-dir", str(run)]) != 0:
        return 1
    float_model = qkv.load(run)
    ids = float_model.tokenizer.encode(PROMPT)
    float_logits, float_greedy = qkv_logits(float_model, ids, args.greedy)
    rows = []
    for kind in args.types:
        path = work / f"model-{kind}.gguf"
        if qkv_main(["export", str(run), str(path), "--type", kind, "--overwrite"]) != 0:
            return 1
        same_file_logits, same_file_greedy = qkv_logits(qkv.load(path), ids, args.greedy)
        theirs = llama_cpp_run(args.llama_cpp, path, ids, args.greedy)
        logits, greedy = np.array(theirs["logits"], dtype=np.float32), theirs["greedy"]
        rows.append({"type": kind, "prompt_ids_equal": theirs["ids"] == ids,
                     "max_abs_vs_qkv_same_file": float(np.abs(logits - same_file_logits).max()),
                     "max_abs_vs_qkv_float_run": float(np.abs(logits - float_logits).max()),
                     "logit_scale": float(np.abs(float_logits).max()),
                     "greedy_equal_same_file": greedy == same_file_greedy,
                     "greedy_equal_float_run": greedy == float_greedy,
                     "llama_cpp_greedy": theirs["text"], "llama_cpp_python": theirs["version"]})
    if args.json:
        print(json.dumps({"run": str(run), "prompt_tokens": len(ids), "rows": rows}, indent=2))
    else:
        print(f"run {run}, {len(ids)} prompt tokens, llama-cpp-python {rows[0]['llama_cpp_python']}")
        for r in rows:
            print(f"{r['type']:5} ids equal {r['prompt_ids_equal']!s:5} | max |logit diff| vs qkv on the same file "
                  f"{r['max_abs_vs_qkv_same_file']:.2e}, vs the float run {r['max_abs_vs_qkv_float_run']:.2e} "
                  f"(logits up to {r['logit_scale']:.1f}) | greedy {args.greedy} equal: same file "
                  f"{r['greedy_equal_same_file']}, float run {r['greedy_equal_float_run']} | {r['llama_cpp_greedy']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
