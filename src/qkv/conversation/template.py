"""A model's chat template, rendered the way Hugging Face transformers' ``apply_chat_template`` renders it.

Chat models are trained on conversations laid out with their own markers (``<|im_start|>user ...``,
``[INST] ... [/INST]``, ...). The layout ships with the model as a Jinja2 template (tokenizer_config.json's
``chat_template``, or GGUF's ``tokenizer.chat_template``) that turns a list of messages into the prompt
text. The same text, token for token, is what the model expects, so the environment matches the one
those templates are written for:

    sandboxed (templates come from model files), trim_blocks + lstrip_blocks, the loopcontrols extension,
    a ``{% generation %}`` block that renders its body, ``tojson`` without HTML escaping,
    ``raise_exception(msg)``, ``strftime_now(fmt)``, and the variables ``messages``, ``add_generation_prompt``,
    ``bos_token`` / ``eos_token`` / ``pad_token`` / ``unk_token`` (names, not ids; undefined where the
    tokenizer has none), ``tools``, ``documents``.

    >>> render_chat("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if "
    ...             "add_generation_prompt %}<assistant>{% endif %}", [{"role": "user", "content": "Hi"}])
    '<user>Hi<assistant>'
"""

from __future__ import annotations

import functools
import json
import os
from datetime import datetime

from ..errors import InputError

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages) -> list[dict]:
    """Each message a dict with a known role and string content; raise InputError naming the first bad one."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.60}")
        if m["role"] not in ROLES:
            raise InputError(f"message {i} has role {m['role']!r}; use one of {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise InputError(f"message {i} has {type(m['content']).__name__} content; content must be a string")
    return [dict(m) for m in messages]


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError("chat templates need jinja2: pip install jinja2") from None

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's tokens for training masks;
        rendering keeps the body as it is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise InputError(f"the chat template does not parse: {e}; fix the model's chat_template") from None


def render_chat(template: str, messages, add_generation_prompt: bool = True, specials: dict | None = None,
                **extra) -> str:
    """The prompt text for ``messages``. specials: {"bos_token": "<s>", ...}; extra: more template variables."""
    messages = check_messages(messages)
    compiled = _compile(template)
    try:   # a special token the tokenizer lacks stays undefined (it renders as "", as in transformers; None would not)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               tools=extra.pop("tools", None), documents=extra.pop("documents", None),
                               **(specials or {}), **extra)
    except Exception as e:  # TemplateError from raise_exception, or any error the template's code hits
        raise InputError(f"the chat template failed to render: {type(e).__name__}: {e}") from None


def read_chat_template(path: str) -> str:
    """A Jinja chat template from a file (``--chat-template``), checked by rendering a two-turn conversation,
    to replace the one a model ships (or give it one)."""
    if not os.path.isfile(path):
        raise InputError(f"--chat-template {path} does not exist; give a Jinja template file")
    try:
        template = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--chat-template {path}: cannot read it ({type(e).__name__}); give a Jinja template "
                         f"file") from None
    text = render_chat(template, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                  {"role": "user", "content": "Bye"}])
    if "Bye" not in text:
        raise InputError(f"--chat-template {path} does not render the messages' content; it is not a chat "
                         f"template (it should loop over `messages`)")
    return template
