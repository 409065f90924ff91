"""GGUF files: small random llama models written with the gguf writer as llama.cpp's converter writes
them, read by transformers (``gguf_file=``) and by qkv; the block readers against the gguf package's own
dequantization; the tokenizer and chat template against transformers'; bad files."""

import re

import numpy as np
import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.conversation import render_chat
from qkv.quant import Int4Linear, Int8Linear
from qkv.quant import gguf_blocks

from gguf_fixtures import CORPUS, random_llama, write_llama_gguf

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
TEXTS = CORPUS[:4] + ["<|im_start|>user\nhé<|im_end|>\n", "  leading spaces\n\n\ttabs", "Ünïcödé ⚡ 123456789"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! 🙂"}, {"role": "user", "content": "Ça va ? 日本語で答えて"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c\n\nd"}],
]


@pytest.fixture(scope="module")
def files(transformers, tmp_path_factory):
    """{name: (directory, hf model)}: an F32 file, and files whose matrices are Q8_0 / Q4_0 / Q4_1."""
    d = tmp_path_factory.mktemp("gguf")
    hf = random_llama(transformers)
    out = {}
    for name, kinds in {"f32": {}, "q8_0": {"blk": "Q8_0", "token_embd": "Q8_0"},
                        "q4": {"blk.0": "Q4_0", "blk.1": "Q4_1", "token_embd": "Q8_0"}}.items():
        (d / name).mkdir()
        write_llama_gguf(d / name / "m.gguf", hf, kinds)
        out[name] = d / name
    return out, hf


def _ids(n=24, seed=1):
    return torch.randint(0, 300, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["f32", "q8_0", "q4"])
def test_logits_match_transformers_gguf_load(transformers, files, name):
    paths, hf = files
    theirs = transformers.AutoModelForCausalLM.from_pretrained(paths[name], gguf_file="m.gguf").eval()
    ours = qkv.load(paths[name] / "m.gguf")
    assert type(ours) is qkv.GPT and ours.cfg.tie_embeddings and ours.cfg.kv_heads == 2
    with torch.no_grad():
        want = theirs(_ids()).logits
    assert (ours(_ids()).logits - want).abs().max() < 2e-5          # measured ~2e-6
    if name == "f32":                                                 # and the model the file was made from
        with torch.no_grad():
            assert (ours(_ids()).logits - hf(_ids()).logits).abs().max() < 2e-5


def test_the_qk_permutation_is_undone(files, monkeypatch):
    """Without putting llama.cpp's q/k rows back, RoPE rotates the wrong pairs: the logits move."""
    paths, hf = files
    with torch.no_grad():
        want = hf(_ids()).logits
    import qkv.interop.gguf as reader
    monkeypatch.setattr(reader, "unpermute_rows", lambda rows, heads: rows)
    assert (qkv.load(paths["f32"] / "m.gguf")(_ids()).logits - want).abs().max() > 0.05


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2"])
def test_tokenizer_and_chat_template_match_transformers(transformers, tmp_path, pre):
    write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers), pre=pre)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ours = qkv.load(tmp_path / "m.gguf").tokenizer
    for text in TEXTS:
        assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    for conv in CONVERSATIONS:
        for gen in (True, False):
            want = theirs.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert render_chat(ours.chat_template, conv, gen, ours.specials) == want
        want_ids = theirs.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert ours.encode(render_chat(ours.chat_template, conv, True, ours.specials)) == list(want_ids)


def _q4_k_bytes(rows: int, blocks: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (rows, blocks, 144), dtype=np.uint8)
    raw[..., 0:4] = rng.uniform(0.001, 0.1, (rows, blocks, 2)).astype(np.float16).view(np.uint8).reshape(rows, blocks,
                                                                                                         4)
    return raw.reshape(rows, blocks * 144)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q4_K"])
def test_block_readers_equal_gguf_dequantize(kind):
    w = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    raw = _q4_k_bytes(64, 2) if kind == "Q4_K" else gguf.quants.quantize(w, T[kind])
    want = gguf.quants.dequantize(raw, T[kind])
    if kind == "Q8_0":
        q_OI, d_OQ = gguf_blocks.q8_0(raw)
        got = (q_OI.float().view(64, -1, 32) * d_OQ[..., None]).view(64, 512)
    else:
        got = gguf_blocks.dequantize_four_bit(*gguf_blocks.four_bit(raw, kind))
    assert np.array_equal(got.numpy(), want)


def test_quantized_load_keeps_blocks_and_stays_close(files):
    paths, _ = files
    fp = qkv.load(paths["q4"] / "m.gguf")
    q = qkv.load(paths["q4"] / "m.gguf", quantized=True)
    kinds = {type(m) for m in q.modules()}
    assert Int4Linear in kinds and Int8Linear in kinds and torch.nn.Linear not in kinds
    # the 4-bit codes are the file's: dequantized, they equal the float path's weights up to bf16 scales
    w_fp, w_q = fp.blocks[0].mlp.up.weight, q.blocks[0].mlp.up.dequantize()
    assert (w_q - w_fp).abs().max() <= 2 ** -8 * w_fp.abs().max()
    logits_fp, logits_q = fp(_ids()).logits, q(_ids()).logits
    assert (logits_q - logits_fp).abs().max() < 0.03 * logits_fp.abs().max()     # measured 1.7%


def _write(path, arch="llama", tensors=None, tokenizer_model=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    for name, (data, qtype) in (tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype) if qtype else w.add_tensor(name, data)
    if tokenizer_model:
        w.add_tokenizer_model(tokenizer_model)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bad_files_raise_one_clear_error(files, tmp_path):
    paths, _ = files
    (tmp_path / "text.gguf").write_text("not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        qkv.load(tmp_path / "text.gguf")
    data = (paths["f32"] / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        qkv.load(tmp_path / "cut.gguf")
    _write(tmp_path / "gpt2.gguf", arch="gpt2")
    from qkv.interop.gguf_archs import ARCHITECTURES
    supported = re.escape(str(list(ARCHITECTURES)))
    with pytest.raises(CheckpointError, match=f"architecture 'gpt2'.*supported: {supported}$"):
        qkv.load(tmp_path / "gpt2.gguf")
    with pytest.raises(CheckpointError, match="does not exist"):
        qkv.load(tmp_path / "absent.gguf")


def test_unsupported_tensor_type_and_tokenizer(files, tmp_path):
    paths, _ = files
    reader = gguf.GGUFReader(str(paths["f32"] / "m.gguf"))
    # a copy whose first matrix claims Q5_0, which qkv does not read
    w = gguf.GGUFWriter(str(tmp_path / "q5.gguf"), "llama")
    for field in reader.fields.values():
        if field.name.startswith(("llama.", "tokenizer.")) and field.name != "tokenizer.ggml.model":
            w.add_key_value(field.name, field.contents(), field.types[0],
                            field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    w.add_tokenizer_model("bert")                              # and a WordPiece vocabulary
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name == "blk.0.ffn_up.weight":
            block, size = gguf.GGML_QUANT_SIZES[T.Q5_0]
            out, inp = data.shape
            w.add_tensor(t.name, np.zeros((out, inp // block * size), dtype=np.uint8), raw_dtype=T.Q5_0)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="type Q5_0.*supported: \\['F32', 'F16', 'BF16', 'Q8_0'"):
        qkv.load(tmp_path / "q5.gguf")
    from qkv.interop.gguf import GGUFFile
    from qkv.interop.gguf_tokenizer import tokenizer_from_gguf
    with pytest.raises(CheckpointError, match="'bert' tokenizer.*byte-level BPE \\('gpt2'\\) and SentencePiece"):
        tokenizer_from_gguf(GGUFFile(tmp_path / "q5.gguf"))


def _reader_parity(path):
    from qkv.interop.gguf import GGUFFile
    ours, theirs = GGUFFile(path), gguf.GGUFReader(str(path))
    fields = {k: v.contents() for k, v in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.header.fields == fields
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert (mine.tensor_type, mine.shape, mine.n_bytes, mine.data_offset) == \
            (t.tensor_type, tuple(int(n) for n in t.shape), t.n_bytes, t.data_offset)
        assert mine.data.dtype == t.data.dtype and np.array_equal(mine.data, t.data)


@pytest.mark.parametrize("name", ["f32", "q8_0", "q4"])
def test_header_reader_equals_the_gguf_packages(files, name):
    """qkv's own header reader (fast on a 50,000-token vocabulary) gives GGUFReader's fields and tensors."""
    _reader_parity(files[0][name] / "m.gguf")


def test_header_reader_refuses_bad_headers(files, tmp_path):
    data = (files[0]["f32"] / "m.gguf").read_bytes()
    for name, bad in {"version": data[:4] + (7).to_bytes(4, "little") + data[8:],
                      "header": data[:200], "tensor": data[:-10]}.items():
        (tmp_path / f"{name}.gguf").write_bytes(bad)
        with pytest.raises(CheckpointError, match="not a readable GGUF file .*truncated or not GGUF"):
            qkv.load(tmp_path / f"{name}.gguf")


def test_weights_are_views_of_the_map_not_copies(files):
    """A float32 tensor of the file is a view of its private map (no copy); writing to it changes the
    model's copy-on-write page, never the file."""
    from qkv.interop.gguf import GGUFFile
    path = files[0]["f32"] / "m.gguf"
    before = path.read_bytes()
    f = GGUFFile(path)
    w = f.dequantized("output_norm.weight")
    assert w.untyped_storage().data_ptr() == f.tensors["output_norm.weight"].data.ctypes.data
    w.add_(1)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1"])
def test_block_readers_take_read_only_and_strided_rows(kind):
    """A read-only array (a file mapped read-only) is copied, rows with a stride (un-permuted q/k) too;
    the codes are the same as from the plain array (from the mutation survivors of quant/gguf_blocks.py)."""
    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, T[kind])
    read = gguf_blocks.q8_0 if kind == "Q8_0" else (lambda r: gguf_blocks.four_bit(r, kind))
    want = read(raw.copy())
    frozen = raw.copy()
    frozen.setflags(write=False)
    strided = np.concatenate([raw, raw], axis=1)[:, : raw.shape[1]]
    for got in (read(frozen), read(strided)):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
