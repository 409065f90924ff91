"""Hugging Face GPT-2 interop: parity with transformers on tiny random models, round trips, bad files.

Nothing downloads: every checkpoint is a random-init model written into tmp_path. Parity tests need
transformers and skip only when it is not installed; the bad-input tests use our own writer.
"""

import json
import pathlib
import shutil

import pytest
import torch

from qkv import GPT, CheckpointError, ModelConfig
from qkv.interop import load_gpt2, save_gpt2
from qkv.tokenizers import Tokenizer

V = 320                   # vocab size, small enough for a trained byte-level BPE (256 bytes + merges)
TEXTS = ["hello world", " the quick brown fox jumps over the lazy dog", "naïve café 日本語 🙂",
         "tabs\tand\nnewlines  and   spaces", "ends with <|endoftext|> and more <|endoftext|>", ""]
CORPUS = ["the quick brown fox jumps over the lazy dog; hello world, hello there"] * 50


@pytest.fixture(scope="module")
def hf_model(transformers):
    torch.manual_seed(0)
    # A wide init spreads the logits, so greedy decoding has no near-ties for float noise to flip.
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=V,
                                  initializer_range=0.1, bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    hf_model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bin_dir(hf_model, hf_dir, tmp_path_factory):
    """The pre-safetensors layout: pytorch_model.bin, keys without ``transformer.``, mask buffers kept."""
    d = tmp_path_factory.mktemp("hf") / "gpt2-bin"
    d.mkdir()
    shutil.copy(hf_dir / "config.json", d / "config.json")
    sd = {k.removeprefix("transformer."): t for k, t in hf_model.state_dict().items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd["wte.weight"]
    torch.save(sd, d / "pytorch_model.bin")
    return d


@pytest.fixture
def ids_BL():
    return torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))


def hf_logits(hf_model, ids_BL):
    with torch.no_grad():
        return hf_model(ids_BL).logits


def our_logits(model, ids_BL):
    with torch.no_grad():
        return model(ids_BL).logits


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded"])
def test_logits_match_transformers(layout, hf_model, hf_dir, bin_dir, ids_BL, tmp_path):
    if layout == "sharded":
        d = tmp_path / "sharded"
        hf_model.save_pretrained(d, max_shard_size="40KB")
        assert (d / "model.safetensors.index.json").is_file()
    else:
        d = hf_dir if layout == "safetensors" else bin_dir
    model = load_gpt2(d)
    assert not model.training and model.tokenizer is None
    assert model.head.weight is model.tok.weight                      # still tied after loading
    assert all(p.requires_grad and p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    diff = (our_logits(model, ids_BL) - hf_logits(hf_model, ids_BL)).abs().max().item()
    assert diff <= 1e-5, f"max abs logit difference {diff}"              # measured 1.2e-6


def test_qkv_load_dispatches_gpt2(hf_model, hf_dir, ids_BL):
    import qkv
    model = qkv.load(hf_dir)
    assert (our_logits(model, ids_BL) - hf_logits(hf_model, ids_BL)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("options", [
    dict(layer_norm_epsilon=1e-3, n_inner=80, activation_function="gelu", tie_word_embeddings=False),
    dict(layer_norm_epsilon=1e-2, activation_function="relu", n_positions=40),
])
def test_options_off_the_defaults_match_transformers(transformers, tmp_path, ids_BL, options):
    """eps, the FFN width, the activation and an untied head are read from config.json, not assumed."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{**dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=V,
                                            initializer_range=0.1, bos_token_id=None, eos_token_id=None), **options})
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = load_gpt2(tmp_path)
    assert model.cfg.max_len == cfg.n_positions and model.cfg.tie_embeddings == cfg.tie_word_embeddings
    assert (our_logits(model, ids_BL) - hf_logits(hf, ids_BL)).abs().max().item() <= 1e-5


def test_a_config_with_only_the_sizes_takes_transformers_defaults(transformers, hf_dir, ids_BL, tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(hf_dir, d)
    config = json.loads((d / "config.json").read_text())
    sizes = ("model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
    (d / "config.json").write_text(json.dumps({k: config[k] for k in sizes}))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    assert (our_logits(load_gpt2(d), ids_BL) - hf_logits(theirs, ids_BL)).abs().max().item() <= 1e-5


def test_left_padded_batch_matches_transformers_with_its_attention_mask(hf_model, hf_dir, ids_BL):
    """Left padding as transformers' generate does it (attention_mask, positions counted over real tokens):
    the same logits at every real position; the wide init makes attention peaked, so a pad that leaked into
    a softmax would show."""
    model = load_gpt2(hf_dir)
    key_mask_BL = torch.ones_like(ids_BL)
    key_mask_BL[0, :7] = 0
    key_mask_BL[1, :2] = 0
    position_ids_BL = (key_mask_BL.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want_BLV = hf_model(ids_BL, attention_mask=key_mask_BL, position_ids=position_ids_BL).logits
        out = model(ids_BL, key_mask_BM=key_mask_BL.bool(), return_attentions=True)
    assert out.attentions[0].max() > 0.9
    real_BL = key_mask_BL.bool()
    assert (out.logits - want_BLV)[real_BL].abs().max().item() <= 1e-5   # measured 1.2e-6
    alone_1LV = our_logits(model, ids_BL[:1, 7:])                        # and row 0 as if it stood alone
    assert (out.logits[0, 7:] - alone_1LV[0]).abs().max().item() <= 1e-5


def greedy(model: GPT, prompt_1L: torch.Tensor, max_new: int) -> torch.Tensor:
    """Prefill once, then one token per step through the KV cache."""
    caches = model.new_caches(1, prompt_1L.shape[1] + max_new)
    tokens_1L = prompt_1L
    with torch.no_grad():
        logits_11V = model(prompt_1L, caches=caches, last_only=True).logits
        for step in range(max_new):
            next_11 = logits_11V[:, -1].argmax(-1, keepdim=True)
            tokens_1L = torch.cat([tokens_1L, next_11], dim=1)
            if step + 1 < max_new:
                logits_11V = model(next_11, caches=caches, last_only=True).logits
    return tokens_1L


def test_greedy_continuation_matches_generate(hf_model, hf_dir):
    model = load_gpt2(hf_dir)
    prompt_1L = torch.tensor([[5, 17, 200, 42, 9, 311, 64, 1]])
    with torch.no_grad():
        expected = hf_model.generate(prompt_1L, attention_mask=torch.ones_like(prompt_1L), max_new_tokens=20,
                                     do_sample=False, pad_token_id=0)
    assert greedy(model, prompt_1L, 20).tolist() == expected.tolist()


def test_round_trip_through_transformers(transformers, hf_model, hf_dir, ids_BL, tmp_path):
    model = load_gpt2(hf_dir)
    out = save_gpt2(model, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    diff = (hf_logits(reloaded, ids_BL) - hf_logits(hf_model, ids_BL)).abs().max().item()
    assert diff == 0.0, f"save_gpt2 changed the weights: max abs logit difference {diff}"
    again = load_gpt2(out)
    for key, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], t), key


def test_our_own_variant_saves_for_transformers(transformers, ids_BL, tmp_path):
    """A GPT trained here (exact GELU, untied head, custom FFN width) is readable by transformers."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, max_len=32, n_layers=2, d_model=48, n_heads=3, d_ff=80, mlp="gelu",
                      tie_embeddings=False, norm_eps=1e-6)
    model = GPT(cfg).eval()
    with torch.no_grad():                      # wide weights, as if trained: logits spread, attention peaked
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    save_gpt2(model, tmp_path / "ours")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert our_logits(model, ids_BL).std() > 1.0
    diff = (hf_logits(hf, ids_BL) - our_logits(model, ids_BL)).abs().max().item()
    assert diff <= 1e-5, f"max abs logit difference {diff}"
    assert load_gpt2(tmp_path / "ours").cfg == cfg


def test_save_replaces_a_model_directory_atomically(tmp_path):
    model = GPT(ModelConfig(vocab_size=V, max_len=16, n_layers=1, d_model=32, n_heads=4, mlp="gelu_tanh"))
    target = save_gpt2(model, tmp_path / "m")
    (target / "notes.txt").write_text("a file the export did not write")
    save_gpt2(model, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]       # no temp or backup dirs left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a model directory"):
        save_gpt2(model, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize("override,field", [(dict(norm="rmsnorm"), "norm"), (dict(pos="rope"), "pos"),
                                            (dict(n_kv_heads=2), "n_kv_heads"), (dict(mlp="swiglu"), "mlp"),
                                            (dict(norm_placement="post"), "norm_placement"),
                                            (dict(bias=False), "bias")])
def test_save_refuses_what_gpt2_cannot_express(override, field, tmp_path):
    model = GPT(ModelConfig(vocab_size=V, max_len=16, n_layers=1, d_model=32, n_heads=4, **override))
    with pytest.raises(CheckpointError, match=f"{field}=.*qkv checkpoint"):
        save_gpt2(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---- tokenizers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train_bpe(CORPUS, vocab_size=V, special_tokens=["<|endoftext|>"])


def test_tokenizer_from_vocab_and_merges_matches_transformers(transformers, bpe, hf_dir, tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(hf_dir, d)
    bpe.backend.model.save(str(d))                          # GPT-2's original files: vocab.json + merges.txt
    assert (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
    ours = load_gpt2(d).tokenizer
    theirs = transformers.GPT2TokenizerFast.from_pretrained(d)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text
    # transformers 5 saves tokenizer.json; loading that directory must agree too.
    theirs.save_pretrained(tmp_path / "resaved")
    shutil.copytree(hf_dir, tmp_path / "resaved", dirs_exist_ok=True)
    again = load_gpt2(tmp_path / "resaved").tokenizer
    assert [again.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]


def test_saved_tokenizer_reads_back_in_transformers(transformers, bpe, hf_dir, tmp_path):
    out = save_gpt2(load_gpt2(hf_dir), tmp_path / "out", tokenizer=bpe)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert theirs(text)["input_ids"] == bpe.encode(text), text
    assert theirs.eos_token == "<|endoftext|>"
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == bpe.eos_id
    assert load_gpt2(out).tokenizer.encode(TEXTS[2]) == bpe.encode(TEXTS[2])


# ---- bad inputs: each names the fix --------------------------------------------------------------------
@pytest.fixture
def good_dir(tmp_path) -> pathlib.Path:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, max_len=32, n_layers=2, d_model=32, n_heads=4, mlp="gelu_tanh")
    return save_gpt2(GPT(cfg), tmp_path / "good")


def edit_config(d: pathlib.Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def test_missing_weights_file(good_dir):
    (good_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors.*copy the weights"):
        load_gpt2(good_dir)


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_gpt2(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json does not exist; pass a directory"):
        load_gpt2(tmp_path)


def test_truncated_safetensors(good_dir):
    path = good_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt.*save it again"):
        load_gpt2(good_dir)


def test_corrupt_safetensors_header(good_dir):
    path = good_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"}not json at all"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="could not be read.*save it again"):
        load_gpt2(good_dir)


def test_config_that_does_not_match_the_weights(good_dir):
    edit_config(good_dir, n_embd=64)
    with pytest.raises(CheckpointError, match=r"'wte.weight' has shape \(320, 32\).*n_embd=64.*"
                                              r"expects \(320, 64\); fix config.json"):
        load_gpt2(good_dir)


def test_config_with_fewer_layers_than_the_weights(good_dir):
    edit_config(good_dir, n_layer=1)
    with pytest.raises(CheckpointError, match=r"'h\.1\..*fix n_layer in config.json"):
        load_gpt2(good_dir)


def test_missing_tensor_names_key_and_shape(good_dir):
    path = good_dir / "model.safetensors"
    from safetensors.torch import load_file, save_file
    tensors = load_file(path)
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"no tensor 'h.1.mlp.c_fc.weight' \(expected shape \(32, 128\)"):
        load_gpt2(good_dir)


@pytest.mark.parametrize("option,value", [("scale_attn_by_inverse_layer_idx", True),
                                          ("scale_attn_weights", False), ("add_cross_attention", True),
                                          ("activation_function", "quick_gelu"), ("model_type", "bert")])
def test_config_options_we_cannot_represent(good_dir, option, value):
    edit_config(good_dir, **{option: value})
    with pytest.raises(CheckpointError, match=f"{option}={value!r}"):
        load_gpt2(good_dir)


def test_upcast_attention_is_the_same_math(transformers, hf_model, hf_dir, ids_BL, tmp_path):
    """reorder_and_upcast_attn is an fp16 stability trick, not a new model: the same logits as transformers
    computes with it on."""
    d = tmp_path / "upcast"
    shutil.copytree(hf_dir, d)
    edit_config(d, reorder_and_upcast_attn=True)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    assert theirs.config.reorder_and_upcast_attn
    assert (our_logits(load_gpt2(d), ids_BL) - hf_logits(theirs, ids_BL)).abs().max().item() <= 1e-5


class Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_bin_with_code_is_refused_not_run(good_dir, tmp_path):
    marker = tmp_path / "pwned"
    (good_dir / "model.safetensors").unlink()
    torch.save({"wte.weight": Payload(marker)}, good_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin could not be read"):
        load_gpt2(good_dir)
    assert not marker.exists()


def test_qkv_generate_and_cli_on_a_transformers_directory(transformers, hf_model, bpe, hf_dir, tmp_path, capsys):
    """`qkv.generate` and `qkv generate DIR` on a save_pretrained directory continue exactly as
    transformers' greedy `generate` does, text included."""
    import qkv
    from qkv.cli import main
    d = tmp_path / "gpt2"
    shutil.copytree(hf_dir, d)
    bpe.backend.model.save(str(d))
    prompt = "the quick brown fox"
    ids_1L = torch.tensor([bpe.encode(prompt)])
    with torch.no_grad():
        expected_1L = hf_model.generate(ids_1L, attention_mask=torch.ones_like(ids_1L), max_new_tokens=12,
                                        do_sample=False, pad_token_id=0)
    expected = bpe.decode(expected_1L[0, ids_1L.shape[1]:].tolist())
    assert len(expected.strip()) > 0
    model = qkv.load(d)
    assert qkv.generate(model, model.tokenizer, prompt, max_new_tokens=12, temperature=0,
                        ignore_eos=True) == expected
    assert main(["generate", str(d), "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0",
                 "--ignore-eos"]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith(expected.rstrip("\n"))
