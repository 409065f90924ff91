"""Seeing inside: attention maps, the logit lens and the files they become, checked against transformers.

Attention probabilities and hidden states of Hugging Face GPT-2 and BERT directories (random weights,
written by transformers in the test) are compared with transformers' own ``output_attentions`` and
``output_hidden_states``; PNGs are read back and must be large and not blank; the bertviz export is fed to
bertviz's own ``head_view`` / ``model_view``.
"""

import json

import numpy as np
import pytest
import torch

import qkv
from qkv import GPT, InputError, ModelConfig, Tokenizer
from qkv.models.seq2seq import EncoderDecoder
from qkv.viz.bertviz import bertviz_kwargs, write_bertviz
from qkv.viz.curves import plot_curves, read_metrics
from qkv.viz.lens import format_table, next_tokens, plot_next
from qkv.viz.maps import plot_attention
from qkv.viz.read import attention_maps, encode_inputs, residuals, unembed
from qkv.viz.viewer import render_html

CHARS = "abcdefghijklmnopqrstuvwxyz .,$\n"


@pytest.fixture(scope="module")
def gpt():
    tok = Tokenizer.train_char(CHARS, special_tokens=["<eos>"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=24, n_layers=3, d_model=32, n_heads=4,
                            pos="rope")).eval()
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def seq2seq():
    tok = Tokenizer.train_char(CHARS, special_tokens=["<pad>", "<bos>", "<eos>"])
    torch.manual_seed(0)
    model = EncoderDecoder(ModelConfig(vocab_size=tok.vocab_size, max_len=24, n_layers=2, n_encoder_layers=2,
                                       d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def hf_gpt2(transformers, tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=300,
                                  initializer_range=0.2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(d)
    Tokenizer.train_bpe(["the capital of france is paris, the car is red"] * 20, 300,
                        special_tokens=["<|endoftext|>"]).save(d / "tokenizer.json")
    return model, d


def image(path):
    import matplotlib.image
    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200, pixels.shape
    flat = pixels[..., :3].reshape(-1, 3)
    assert flat.std() > 0.05 and len(np.unique(flat.round(2), axis=0)) > 20    # drawn, not blank
    return pixels


def bertviz_params(html: str) -> dict:
    """The parameters bertviz writes into its page's script (``const params = {...};``)."""
    start = html.index("const params = ") + len("const params = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


def test_attention_equals_transformers_gpt2(hf_gpt2, transformers):
    hf, d = hf_gpt2
    model = qkv.load(d)
    inputs = encode_inputs(model, "the capital of france is")
    (amap,) = attention_maps(model, inputs)
    with torch.no_grad():
        ref = hf(torch.tensor([inputs.ids]), output_attentions=True, output_hidden_states=True)
    assert amap.name == "self-attention" and amap.n_layers == 2 and amap.n_heads == 4
    assert amap.queries == amap.keys and len(amap.queries) == len(inputs.ids)
    for ours_HLM, theirs_1HLM in zip(amap.layers, ref.attentions):
        assert torch.allclose(ours_HLM, theirs_1HLM[0], atol=1e-6)
    stream = residuals(model, inputs)                      # transformers' hidden_states[:-1] are pre-ln_f
    for ours_LC, theirs_1LC in zip(stream.hidden[:-1], ref.hidden_states[:-1]):
        assert torch.allclose(ours_LC, theirs_1LC[0], atol=1e-5)
    lens_last_LV = unembed(model, stream.hidden[-1])        # the lens at the last layer is the model itself
    assert torch.allclose(lens_last_LV, ref.logits[0], atol=1e-4)


def test_attention_equals_transformers_bert(transformers, tmp_path):
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "car", "is", "red", "blue", "."]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
    hf = transformers.BertForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    model = qkv.load(tmp_path)
    inputs = encode_inputs(model, "the car is [MASK].")
    assert inputs.labels[0] == "[CLS]" and inputs.labels[-1] == "[SEP]"
    (amap,) = attention_maps(model, inputs)
    with torch.no_grad():
        ref = hf(torch.tensor([inputs.ids]), output_attentions=True)
    for ours_HLM, theirs_1HLM in zip(amap.layers, ref.attentions):
        assert torch.allclose(ours_HLM, theirs_1HLM[0], atol=1e-6)
    result = next_tokens(model, "the car is [MASK].", top=3, lens=True)
    assert result.reads == "masked token" and result.labels[result.position] == "[MASK]"
    probs_V = ref.logits[0, result.position].softmax(-1)
    assert result.top[0].id == int(probs_V.argmax()) and result.top[0].prob == pytest.approx(float(probs_V.max()),
                                                                                              abs=1e-5)


def test_next_tokens_table_and_lens(gpt, tmp_path):
    result = next_tokens(gpt, "the cat sat", top=5, lens=True)
    with torch.no_grad():
        logits_V = gpt(torch.tensor([gpt.tokenizer.encode("the cat sat")])).logits[0, -1]
    probs_V = logits_V.softmax(-1)
    assert [c.id for c in result.top] == logits_V.topk(5).indices.tolist()
    assert [c.prob for c in result.top] == pytest.approx(probs_V.topk(5).values.tolist(), abs=1e-6)
    assert result.layers == ["embeddings", "layer 1", "layer 2", "layer 3"]
    assert [c.id for c in result.lens[-1]] == [c.id for c in result.top]     # the last lens row is the model
    assert len(result.lens_top1) == 4 and len(result.lens_top1[0]) == len(result.context)
    table = format_table(result)
    assert "logit lens" in table and repr(result.top[0].label) in table
    image(plot_next(result, tmp_path / "next.png", title="tiny"))


def test_pngs_grid_row_and_single(gpt, tmp_path):
    (amap,) = attention_maps(gpt, encode_inputs(gpt, "the car is red$"))
    for name, layer, head in (("grid", None, None), ("layer", 1, None), ("one", 2, 3)):
        image(plot_attention(amap, tmp_path / f"{name}.png", layer, head, title="tiny"))
    with pytest.raises(InputError, match=r"layer 3 is out of range: this model has 3 layers, numbered 0 to 2"):
        plot_attention(amap, tmp_path / "x.png", layer=3)
    with pytest.raises(InputError, match=r"head 4 .* numbered 0 to 3"):
        plot_attention(amap, tmp_path / "x.png", head=4)
    with pytest.raises(InputError, match=r"\.png"):
        plot_attention(amap, tmp_path / "x.jpg")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_encoder_decoder_maps_and_bertviz_model_view(seq2seq, tmp_path):
    maps = attention_maps(seq2seq, encode_inputs(seq2seq, "a dog", source="ein hund"))
    assert [m.name for m in maps] == ["encoder self-attention", "decoder self-attention", "cross-attention"]
    encoder, decoder, cross = maps
    assert encoder.n_layers == decoder.n_layers == 2 and decoder.queries[0] == "<bos>"
    assert encoder.queries == list("ein␣hund") and decoder.queries == ["<bos>"] + list("a␣dog")
    assert cross.queries == decoder.queries and cross.keys == encoder.queries
    assert torch.allclose(cross.layers[0].sum(-1), torch.ones(4, len(cross.queries)), atol=1e-5)
    with pytest.raises(InputError, match="--source"):
        encode_inputs(seq2seq, "a dog")
    bertviz = pytest.importorskip("bertviz")
    write_bertviz(maps, tmp_path / "attn.pt")
    kwargs = torch.load(tmp_path / "attn.pt", weights_only=True)
    assert kwargs["cross_attention"][1].shape == (1, 4, len(decoder.queries), len(encoder.queries))
    html = bertviz.model_view(**kwargs, html_action="return").data   # bertviz needs equal layer counts
    params = bertviz_params(html)
    assert [a["name"] for a in params["attention"]] == ["Encoder", "Decoder", "Cross"]
    assert params["attention"][2]["left_text"] == decoder.queries
    assert np.allclose(params["attention"][2]["attn"][1], cross.layers[1].numpy(), atol=1e-6)


def test_bertviz_head_view_reads_our_export(gpt, tmp_path):
    bertviz = pytest.importorskip("bertviz")
    maps = attention_maps(gpt, encode_inputs(gpt, "the car"))
    write_bertviz(maps, tmp_path / "attn.pt")
    write_bertviz(maps, tmp_path / "attn.json")
    kwargs = torch.load(tmp_path / "attn.pt", weights_only=True)
    assert set(kwargs) == {"attention", "tokens"} and kwargs["tokens"] == maps[0].queries
    params = bertviz_params(bertviz.head_view(**kwargs, html_action="return").data)
    assert params["attention"][0]["left_text"] == maps[0].queries
    assert np.allclose(params["attention"][0]["attn"][2], maps[0].layers[2].numpy(), atol=1e-6)
    plain = json.loads((tmp_path / "attn.json").read_text())
    assert np.allclose(plain["attention"][2][0], maps[0].layers[2].numpy(), atol=1e-7)
    assert torch.allclose(bertviz_kwargs(maps)["attention"][0][0], maps[0].layers[0])


def test_token_text_is_drawn_literally():
    from qkv.viz.output import plain
    assert plain("$5 and $6") == r"\$5 and \$6"          # a "$" pair would start matplotlib's math mode


def test_html_is_self_contained_and_escapes_tokens(gpt):
    page = render_html(attention_maps(gpt, encode_inputs(gpt, "the car")), "<script>alert(1)</script>", "x")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        '"http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script>alert" not in page
    assert "default-src 'none'" in page


def test_context_length_and_truncation(gpt):
    long = "abc " * 10
    with pytest.raises(InputError, match=r"40 tokens but the model's context is 24; .*--truncate"):
        encode_inputs(gpt, long)
    assert len(encode_inputs(gpt, long, truncate=True).ids) == 24
    result = next_tokens(gpt, long, top=3, truncate=True)             # next keeps the end of the text
    assert "".join(result.context) == long[-24:]                    # the text itself; labels show ␣
    assert "".join(result.labels) == long[-24:].replace(" ", "␣")
    with pytest.raises(InputError, match="empty"):
        encode_inputs(gpt, "")
    with pytest.raises(InputError, match="source text is for encoder-decoders"):
        encode_inputs(gpt, "a", source="b")


def test_training_curves(tmp_path):
    runs = []
    for name, scale in (("a", 1.0), ("b", 1.3)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "elapsed_s": s / 10, "tokens": s * 64, "train_loss": scale * 4 / (1 + s / 50),
                 "val_loss": scale * 4.2 / (1 + s / 50), "lr": 1e-3} for s in range(0, 500, 50)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run)
    assert len(read_metrics(runs[0])) == 10
    image(plot_curves(runs, tmp_path / "curves.png", x="tokens", log_y=True))
    with pytest.raises(InputError, match="has no metrics.jsonl"):
        plot_curves([tmp_path], tmp_path / "c.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(InputError, match="metrics.jsonl:2 is not a JSON object"):
        read_metrics(tmp_path / "bad")
