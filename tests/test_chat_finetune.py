"""Chat fine-tuning of a decoder (qkv.tasks.chat): exactly which tokens are scored (a tiny template and
SmolLM2's real one), a fine-tuning run on a tiny random Llama that learns a fixed answer, and bad rows."""

import json

import pytest
import torch

from qkv import Tokenizer
from qkv.cli import main
from qkv.errors import DataError
from qkv.tasks.chat import encode_conversation, read_conversations

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "done"}]


def scored_text(tokenizer, item) -> str:
    """The tokens whose prediction is scored: target t is token t + 1."""
    return "".join(tokenizer.decode([tok]) for tok, target in zip(item.ids[1:], item.labels[:-1]) if target != -100)


def test_only_assistant_turns_and_their_end_marker_are_scored():
    tok = Tokenizer.train_char("<>|systemuserassistantbe briefhiokand?done")
    item, cut = encode_conversation(tok, TEMPLATE, CHAT, max_len=200)
    assert not cut and len(item.ids) == len(item.labels)
    assert scored_text(tok, item) == "ok|done|"
    targets = [t for t in item.labels if t != -100]
    assert targets == tok.encode("ok|") + tok.encode("done|")
    for t, target in enumerate(item.labels[:-1]):           # every target is the next token, where scored
        assert target in (-100, item.ids[t + 1])
    cut_item, cut = encode_conversation(tok, TEMPLATE, CHAT, max_len=40)
    assert cut and len(cut_item.ids) == 40 and scored_text(tok, cut_item) == "ok|"


def test_smollm2_template_scores_the_reply_and_im_end():
    from gguf_fixtures import smollm2_path
    from qkv.interop.gguf import GGUFFile
    from qkv.interop.gguf_tokenizer import tokenizer_from_gguf
    tok = tokenizer_from_gguf(GGUFFile(smollm2_path()))
    item, _ = encode_conversation(tok, tok.chat_template, CHAT[1:], max_len=512)
    assert scored_text(tok, item) == "ok<|im_end|>\ndone<|im_end|>\n"


def write_chats(path, n, seed, assistant=True):
    g = torch.Generator().manual_seed(seed)
    words = ["cat", "dog", "sun", "tree", "rain", "fish"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = (words[int(i)] for i in torch.randint(len(words), (2,), generator=g))
            messages = [{"role": "user", "content": f"{a} or {b}?"}]
            if assistant:
                messages.append({"role": "assistant", "content": f"ANSWER: {a}"})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("llama")
    text = "".join(open(write_chats(d / "corpus.jsonl", 50, 9)).read())
    tok = Tokenizer.train_bpe([text * 3], vocab_size=300, special_tokens=("<eos>", "<pad>"))
    tok.chat_template = TEMPLATE.replace("|", "<eos>")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=1000.0,
        tie_word_embeddings=False)).save_pretrained(d)
    tok.save(d / "tokenizer.json")
    return d


def test_chat_finetuning_learns_a_fixed_answer_format(tiny_chat_model, tmp_path):
    train, held_out = write_chats(tmp_path / "train.jsonl", 64, 1), write_chats(tmp_path / "eval.jsonl", 8, 2)
    run = tmp_path / "run"
    assert main(["finetune", "--task", "chat", "--init", str(tiny_chat_model), "--data", str(train), "--eval-data",
                 str(held_out), "--max-iters", "60", "--eval-interval", "30", "--eval-iters", "2", "--batch-size", "16",
                 "--lr", "3e-3", "--warmup-iters", "5", "--precision", "fp32", "--out-dir", str(run)]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["task"] == "chat" and report["examples"] == 8
    assert report["token_accuracy"] > 0.6                       # random: 1/300
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    replies = [json.loads(line)["reply"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sum(r.startswith("ANSWER:") for r in replies) >= 6   # the format it was taught


def test_a_row_without_an_assistant_turn_is_refused(tmp_path):
    bad = write_chats(tmp_path / "bad.jsonl", 3, 1, assistant=False)
    with pytest.raises(DataError, match="line 1 of .* has no assistant turn"):
        read_conversations(bad)


def test_qlora_chat_run_keeps_the_int8_base_and_resumes_exactly(tiny_chat_model, tmp_path):
    import qkv
    train, held_out = write_chats(tmp_path / "train.jsonl", 32, 3), write_chats(tmp_path / "eval.jsonl", 2, 4)
    args = ["finetune", "--task", "chat", "--init", str(tiny_chat_model), "--data", str(train), "--eval-data",
            str(held_out), "--lora", "--quantized", "--lora-rank", "4", "--lora-dropout", "0", "--eval-iters", "1",
            "--batch-size", "8", "--lr", "1e-2", "--precision", "fp32"]
    assert main(args + ["--max-iters", "6", "--eval-interval", "3", "--out-dir", str(tmp_path / "straight")]) == 0
    straight = qkv.load(tmp_path / "straight")
    base = qkv.load(tiny_chat_model, quantized=True)
    int8 = {k: v for k, v in base.state_dict().items() if v.dtype == torch.int8}
    assert int8 and all(torch.equal(straight.state_dict()[k], v) for k, v in int8.items())   # the base is frozen
    assert any(v.abs().sum() > 0 for k, v in straight.state_dict().items() if ".lora.B." in k)
    from qkv.train.finetune import resume_finetune
    from qkv.config import resolve, build
    from qkv.train.finetune import FinetuneConfig, build_finetune_task, new_model
    from qkv.train.trainer import Trainer
    fcfg = build(FinetuneConfig, {"task": "chat", "data": str(train), "eval_data": str(held_out),
                                  "init": str(tiny_chat_model), "lora": True, "quantized": True, "lora_rank": 4,
                                  "lora_dropout": 0.0})
    _, train_cfg = resolve("bert-finetune", train=dict(max_iters=6, eval_interval=3, eval_iters=1, batch_size=8,
                                                      lr=1e-2, precision="fp32", progress=False,
                                                      out_dir=str(tmp_path / "parts")))
    parts, _ = build_finetune_task(fcfg, train_cfg, new_model(fcfg, None, train_cfg))
    Trainer(parts.model_cfg, train_cfg, parts=parts, log=lambda *a: None).fit(stop_at_step=3)
    resumed = resume_finetune(tmp_path / "parts", log=lambda *a: None)
    assert resumed.step == 3
    resumed.fit()
    a = qkv.load(tmp_path / "parts").state_dict()
    b = straight.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
