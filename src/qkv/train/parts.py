"""The parts a training run is built from: each task (``TrainConfig.task``) turns the configs into a
tokenizer, batches and a model, the ``RunParts`` the trainer takes.

    task        objective   data                                   model            a batch holds
    lm          causal      text -> LMStream                       GPT              ids, targets
    lm          prefix      text -> LMStream(prefix=True)          GPT (prefix)     ids, targets, prefix_len
    lm          span        text -> SpanCorruption                 EncoderDecoder   src, ids, targets
    lm          mlm         text lines -> MaskedLMStream           BERT             ids, labels, key mask, types
    translate   -           DIR/{train,val}.{src,tgt} -> pairs     EncoderDecoder   src, ids, targets
    summarize   -           DIR/{train,dev}.jsonl -> pairs         EncoderDecoder   src, ids, targets

A batch is the model's keyword arguments, so the trainer calls ``model(**batch)`` for every task.
Fine-tuning tasks (``qkv.train.finetune``) and image classification (``qkv.train.images``) build their own
``RunParts`` with a ready model and hand them over.
Tokenizers are trained on the training split only; a resumed run passes the saved ones back in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig, TrainConfig
from ..data.lm import LMStream
from ..data.mlm import MaskedLMStream
from ..data.pairs import PairBatches, read_parallel, read_summaries
from ..data.span_corruption import SpanCorruption, sentinel_names, spans_needed
from ..data.text import read_text
from ..errors import ConfigError, DataError
from ..models import BERT, GPT, EncoderDecoder
from ..tokenizers import Tokenizer
from ..translate import special_ids
from .distributed import World

SEQ2SEQ_SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass
class RunParts:
    model_cfg: ModelConfig             # with vocab sizes filled in from the tokenizers
    model_cls: type
    tokenizer: Tokenizer               # the (target) tokenizer
    data: object                       # .batch(split, B) -> dict, .val_batches(B, n), .generator
    src_tokenizer: Tokenizer | None = None     # only when source and target vocabularies are separate
    model: object | None = None        # a ready model (fine-tuning from a checkpoint); None -> model_cls(model_cfg)
    config: dict = dataclasses.field(default_factory=dict)   # extra config.json entries (a fine-tuning task's)


def train_tokenizer(texts: list[str], cfg: TrainConfig, specials: tuple[str, ...] = ()) -> Tokenizer:
    """A tokenizer trained on ``texts`` (under torchrun: by rank 0, for every rank)."""
    return World.from_env().main_tokenizer(lambda: _train_tokenizer(texts, cfg, specials))


def _train_tokenizer(texts: list[str], cfg: TrainConfig, specials: tuple[str, ...]) -> Tokenizer:
    if cfg.tokenizer == "char":
        return Tokenizer.train_char("".join(texts), special_tokens=specials)
    if cfg.tokenizer == "wordpiece":
        return Tokenizer.train_wordpiece(texts, vocab_size=cfg.bpe_vocab_size)
    chunks = (t[i:i + 100_000] for t in texts for i in range(0, len(t), 100_000))
    return Tokenizer.train_bpe(chunks, vocab_size=cfg.bpe_vocab_size, special_tokens=specials or ("<eos>",))


def fill_vocab(model_cfg: ModelConfig, field: str, tokenizer: Tokenizer) -> ModelConfig:
    """Set ``field`` from the tokenizer when unset; a user value is never overwritten, only checked."""
    value = getattr(model_cfg, field)
    if value is None:
        return dataclasses.replace(model_cfg, **{field: tokenizer.vocab_size})
    if value < tokenizer.vocab_size:
        raise ConfigError(f"{field}={value} is smaller than the tokenizer's {tokenizer.vocab_size} tokens; "
                          f"raise it or leave it unset")
    return model_cfg


def build_parts(model_cfg: ModelConfig, cfg: TrainConfig, tokenizer: Tokenizer | None = None,
                src_tokenizer: Tokenizer | None = None) -> RunParts:
    if cfg.task == "lm" and cfg.objective in ("causal", "prefix"):
        return _language_model(model_cfg, cfg, tokenizer)
    if cfg.task == "lm" and cfg.objective == "span":
        return _span_corruption(model_cfg, cfg, tokenizer)
    if cfg.task == "lm" and cfg.objective == "mlm":
        return _masked_lm(model_cfg, cfg, tokenizer)
    return _pairs(model_cfg, cfg, tokenizer, src_tokenizer)


def _language_model(model_cfg, cfg, tokenizer) -> RunParts:
    prefix = cfg.objective == "prefix"
    if prefix and model_cfg.mask != "prefix":
        raise ConfigError("objective 'prefix' needs the prefix attention mask: add --mask prefix")
    text = read_text(cfg.data)
    tokenizer = tokenizer or train_tokenizer([text], cfg)
    model_cfg = fill_vocab(model_cfg, "vocab_size", tokenizer)
    data = LMStream(tokenizer.encode(text), model_cfg.max_len, cfg.val_fraction, cfg.seed, prefix=prefix)
    return RunParts(model_cfg, GPT, tokenizer, data)


def _needs_seq2seq_specials(cfg, tokenizer, what: str) -> None:
    """WordPiece brings BERT's [CLS]/[SEP], not the <pad> <bos> <eos> (and sentinels) an encoder-decoder needs."""
    if tokenizer is None and cfg.tokenizer == "wordpiece":
        raise ConfigError(f"{what} trains an encoder-decoder, whose vocabulary needs <pad> <bos> <eos>: use "
                          f"--tokenizer bpe (or char)")


def _span_corruption(model_cfg, cfg, tokenizer) -> RunParts:
    _needs_seq2seq_specials(cfg, tokenizer, "objective 'span'")
    text = read_text(cfg.data)
    _, n_spans = spans_needed(model_cfg.max_len)
    sentinels = sentinel_names(n_spans)
    tokenizer = tokenizer or train_tokenizer([text], cfg, SEQ2SEQ_SPECIALS + tuple(sentinels))
    bos, eos, pad = special_ids(tokenizer)
    sentinel_ids = [tokenizer.backend.token_to_id(s) for s in sentinels]
    if None in sentinel_ids:
        raise ConfigError(f"the tokenizer lacks the sentinels {sentinels[0]}..{sentinels[-1]}; retrain it")
    model_cfg = fill_vocab(model_cfg, "vocab_size", tokenizer)
    data = SpanCorruption(tokenizer.encode(text), model_cfg.max_len, cfg.val_fraction, sentinel_ids,
                          pad, bos, eos, cfg.seed)
    return RunParts(model_cfg, EncoderDecoder, tokenizer, data)


def _masked_lm(model_cfg, cfg, tokenizer) -> RunParts:
    hint = "or start from --preset bert-mlm"
    if tokenizer is None and cfg.tokenizer != "wordpiece":
        raise ConfigError(f"objective 'mlm' needs BERT's [CLS] [SEP] [MASK] tokens: add --tokenizer wordpiece {hint}")
    if model_cfg.mask != "bidirectional" or model_cfg.type_vocab_size < 2:
        raise ConfigError(f"objective 'mlm' trains an encoder that reads [CLS] A [SEP] B [SEP] both ways: add "
                          f"--mask bidirectional --type-vocab-size 2 {hint}")
    if cfg.label_smoothing:
        raise ConfigError("objective 'mlm' scores masked tokens without label smoothing; drop --label-smoothing")
    lines = [line for line in read_text(cfg.data).splitlines() if line.strip()]
    tokenizer = tokenizer or train_tokenizer(lines, cfg)
    ids = {name: getattr(tokenizer, f"{name}_id") for name in ("cls", "sep", "pad", "mask")}
    if None in ids.values():
        raise ConfigError(f"the tokenizer lacks {[n for n, i in ids.items() if i is None]} tokens; MLM needs a "
                          f"WordPiece tokenizer with [CLS] [SEP] [PAD] [MASK]")
    model_cfg = fill_vocab(model_cfg, "vocab_size", tokenizer)
    specials = (set(ids.values()) | {tokenizer.unk_id}) - {None}
    data = MaskedLMStream(tokenizer.encode_batch(lines), model_cfg.max_len, cfg.val_fraction, cfg.seed,
                          **{f"{k}_id": v for k, v in ids.items()}, vocab_size=tokenizer.vocab_size,
                          special_ids=specials)
    return RunParts(model_cfg, BERT, tokenizer, data)


def read_pair_splits(cfg: TrainConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, val) text pairs. Translation reads DIR/train.<src>|<tgt> and DIR/val.* (or holds out the last
    val_fraction of train); summarization reads DIR/train.jsonl and DIR/dev.jsonl (first reference only)."""
    if cfg.data is None:
        raise ConfigError(f"task {cfg.task!r} needs --data DIR (e.g. ../shared/data/multi30k or .../scitldr)")
    d = Path(cfg.data)
    if cfg.task == "translate":
        if not cfg.src_lang or not cfg.tgt_lang:
            raise ConfigError("task 'translate' needs --src-lang and --tgt-lang (the file suffixes, e.g. de en)")
        train = read_parallel(d / f"train.{cfg.src_lang}", d / f"train.{cfg.tgt_lang}")
        if (d / f"val.{cfg.src_lang}").is_file():
            return train, read_parallel(d / f"val.{cfg.src_lang}", d / f"val.{cfg.tgt_lang}")
    else:
        train = [(doc, refs[0]) for doc, refs in read_summaries(d / "train.jsonl")]
        if (d / "dev.jsonl").is_file():
            return train, [(doc, refs[0]) for doc, refs in read_summaries(d / "dev.jsonl")]
    n_val = max(1, int(len(train) * cfg.val_fraction))
    return train[:-n_val], train[-n_val:]


def _pairs(model_cfg, cfg, tokenizer, src_tokenizer) -> RunParts:
    _needs_seq2seq_specials(cfg, tokenizer, f"task {cfg.task!r}")
    train, val = read_pair_splits(cfg)
    if tokenizer is None:
        if cfg.joint_vocab:
            tokenizer = train_tokenizer([s for s, _ in train] + [t for _, t in train], cfg, SEQ2SEQ_SPECIALS)
        else:
            tokenizer = train_tokenizer([t for _, t in train], cfg, SEQ2SEQ_SPECIALS)
            src_tokenizer = train_tokenizer([s for s, _ in train], cfg, SEQ2SEQ_SPECIALS)
    bos, eos, pad = special_ids(tokenizer)
    model_cfg = fill_vocab(model_cfg, "vocab_size", tokenizer)
    if src_tokenizer is not None:
        model_cfg = fill_vocab(model_cfg, "src_vocab_size", src_tokenizer)
    elif model_cfg.src_vocab_size is not None:
        raise ConfigError("src_vocab_size is set but the vocabulary is joint; drop it or pass --no-joint-vocab")
    truncate = cfg.task == "summarize"             # long abstracts are cut to fit; a long sentence is an error
    encoded = {name: _encode_pairs(split, src_tokenizer or tokenizer, tokenizer, model_cfg.max_len, truncate, name)
               for name, split in (("train", train), ("val", val))}
    data = PairBatches(encoded["train"], encoded["val"], pad, bos, eos, cfg.seed)
    return RunParts(model_cfg, EncoderDecoder, tokenizer, data, src_tokenizer)


def _encode_pairs(pairs, src_tok: Tokenizer, tgt_tok: Tokenizer, max_len: int, truncate: bool, split: str):
    sources = src_tok.encode_batch([s for s, _ in pairs])
    targets = tgt_tok.encode_batch([t for _, t in pairs])
    out = []
    for i, (src, tgt) in enumerate(zip(sources, targets), start=1):
        if len(src) > max_len and truncate:
            src = src[:max_len]
        if len(tgt) + 1 > max_len and truncate:
            tgt = tgt[:max_len - 1]
        if len(src) > max_len or len(tgt) + 1 > max_len:
            raise DataError(f"{split} pair {i} has {len(src)} source / {len(tgt)} target tokens but the model has "
                            f"{max_len} positions (the target also needs <bos>); raise --max-len or drop the pair")
        out.append((src, tgt))
    return out
