"""Chat fine-tuning of a decoder: conversations in, the model's own chat template, loss on assistant turns.

Data: JSONL, one conversation a line, as transformers' and TRL's chat datasets hold them:

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "Answer: 4"}]}

Each conversation is rendered once with the model's chat template (``qkv.conversation.render_chat``) and
tokenized once. The scored tokens are each assistant turn as the template writes it after the prompt that
asks for it: the characters between render(messages[:i], add_generation_prompt=True) and
render(messages[:i + 1]) -- the reply and its end-of-turn marker (SmolLM2: "Answer: 4<|im_end|>\\n"), so
the model learns to stop. Everything else (system, user, the template's own markers) has target -100:

    text     <|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\nAnswer: 4<|im_end|>\\n
    scored                                                          ^^^^^^^^^^^^^^^^^^^^^^^^^^^

Batches are right-padded (causal attention: a real token never sees the padding after it), grouped by
length (``qkv.tasks.batches``). The score at the end: on each held-out conversation, the greedy reply to
everything before its last assistant turn, compared with that turn (``exact_match``: equal after
stripping whitespace), plus the teacher-forced accuracy of the scored tokens (``token_accuracy``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..conversation import check_messages, render_chat
from ..errors import DataError, InputError
from ..family import Family
from .batches import Item, collate


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The conversations in a JSONL file; a line that is not one, or has no assistant turn, is an error."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); pass a UTF-8 JSONL file of {{\"messages\": [...]}}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            messages = check_messages(json.loads(line)["messages"])
        except (json.JSONDecodeError, KeyError, TypeError, InputError) as e:
            raise DataError(f"line {n} of {path} is not a {{\"messages\": [...]}} conversation ({e})") from None
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"line {n} of {path} has no assistant turn; the loss is on assistant turns only, so "
                            f"every conversation needs one")
        rows.append(messages)
    if not rows:
        raise DataError(f"{path} holds no conversations")
    return rows


def assistant_spans(template: str, messages: list[dict], specials: dict) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character spans of its assistant turns)."""
    text = render_chat(template, messages, add_generation_prompt=False, specials=specials)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        asked = render_chat(template, messages[:i], add_generation_prompt=True, specials=specials) if i else ""
        upto = render_chat(template, messages[:i + 1], add_generation_prompt=False, specials=specials)
        if not (text.startswith(upto) and upto.startswith(asked)):
            raise DataError("the chat template does not render a conversation as its prompts followed by the "
                            "replies, so the assistant turns cannot be found; use a template that does")
        spans.append((len(asked), len(upto)))
    return text, spans


def encode_conversation(tokenizer, template: str, messages: list[dict], max_len: int) -> tuple[Item, bool]:
    """(Item with ids and next-token targets on the assistant tokens, whether it was cut to max_len)."""
    text, spans = assistant_spans(template, messages, tokenizer.specials)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = ([tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []) + enc.ids
    offsets = ([(0, 0)] if len(ids) > len(enc.ids) else []) + list(enc.offsets)
    scored = [end > start and any(a <= start < b for a, b in spans) for start, end in offsets]   # bos: (0, 0)
    cut = len(ids) > max_len
    ids, scored = ids[:max_len], scored[:max_len]
    targets = [ids[t + 1] if scored[t + 1] else -100 for t in range(len(ids) - 1)] + [-100]
    return Item(ids, [], targets), cut


@dataclass(frozen=True)
class ChatFinetuning:
    metric = "exact_match"
    family = Family.DECODER                      # fine-tunes the loaded decoder itself: no new head
    head = None
    layout = "LM"
    predictions_file = "predictions.jsonl"
    needs = ()

    def label_meanings(self, labels) -> dict:
        return {}

    def read_train(self, cfg) -> list[list[dict]]:
        return read_conversations(cfg.data)

    def read_eval(self, cfg, path, labels) -> list[list[dict]]:
        return read_conversations(path)

    def label_names(self, train) -> None:
        return None

    def encode(self, examples, tokenizer, max_len: int, labels, cfg) -> tuple[list[Item], dict]:
        if not tokenizer.chat_template:
            raise DataError("this model's tokenizer has no chat template; fine-tune a chat model (its "
                            "tokenizer_config.json or GGUF carries one)")
        items, cut = [], 0
        for messages in examples:
            item, was_cut = encode_conversation(tokenizer, tokenizer.chat_template, messages, max_len)
            if all(t == -100 for t in item.labels):
                continue                          # its assistant turns lie past max_len: nothing to learn
            items.append(item)
            cut += was_cut
        return items, {"truncated": cut, "dropped": len(examples) - len(items)}

    def evaluate(self, model, examples, items, cfg) -> tuple[dict, list[dict]]:
        """Greedy replies to each conversation's last prompt against its last assistant turn, and the
        teacher-forced accuracy of the scored tokens."""
        from ..conversation import chat
        records, hits = [], 0
        for messages in examples:
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            reference = messages[last]["content"]
            n_new = len(model.tokenizer.encode(reference)) + 8
            reply = chat(model, messages[:last], temperature=0, max_new_tokens=n_new)
            hits += reply.strip() == reference.strip()
            records.append({"messages": messages[:last], "reference": reference, "reply": reply})
        right = total = 0
        with torch.inference_mode():
            for item in items:
                batch = collate([item], "LM", 0)
                logits_BLV = model(batch["ids_BL"]).logits
                targets_BL = batch["targets_BL"]
                scored = targets_BL != -100
                right += int((logits_BLV.argmax(-1)[scored] == targets_BL[scored]).sum())
                total += int(scored.sum())
        scores = {"exact_match": hits / max(len(examples), 1), "token_accuracy": right / max(total, 1)}
        return scores, records

    def show(self, predictions: list[dict]) -> str:
        return "\n".join(r["reply"] for r in predictions)
