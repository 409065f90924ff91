"""The attention viewer in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

The page must load from a file with no console error and no request beyond itself, redraw when another
layer or head is picked, highlight a token's row when the mouse is over the token, and not be blank.
.ci/run installs chromium where it is missing; the dev extra installs websocket-client.
"""

import io

import numpy as np
import pytest
import torch

from cdp import Chromium, find_chromium
from qkv import GPT, ModelConfig, Tokenizer
from qkv.models.seq2seq import EncoderDecoder
from qkv.viz.read import attention_maps, encode_inputs
from qkv.viz.viewer import write_html

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (.ci/run installs it)")

CHARS = "abcdefghijklmnopqrstuvwxyz .<>/\n"
DRAWING = """JSON.stringify({matrix: document.getElementById('matrix').toDataURL(),
  lines: [...document.querySelectorAll('#lines line')].map(l => l.getAttribute('stroke-opacity')).join()})"""


def center_of(browser, selector):
    box = browser.eval(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                       f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
    return box


def choose(browser, select, value):
    browser.eval(f"(() => {{ const s = document.getElementById({select!r}); s.value = {value!r};"
                 f" s.dispatchEvent(new Event('change')); }})()")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer")
    tok = Tokenizer.train_char(CHARS, special_tokens=["<pad>", "<bos>", "<eos>"])
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4)).eval()
    # A wide init makes every head attend differently, so a change of head must change the drawing.
    for p in gpt.parameters():
        torch.nn.init.normal_(p, std=0.5)
    gpt.tokenizer = tok
    write_html(attention_maps(gpt, encode_inputs(gpt, "the cat </script> sat")), d / "gpt.html", "gpt", "x")
    s2s = EncoderDecoder(ModelConfig(vocab_size=tok.vocab_size, max_len=32, n_layers=2, d_model=32, n_heads=4)).eval()
    s2s.tokenizer = tok
    write_html(attention_maps(s2s, encode_inputs(s2s, "a dog", source="ein hund")), d / "s2s.html", "s2s", "y")
    return d


def test_viewer_in_chromium(pages):
    with Chromium() as browser:
        browser.open((pages / "gpt.html").as_uri())
        assert browser.eval("document.title") == "qkv attention: gpt"
        assert browser.eval("document.querySelectorAll('#lines text.query').length") == len("the cat </script> sat")
        before = browser.eval(DRAWING)
        choose(browser, "head", "2")
        after_head = browser.eval(DRAWING)
        assert after_head != before
        choose(browser, "layer", "1")
        after_layer = browser.eval(DRAWING)
        assert after_layer != after_head
        choose(browser, "head", "mean")
        assert browser.eval(DRAWING) != after_layer

        # Hover the 5th query token with the mouse: its row is outlined, only its lines remain.
        x, y = center_of(browser, "#lines text.query[data-query='4']")
        browser.move_mouse(x, y)
        assert browser.eval("document.querySelector('#lines text.query.active').dataset.query") == "4"
        assert browser.eval("getComputedStyle(document.getElementById('row-highlight')).display") == "block"
        queries = browser.eval("[...new Set([...document.querySelectorAll('#lines line')].map(l => l.dataset.query))]")
        assert queries == ["4"]
        top = browser.eval("parseFloat(document.getElementById('row-highlight').style.top)")
        browser.move_mouse(*center_of(browser, "#lines text.query[data-query='9']"))
        assert browser.eval("parseFloat(document.getElementById('row-highlight').style.top)") > top

        shot = browser.screenshot()
        assert browser.errors() == []
        assert all(url.startswith("file://") for url in browser.requests()), browser.requests()

    import matplotlib.image
    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3).round(2), axis=0)) > 50


def test_encoder_decoder_page_switches_attention_kind(pages):
    with Chromium() as browser:
        browser.open((pages / "s2s.html").as_uri())
        names = browser.eval("[...document.getElementById('kind').options].map(o => o.textContent)")
        assert names == ["encoder self-attention", "decoder self-attention", "cross-attention"]
        choose(browser, "kind", "2")
        keys = browser.eval("[...document.querySelectorAll('#lines text.key')].map(t => t.textContent)")
        queries = browser.eval("[...document.querySelectorAll('#lines text.query')].map(t => t.textContent)")
        assert keys == list("ein␣hund") and queries == ["<bos>"] + list("a␣dog")
        assert browser.errors() == []
