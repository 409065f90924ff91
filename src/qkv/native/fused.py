"""The fused decode step (decode.c) as a swap made for inference: a Llama-family decoder whose layers are
quantized (qkv.quant) runs each decode step's whole stack in one native call.

Legend: B batch rows (one new token each), L new tokens, C d_model, M key positions, H query heads, G key/value
heads, D head dim, P positions of the RoPE table.

    use_fused_decode(model)      # after loading; qkv.for_inference (every inference command) does it

What changes is one attribute of that model object: ``model.run`` (the block loop of models/stack.py)
becomes a ``FusedRun``, which takes a step only when decode.c computes exactly what the blocks would
(one new token per row, a KV cache, no attention maps asked for, no gradients, kernels not turned off by
QKV_KERNELS=torch) and hands every other call to the class's own ``Stack.run``: prefill, training, a
look at the attention maps. The modules, their parameters and the state dict are untouched, so the
readable model stays the reference, saving works as before, and dropping the attribute
(``del model.run``) undoes the swap.

Per layer the PyTorch path runs ~60 modules and a few hundred aten operations (casts, views, the
8-bit activation quantization once per Linear); decode.c does the same arithmetic in six steps sharing
the quantized activations: q/k/v as one product, RoPE with the cache write, one attention over the cache,
wo + residual, gate/up with SwiGLU, down + residual (decode.c says how each is split over threads).
"""

from __future__ import annotations

import ctypes

import torch

from . import BLOCK, MAX_ROWS, VARIANTS, bf16, call, library, threads, variant
from ..nn.norms import RMSNorm
from ..quant.linear import Int4Linear, Int8Linear, codes_version

MAX_HEAD_DIM = 512                         # decode.c's per-head buffers
CACHE_DTYPES = (torch.float32, torch.float16)      # what decode.c reads a KV cache in (QStep.half)
# ModelConfig axes that act inside the blocks and that decode.c does not compute, at the value it assumes:
# a model with any other value keeps the PyTorch blocks (the embedding and the head stay PyTorch's anyway).
PLAIN_AXES = {"qk_norm": False, "norm_offset": 0.0, "attn_scale": None, "attn_softcap": None}
_p, _i, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class _Linear(ctypes.Structure):
    _fields_ = [("kind", _i), ("O", _i), ("K", _i), ("g", _i), ("w", _p), ("scales", _p), ("zeros", _p), ("bias", _p)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", _p), ("norm2", _p), ("eps1", _f), ("eps2", _f)] + \
        [(name, _Linear) for name in ("wq", "wkv", "wo", "gate", "up", "down")]


class _Model(ctypes.Structure):
    _fields_ = [("n_layers", _i), ("C", _i), ("H", _i), ("G", _i), ("D", _i), ("F", _i), ("cos", _p), ("sin", _p),
                ("layers", ctypes.POINTER(_Layer))]


class _Step(ctypes.Structure):
    _fields_ = [("k", ctypes.POINTER(_p)), ("v", ctypes.POINTER(_p)), ("half", _i), ("max_len", _i), ("length", _i),
                ("pos", _p),
                ("allowed", _p), ("allowed_ld", _i)]


def _linears(block) -> tuple:
    return (block.attn.wq, block.attn.wkv, block.attn.wo, block.mlp.gate, block.mlp.up, block.mlp.down)


def unfusable(model) -> str | None:
    """Why ``model`` cannot take the fused decode step, or None when it can."""
    if library() is None:
        return "qkv's kernels are not built"
    cfg, blocks = getattr(model, "cfg", None), getattr(model, "blocks", None)
    if cfg is None or blocks is None or not hasattr(model, "norm_f"):
        return "not a qkv decoder"
    if (cfg.norm, cfg.norm_placement, cfg.mlp, cfg.pos, cfg.mask, cfg.window) != \
            ("rmsnorm", "pre", "swiglu", "rope", "causal", None) or not hasattr(model.pos, "cos_PD"):
        return "not a Llama-family decoder (pre-norm RMSNorm, SwiGLU, RoPE, causal, no window)"
    other = [f"{k}={getattr(cfg, k, v)!r}" for k, v in PLAIN_AXES.items() if getattr(cfg, k, v) != v]
    if other:
        return f"decode.c does not compute {', '.join(other)}"
    if cfg.head_dim % 2 or cfg.head_dim > MAX_HEAD_DIM:
        return f"head_dim {cfg.head_dim} is odd or over {MAX_HEAD_DIM}"
    for block in blocks:
        if hasattr(block, "cross") or not (isinstance(block.norm1, RMSNorm) and isinstance(block.norm2, RMSNorm)):
            return "a block with cross-attention or another norm"
        for linear in _linears(block):
            if not isinstance(linear, (Int4Linear, Int8Linear)):
                return "its layers are not quantized (load with --quantized, or qkv.quant.quantize_model)"
            if linear.weight.device.type != "cpu" or linear.in_features % BLOCK:
                return f"a quantized layer off the CPU or with in_features not a multiple of {BLOCK}"
    return None


def use_fused_decode(model):
    """Install the fused decode step on ``model`` where it can run (``unfusable`` says why not); returns
    the model. Idempotent."""
    if not is_fused(model) and unfusable(model) is None:
        model.run = FusedRun(model)
    return model


def is_fused(model) -> bool:
    return isinstance(getattr(model, "__dict__", {}).get("run"), FusedRun)


def _linear(module, keep: list) -> _Linear:
    bias = None if module.bias is None else module.bias.detach().float().contiguous()
    if isinstance(module, Int4Linear):                 # the layer's own bfloat16 scales (kernels.h)
        scales, zeros, kind, g = bf16(module.scales), bf16(module.zeros), 4, module.group_size
    else:
        scales, zeros, kind, g = bf16(module.scales), None, 8, BLOCK
    tensors = [module.weight.contiguous(), scales, zeros, bias]
    keep.extend(t for t in tensors if t is not None)
    w, s, z, b = (0 if t is None else t.data_ptr() for t in tensors)
    return _Linear(kind, module.out_features, module.in_features, g, w, s, z, b)


class FusedRun:
    """``model.run`` for the fused decode step; every call it does not take goes to ``Stack.run``."""

    def __init__(self, model):
        self.model = model
        self.built = None            # (native descriptors, the tensors they point into, codes_version())

    def __getstate__(self) -> dict:          # copies and pickles of the model: ctypes pointers stay behind
        return {"model": self.model}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])

    def _descriptors(self) -> _Model:
        model, cfg = self.model, self.model.cfg
        if self.built is None or self.built[1][0] is not model.pos.cos_PD or self.built[2] != codes_version():
            keep = [model.pos.cos_PD, model.pos.sin_PD]                  # (rebuild_buffers(), a new load)
            layers = (_Layer * len(model.blocks))()
            for layer, block in zip(layers, model.blocks):
                norms = [block.norm1.weight.detach().float().contiguous(),
                         block.norm2.weight.detach().float().contiguous()]
                keep.extend(norms)
                layer.norm1, layer.norm2 = norms[0].data_ptr(), norms[1].data_ptr()
                layer.eps1, layer.eps2 = block.norm1.eps, block.norm2.eps
                for name, linear in zip(("wq", "wkv", "wo", "gate", "up", "down"), _linears(block)):
                    setattr(layer, name, _linear(linear, keep))
            keep.append(layers)
            desc = _Model(len(model.blocks), cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim,
                          model.blocks[0].mlp.gate.out_features, keep[0].data_ptr(), keep[1].data_ptr(), layers)
            self.built = (desc, keep, codes_version())
        return self.built[0]

    def takes(self, x_BLC: torch.Tensor, mask, caches, return_attentions: bool, cross_kvs) -> bool:
        """Whether decode.c computes this call exactly as the blocks would."""
        B, L, _ = x_BLC.shape
        if caches is None or L != 1 or B > MAX_ROWS or return_attentions or cross_kvs is not None:
            return False
        if torch.is_grad_enabled() or self.model.training or x_BLC.device.type != "cpu" or variant() == "torch":
            return False
        if mask.bias_1HLM is not None or mask.live_B1L1 is not None:
            return False
        first = caches[0]
        M = first.length + 1
        if M > first.max_len or any(c.length != first.length or c.k_BGMD.dtype not in CACHE_DTYPES or
                                    c.k_BGMD.dtype != first.k_BGMD.dtype or c.v_BGMD.dtype != c.k_BGMD.dtype or
                                    c.k_BGMD.shape[0] != B or not c.k_BGMD.is_contiguous() or
                                    not c.v_BGMD.is_contiguous() for c in caches):
            return False
        allowed = mask.allowed_B1LM
        return allowed is None or (allowed.dim() == 4 and allowed.shape[1:] == (1, 1, M))

    def __call__(self, x_BLC: torch.Tensor, mask, pos_BL: torch.Tensor, caches=None, return_attentions: bool = False,
                 cross_kvs=None, cross_mask=None, local_mask=None):
        model = self.model
        if local_mask is not None or not self.takes(x_BLC, mask, caches, return_attentions, cross_kvs):
            return type(model).run(model, x_BLC, mask, pos_BL, caches, return_attentions, cross_kvs, cross_mask,
                                   local_mask)
        B, _, C = x_BLC.shape
        desc = self._descriptors()
        x_BC = x_BLC.detach().float().reshape(B, C).clone()
        pos_B = pos_BL.reshape(-1).to(torch.int32).expand(B).contiguous()
        length, M = caches[0].length, caches[0].length + 1
        allowed_BM = None
        if mask.allowed_B1LM is not None:
            allowed_BM = mask.allowed_B1LM.reshape(-1, M).expand(B, M).contiguous().view(torch.uint8)
        n = len(caches)
        step = _Step((_p * n)(*(c.k_BGMD.data_ptr() for c in caches)), (_p * n)(*(c.v_BGMD.data_ptr() for c in caches)),
                     int(caches[0].k_BGMD.dtype == torch.float16), caches[0].max_len, length, pos_B.data_ptr(),
                     0 if allowed_BM is None else allowed_BM.data_ptr(), M)
        call(library().qkv_decode(VARIANTS.index(variant()), ctypes.byref(desc), x_BC.data_ptr(), B,
                                  ctypes.byref(step), threads()))
        for cache in caches:
            cache.length = M
        return model.norm_f(x_BC.view(B, 1, C)), [None] * n, [None] * n
