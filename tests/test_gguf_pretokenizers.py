"""Every ``tokenizer.ggml.pre`` tag qkv knows splits text as its reference does: transformers' GGUF reader
where it tells the tag apart, the model family's own tokenizer.json pre-tokenizer where transformers falls
back to GPT-2's rule; tags qkv does not know are refused by name."""

import pytest
from tokenizers import pre_tokenizers

import qkv
from qkv import CheckpointError
from qkv.interop.gguf_tokenizer import SPLITS

from gguf_fixtures import random_llama, write_llama_gguf

pytest.importorskip("gguf")
TEXTS = ["I'M sure you'RE right, don't", "HTTPServerError in CamelCaseWords and lowerUPPER", "12345 apples, 6789 pears",
         "path/to/file.txt\r\nnext line\n\n\nthree", "a  b   c    \t\tend  ", "naïve café e\u0301 ü\u0308ber",
         "日本語のテキスト 🙂 ⚡", "x=1+2; y = [3,4]  # note", "    def f(x):\n        return x ** 2\n"]
# transformers gives these GPT-2's rule; SmolLM's, StarCoder's, Refact's and Command R's tokenizer.json split
# every digit first (Digits(individual_digits=True), then ByteLevel with GPT-2's regex), as llama.cpp does
DIGITS_FIRST = {"smollm", "starcoder", "refact", "command-r"}
# llama.cpp gives StableLM 2 (Arcade100k) Qwen2's rule; transformers, GPT-2's
AS_QWEN2 = {"stablelm2"}


@pytest.fixture(scope="module")
def hf(transformers):
    return random_llama(transformers)


def _file(hf, tmp_path, tag):
    (tmp_path / tag).mkdir()
    return write_llama_gguf(tmp_path / tag / "m.gguf", hf, pre=tag)


def _pair(transformers, hf, tmp_path, tag):
    path = _file(hf, tmp_path, tag)
    return qkv.load(path).tokenizer, transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file="m.gguf")


def _words(pre_tokenizer, text):
    return [w for w, _ in pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("tag", sorted(SPLITS))
def test_split_matches_the_reference(transformers, hf, tmp_path, tag):
    ours, theirs = _pair(transformers, hf, tmp_path, tag)
    if tag in DIGITS_FIRST:
        reference = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        assert _words(theirs.backend_tokenizer.pre_tokenizer, TEXTS[2]) != _words(reference, TEXTS[2])
    elif tag in AS_QWEN2:
        reference = _pair(transformers, hf, tmp_path, "qwen2")[1].backend_tokenizer.pre_tokenizer
    else:
        reference = theirs.backend_tokenizer.pre_tokenizer
    for text in TEXTS:
        assert _words(ours.backend.pre_tokenizer, text) == _words(reference, text), text
        if reference is theirs.backend_tokenizer.pre_tokenizer:
            assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
        assert ours.decode(ours.encode(text)) == text


def test_the_rules_differ_where_the_tags_do(hf, tmp_path):
    """The texts tell every rule apart, so a tag mapped to the wrong one fails above."""
    rules = {tuple(SPLITS[tag]): tag for tag in SPLITS}            # one tag per distinct rule
    splits = set()
    for tag in rules.values():
        pre = qkv.load(_file(hf, tmp_path, tag)).tokenizer.backend.pre_tokenizer
        splits.add(str([_words(pre, t) for t in TEXTS]))
    assert len(splits) == len(rules)


@pytest.mark.parametrize("tag", ["deepseek-llm", "falcon", "chatglm-bpe", "bloom"])
def test_unknown_tags_are_refused_by_name(hf, tmp_path, tag):
    write_llama_gguf(tmp_path / "m.gguf", hf, pre=tag)
    with pytest.raises(CheckpointError, match=f"rule '{tag}' \\(tokenizer.ggml.pre\\), which qkv does not know; "
                                              f"known: \\['command-r', 'dbrx', 'deepseek-r1-qwen', 'default'"):
        qkv.load(tmp_path / "m.gguf")
