"""Chat with instruction-tuned models: their own template (``template``), a KV cache kept across turns
(``session``), and the one-call helpers ``chat`` and ``chat_stream``."""

from .session import ChatSession, chat, chat_stream
from .template import check_messages, read_chat_template, render_chat

__all__ = ["ChatSession", "chat", "chat_stream", "check_messages", "read_chat_template", "render_chat"]
