"""Engine events into asyncio: ``run`` submits sequences and yields their events on the server's event
loop (the engine thread hands each over with ``call_soon_threadsafe``); ``sse`` frames chunks as server-sent
events; ``cancel_on_disconnect`` frees the rows of a client that went away before its reply was complete."""

from __future__ import annotations

import asyncio
import json

from .engine import Engine, Failure, Finish, QueueFull
from .openai_api import APIError


async def run(eng: Engine, seqs, timeout_s: float):
    """Submit ``seqs`` and yield (choice index, event) until each has finished; a failure or the deadline
    raises APIError. On exit, early or not, every sequence is cancelled (a client that left frees its row)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for i, seq in enumerate(seqs):
        seq.emit = _pair(loop, queue, i)
    try:
        eng.submit(seqs)
    except QueueFull as e:
        raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None
    deadline = loop.time() + timeout_s
    open_ = len(seqs)
    try:
        while open_:
            try:
                i, ev = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise APIError(504, f"the request ran past the server's {timeout_s:g} s timeout (qkv serve "
                                    f"--timeout)", "timeout_error", code="timeout") from None
            if isinstance(ev, Failure):
                raise APIError(500, f"generation failed: {ev.message}", "server_error")
            if isinstance(ev, Finish):
                open_ -= 1
            yield i, ev
    finally:
        for seq in seqs:
            seq.cancel()


def _pair(loop, queue, index):
    def emit(event):
        loop.call_soon_threadsafe(queue.put_nowait, (index, event))
    return emit


async def cancel_on_disconnect(request, seqs) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    for seq in seqs:
        seq.cancel()


async def sse(chunks):
    """Server-sent events: one ``data: JSON`` per chunk, then ``data: [DONE]``; an error mid-stream becomes
    one ``data: {"error": ...}`` event (the status line has gone out already)."""
    try:
        async for obj in chunks:
            yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
    except APIError as e:
        yield f"data: {json.dumps(e.body())}\n\n"
    yield "data: [DONE]\n\n"
