"""Typed, frozen configuration: one field per variant axis, derived values as properties.

``ModelConfig`` describes an architecture, ``TrainConfig`` a training run. Named presets live in
``qkv.presets``; ``resolve`` merges preset -> config file -> explicit overrides and validates the result.
The CLI builds its flags from these dataclasses (see ``qkv.cli.flags``), so there is one list of options.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .presets import PRESETS
from .validation import check_fields


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int | None = None           # V; None -> set from the tokenizer by `qkv train`
    max_len: int = 256                      # context length: the most positions a sequence may use
    n_layers: int = 4                       # blocks in the stack (the decoder's, for an encoder-decoder)
    d_model: int = 256                      # C
    n_heads: int = 4                        # H
    n_kv_heads: int | None = None           # G; None -> MHA, 1 -> MQA
    d_head: int | None = None               # D; None -> d_model // n_heads (some Llama-family models differ)
    d_ff: int | None = None                 # F; None -> 4 * d_model (8/3 * d_model for SwiGLU, same params)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
                                            # LayerNorm (Ba et al.) or RMSNorm (Zhang & Sennrich; Llama)
    norm_eps: float = 1e-5                  # added to the variance inside every norm
    norm_offset: float = 0.0                # RMSNorm scales by (norm_offset + w): Gemma's 1.0 stores w around 0
    norm_placement: Literal["pre", "post", "sandwich"] = "pre"
                                            # pre: x + f(norm(x)) (GPT-2, Llama); post: norm(x + f(x)) (the 2017
                                            # paper, BERT); sandwich: x + norm'(f(norm(x))) (Gemma 2/3)
    mlp: Literal["relu", "gelu", "gelu_tanh", "swiglu", "geglu"] = "gelu"
                                            # the feed-forward sublayer's activation (swiglu, geglu: gated by SiLU or
                                            # GELU-tanh, three matrices)
    pos: Literal["learned", "sinusoidal", "rope", "alibi"] = "learned"
                                            # how positions enter: added embeddings (learned, sinusoidal), rotated
                                            # q/k (rope), score bias (alibi)
    pos_base: float = 10000.0               # the N in sin(pos / N^(2i/d)) for sinusoidal and RoPE
    mask: Literal["causal", "bidirectional", "prefix"] = "causal"
                                            # which keys a query sees: the past (causal), all (bidirectional), or a
                                            # prefix + the past
    window: int | None = None               # sliding-window width; None = full attention
    global_every: int | None = None         # with a window: every N-th layer (the N-th, 2N-th, ...) sees every key
                                            # and the others the window (Gemma 2: 2, Gemma 3: 6); None: all windowed
    pos_base_local: float | None = None     # RoPE base of the windowed layers (Gemma 3: 10000); None: pos_base
    attn_scale: float | None = None         # attention scores are q.k x attn_scale; None: 1/sqrt(head_dim)
                                            # (Gemma: query_pre_attn_scalar^-0.5)
    attn_softcap: float | None = None       # scores become c * tanh(scores / c) before the mask (Gemma 2: 50)
    logit_softcap: float | None = None      # output logits become c * tanh(logits / c) (Gemma 2: 30)
    bias: bool = True                       # biases in Linear layers (GPT-2: yes, LLaMA: no)
    qkv_bias: bool | None = None            # biases on the q/k/v projections alone; None -> as ``bias``
                                            # (Qwen2: q/k/v biased, every other Linear not)
    qk_norm: bool = False                   # a norm (``norm``, over D) on each head's queries and keys before RoPE:
                                            # keeps attention logits bounded (Qwen3, Gemma 3)
    tie_embeddings: bool = True             # output head shares the token embedding matrix
    dropout: float = 0.0                    # dropout rate on embeddings, attention probabilities and residual
                                            # branches
    type_vocab_size: int = 0                # segment (token type) embeddings, BERT's A/B; 0 = none
    embed_norm: bool = False                # a norm right after the embeddings (BERT)
    embed_scale: bool = False               # token embeddings x sqrt(d_model), initialized N(0, 1/d_model): the
                                            # original Transformer's recipe (sec. 3.4), which keeps tokens on the
                                            # same scale as sinusoidal positions
    n_encoder_layers: int | None = None     # encoder-decoder only; None -> n_layers
    src_vocab_size: int | None = None       # encoder-decoder only; None -> one joint vocabulary, one embedding

    def __post_init__(self):
        check_fields(self, {"vocab_size": "[1, inf)", "max_len": "[1, inf)", "n_layers": "[1, inf)",
                            "d_model": "[1, inf)", "n_heads": "[1, inf)", "n_kv_heads": "[1, inf)",
                            "d_head": "[1, inf)", "d_ff": "[1, inf)", "norm_eps": "(0, inf)", "pos_base": "(1, inf)",
                            "window": "[1, inf)", "dropout": "[0, 1)", "type_vocab_size": "[0, inf)",
                            "n_encoder_layers": "[1, inf)", "src_vocab_size": "[1, inf)", "global_every": "[1, inf)",
                            "pos_base_local": "(1, inf)", "attn_scale": "(0, inf)", "attn_softcap": "(0, inf)",
                            "logit_softcap": "(0, inf)"})
        self._check_gemma_axes()
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} "
                              f"(or set d_head, the per-head width)")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}; change d_model, n_heads or d_head")
        if self.pos == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even d_model, got {self.d_model}")

    def _check_gemma_axes(self) -> None:
        if self.norm_offset and self.norm != "rmsnorm":
            raise ConfigError(f"norm_offset={self.norm_offset} scales RMSNorm only; set norm='rmsnorm' or "
                              f"norm_offset=0")
        if self.global_every is not None and self.window is None:
            raise ConfigError(f"global_every={self.global_every} picks the layers that skip the window, but "
                              f"window is None; set window or leave global_every unset")
        if self.pos_base_local is not None and (self.pos != "rope" or self.window is None):
            raise ConfigError(f"pos_base_local={self.pos_base_local} is the RoPE base of windowed layers; it needs "
                              f"pos='rope' and a window")

    def layer_window(self, i: int) -> int | None:
        """The window of layer i (None: it sees every key)."""
        if self.window is None or (self.global_every is not None and (i + 1) % self.global_every == 0):
            return None
        return self.window

    @property
    def kv_heads(self) -> int:              # G
        return self.n_kv_heads or self.n_heads

    @property
    def encoder_layers(self) -> int:
        return self.n_encoder_layers or self.n_layers

    @property
    def head_dim(self) -> int:              # D
        return self.d_head or self.d_model // self.n_heads

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def ffn_dim(self) -> int:               # F
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp in ("swiglu", "geglu"):   # three matrices instead of two: keep the parameter count of 4*C
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model


@dataclass(frozen=True)
class TrainConfig:
    task: Literal["lm", "translate", "summarize", "image-classification"] = "lm"
                                            # what the data is (see qkv.train.parts; images: qkv.train.images)
    objective: Literal["causal", "prefix", "mlm", "span"] = "causal"   # task=lm: how text teaches itself
    data: str | None = None                 # lm: text file or folder of .txt files (None -> bundled shakespeare);
                                            # translate: folder of train.<lang>/val.<lang>; summarize: folder of
                                            # train.jsonl/dev.jsonl
    src_lang: str | None = None             # translate: file suffix of the source side, e.g. de
    tgt_lang: str | None = None             # translate: file suffix of the target side, e.g. en
    tokenizer: Literal["char", "bpe", "wordpiece"] = "char"
                                            # char: one token per character; bpe: byte-level BPE; wordpiece: BERT's
    bpe_vocab_size: int = 4096              # vocabulary size for tokenizer=bpe or wordpiece
    joint_vocab: bool = True                # translate/summarize: one vocabulary (and embedding) for both sides
    label_smoothing: float = 0.0            # 0.1 in the original Transformer
    schedule: Literal["cosine", "inverse_sqrt"] = "cosine"
                                            # after warmup: cosine to min_lr, or lr*sqrt(warmup/step)
    val_fraction: float = 0.1               # the last 10% of the text is the validation split
    batch_size: int = 16                    # sequences per optimizer step (per accumulation step with grad_accum)
    grad_accum: int = 1                     # batches whose gradients are summed before each optimizer step
    max_iters: int = 5000                   # optimizer steps; the run ends here (or at max_time, whichever comes
                                            # first)
    max_time: float | None = None           # seconds; stop (and finish the LR schedule) by then
    lr: float = 1e-3                        # peak learning rate of AdamW, reached after warmup
    min_lr_ratio: float = 0.1               # cosine decays to lr * min_lr_ratio
    warmup_iters: int = 100                 # steps of linear warmup from 0 to lr
    weight_decay: float = 0.1               # AdamW decoupled weight decay (matrices only; not norms, biases,
                                            # embeddings)
    beta1: float = 0.9                      # AdamW's first-moment (momentum) decay
    beta2: float = 0.99                     # AdamW's second-moment decay
    grad_clip: float = 1.0                  # 0 disables clipping
    eval_interval: int = 250                # steps between evaluations (each prints a line and saves the run)
    eval_iters: int = 20                    # validation batches per evaluation
    save_interval: int = 0                  # 0 -> save at every evaluation
    seed: int = 1337                        # seeds the initialization, dropout and the batch order
    out_dir: str = "runs/default"           # the run directory: must be new, empty, or the run being resumed
    overwrite: bool = False                 # replace out_dir when it holds an earlier qkv run (never other files)
    keep_best: bool = False                 # also keep the checkpoint with the lowest val_loss, in OUT/best
    compile: bool = False                   # torch.compile the model (helps on CPU for larger models)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
                                            # bf16: mixed precision (autocast), weights and AdamW stay fp32; faster
                                            # on CPUs with AVX-512 BF16, slower without (bench/README.md). auto:
                                            # bf16 where the CPU (AVX-512 BF16, AMX) or GPU computes it natively,
                                            # else fp32
    max_bad_steps: int = 5                  # a step whose loss or gradient norm is not finite is skipped; the run
                                            # stops after this many in a row
    fsdp: bool = False                      # under torchrun on CUDA: shard parameters, gradients and AdamW
                                            # moments over the GPUs (FSDP2) instead of replicating them (DDP)
    threads: int | None = None              # torch.set_num_threads; None: the cores other processes leave idle
                                            # (qkv.runtime), split between torchrun's processes on the machine
    tensorboard: bool = False               # also write TensorBoard event files to <out_dir>-tb/
    progress: bool = True                   # show a progress bar (only when output is a terminal)

    def __post_init__(self):
        check_fields(self, {"bpe_vocab_size": "[1, inf)", "val_fraction": "(0, 1)", "batch_size": "[1, inf)",
                            "grad_accum": "[1, inf)", "max_iters": "[1, inf)", "max_time": "(0, inf)",
                            "lr": "(0, inf)", "min_lr_ratio": "[0, 1]", "warmup_iters": "[0, inf)",
                            "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)",
                            "grad_clip": "[0, inf)", "eval_interval": "[1, inf)", "eval_iters": "[1, inf)",
                            "save_interval": "[0, inf)", "seed": "[0, 1e18]", "threads": "[1, 1024]",
                            "max_bad_steps": "[1, inf)",
                            "label_smoothing": "[0, 1)"})


@dataclass(frozen=True)
class VisionConfig:
    """What an image model adds to ``ModelConfig`` (whose d_model, n_layers, n_heads, mlp, norm, pos, dropout
    describe its transformer blocks): the image, how it becomes tokens, and how it is normalized."""
    model: Literal["vit", "swin", "cnn"] = "vit"
                                            # image-classification: ViT, Swin, or the small CNN baseline
    image_size: int = 28                    # images are image_size x image_size pixels (resized to it on input)
    channels: int = 1                       # 1 grayscale, 3 RGB
    patch_size: int = 4                     # pixels per patch side: each patch becomes one token
    pool: Literal["cls", "mean"] = "cls"    # ViT: classify from a [CLS] token, or from the mean of the patch tokens
    window_size: int = 7                    # Swin: attention within window_size x window_size patches
    depths: tuple[int, ...] = (2, 2)        # Swin: blocks per stage, e.g. 2,2,6 (each stage after the first
                                            # merges 2x2 patches and doubles d_model)
    heads: tuple[int, ...] | None = None    # Swin: heads per stage, e.g. 2,4,8; None -> n_heads, doubling
    image_mean: tuple[float, ...] = (0.1307,)   # per-channel mean subtracted after scaling pixels to [0, 1]
                                            # (MNIST's): one value, or one per channel
    image_std: tuple[float, ...] = (0.3081,)    # per-channel std divided by: one value, or one per channel
    resample: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
                                            # how an image of another size is resized (Pillow's filter)

    def __post_init__(self):
        for name in LIST_FIELDS:              # a JSON list, or the comma string older config.json files hold
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        check_fields(self, {"image_size": "[1, inf)", "channels": "[1, 4]", "patch_size": "[1, inf)",
                            "window_size": "[1, inf)"})
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ConfigError(f"{name}={_typed(getattr(self, name))} needs 1 or channels={self.channels} values")
        if any(s <= 0 for s in self.image_std):
            raise ConfigError(f"image_std={_typed(self.image_std)} must be positive")
        if not self.depths or any(d < 1 for d in self.depths) or any(h < 1 for h in self.heads or ()):
            raise ConfigError(f"depths={_typed(self.depths)} and heads={_typed(self.heads)} must be positive "
                              f"integers, e.g. depths=2,2")
        if self.heads and len(self.heads) != len(self.depths):
            raise ConfigError(f"heads={_typed(self.heads)} needs one value per stage of depths={_typed(self.depths)}")

    def stage_heads(self, n_heads: int) -> tuple[int, ...]:
        return self.heads or tuple(n_heads * 2 ** i for i in range(len(self.depths)))

    @property
    def grid(self) -> int:                  # patches per image side
        return self.image_size // self.patch_size

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), one value per channel."""
        mean, std = self.image_mean, self.image_std
        return mean * (self.channels // len(mean)), std * (self.channels // len(std))


LIST_FIELDS = {"depths": int, "heads": int, "image_mean": float, "image_std": float}   # VisionConfig's lists


def _as_tuple(name: str, value):
    """A VisionConfig list as a tuple: from a tuple or list, or from the comma string ("2,2") older
    config.json files hold; anything else is left for check_fields to name."""
    if isinstance(value, list):
        return tuple(value)
    if not isinstance(value, str):
        return value
    try:
        numbers = [float(x) for x in value.split(",")] if value.strip() else []
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be comma-separated numbers, e.g. 0.5 or 2,2") from None
    if LIST_FIELDS[name] is int:
        if any(not x.is_integer() for x in numbers):
            raise ConfigError(f"{name}={value!r} must be positive integers, e.g. depths=2,2")
        numbers = [int(x) for x in numbers]
    return tuple(numbers) if numbers or name != "heads" else None


def _typed(value) -> str:
    """A list as one types it (``'2,2'``), for errors."""
    return repr(",".join(map(str, value))) if isinstance(value, tuple) else repr(value)


def _check_keys(cls, overrides: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown} in {where}; valid keys: {sorted(names)}")


def build(cls, overrides: dict[str, Any], where: str | None = None):
    """Construct ``cls`` from a dict, naming unknown keys, bad types and bad values (and ``where`` they are)."""
    _check_keys(cls, overrides, where or "the options")
    try:
        return cls(**overrides)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {where})" if where else str(e)) from None


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a JSON or TOML file with optional ``[model]`` and ``[train]`` tables (and optional ``preset``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} could not be parsed ({e}); fix its syntax") from None
    unknown = sorted(set(data) - {"model", "train", "preset"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} in {path}; use 'preset', 'model' and 'train'")
    return data


def resolve(preset: str | None = None, file: str | Path | None = None, model: dict | None = None,
            train: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Merge preset -> file -> explicit overrides into validated configs."""
    file_data = load_config_file(file) if file else {}
    preset = preset or file_data.get("preset")
    m: dict[str, Any] = {}
    t: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        m.update(PRESETS[preset]["model"])
        t.update(PRESETS[preset]["train"])
    m.update(file_data.get("model", {}))
    t.update(file_data.get("train", {}))
    if file:                                   # a bad value in the file is named as the file's
        build(ModelConfig, m, f"config {file}"), build(TrainConfig, t, f"config {file}")
    m.update(model or {})
    t.update(train or {})
    return build(ModelConfig, m), build(TrainConfig, t)
