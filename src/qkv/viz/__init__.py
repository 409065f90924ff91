"""Seeing inside a model: attention maps (PNG and an interactive page), next-token tables and the logit
lens, training curves. Everything works on any model ``qkv.load`` returns."""
