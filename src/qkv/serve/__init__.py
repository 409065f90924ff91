"""An OpenAI-compatible HTTP server over one model (``app``), its continuous-batching decode loop
(``engine``, ``rows``), and OpenAI's request and response shapes (``schemas``, ``openai_api``)."""

from .app import create_app
from .config import ServeConfig
from .engine import Engine, Sequence

__all__ = ["Engine", "Sequence", "ServeConfig", "create_app"]
