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
    write_html(attention_maps(gpt, encode_inputs(gpt, "first citizen")), d / "short.html", "gpt", "short")
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


RECT = ("(() => {{ const r = document.querySelector({!r}).getBoundingClientRect(); "
        "return [r.left, r.top, r.width, r.height]; }})()")


def test_viewer_uses_the_window_and_has_a_colour_scale(pages):
    """Issue 20: the matrix was 520 px at most, three quarters of the window empty, with no colour scale."""
    with Chromium(width=1280, height=900) as browser:
        width, height = browser.eval("[innerWidth, innerHeight]")
        for page, share in (("short.html", 0.2), ("gpt.html", 0.2)):   # 13 tokens were 28 px cells, 14%
            browser.open((pages / page).as_uri())
            left, top, w, h = browser.eval(RECT.format("#matrix"))
            assert w * h >= share * width * height, (page, w, h)
            assert top + h <= height and left + w <= width            # and all of it in view, no scrolling
        # The colour scale: a gradient from white to the darkest blue, with its probabilities as ticks.
        assert browser.eval(RECT.format("#legend"))[2] >= 150
        colours = browser.eval("""(() => { const c = document.getElementById('legend');
            const d = c.getContext('2d').getImageData(0, 2 * devicePixelRatio, c.width, 1).data, seen = new Set();
            for (let i = 0; i < d.length; i += 4) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
            return seen.size; })()""")
        assert colours > 50
        assert "probability" in browser.eval("document.getElementById('legend-box').textContent")
        # a smaller zoom shrinks the cells; "fit" gives the window's size back
        browser.eval("(() => { const z = document.getElementById('zoom'); z.value = 6;"
                     " z.dispatchEvent(new Event('input')); })()")
        assert browser.eval(RECT.format("#matrix"))[2] == 6 * 21
        browser.eval("document.getElementById('fit').click()")
        assert browser.eval(RECT.format("#matrix"))[2] == w
        assert browser.errors() == []


@pytest.fixture(scope="module")
def long_page(tmp_path_factory):
    tok = Tokenizer.train_char(CHARS, special_tokens=["<pad>", "<bos>", "<eos>"])
    torch.manual_seed(0)
    s2s = EncoderDecoder(ModelConfig(vocab_size=tok.vocab_size, max_len=160, n_layers=2, d_model=32, n_heads=4)).eval()
    s2s.tokenizer = tok
    source, target = ("the quick brown fox jumps over a lazy dog " * 4)[:100], ("a dog sat on the mat " * 7)[:127]
    path = tmp_path_factory.mktemp("long") / "cross.html"
    write_html(attention_maps(s2s, encode_inputs(s2s, target, source=source)), path, "s2s", "long")
    return path


def test_cross_attention_at_128_target_tokens_is_readable(long_page):
    """Issue 20: 128 x 100 cells squeezed into 520 px (5 px cells under 12 px labels). Now cells stay 12 px or
    more and the matrix scrolls inside its box, its token labels staying at the top and the left."""
    with Chromium(width=1280, height=900) as browser:
        browser.open(long_page.as_uri())
        choose(browser, "kind", "2")
        assert browser.eval("document.querySelectorAll('#lines text.query').length") == 128
        _, _, w, h = browser.eval(RECT.format("#matrix"))
        assert w / 100 >= 12 and h / 128 >= 12
        box = browser.eval(RECT.format("#matrix-box"))
        assert browser.eval("(() => { const b = document.getElementById('matrix-box');"
                            " return b.scrollHeight > b.clientHeight; })()")
        assert browser.eval("document.documentElement.scrollHeight") <= 900 + 1     # the page itself does not
        browser.eval("(() => { const b = document.getElementById('matrix-box'); b.scrollTop = b.scrollHeight;"
                     " b.scrollLeft = b.scrollWidth; })()")
        keys, queries = browser.eval(RECT.format("#key-labels")), browser.eval(RECT.format("#query-labels"))
        assert abs(keys[1] - box[1]) <= 1 and abs(queries[0] - box[0]) <= 1         # sticky labels
        # pointing at a cell names its tokens
        left, top, _, _ = browser.eval(RECT.format("#matrix"))
        browser.move_mouse(max(left, queries[0] + queries[2]) + 5, max(top, keys[1] + keys[3]) + 5)
        assert "\u2192" in browser.eval("document.getElementById('tip').textContent")
        assert browser.errors() == []
