"""The shape legend: one letter per dimension and one meaning per letter, for every tensor name in qkv.

A tensor whose shape is known ends in ``_`` + one letter per dimension, in memory order (``q_BHLD``); sizes
are unpacked once under the same letters (``B, L, C = x_BLC.shape``) and einsum strings reuse them
(``"BHLD,BHMD->BHLM"``). A new layout gets a new name: a BHLD tensor is never called ``q_BLHD``. Module
attributes and state-dict keys carry no suffix. Boolean masks say their polarity: ``allowed_LM`` is True
where a query may attend, as SDPA's boolean mask is.

    B  batch: rows processed together (the sources of a beam search; the live ones as it goes)
    L  query / sequence length: the positions a forward reads (a seq2seq target; a Swin window's w * w)
    M  key length: the positions attended (the KV cache's filled length; = L without a cache)
    S  source length: an encoder-decoder's encoder positions, which are cross-attention's keys
    T  tokens so far in a decode (prompt + generated)
    P  positions of a table (a position encoding's max_len rows)
    H  query heads              G  key/value heads (GQA)        R  query heads per key/value head (H / G)
    C  channels = d_model       D  head dim                     F  FFN hidden width
    V  vocab size               K  classes or labels (a head's outputs)
    A  alternatives kept per row (beams per source, top_logprobs)           J  candidates per source (2A)
    E  a few chosen token ids (stop ids, logit_bias ids)
    N  rows not grouped as a batch: flattened (B*L tokens, B*A beams), a split's examples, a Linear's
       leading dimensions
    I  input features (a Linear's in_features; an image's channels)        O  output features
    Q  quantization groups per row (I / group size)      U  GGUF super-blocks per row (Q4_K: 256 weights)
    W  windows (Swin's attention windows; SQuAD's context windows)
    Y  X  image or patch-grid rows and columns
    Z  layers (the logit lens' rows: the embeddings, then each block)
    1  a kept singleton dimension (another digit: a dimension of that fixed size, as yx_2L's y and x)

Lower-case letters are sizes a file names itself (``b`` bytes, ``g`` weights per group).

Every file in ``nn/`` and ``models/`` lists the letters it uses at its top, with what they hold there;
other files may, and then list them all. A test (tests/test_shapes.py) holds every suffix in the package
to these letters and every legend to the letters its file uses.
"""

LEGEND = {
    "B": "batch", "L": "query / sequence length", "M": "key length", "S": "source length",
    "T": "tokens so far in a decode", "P": "positions of a table", "H": "query heads", "G": "key/value heads",
    "R": "query heads per key/value head", "C": "channels (d_model)", "D": "head dim", "F": "FFN hidden width",
    "V": "vocab size", "K": "classes or labels", "A": "alternatives kept per row", "J": "candidates per source",
    "E": "a few chosen token ids", "N": "rows not grouped as a batch", "I": "input features",
    "O": "output features", "Q": "quantization groups per row", "U": "GGUF super-blocks per row",
    "W": "windows", "Y": "image or grid rows", "X": "image or grid columns", "Z": "layers",
    "1": "a kept singleton dimension",
}
