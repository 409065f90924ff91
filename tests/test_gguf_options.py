"""GGUF files off the loader's defaults: an untied output head, an explicit head_dim (key_length), eps, rope
theta, context and G != H all read from the file, float and quantized, against transformers' GGUF load of
the same file and the gguf package's own dequantization of its tensors."""

import numpy as np
import pytest
import torch

import qkv
from qkv.quant import Int4Linear, Int8Linear, QuantEmbedding

from gguf_fixtures import random_llama, write_llama_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

KINDS = {"f32": {},
         "f16": {"blk": "F16", "token_embd": "F16", "output.": "BF16"},
         "q8_0": {"blk": "Q8_0", "token_embd": "Q8_0", "output.": "Q8_0"},
         "q4": {"blk.0": "Q4_0", "blk.1": "Q4_1", "token_embd": "Q8_0", "output.": "Q4_1"}}
HEAD_MODULE = {"f32": torch.nn.Linear, "f16": torch.nn.Linear, "q8_0": Int8Linear, "q4": Int4Linear}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: directory} of one untied model with head_dim 24 (4 x 24 != 64), and that model."""
    d = tmp_path_factory.mktemp("gguf-options")
    hf = random_llama(transformers, tie=False, head_dim=24, seed=5)
    with torch.no_grad():                    # make the head differ from the embedding by more than noise
        hf.lm_head.weight.normal_(std=0.1)
    out = {}
    for name, kinds in KINDS.items():
        (d / name).mkdir()
        write_llama_gguf(d / name / "m.gguf", hf, kinds)
        out[name] = d / name
    return out, hf


def _ids(n=24, seed=1):
    return torch.randint(0, 300, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_untied_head_dim_file_matches_transformers(files, name):
    paths, hf = files
    theirs = transformers.AutoModelForCausalLM.from_pretrained(paths[name], gguf_file="m.gguf").eval()
    ours = qkv.load(paths[name] / "m.gguf")
    c = hf.config
    assert (ours.cfg.tie_embeddings, ours.cfg.head_dim, ours.cfg.kv_heads, ours.cfg.max_len) == \
        (False, 24, c.num_key_value_heads, c.max_position_embeddings)
    assert (ours.cfg.norm_eps, ours.cfg.pos_base) == pytest.approx((c.rms_norm_eps, c.rope_parameters["rope_theta"]))
    with torch.no_grad():
        want = theirs(_ids()).logits
    assert (ours(_ids()).logits - want).abs().max() < 2e-5
    if name == "f32":
        with torch.no_grad():
            assert (ours(_ids()).logits - hf(_ids()).logits).abs().max() < 2e-5


@pytest.mark.parametrize("name", sorted(KINDS))
def test_quantized_untied_head_keeps_the_files_codes(files, name):
    """quantized=True: the head is the file's output.weight in its own kind of module (Q4_1 codes in
    Int4Linear, Q8_0 in Int8Linear, F32 a float Linear), the embedding a float table of token_embd."""
    paths, _ = files
    path = paths[name] / "m.gguf"
    fp, q = qkv.load(path), qkv.load(path, quantized=True)
    assert type(q.head) is HEAD_MODULE[name] and type(q.tok) is torch.nn.Embedding
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    out, emb = tensors["output.weight"], tensors["token_embd.weight"]
    want_head = torch.from_numpy(np.array(gguf.quants.dequantize(out.data, out.tensor_type), dtype=np.float32))
    floats = type(q.head) is torch.nn.Linear
    got_head = q.head.weight if floats else q.head.dequantize()
    # Q8_0 blocks merge into one int8 scale per row (half a step of it at most); Q4_1 keeps the codes, scales in bf16
    tol = {"q8_0": 0.5 * want_head.abs().amax() / 127, "q4": 2 ** -8 * want_head.abs().max()}.get(name, 0.0)
    assert (got_head - want_head).abs().max() <= tol * 1.01
    want_emb = torch.from_numpy(np.array(gguf.quants.dequantize(emb.data, emb.tensor_type), dtype=np.float32))
    assert torch.equal(q.tok.weight, want_emb) and q.tok.weight.requires_grad == fp.tok.weight.requires_grad
    for module in q.modules():                          # float layers say their true sizes
        if type(module) is torch.nn.Linear:
            assert (module.out_features, module.in_features) == tuple(module.weight.shape) and module.bias is None
    logits_fp, logits_q = fp(_ids()).logits, q(_ids()).logits
    assert (logits_q - logits_fp).abs().max() < 0.03 * logits_fp.abs().max()
    assert (q.head(q.tok.weight[:8]) - fp.head(fp.tok.weight[:8])).abs().max() < 0.03 * fp.head.weight.abs().max()


def test_tied_quantized_file_reads_its_embedding_as_the_head(tmp_path):
    """A tied file: the int8 head holds token_embd's rows and the embedding reads them (one tensor)."""
    path = write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers, seed=5), {"token_embd": "Q8_0"})
    q = qkv.load(path, quantized=True)
    assert type(q.head) is Int8Linear and isinstance(q.tok, QuantEmbedding)
    emb = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    want = torch.from_numpy(np.array(gguf.quants.dequantize(emb.data, emb.tensor_type), dtype=np.float32))
    assert (q.head.dequantize() - want).abs().max() <= 0.5 * want.abs().amax() / 127 * 1.01


@pytest.mark.parametrize("add_bos", [True, False])
def test_special_ids_and_add_bos_come_from_the_file(tmp_path, add_bos):
    """unk and eot ids, and add_bos_token: a prompt starts with bos only when the file says so, and a turn
    ends at eot as well as eos (llama.cpp's rules; transformers reads the unk id the same way)."""
    path = write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers), add_bos=add_bos,
                            specials={"eot": "<|endoftext|>", "unk": "<|im_start|>"})
    tok = qkv.load(path).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (theirs.unk_token_id, theirs.bos_token_id, theirs.eos_token_id)
    eot = tok.encode("<|endoftext|>")
    assert len(eot) == 1 and set(tok.stop_ids) == {tok.eos_id, eot[0]}
    assert tok.prompt_ids("hello") == [tok.bos_id] * add_bos + tok.encode("hello")


def test_int8_rows_are_built_a_slice_at_a_time(files, monkeypatch):
    """No matrix is held whole in float32: with slices of 96 rows the int8 modules are the same, bit for bit."""
    import qkv.interop.gguf_quant as gguf_quant
    path = files[0]["q8_0"] / "m.gguf"
    whole = qkv.load(path, quantized=True)
    monkeypatch.setattr(gguf_quant, "ROWS_PER_SLICE", 96)
    sliced = qkv.load(path, quantized=True)
    assert type(sliced.head) is Int8Linear and sliced.head.weight.shape[0] == 320        # 96 + 96 + 96 + 32
    for (name, a), (_, b) in zip(whole.state_dict().items(), sliced.state_dict().items()):
        assert torch.equal(a, b), name
