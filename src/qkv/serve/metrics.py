"""What ``qkv serve`` tells an operator: one access-log line per request, and ``GET /metrics`` in Prometheus'
text format (``prometheus-client``), each app with its own registry.

    qkv_queue_length                    sequences waiting for a batch row
    qkv_batch_size                      sequences decoding now
    qkv_generated_tokens_total          tokens sampled since start
    qkv_tokens_per_second               tokens sampled over the last 10 s, per second
    qkv_time_to_first_token_seconds     histogram: submit -> first token, per sequence
    qkv_requests_total{path,status}     HTTP requests answered
    qkv_request_duration_seconds{path}  histogram: request start -> last byte (streams included)

An access line is written when the response is complete (a stream's last byte), to the ``qkv.access``
logger: ``127.0.0.1 "POST /v1/chat/completions" 200 0.412s``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

access_log = logging.getLogger("qkv.access")
RATE_WINDOW_S = 10.0
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class TokenRate:
    """Tokens per second over the last RATE_WINDOW_S seconds (the engine calls ``add`` each step)."""

    def __init__(self):
        self.steps: collections.deque[tuple[float, int]] = collections.deque()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.steps.append((time.monotonic(), n))

    def per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            while self.steps and self.steps[0][0] < now - RATE_WINDOW_S:
                self.steps.popleft()
            return sum(n for _, n in self.steps) / RATE_WINDOW_S


class _GeneratedTokens:
    """A counter read from the engine's own count when scraped (the engine thread never touches prometheus)."""

    def __init__(self, engine_of):
        self.engine_of = engine_of

    def collect(self):
        engine = self.engine_of()
        yield CounterMetricFamily("qkv_generated_tokens", "tokens sampled since start",
                                  value=engine.tokens_generated if engine is not None else 0)


class ServerMetrics:
    def __init__(self, engine_of):
        """engine_of: () -> the Engine, or None (an encoder server has none)."""
        self.registry = CollectorRegistry()
        self.rate = TokenRate()

        def read(attr):
            return lambda: getattr(engine_of(), attr) if engine_of() is not None else 0
        Gauge("qkv_queue_length", "sequences waiting for a batch row", registry=self.registry
              ).set_function(read("queue_length"))
        Gauge("qkv_batch_size", "sequences decoding now", registry=self.registry).set_function(read("batch_size"))
        Gauge("qkv_tokens_per_second", f"tokens sampled over the last {RATE_WINDOW_S:g} s, per second",
              registry=self.registry).set_function(self.rate.per_second)
        self.registry.register(_GeneratedTokens(engine_of))
        self.ttft = Histogram("qkv_time_to_first_token_seconds", "submit to first token, per sequence",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.requests = Counter("qkv_requests", "HTTP requests answered", ["path", "status"], registry=self.registry)
        self.duration = Histogram("qkv_request_duration_seconds", "request start to last byte", ["path"],
                                  registry=self.registry)


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
