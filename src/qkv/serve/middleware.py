"""The server's ASGI middleware: ``BodyLimit`` refuses oversized bodies before any parsing; ``AccessLog``
counts and times every request and writes one ``qkv.access`` line when its response is complete (a stream's
last byte): ``127.0.0.1 "POST /v1/chat/completions" 200 0.412s``."""

from __future__ import annotations

import json
import logging
import time

from .prometheus import ServerMetrics
from .openai_api import APIError

access_log = logging.getLogger("qkv.access")


class AccessLog:
    """ASGI middleware: counts and times every request, and logs one line when its response is complete."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.monotonic() - start
            path = scope.get("path", "")
            known = path if path.startswith(("/v1/", "/health", "/metrics")) or path == "/" else "other"
            self.metrics.requests.labels(known, str(status[0])).inc()
            self.metrics.duration.labels(known).observe(elapsed)
            client = (scope.get("client") or ("-",))[0]
            access_log.info('%s "%s %s" %d %.3fs', client, scope.get("method", ""), path, status[0], elapsed)


class BodyLimit:
    """Refuse a request body past ``limit`` bytes with 413 (by Content-Length, or while it streams in).

    The body is read here, whole, before the app sees it: a limit raised from inside the app's own read
    would reach FastAPI's body parser, which answers any exception there with a 400."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        messages, seen = [], 0
        while True:                                  # a chunked body has no Content-Length: count it
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":    # the client left
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(send)
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay():
            message = next(pending, None)
            return message if message is not None else await receive()   # then disconnects, as before
        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(APIError(413, f"the request body is larger than this server's limit of {self.limit} "
                                        f"bytes", code="body_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

