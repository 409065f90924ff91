"""The chat page at / in a real browser (Debian's chromium, headless, over the DevTools protocol): it loads
nothing but itself, streams a reply that is the model's own greedy reply, shows the next-token
probabilities on demand, stops a reply mid-way (freeing the server's row), and logs no console error."""

import time

import pytest
import torch

from cdp import Chromium, find_chromium
from qkv import GPT, ModelConfig, Tokenizer, generate
from qkv.conversation import render_chat
from qkv.serve import ServeConfig, create_app
from qkv.serve.openai_api import DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_STOP

from serving import running

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (.ci/run installs it)")
TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on the mat; the dog ran. " * 20


class SlowGPT(GPT):
    """20 ms per forward, so a reply streams for a while whatever the machine."""

    def forward(self, *args, **kwargs):
        time.sleep(0.02)
        return super().forward(*args, **kwargs)


def wait_for(browser, expression, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.eval(expression)
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(expression)


def say(browser, text, max_tokens):
    browser.eval(f"document.getElementById('temperature').value = '0';"
                 f"document.getElementById('max-tokens').value = '{max_tokens}';"
                 f"document.getElementById('input').value = {text!r};"
                 f"document.getElementById('send').click()")


LAST = "[...document.querySelectorAll('.message.assistant')].pop()"


def test_chat_page_streams_stops_and_shows_probabilities():
    tok = Tokenizer.train_bpe([TEXT], vocab_size=300)
    torch.manual_seed(0)
    model = SlowGPT(ModelConfig(vocab_size=tok.vocab_size, max_len=512, n_layers=2, d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    app = create_app(model, ServeConfig(model_name="tiny <chat>", max_tokens_cap=400))
    with running(app) as url, Chromium() as browser:
        browser.open(url + "/")
        assert browser.eval("document.title") == "qkv chat"
        assert browser.eval("document.getElementById('model-name').textContent") == "tiny <chat>"

        say(browser, "the fox", 40)
        seen = set()
        while browser.eval("document.getElementById('status').textContent") == "generating…":
            seen.add(browser.eval(f"{LAST}.textContent.length"))
            time.sleep(0.03)
        assert len(seen - {0}) >= 2                                  # the text arrived piece by piece
        prompt = render_chat(DEFAULT_TEMPLATE, [{"role": "user", "content": "the fox"}], True)
        want = generate(model, tok, prompt, temperature=0, max_new_tokens=40, stop=DEFAULT_TEMPLATE_STOP)
        assert browser.eval(f"{LAST}.textContent") == want
        assert browser.eval("document.getElementById('status').textContent").startswith("done")

        assert not browser.eval("document.getElementById('probs-panel').classList.contains('open')")
        browser.eval("document.getElementById('probs-toggle').click()")
        assert browser.eval("document.getElementById('probs-panel').classList.contains('open')")
        rows = browser.eval("[...document.querySelectorAll('#probs tr')].map(r => r.cells[1].textContent).join('')")
        assert rows == want                                          # one row per token of the reply
        assert browser.eval("document.querySelectorAll('#probs tr')[0].cells[3].children.length") == 5

        say(browser, "and the dog", 400)                             # a long reply, stopped mid-way
        wait_for(browser, f"{LAST}.textContent.length > 3")
        browser.eval("document.getElementById('stop').click()")
        wait_for(browser, "document.getElementById('status').textContent === 'stopped'")
        assert browser.eval(f"{LAST}.dataset.finish") == "stopped"
        engine = app.state.engine
        deadline = time.monotonic() + 10
        while engine.batch_size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.batch_size == 0                                # the server freed the row
        assert len(browser.eval(f"{LAST}.textContent")) < 300

        assert browser.errors() == []
        assert all(r.startswith(url) for r in browser.requests()), browser.requests()
