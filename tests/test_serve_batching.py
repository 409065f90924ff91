"""Continuous batching: rows join and leave a running batch and still give the tokens each request gets
alone (``qkv.generate``, greedy and seeded); a full queue answers 429; a client that disconnects frees its
row; one failing request fails alone; 16 concurrent streaming clients all get their own text; SIGTERM lets
a stream finish. Tiny random models; bounded in count and time."""

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import qkv
from qkv import GPT, ModelConfig, Tokenizer
from qkv.generate import GenerationConfig, encode_prompt, generate
from qkv.serve import ServeConfig, create_app
from qkv.serve.engine import Engine, Failure, Finish, QueueFull, Sequence, Token

from serving import TEXT, request, running, tiny_gpt
from tiny_models import tiny_model

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=300)


def run_engine(engine, seqs, timeout=60):
    """Submit and collect (text, finish event) per sequence."""
    inbox = queue.Queue()
    for i, s in enumerate(seqs):
        s.emit = lambda ev, i=i: inbox.put((i, ev))
    engine.submit(seqs)
    texts, ends = [""] * len(seqs), [None] * len(seqs)
    while any(e is None for e in ends):
        i, ev = inbox.get(timeout=timeout)
        if isinstance(ev, Token):
            texts[i] += ev.text
        else:
            ends[i] = ev
    return texts, ends


PROMPTS = ["the", "the quick brown fox", "a cat sat on the mat; the dog", "dog", "over the lazy", "m", "the fox jumps"]


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_rows_that_join_and_leave_get_the_tokens_they_get_alone(tok, pos, caplog):
    model = tiny_gpt(tok, pos=pos, n_kv_heads=2)
    configs = [GenerationConfig(max_new_tokens=4 + 5 * (i % 4), temperature=0 if i % 2 else 0.9, seed=i,
                                top_p=0.95, repetition_penalty=1.0 + 0.1 * (i % 3), ignore_eos=i % 3 == 0)
               for i in range(len(PROMPTS))]
    engine = Engine(model, max_batch=3, max_queue=16).start()        # fewer rows than requests: joins and leaves
    try:
        seqs = [Sequence(encode_prompt(tok, p), c) for p, c in zip(PROMPTS, configs)]
        texts, ends = run_engine(engine, seqs)
    finally:
        engine.stop()
    for p, c, text, end in zip(PROMPTS, configs, texts, ends):
        assert text == generate(model, tok, p, c), (p, c)
        assert isinstance(end, Finish)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []   # nothing failed quietly


class Explodes:
    finished = False

    def mask(self, logits_1V):
        raise RuntimeError("boom")

    def advance(self, t):
        pass


def test_one_failing_request_fails_alone(tok):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4).start()
    try:
        cfg = GenerationConfig(max_new_tokens=8, temperature=0)
        seqs = [Sequence(encode_prompt(tok, "the"), cfg),
                Sequence(encode_prompt(tok, "the"), cfg, constraint=Explodes()),
                Sequence(encode_prompt(tok, "a cat"), cfg)]
        texts, ends = run_engine(engine, seqs)
        assert isinstance(ends[1], Failure) and "boom" in ends[1].message
        assert texts[0] == generate(model, tok, "the", cfg) and texts[2] == generate(model, tok, "a cat", cfg)
        assert engine.thread.is_alive() and engine.batch_size == 0
    finally:
        engine.stop()


class SlowGPT(GPT):
    """10 ms per forward, so a long request runs for seconds whatever the machine."""

    def forward(self, *args, **kwargs):
        time.sleep(0.01)
        return super().forward(*args, **kwargs)


@pytest.fixture(scope="module")
def slow(tok):
    """A slow model with a long context; one row, one queue place."""
    torch.manual_seed(0)
    model = SlowGPT(ModelConfig(vocab_size=tok.vocab_size, max_len=1024, n_layers=1, d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    app = create_app(model, ServeConfig(model_name="slow", max_batch=1, max_queue=1, max_tokens_cap=1000))
    with running(app) as url:
        yield url, app.state.engine


LONG = {"prompt": "the", "max_tokens": 1000, "ignore_eos": True, "stream": True, "temperature": 0}


def open_stream(url, body):
    """A raw streaming request; returns the socket after the first event arrived."""
    host, port = url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    got = b""
    while b"data: " not in got:
        got += s.recv(4096)
    return s


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_full_queue_is_429_and_a_disconnect_frees_the_row(slow):
    url, engine = slow
    first = open_stream(url, LONG)                                   # holds the only row
    assert wait_until(lambda: engine.batch_size == 1)
    waiting = threading.Thread(target=request, args=(url, "POST", "/v1/completions",
                                                     {**LONG, "stream": False, "max_tokens": 2}))
    waiting.start()                                                  # takes the only queue place
    assert wait_until(lambda: engine.queue_length == 1)
    status, reply = request(url, "POST", "/v1/completions", {**LONG, "stream": False})
    assert status == 429 and reply["error"]["type"] == "rate_limit_error"
    before = engine.tokens_generated
    first.close()                                                    # the client goes away mid-stream
    waiting.join(30)                                                 # ... so the queued request gets the row
    assert not waiting.is_alive()
    assert wait_until(lambda: engine.batch_size == 0)
    assert engine.tokens_generated - before < 900                    # the long one never ran to its end
    assert request(url, "GET", "/health") == (200, {"status": "ok"})


def test_sixteen_concurrent_streaming_clients_get_their_own_text(tok):
    model = tiny_gpt(tok, max_len=128)
    client_count = 16
    jobs = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 3 + (i * 7) % 30,
             i % 2 == 0) for i in range(client_count)]
    want = [generate(model, tok, p, max_new_tokens=n, temperature=0.8 if sampled else 0, seed=i)
            for i, (p, n, sampled) in enumerate(jobs)]
    with running(create_app(model, ServeConfig(model_name="t", max_batch=8, max_queue=32))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)

        def one(i):
            p, n, sampled = jobs[i]
            stream = client.completions.create(model="t", prompt=p, max_tokens=n, temperature=0.8 if sampled else 0,
                                               seed=i, stream=True)
            return "".join(c.choices[0].text for c in stream if c.choices)

        with ThreadPoolExecutor(client_count) as pool:
            got = list(pool.map(one, range(client_count), timeout=120))
        assert got == want
        assert request(url, "GET", "/health")[0] == 200
        assert client.completions.create(model="t", prompt="the", max_tokens=3, temperature=0).choices[0].text == \
            generate(model, tok, "the", max_new_tokens=3, temperature=0)


def test_sigterm_lets_a_stream_finish(tok, tmp_path):
    model = tiny_gpt(tok, max_len=512, n_layers=4, d_model=128)
    qkv.save(model, tmp_path / "gpt", tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-m", "qkv", "serve", str(tmp_path / "gpt"), "--port", str(port),
                               "--threads", "1", "--log-level", "warning"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _up(url), 60), server.stderr.read1().decode() if server.poll() is not None else ""
        stream = open_stream(url, {**LONG, "max_tokens": 300})
        server.send_signal(signal.SIGTERM)
        got = b""
        while not got.endswith(b"0\r\n\r\n"):                       # the last chunk of a chunked body
            part = stream.recv(65536)
            if not part:
                break
            got += part
        assert b"data: [DONE]\n\n" in got                           # the in-flight stream finished
        events = [json.loads(line[6:]) for line in got.decode().split("\n") if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert server.wait(30) == -signal.SIGTERM        # then it exits by the signal, as uvicorn does
    finally:
        if server.poll() is None:
            server.kill()


def _up(url):
    try:
        return request(url, "GET", "/health", timeout=2)[0] == 200
    except OSError:
        return False


def test_a_request_past_the_timeout_is_cancelled_with_504(tok):
    torch.manual_seed(0)
    model = SlowGPT(ModelConfig(vocab_size=tok.vocab_size, max_len=512, n_layers=1, d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    app = create_app(model, ServeConfig(model_name="slow", timeout=0.3, max_tokens_cap=500))
    with running(app) as url:
        status, reply = request(url, "POST", "/v1/completions",
                                {"prompt": "the", "max_tokens": 400, "ignore_eos": True})
        assert status == 504 and "timeout" in reply["error"]["message"]
        assert wait_until(lambda: app.state.engine.batch_size == 0, 5)      # its row was freed


class ExplodesLater(Explodes):
    """A constraint that fails at its ``at``-th token: in a decode step, after the row has joined the batch."""

    def __init__(self, at=3):
        self.calls, self.at = 0, at

    def mask(self, logits_1V):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return logits_1V


class FailingStep(GPT):
    """A model whose batched decode steps (one new token per row, ``fail`` of them) raise."""
    fail = 0

    def forward(self, ids_BL, *args, **kwargs):
        if ids_BL.shape[1] == 1 and FailingStep.fail:
            FailingStep.fail -= 1
            raise RuntimeError("the step broke")
        return super().forward(ids_BL, *args, **kwargs)


class RowsThatBreakOnce:
    """Wraps an engine's BatchRows; its first ``keep`` (a row leaving), or with ``on="add"`` its first ``add``
    (rows joining), raises, outside any one request."""

    def __init__(self, rows, on="keep"):
        self.rows, self.broke = rows, on != "keep"
        self.add_broke = on != "add"

    def add(self, *args):
        if not self.add_broke:
            self.add_broke = True
            raise RuntimeError("the rows broke")
        self.rows.add(*args)

    def __getattr__(self, name):
        return getattr(self.rows, name)

    def __len__(self):
        return len(self.rows)

    def keep(self, rows):
        if not self.broke:
            self.broke = True
            raise RuntimeError("the rows broke")
        self.rows.keep(rows)


CFG8 = GenerationConfig(max_new_tokens=8, temperature=0, ignore_eos=True)


def run_until_idle(engine, seqs, timeout=20):
    """Submit; every event of each sequence, collected until the engine has no row and no waiting sequence
    (so that events a failed row might still send are seen)."""
    inbox = queue.Queue()
    for i, s in enumerate(seqs):
        s.emit = lambda ev, i=i: inbox.put((i, ev))
    engine.submit(seqs)
    events = [[] for _ in seqs]
    while not all(e and not isinstance(e[-1], Token) for e in events):
        i, ev = inbox.get(timeout=timeout)
        events[i].append(ev)
    assert wait_until(lambda: engine.batch_size == 0 and engine.queue_length == 0)
    time.sleep(0.1)
    while not inbox.empty():
        i, ev = inbox.get()
        events[i].append(ev)
    return events


def text_and_ends(events):
    """(the text, the non-Token events) of one sequence's events."""
    return "".join(e.text for e in events if isinstance(e, Token)), [e for e in events if not isinstance(e, Token)]


def test_a_row_that_fails_in_a_decode_step_fails_alone_and_leaves(tok, caplog):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4).start()
    try:
        seqs = [Sequence(encode_prompt(tok, "the"), CFG8),
                Sequence(encode_prompt(tok, "the"), CFG8, constraint=ExplodesLater(at=3)),
                Sequence(encode_prompt(tok, "a cat"), CFG8)]
        (t0, e0), (t1, e1), (t2, e2) = map(text_and_ends, run_until_idle(engine, seqs))
        assert e1 == [Failure("RuntimeError: boom")]             # the failed row sent nothing after it
        assert t0 == generate(model, tok, "the", CFG8) and t2 == generate(model, tok, "a cat", CFG8)
        assert e0 == e2 == [Finish("length", 8)] and engine.thread.is_alive()
    finally:
        engine.stop()
    assert "request failed while sampling" in [r.getMessage() for r in caplog.records]


def test_a_failing_decode_step_fails_its_batch_and_the_loop_goes_on(tok, caplog):
    model = tiny_model(FailingStep, tok.vocab_size, max_len=96)
    model.tokenizer = tok
    engine = Engine(model, max_batch=4).start()
    try:
        FailingStep.fail = 1
        events = run_until_idle(engine, [Sequence(encode_prompt(tok, p), CFG8) for p in ("the", "a cat")])
        assert [text_and_ends(e)[1] for e in events] == [[Failure("RuntimeError: the step broke")]] * 2
        texts, ends = run_engine(engine, [Sequence(encode_prompt(tok, "the"), CFG8)], 20)    # served again
        assert texts == [generate(model, tok, "the", CFG8)] and isinstance(ends[0], Finish)
    finally:
        FailingStep.fail = 0
        engine.stop()
    assert "a batched decode step failed" in [r.getMessage() for r in caplog.records]


def test_a_failure_outside_any_request_fails_the_batch_and_the_loop_goes_on(tok, caplog):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4)
    engine.rows = RowsThatBreakOnce(engine.rows)
    engine.start()
    try:
        seqs = [Sequence(encode_prompt(tok, "the"), GenerationConfig(max_new_tokens=2, temperature=0,
                                                                      ignore_eos=True)),
                Sequence(encode_prompt(tok, "a cat"), CFG8)]
        texts, ends = run_engine(engine, seqs, timeout=20)        # the first leaves: the rows break
        assert isinstance(ends[0], Finish) and ends[1].message == "RuntimeError: the rows broke"
        assert engine.batch_size == 0
        texts, ends = run_engine(engine, [Sequence(encode_prompt(tok, "a cat"), CFG8)], 20)
        assert texts == [generate(model, tok, "a cat", CFG8)] and isinstance(ends[0], Finish)
    finally:
        engine.stop()
    assert "the decode loop failed" in [r.getMessage() for r in caplog.records]


def test_rows_that_cannot_join_the_batch_fail_and_the_loop_goes_on(tok):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4)
    engine.rows = RowsThatBreakOnce(engine.rows, on="add")
    engine.start()
    try:
        events = run_until_idle(engine, [Sequence(encode_prompt(tok, p), CFG8) for p in ("the", "a cat")])
        assert [text_and_ends(e)[1] for e in events] == [[Failure("RuntimeError: the rows broke")]] * 2
        texts, ends = run_engine(engine, [Sequence(encode_prompt(tok, "a cat"), CFG8)], 20)
        assert texts == [generate(model, tok, "a cat", CFG8)] and ends == [Finish("length", 8)]
    finally:
        engine.stop()


def test_stop_fails_the_running_and_the_waiting_sequences(tok):
    torch.manual_seed(0)
    model = SlowGPT(ModelConfig(vocab_size=tok.vocab_size, max_len=512, n_layers=1, d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    engine = Engine(model, max_batch=1).start()
    inbox = queue.Queue()
    seqs = [Sequence(encode_prompt(tok, "the"), GenerationConfig(max_new_tokens=400, ignore_eos=True),
                     emit=lambda ev, i=i: inbox.put((i, ev))) for i in range(2)]
    engine.submit(seqs)
    assert wait_until(lambda: engine.batch_size == 1 and engine.queue_length == 1)
    engine.stop()
    assert not engine.thread.is_alive()
    ends = {}
    while not inbox.empty():
        i, ev = inbox.get()
        if not isinstance(ev, Token):
            ends[i] = ev
    assert ends == {0: Failure("the server is shutting down"), 1: Failure("the server is shutting down")}


def test_events_carry_logprobs_only_when_asked_and_the_callbacks_count_tokens_once(tok):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4)
    rates, firsts = [], []
    engine.on_tokens, engine.on_first_token = rates.append, firsts.append
    engine.start()
    tokens, ends = {0: [], 1: [], 2: [], 3: []}, {}
    inbox = queue.Queue()
    started = time.monotonic()
    eos = GenerationConfig(max_new_tokens=8, temperature=0, logit_bias={tok.eos_id: 100.0})
    seqs = [Sequence(encode_prompt(tok, "the"), CFG8), Sequence(encode_prompt(tok, "the"), CFG8, logprobs=True),
            Sequence(encode_prompt(tok, "the"), CFG8, logprobs=True, top_logprobs=2),
            Sequence(encode_prompt(tok, "the"), eos)]
    for i, s in enumerate(seqs):
        s.emit = lambda ev, i=i: inbox.put((i, ev))
    try:
        engine.submit(seqs)
        while len(ends) < 4:
            i, ev = inbox.get(timeout=20)
            if isinstance(ev, Token):
                tokens[i].append(ev)
            else:
                ends[i] = ev
    finally:
        engine.stop()
    elapsed = time.monotonic() - started
    assert all(t.logprob is None and t.top is None for t in tokens[0])
    assert all(t.logprob is not None and t.top is None for t in tokens[1])
    assert all(len(t.top) == 2 for t in tokens[2])
    assert not any(t.ends_turn for i in range(3) for t in tokens[i])
    assert [(t.id, t.ends_turn) for t in tokens[3]] == [(tok.eos_id, True)] and ends[3] == Finish("stop", 1)
    assert sum(rates) == engine.tokens_generated == 3 * 8 + 1                # one call per sampled token
    assert len(firsts) == 4 and all(0 <= s <= elapsed for s in firsts)     # one time to first token each


def test_the_engines_defaults_are_the_servers(tok):
    engine = Engine(tiny_gpt(tok))
    assert (engine.max_batch, engine.max_queue) == (ServeConfig().max_batch, ServeConfig().max_queue)


def test_an_engine_never_keeps_the_process_alive(tmp_path):
    """The decode loop is a daemon thread: a process that exits without stop() (a crash in the server around
    it) exits; it does not wait for the loop forever."""
    script = ("from qkv import GPT, ModelConfig\nfrom qkv.serve.engine import Engine\n"
              "Engine(GPT(ModelConfig(vocab_size=10, max_len=8, n_layers=1, d_model=8, n_heads=2))).start()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def test_a_request_that_fails_before_or_during_prefill_fails_alone(tok, caplog):
    """An id past the vocabulary fails a sequence where it is first read: in its repetition penalty's history
    (before the prefill), or in the batched prefill (which is then retried one prompt at a time)."""
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4).start()
    bad = [encode_prompt(tok, "the")[0], tok.vocab_size + 5]
    try:
        seqs = [Sequence(encode_prompt(tok, "the"), CFG8),
                Sequence(bad, GenerationConfig(max_new_tokens=8, temperature=0, repetition_penalty=1.2)),
                Sequence(bad, CFG8),
                Sequence(encode_prompt(tok, "a cat sat"), CFG8)]
        (t0, e0), (_, e1), (_, e2), (t3, e3) = map(text_and_ends, run_until_idle(engine, seqs))
        assert t0 == generate(model, tok, "the", CFG8) and t3 == generate(model, tok, "a cat sat", CFG8)
        assert e0 == e3 == [Finish("length", 8)]
        assert [len(e1), len(e2)] == [1, 1] and e1[0].message.startswith("RuntimeError: ")
        assert e2[0].message.startswith("InputError: token ids must lie in")
    finally:
        engine.stop()
    logged = [r.getMessage() for r in caplog.records]
    assert "request failed before prefill" in logged and "request failed during prefill" in logged


def test_a_receiver_that_is_gone_does_not_stop_the_loop(tok, caplog):
    model = tiny_gpt(tok)
    engine = Engine(model, max_batch=4).start()
    gone = Sequence(encode_prompt(tok, "the"), CFG8, constraint=Explodes())

    def refuse(ev):
        raise ConnectionError("the client went away")
    gone.emit = refuse                          # its Failure cannot be delivered
    try:
        engine.submit([gone])
        texts, ends = run_engine(engine, [Sequence(encode_prompt(tok, "a cat"), CFG8)], timeout=20)
        assert texts == [generate(model, tok, "a cat", CFG8)] and ends == [Finish("length", 8)]
    finally:
        engine.stop()
    assert "could not deliver an event" in [r.getMessage() for r in caplog.records]


def test_submit_checks_emit_the_queue_bound_and_shutdown(tok):
    engine = Engine(tiny_gpt(tok), max_batch=1, max_queue=2)          # not started: the queue does not drain

    def seq():
        return Sequence(encode_prompt(tok, "the"), CFG8, emit=lambda ev: None)
    with pytest.raises(ValueError, match=r"^set seq.emit \(where its events go\) before submitting it$"):
        engine.submit([Sequence(encode_prompt(tok, "the"), CFG8)])
    engine.submit([seq(), seq()])                                       # exactly max_queue fit
    with pytest.raises(QueueFull, match="^2 sequences are waiting and the queue holds 2; retry later$"):
        engine.submit([seq()])
    engine.stop()
    with pytest.raises(QueueFull, match="^the server is shutting down$"):
        engine.submit([seq()])


class WidestBatch(GPT):
    """Notes the most rows any forward was given."""
    widest = 0

    def forward(self, ids_BL, *args, **kwargs):
        WidestBatch.widest = max(WidestBatch.widest, ids_BL.shape[0])
        return super().forward(ids_BL, *args, **kwargs)


def test_the_batch_never_holds_more_than_max_batch_rows(tok):
    model = tiny_model(WidestBatch, tok.vocab_size, max_len=96)
    model.tokenizer = tok
    engine = Engine(model, max_batch=2).start()
    try:
        texts, ends = run_engine(engine, [Sequence(encode_prompt(tok, p), CFG8) for p in PROMPTS], timeout=20)
    finally:
        engine.stop()
    assert WidestBatch.widest == 2 and ends == [Finish("length", 8)] * len(PROMPTS)
    assert texts == [generate(model, tok, p, CFG8) for p in PROMPTS]
