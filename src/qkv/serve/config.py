"""The options of ``qkv serve``, one frozen dataclass; the command's flags are generated from its fields
(``--max-batch``, ``--api-key``, ...), and the comments below are their help."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..validation import check_fields

API_KEY_VARIABLE = "QKV_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"              # the address to listen on (0.0.0.0 exposes the server to the network)
    port: int = 8000                     # the TCP port
    model_name: str | None = None        # the model id clients name (default: the checkpoint's file or folder name)
    max_batch: int = 8                   # sequences decoded together in one batch
    max_queue: int = 64                  # sequences waiting for a batch row; past this, requests get 429
    max_tokens_cap: int = 4096           # the most new tokens one request may ask for
    max_body_bytes: int = 2 * 1024 * 1024   # larger request bodies get 413
    timeout: float = 600.0               # seconds a request may run before it is cancelled
    shutdown_timeout: float = 30.0       # on SIGTERM, seconds in-flight requests get to finish
    api_key: str | None = None           # when set, /v1/* requires the header "Authorization: Bearer KEY" (/, /health
                                         # and /metrics stay open, for browsers, probes and Prometheus); visible in
                                         # ps: prefer --api-key-file or the environment variable QKV_API_KEY
    api_key_file: str | None = None      # a file whose first line is the API key
    cors_origin: str | None = None       # comma-separated origins allowed by CORS (default: CORS off)

    def __post_init__(self):
        check_fields(self, {"port": "[0, 65535]", "max_batch": "[1, 1024]", "max_queue": "[1, inf)",
                            "max_tokens_cap": "[1, inf)", "max_body_bytes": "[1024, inf)", "timeout": "(0, inf)",
                            "shutdown_timeout": "[0, inf)"}, ConfigError)

    def with_api_key(self) -> "ServeConfig":
        """This config with ``api_key`` from --api-key, else --api-key-file's first line, else $QKV_API_KEY."""
        if self.api_key is not None and self.api_key_file is not None:
            raise ConfigError("give the API key once: --api-key or --api-key-file, not both")
        key = self.api_key
        if self.api_key_file is not None:
            try:
                lines = Path(self.api_key_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"--api-key-file {self.api_key_file}: cannot read it "
                                  f"({e.__class__.__name__})") from None
            key = lines[0].strip() if lines else ""
            if not key:
                raise ConfigError(f"--api-key-file {self.api_key_file} is empty; write the key on its first line")
        if key is None:
            key = os.environ.get(API_KEY_VARIABLE) or None
        return dataclasses.replace(self, api_key=key, api_key_file=None)

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in (self.cors_origin or "").split(",") if o.strip()]
