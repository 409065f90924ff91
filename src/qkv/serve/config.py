"""The options of ``qkv serve``, one frozen dataclass; the command's flags are generated from its fields
(``--max-batch``, ``--api-key``, ...), and the comments below are their help."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..validation import check_fields


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
    api_key: str | None = None           # when set, /v1/* requires the header "Authorization: Bearer KEY"
    cors_origin: str | None = None       # comma-separated origins allowed by CORS (default: CORS off)

    def __post_init__(self):
        check_fields(self, {"port": "[0, 65535]", "max_batch": "[1, 1024]", "max_queue": "[1, inf)",
                            "max_tokens_cap": "[1, inf)", "max_body_bytes": "[1024, inf)", "timeout": "(0, inf)",
                            "shutdown_timeout": "[0, inf)"}, ConfigError)

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in (self.cors_origin or "").split(",") if o.strip()]
