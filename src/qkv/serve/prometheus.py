"""What ``qkv serve`` tells an operator: one access-log line per request, and ``GET /metrics`` in Prometheus'
text format (``prometheus-client``), each app with its own registry.

    qkv_queue_length                    sequences waiting for a batch row
    qkv_batch_size                      sequences decoding now
    qkv_generated_tokens_total          tokens sampled since start
    qkv_tokens_per_second               tokens sampled over the last 10 s, per second
    qkv_time_to_first_token_seconds     histogram: submit -> first token, per sequence
    qkv_requests_total{path,status}     HTTP requests answered
    qkv_request_duration_seconds{path}  histogram: request start -> last byte (streams included)

The access log and the request counters are written by ``middleware.AccessLog``.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

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
