"""`qkv serve PATH`: an OpenAI-compatible HTTP server over a checkpoint (see ``qkv.serve``).

    qkv serve SmolLM2-135M-Instruct.Q4_1.gguf --quantized --max-batch 16
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'

PATH is any checkpoint qkv loads: a decoder (our GPT runs, Hugging Face GPT-2 / Llama-family directories,
GGUF files, quantized checkpoints) answers /v1/chat/completions and /v1/completions; an encoder (qkv-bert*,
Hugging Face BERT) answers /v1/embeddings. Listens on 127.0.0.1 unless --host says otherwise. SIGTERM or
Ctrl-C stops accepting connections, lets in-flight requests and streams finish (up to --shutdown-timeout
seconds), then exits by that signal (uvicorn's convention: status 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..serve.config import ServeConfig
from .flags import add_dataclass_flags, add_device_argument, collect, path_arg, value_parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH", help="a checkpoint directory or a .gguf file")
    add_dataclass_flags(p, ServeConfig, "server")
    p.add_argument("--quantized", action="store_true",
                   help="keep a GGUF file's Q8_0/Q4_x weights quantized in memory (other float checkpoints: "
                        "int8 on load)")
    p.add_argument("--threads", type=value_parser(int, "--threads"), default=None, metavar="N",
                   help="CPU threads (default: the cores other processes leave idle, see qkv.runtime)")
    add_device_argument(p, "the model runs")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="log level; 'info' prints one access line per request when it completes (default info)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..errors import InputError
    from ..runtime import inference_device, set_decode_threads
    from ..serve import require_serve_extra
    from ._common import require_family

    config = ServeConfig(**collect(args, ServeConfig))
    found = require_family(args.model, "serve", "decoder", "encoder", "fine-tuned encoder")
    uvicorn = require_serve_extra("qkv serve")          # before the model loads (seconds for a large one)
    device = inference_device(args.device)
    set_decode_threads(args.threads)
    model = load(args.model, device=device, quantized=args.quantized and found == "decoder")
    if model.tokenizer is None:
        raise InputError(f"{args.model} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                         f"the server needs one to read and write text")
    if config.model_name is None:
        config = dataclasses.replace(config, model_name=Path(args.model).resolve().name)
    from ..serve import create_app
    app = create_app(model, config)
    print(f"qkv serve: {config.model_name} ({found}) on http://{config.host}:{config.port}", flush=True)
    import logging
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("qkv.access", "qkv.serve"):             # our access lines replace uvicorn's
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(args.log_level.upper())
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=config.shutdown_timeout)
    return 0
