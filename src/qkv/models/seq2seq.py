"""The encoder-decoder Transformer (Vaswani et al., 2017): translation, summarization, span corruption.

Legend: B batch, S source length, L target length, M the target's key length (the cache), C d_model, V vocab,
H heads, G key/value heads, D head dim.

    src_BS ─> encoder Stack (bidirectional self-attention, source padding masked) ─> memory_BSC
                                                                                       │ keys/values,
    ids_BL ─> decoder Stack: causal self-attention ─> cross-attention onto memory <────┘ projected once
                              ─> FFN   (each sublayer: residual + norm)
           ─> head (tied to the target embedding) ─> logits_BLV ─> softmax

Teacher forcing: the decoder reads ``<bos> y1 .. yn`` and is scored on ``y1 .. yn <eos>`` (see
``qkv.data.pairs.teacher_forcing``). With one joint vocabulary (``src_vocab_size=None``) the source
embedding, the target embedding and the output head are one matrix, as in the paper (sec. 3.4); with a
separate source vocabulary the encoder gets its own embedding.

Decoding: ``encode`` once per source, ``memory_kvs`` projects every layer's cross-attention keys/values once,
then each ``decode`` step runs only the new target tokens against the self-attention ``KVCache``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..family import Family
from ..nn.kv_cache import KVCache
from ..nn.masks import AttnMask, build_mask
from .output import ModelOutput
from .stack import Stack


@dataclass
class Memory:
    """The encoded source, ready for any number of decode steps."""
    kvs: list                              # per decoder layer: (k_BGSD, v_BGSD) for cross-attention
    mask: AttnMask                         # source padding, broadcast over target positions
    attentions: list | None = None         # encoder probs_BHSS per layer, when asked

    def repeat(self, n: int) -> "Memory":
        """Each source row repeated n times (beam search: n beams per source)."""
        return self.select(torch.arange(len(self.kvs[0][0]), device=self.kvs[0][0].device).repeat_interleave(n))

    def select(self, index_B: torch.Tensor) -> "Memory":
        """The rows ``index_B`` (repeated for beams, or fewer as sources finish)."""
        allowed = self.mask.allowed_B1LM
        return Memory([(k[index_B], v[index_B]) for k, v in self.kvs],
                      AttnMask(allowed_B1LM=None if allowed is None else allowed[index_B]))


class EncoderDecoder(nn.Module):
    model_type = "qkv-seq2seq"
    family = Family.ENCODER_DECODER

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        src_cfg = dataclasses.replace(cfg, vocab_size=cfg.src_vocab_size or cfg.vocab_size,
                                      mask="bidirectional", window=None)
        self.encoder = Stack(src_cfg, cfg.encoder_layers)
        self.decoder = Stack(dataclasses.replace(cfg, mask="causal"), cfg.n_layers, cross=True)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.encoder.init_weights()
        self.decoder.init_weights()
        nn.init.normal_(self.head.weight, std=0.02)
        if cfg.src_vocab_size is None:          # joint vocabulary: one embedding for source and target
            self.encoder.tok = self.decoder.tok
        if cfg.tie_embeddings:
            self.head.weight = self.decoder.tok.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        return self.decoder.new_caches(batch, max_len)

    # ---- the two halves -----------------------------------------------------------------------------
    def encode(self, src_BS: torch.Tensor, src_mask_BS: torch.Tensor | None = None,
               return_attentions: bool = False) -> Memory:
        """Run the encoder; ``src_mask_BS`` is True for real tokens (None: no padding)."""
        B, S = src_BS.shape
        self.encoder.check_ids(src_BS)
        pos_BS = torch.arange(S, device=src_BS.device)[None]
        x_BSC = self.encoder.embed(src_BS, pos_BS)
        mask = build_mask(S, S, "bidirectional", None, 0, src_mask_BS, self.encoder.pos.bias(S, S),
                          src_BS.device)
        memory_BSC, attentions, _ = self.encoder.run(x_BSC, mask, pos_BS, None, return_attentions)
        kvs = [block.cross.project_kv(memory_BSC) for block in self.decoder.blocks]
        # One row of allowed keys per source, broadcast over however many target positions a step has.
        cross = AttnMask(allowed_B1LM=None if src_mask_BS is None else src_mask_BS.bool()[:, None, None, :])
        return Memory(kvs, cross, attentions if return_attentions else None)

    def decode(self, ids_BL: torch.Tensor, memory: Memory, caches: list[KVCache] | None = None,
               return_attentions: bool = False, last_only: bool = False):
        """Decoder logits for the new target tokens. Returns (logits_BLV, h_BLC, attentions, cross)."""
        B, L = ids_BL.shape
        start = caches[0].length if caches else 0
        self.decoder.check_ids(ids_BL, start)
        M = start + L
        pos_BL = torch.arange(start, M, device=ids_BL.device)[None]
        x_BLC = self.decoder.embed(ids_BL, pos_BL)
        mask = build_mask(L, M, "causal", self.cfg.window, 0, None, self.decoder.pos.bias(L, M), ids_BL.device)
        h_BLC, attentions, cross = self.decoder.run(x_BLC, mask, pos_BL, caches, return_attentions,
                                                    memory.kvs, memory.mask)
        if last_only:
            h_BLC = h_BLC[:, -1:]
        return self.head(h_BLC), h_BLC, attentions, cross

    # ---- training / scoring -------------------------------------------------------------------------
    def forward(self, src_BS: torch.Tensor, ids_BL: torch.Tensor, targets_BL: torch.Tensor | None = None,
                src_mask_BS: torch.Tensor | None = None, label_smoothing: float = 0.0,
                return_attentions: bool = False) -> ModelOutput:
        """Teacher-forced logits for ``ids_BL`` (``<bos> y``) and, with ``targets_BL`` (``y <eos>``, -100 on
        padding), the mean cross-entropy (label-smoothed by ``label_smoothing``)."""
        memory = self.encode(src_BS, src_mask_BS, return_attentions)
        logits_BLV, h_BLC, attentions, cross = self.decode(ids_BL, memory, None, return_attentions)
        loss = None
        if targets_BL is not None:
            loss = F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten(), ignore_index=-100,
                                   label_smoothing=label_smoothing)
        if not return_attentions:
            return ModelOutput(logits=logits_BLV, loss=loss, hidden=h_BLC)
        return ModelOutput(logits=logits_BLV, loss=loss, hidden=h_BLC, attentions=tuple(attentions),
                           cross_attentions=tuple(cross), encoder_attentions=tuple(memory.attentions))
