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
import errno
import socket
from pathlib import Path

from ..family import Family
from ..serve.config import ServeConfig
from .flags import (add_chat_template_argument, add_dataclass_flags, add_device_argument, add_kv_cache_argument,
                    collect, path_arg, positive_int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH", help="a checkpoint directory or a .gguf file")
    add_dataclass_flags(p, ServeConfig, "server")
    p.add_argument("--quantized", action="store_true",
                   help="keep a GGUF file's Q8_0/Q4_x weights quantized in memory (other float checkpoints: "
                        "int8 on load)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None, metavar="N",
                   help="CPU threads (default: the cores other processes leave idle, see qkv.runtime)")
    add_kv_cache_argument(p)
    add_device_argument(p, "the model runs")
    add_chat_template_argument(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="log level; 'info' prints one access line per request when it completes (default info)")


def run(args: argparse.Namespace) -> int:
    from ..loading import load
    from ..errors import InputError, article
    from ..runtime import inference_device, set_decode_threads
    from ..runtime.inference import for_inference
    from ..serve import require_serve_extra
    from ._common import require_family, set_cache_dtype

    from ..conversation import read_chat_template
    config = ServeConfig(**collect(args, ServeConfig)).with_api_key()   # a bad key file: before the load
    template = read_chat_template(args.chat_template) if args.chat_template else None
    found = require_family(args.model, "serve", Family.DECODER, Family.ENCODER, Family.FINETUNED_ENCODER)
    if args.quantized and found != Family.DECODER:
        raise InputError(f"--quantized keeps a decoder's weights quantized; {args.model} is {article(found)}, "
                         f"served in float: drop --quantized")
    uvicorn = require_serve_extra("qkv serve")          # before the model loads (seconds for a large one)
    check_address(config.host, config.port)             # likewise: uvicorn would find out after the load
    device = inference_device(args.device)
    set_decode_threads(args.threads)
    model = set_cache_dtype(for_inference(load(args.model, device=device, quantized=args.quantized)), args)
    if model.tokenizer is None:
        raise InputError(f"{args.model} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                         f"the server needs one to read and write text")
    if template is not None:
        model.tokenizer.chat_template = template
    if config.model_name is None:
        config = dataclasses.replace(config, model_name=Path(args.model).resolve().name)
    from ..serve import create_app
    app = create_app(model, config)
    print(f"qkv serve: {config.model_name} ({found}) on http://{config.host}:{config.port}", flush=True)
    if found == Family.DECODER:
        from ..generation_defaults import describe
        print(f"qkv serve: {describe(getattr(model, 'generation_defaults', {}))}", flush=True)
    import logging
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("qkv.access", "qkv.serve"):             # our access lines replace uvicorn's
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(args.log_level.upper())
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=config.shutdown_timeout)
    return 0


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (same family, SO_REUSEADDR) and let go at once, so that a port in use,
    a host that does not resolve or an address this machine lacks is one line now, not uvicorn's log after
    the model has loaded. (Another process may still take the port in the moment between; uvicorn says so.)"""
    from ..errors import InputError
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror:
        raise InputError(f"--host {host} does not resolve to an address of this machine; use 127.0.0.1 (this "
                         f"machine only) or 0.0.0.0 (every interface)") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is already in use (another server?); choose another --port or "
                             f"stop the program holding it") from None
        if e.errno == errno.EACCES:
            raise InputError(f"port {port} needs administrator rights on this machine; choose a --port above "
                             f"1023") from None
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); use --host 127.0.0.1 or 0.0.0.0, or "
                         f"another --port") from None
