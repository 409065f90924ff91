"""Transformer layers. Models import these; nothing here imports a model.

Shape suffixes (DESIGN.md): B batch, L query length, M key length, H query heads, G key/value heads,
C d_model, D head dim, F FFN width, V vocab, N flattened tokens, 1 a kept singleton dimension.
"""
