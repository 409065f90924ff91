"""Speed benchmarks that put qkv next to Hugging Face transformers in the same process.

``qkv bench train`` times one forward + backward + AdamW step (``qkv.bench.train``); ``qkv bench decode``
times generation with the KV cache (``qkv.bench.decode``). Both print one JSON line with ``--json``.
Timings interleave the two libraries round by round, so load from other processes falls on both alike;
compare ratios, not absolute figures, across machines.
"""
