"""Fine-tuning an encoder on a task, on the same Trainer as pre-training (Devlin et al., 2019, sec. 4).

    --init DIR  (our MLM run or a Hugging Face BERT) ─> encoder weights + its tokenizer ─┐
    --init none (the baseline): WordPiece trained on the task's training text,           ├─> + new head
                                ModelConfig (the bert-finetune preset) randomly initialized ┘
        ─> RunParts(ready model, TaskBatches) ─> Trainer.fit (AdamW, schedule, --max-time, checkpoints,
           metrics.jsonl, exact resume) ─> evaluate on the eval file ─> DIR/eval.json + predictions

The task families live in ``qkv.tasks``; this module wires them to the trainer. The run directory's
config.json keeps the ``FinetuneConfig`` under "finetune", so ``qkv finetune --resume DIR`` and
``qkv evaluate DIR`` know the task, its files and options. Validation loss during training is measured on
``val_data`` (default: the eval file); it only draws the loss curve: nothing is selected on it, the
final model is the one evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..adapters import LoRAConfig, add_lora, save_adapter
from ..checkpoint import read_config
from ..config import ModelConfig, TrainConfig, build
from ..errors import CheckpointError, ConfigError
from ..family import Family
from ..loading import family_of
from ..models import GPT, MODEL_TYPES, GPTClassifier
from ..models.encoder import HEADS
from ..quant import apply_layout
from ..models.encoder import Encoder
from ..rundir import write_text_atomic
from ..runtime.inference import for_inference
from ..tasks import TASKS, get_task
from ..tasks.batches import TaskBatches, item_logits
from ..tokenizers import Tokenizer
from ..validation import check_fields
from .parts import RunParts, fill_vocab, train_tokenizer
from .pretrained import from_pretrained_encoder
from .distributed import is_sharded
from .trainer import Trainer

TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]   # one list of names: the registry's
REPORT_FILE = "eval.json"
ADAPTER_DIR = "adapter"                 # a --lora run's adapter in PEFT's format


@dataclass(frozen=True)
class FinetuneConfig:
    task: TaskName                          # sst2 | cola | upos | wnut17 | squad (encoders) | chat (a decoder)
    data: str                               # the training file (squad: a v1.1 JSON, split by article)
    init: str | None = None                 # the checkpoint to start from (chat: a decoder); None -> scratch
    eval_data: str | None = None            # scored at the end; squad: None -> the last n_eval_articles
    val_data: str | None = None             # validation loss during training; None -> the eval data
    max_seq_len: int | None = None          # tokens per input; None -> the model's max_len
    stride: int = 32                        # squad: context tokens shared by neighbouring windows
    max_answer_len: int = 30                # squad: the longest answer, in tokens
    n_eval_articles: int = 10               # squad without eval_data: articles held out for evaluation
    eval_batch_size: int = 64                # inputs per forward pass when scoring
    group_by_length: bool = True            # training batches of similar lengths: almost no padding
                                            # (random batches pad SST-2 / EWT to several times their tokens)
    lora: bool = False                      # LoRA: the base frozen, low-rank adapters (and the new head) trained;
                                            # DIR/adapter is the adapter alone in PEFT's format
    lora_rank: int = 8                      # the adapters' rank R
    lora_alpha: float = 16.0                # their delta is scaled by alpha / R
    lora_dropout: float = 0.05              # dropout on the adapters' input
    lora_targets: tuple[str, ...] = ()      # module names (PEFT's: q_proj,v_proj / query,value,dense); empty:
                                            # every attention projection and FFN matrix
    quantized: bool = False                 # QLoRA (task chat, with --lora): the base frozen in int8 / 4-bit (a
                                            # GGUF keeps its blocks, a float base becomes int8), adapters in float

    def __post_init__(self):
        if isinstance(self.lora_targets, list):     # config.json holds a JSON list
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        check_fields(self, {"max_seq_len": "[3, inf)", "stride": "[0, inf)", "max_answer_len": "[1, inf)",
                            "n_eval_articles": "[1, inf)", "eval_batch_size": "[1, inf)"})
        LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout)   # rank <= 0 and the like: said now
        if self.quantized and not (self.lora and self.task == "chat"):
            raise ConfigError("--quantized trains LoRA adapters on a frozen int8 / 4-bit decoder (QLoRA): use it with "
                              "--task chat --lora")
        if self.eval_data is None and self.task != "squad":
            raise ConfigError(f"task {self.task!r} needs --eval-data FILE to score (e.g. the GLUE dev set "
                              f"sst2/test.tsv, cola/in_domain_dev.tsv, en_ewt-ud-test.conllu, "
                              f"emerging.test.annotated)")

    def lora_config(self) -> LoRAConfig | None:
        """The adapters a --lora run puts on its model (None: full fine-tuning)."""
        if not self.lora:
            return None
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))


def finetune_config(directory: str | Path) -> FinetuneConfig:
    """The FinetuneConfig saved in a fine-tuned run's config.json."""
    config = read_config(directory)
    if "finetune" not in config:
        raise CheckpointError(f"{directory} is not a `qkv finetune` run (config.json has no 'finetune' entry); "
                              f"pass --task to say which task its model does")
    return build(FinetuneConfig, config["finetune"], f"{Path(directory) / 'config.json'}")


def load_finetuned(directory: str | Path, task: str | None = None, data: str | None = None):
    """(model, FinetuneConfig) of a fine-tuned checkpoint; ``task`` names it for models saved without one."""
    from ..loading import load
    config = read_config(directory)
    if "finetune" in config:
        fcfg = finetune_config(directory)
        if task is not None and task != fcfg.task:
            raise ConfigError(f"{directory} was fine-tuned for {fcfg.task!r}, not {task!r}; drop --task")
    elif task is not None:
        fcfg = build(FinetuneConfig, {"task": task, "data": data or "unknown", "eval_data": data or "unknown"},
                     "--task")
    else:
        fcfg = finetune_config(directory)               # raises: says to pass --task
    model = load(directory)
    head = get_task(fcfg.task).head
    decoder_classifier = head == "classify" and isinstance(model, GPTClassifier)
    if head is not None and type(model) is not HEADS[head] and not decoder_classifier:
        raise CheckpointError(f"{directory} holds a {model.model_type!r} model but task {fcfg.task!r} needs a "
                              f"{HEADS[head].model_type!r} one; fine-tune it with `qkv finetune`")
    if model.tokenizer is None:
        raise CheckpointError(f"{directory} has no tokenizer files; copy the encoder's tokenizer.json into it")
    return model, fcfg


def input_length(fcfg: FinetuneConfig, model) -> int:
    """The tokens one example is cut to: ``max_seq_len``, else the model's context."""
    if fcfg.max_seq_len is not None and fcfg.max_seq_len > model.cfg.max_len:
        raise ConfigError(f"max_seq_len={fcfg.max_seq_len} exceeds the model's {model.cfg.max_len} positions; "
                          f"lower it")
    return fcfg.max_seq_len or model.cfg.max_len


def new_model(fcfg: FinetuneConfig, model_cfg: ModelConfig, train_cfg: TrainConfig):
    """The model a new run starts from: ``init``'s encoder (or a fresh one) with a new head; a decoder with a
    classifier on its last token (sst2, cola), or the decoder itself (chat)."""
    spec = get_task(fcfg.task)
    from_decoder = spec.head is None or (spec.head == "classify" and fcfg.init is not None
                                         and family_of(fcfg.init) == Family.DECODER)
    decoder = pretrained_decoder(fcfg) if from_decoder else None      # a damaged checkpoint: said first
    train = spec.read_train(fcfg)
    labels = spec.label_names(train)
    torch.manual_seed(train_cfg.seed)                    # the new head's init (and a scratch trunk's)
    if spec.head is None:                                # a decoder task: the loaded model learns as it is
        return with_lora(decoder, fcfg.lora_config(), new_head=False)
    if decoder is not None:          # it classifies from its last token (transformers' *ForSequenceClassification)
        return with_lora(GPTClassifier.from_decoder(decoder, labels), fcfg.lora_config())
    if fcfg.init is not None:
        return with_lora(from_pretrained_encoder(fcfg.init, spec.head, labels), fcfg.lora_config())
    if fcfg.lora:
        raise ConfigError("--lora adapts a pre-trained model; pass --init DIR (a from-scratch model trains whole)")
    if train_cfg.tokenizer != "wordpiece":
        raise ConfigError("a from-scratch encoder needs BERT's [CLS]/[SEP] template: use --tokenizer wordpiece")
    tokenizer = train_tokenizer(spec.texts(train), train_cfg)
    return from_pretrained_encoder(Encoder(fill_vocab(model_cfg, "vocab_size", tokenizer)), spec.head, labels,
                                   tokenizer)


def pretrained_decoder(fcfg: FinetuneConfig):
    """The decoder ``init`` names (a qkv run, a Hugging Face directory, a GGUF: float weights), to train."""
    from ..loading import load
    if fcfg.init is None:
        raise ConfigError(f"task {fcfg.task!r} fine-tunes a pre-trained decoder: pass --init DIR (a chat model)")
    model = load(fcfg.init, quantized=fcfg.quantized).train()
    if not isinstance(model, GPT):
        raise CheckpointError(f"{fcfg.init} holds a {model.model_type!r} model; task {fcfg.task!r} needs a decoder")
    return model


def with_lora(model, cfg: LoRAConfig | None, new_head: bool = True):
    """``model`` with LoRA adapters (base frozen); a task's new head stays trainable: it starts from nothing."""
    if cfg is None:
        return model
    add_lora(model, cfg)
    for p in model.head.parameters() if new_head else ():
        p.requires_grad_(True)
    return model


def build_finetune_task(fcfg: FinetuneConfig, train_cfg: TrainConfig, model) -> tuple[RunParts, dict]:
    """The trainer's RunParts around a ready model (``model.tokenizer`` set), and notes on the training data."""
    spec = get_task(fcfg.task)
    if train_cfg.label_smoothing:
        raise ConfigError("fine-tuning heads score without label smoothing; drop --label-smoothing")
    tokenizer = model.tokenizer
    if spec.head is not None and not isinstance(model, GPT) and (
            tokenizer.cls_id is None or tokenizer.encode_for_model("a").ids[:1] != [tokenizer.cls_id]):
        raise CheckpointError("the tokenizer does not wrap text in [CLS] ... [SEP]; fine-tune from an encoder "
                              "with a WordPiece tokenizer (qkv train --preset bert-mlm, or a BERT directory)")
    max_len, labels = input_length(fcfg, model), getattr(model, "labels", None)
    train_items, notes = spec.encode(spec.read_train(fcfg), tokenizer, max_len, labels, fcfg)
    val = spec.read_eval(fcfg, fcfg.val_data or fcfg.eval_data, labels)
    val_items, _ = spec.encode(val, tokenizer, max_len, labels, fcfg)
    data = TaskBatches(train_items, val_items, spec.layout, tokenizer.pad_id or 0, train_cfg.seed,
                       fcfg.group_by_length)
    paths = {name: str(Path(value).resolve()) for name in ("data", "init", "eval_data", "val_data")
             if (value := getattr(fcfg, name)) is not None}              # resumable from any working directory
    names = spec.label_meanings(labels)                  # stored, so that predict can show "positive", not "1"
    lora = fcfg.lora_config()               # config.json's "lora": qkv.load puts the adapters on before the weights
    extra = {**({"label_names": names} if names else {}), **({"lora": dataclasses.asdict(lora)} if lora else {})}
    task = RunParts(model.cfg, type(model), tokenizer, data, model=model,
                    config={"finetune": {**dataclasses.asdict(fcfg), **paths}, **extra})
    return task, {"examples": len(train_items), **notes}


def resume_finetune(run_dir: str | Path, train_overrides: dict | None = None, log=print) -> Trainer:
    """Continue an interrupted fine-tuning run exactly (weights, optimizer, step, RNG, data position)."""
    fcfg, config = finetune_config(run_dir), read_config(run_dir)
    cls = MODEL_TYPES.get(config["model_type"])
    if cls is None:
        raise CheckpointError(f"{run_dir}: model_type {config['model_type']!r} is not a fine-tuning model")
    cfg = build(ModelConfig, config["model"], f"{Path(run_dir) / 'config.json'}")
    model = cls.from_config(cfg, config) if hasattr(cls, "from_config") else cls(cfg)
    if "quantization" in config:                         # a QLoRA run: its int8 / 4-bit modules first
        apply_layout(model, config["quantization"])
    model = with_lora(model, fcfg.lora_config(), get_task(fcfg.task).head is not None)   # saved with the weights
    model.tokenizer = Tokenizer.from_dir(run_dir)
    if model.tokenizer is None:
        raise CheckpointError(f"{run_dir} has no tokenizer.json; the run cannot be resumed")
    train = build(TrainConfig, {**config.get("train", {}), **(train_overrides or {})}, "the resumed run's options")
    task, _ = build_finetune_task(fcfg, train, model)
    return Trainer.resume(run_dir, train_overrides, log, parts=task)


def evaluate(model, fcfg: FinetuneConfig, path: str | None) -> tuple[dict, object]:
    """(report, predictions) of ``model`` on the eval file ``path`` (squad: None -> the held-out articles)."""
    spec = get_task(fcfg.task)
    labels = getattr(model, "labels", None)
    start = time.perf_counter()
    examples = spec.read_eval(fcfg, path, labels)
    items, notes = spec.encode(examples, model.tokenizer, input_length(fcfg, model), labels, fcfg)
    if spec.head is None:                                # a decoder task scores its own replies
        was_training = model.training
        try:
            scores, predictions = spec.evaluate(model.eval(), examples, items, fcfg)
        finally:
            model.train(was_training)
        return _report(fcfg, spec, scores, examples, notes, path, start), predictions
    logits = item_logits(model, items, model.tokenizer.pad_id or 0, fcfg.eval_batch_size)
    predictions = spec.predict(examples, items, logits, labels, fcfg)
    return _report(fcfg, spec, spec.score(predictions, examples), examples, notes, path, start), predictions


def _report(fcfg: FinetuneConfig, spec, scores: dict, examples, notes: dict, path, start: float) -> dict:
    return {"task": fcfg.task, "metric": spec.metric, "score": scores[spec.metric], **scores,
            "examples": len(examples), **notes, "eval_data": str(path or fcfg.data),
            "eval_s": round(time.perf_counter() - start, 3)}


def write_outputs(directory: str | Path, fcfg: FinetuneConfig, report: dict, predictions) -> None:
    """DIR/eval.json and DIR/predictions.json(l), each written to a temp file and renamed into place."""
    spec = get_task(fcfg.task)
    lines = json.dumps(predictions, ensure_ascii=False) + "\n" if isinstance(predictions, dict) \
        else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions)
    for name, text in ((spec.predictions_file, lines), (REPORT_FILE, json.dumps(report, indent=2) + "\n")):
        write_text_atomic(Path(directory) / name, text)


def finish(trainer: Trainer, fcfg: FinetuneConfig) -> dict:
    """Score the trained model on the eval data and write the report and predictions into the run (rank 0
    alone, under torchrun). A model on a GPU or sharded by FSDP2 is scored from the final checkpoint, read
    back on the CPU (the scoring code runs on CPU, and a sharded model would need every rank)."""
    model = trainer.model
    if is_sharded(model) or trainer.world.device.type != "cpu":
        model = for_inference(load_finetuned(trainer.out_dir)[0])
    report, predictions = evaluate(model, fcfg, fcfg.eval_data)
    report.update(step=trainer.step, train_s=round(trainer.elapsed, 3), init=fcfg.init)
    write_outputs(trainer.out_dir, fcfg, report, predictions)
    if fcfg.lora:                                        # the adapter alone, for PEFT or qkv.load(base, adapter=)
        save_adapter(trainer.model, Path(trainer.out_dir) / ADAPTER_DIR, base=fcfg.init)
        report["adapter"] = str(Path(trainer.out_dir) / ADAPTER_DIR)
    return report
