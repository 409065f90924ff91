"""An OpenAI-compatible HTTP server over one model (``app``, its endpoints ``routes``), its continuous-batching
decode loop (``engine``, ``rows``), and OpenAI's request and response shapes (``schemas``, ``openai_api``,
``responses``).

The names below load on first use (PEP 562), not with the package: ``qkv serve --help`` reads ``config``
on a base install, where FastAPI, pydantic and prometheus-client (the serve extra) are missing.
"""

import importlib

from ..errors import require_extra

_EXPORTS = {"create_app": ".app", "ServeConfig": ".config", "Engine": ".engine", "Sequence": ".engine"}
_APP_PACKAGES = {"fastapi": "fastapi", "pydantic": "pydantic", "prometheus_client": "prometheus-client"}
# (module: pip name) what ``app`` imports; llguidance is asked for by qkv.grammar, only for JSON-schema output

__all__ = sorted(_EXPORTS) + ["require_serve_extra"]


def require_serve_extra(feature: str):
    """uvicorn, once every package the app imports is there too; else the one-line MissingExtraError naming
    the serve extra, before a model loads (not a traceback from inside ``create_app``)."""
    for module, package in _APP_PACKAGES.items():
        require_extra(module, "serve", feature, package)
    return require_extra("uvicorn", "serve", feature)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
