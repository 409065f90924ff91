"""A qkv model written as a Hugging Face directory that ``transformers.AutoModel*.from_pretrained`` reads.

    OUT/config.json              the class ``export_axes`` picks for the model's axes (GPT2LMHeadModel,
                                 GPTNeoXForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM,
                                 their ...ForSequenceClassification for a decoder classifier, BertModel /
                                 BertForMaskedLM / ...ForSequenceClassification / ...)
    OUT/model.safetensors        the tensors under that class's names (``export_hf_decoder``, ``export_hf_bert``)
    OUT/tokenizer.json           the tokenizer, as qkv stores it (char-level, byte-level BPE or WordPiece)
    OUT/tokenizer_config.json    PreTrainedTokenizerFast, its special tokens, context, chat template, add_bos
    OUT/generation_config.json   decoders: bos / eos (every id that ends a reply) / pad, and the sampling
                                 defaults the source's files recommended

``AutoTokenizer`` then encodes text to qkv's ids: ``encode(text)`` with ``add_special_tokens=False``, and with
them a decoder's prompt ids (bos first when the model wants one: a post-processor that adds it is written
into tokenizer.json) or an encoder's ``[CLS] ... [SEP]``. Float32 throughout: the weights as qkv holds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer as Backend
from tokenizers import processors

from ..errors import CheckpointError
from ..models.decoder import GPT
from ..models.encoder import Encoder
from ..rundir import atomic_dir
from ..tokenizers import Tokenizer
from . import export_hf_bert, export_hf_decoder
from .export_axes import check_encoder, decoder_arch

SPECIAL_NAMES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")


def hf_class(model) -> str:
    """The transformers class ``model`` exports as; raises naming the axis no class has."""
    if isinstance(model, Encoder):
        check_encoder(model.cfg)
        return export_hf_bert.bert_class(model)[0]
    return export_hf_decoder.hf_class(model, decoder_arch(model.cfg))


def save_hf(model, directory: str | Path, tokenizer: Tokenizer | None = None) -> str:
    """Write ``model`` as a Hugging Face directory at ``directory``, atomically; returns the class name.

    An earlier model directory there (one with a config.json) or an empty one is replaced whole; a folder of
    other files is refused (``qkv export`` applies ``qkv.rundir``'s stricter rules first).

    >>> save_hf(qkv.load("runs/books"), "runs/books-hf")                 # doctest: +SKIP
    'GPT2LMHeadModel'
    """
    target = Path(directory)
    if target.exists() and not ((target / "config.json").is_file() or (target.is_dir() and not any(target.iterdir()))):
        raise CheckpointError(f"{target} exists and is not a model directory, and saving replaces it as a whole; "
                              f"choose a new or empty directory")
    hf_class(model)                                    # refused by name before any file is made
    with atomic_dir(target, carry_over=False) as tmp:
        name = write_hf_files(tmp, model, tokenizer)
    return name


def _ids(tokenizer: Tokenizer | None) -> dict:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


def write_hf_files(directory: Path, model, tokenizer: Tokenizer | None = None) -> str:
    """Write the Hugging Face files of ``model`` into the (temp) ``directory``; returns the class name."""
    name = hf_class(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if isinstance(model, GPT):
        arch = decoder_arch(model.cfg)
        config, tensors = export_hf_decoder.config_json(model, arch, _ids(tokenizer)), \
            export_hf_decoder.state_dict(model, arch)
    else:
        config, tensors = export_hf_bert.config_json(model, _ids(tokenizer)), export_hf_bert.state_dict(model)
    _write_json(directory / "config.json", config)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        write_tokenizer_files(directory, tokenizer, model.cfg.max_len)
    if type(model) is GPT:                             # a decoder that generates (not a classifier)
        _write_json(directory / "generation_config.json",
                    generation_config(tokenizer, getattr(model, "generation_defaults", None) or {}))
    return name


def write_tokenizer_files(directory: Path, tokenizer: Tokenizer, max_len: int) -> None:
    """tokenizer.json and a tokenizer_config.json transformers reads as qkv does (see the module docstring)."""
    backend = tokenizer.backend
    name = {key: backend.id_to_token(getattr(tokenizer, f"{key}_id")) for key in SPECIAL_NAMES
            if getattr(tokenizer, f"{key}_id", None) is not None}
    if tokenizer.add_bos and "bos" in name and backend.post_processor is None:
        backend = Backend.from_str(backend.to_str())          # a copy: the model's tokenizer stays as it was
        backend.post_processor = processors.TemplateProcessing(
            single=f"{name['bos']} $A", pair=f"{name['bos']} $A $B", special_tokens=[(name["bos"], tokenizer.bos_id)])
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, **{f"{key}_token": token for key, token in name.items()}}
    if tokenizer.add_bos:
        config["add_bos_token"] = True
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    _write_json(directory / "tokenizer_config.json", config)


def generation_config(tokenizer: Tokenizer | None, defaults: dict) -> dict:
    """generation_config.json: the ids that start, end and pad, and the recommended sampling (if any)."""
    config = {k: v for k, v in _ids(tokenizer).items() if v is not None}
    if tokenizer is not None and len(tokenizer.stop_ids) > 1:
        config["eos_token_id"] = list(tokenizer.stop_ids)      # every id that ends a reply, eos first
    if defaults:
        config.update(defaults, do_sample=True)
    return config


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
