"""Run a ``qkv serve`` app on a free loopback port in a background thread (uvicorn, as the command does),
and the small random model the server tests serve."""

import contextlib
import threading
import time


from qkv import GPT

from tiny_models import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on the mat; the dog ran. " * 20


def tiny_gpt(tok, max_len=96, seed=0, **kw):
    """A random GPT (2 layers x 32, 4 heads unless ``kw`` says otherwise) that carries ``tok``."""
    model = tiny_model(GPT, tok.vocab_size, seed, max_len=max_len, **kw)
    model.tokenizer = tok
    return model


@contextlib.contextmanager
def running(app):
    """Yield the base URL (http://127.0.0.1:PORT) while ``app`` serves; shut it down gracefully after."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def request(base: str, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
            timeout: float = 60):
    """Raw HTTP (the standard library's client): (status, parsed JSON body or the text)."""
    import http.client
    import json
    from urllib.parse import urlsplit
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def assert_openai_shape(body: dict, cls) -> None:
    """``body`` (raw JSON) is what the openai package's type ``cls`` describes: it validates (required fields,
    literal values such as "object") and no object in it has a key the type lacks (a misspelt optional field
    would otherwise read as one left out)."""
    import pydantic

    def walk(obj):
        assert not obj.model_extra, f"{type(obj).__name__} has keys OpenAI's type lacks: {sorted(obj.model_extra)}"
        for name in type(obj).model_fields:
            value = getattr(obj, name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, pydantic.BaseModel):
                    walk(item)
    walk(cls.model_validate(body))
