"""Named presets: a (model, train) pair of overrides of ``ModelConfig`` / ``TrainConfig`` defaults (and, for the
image presets, ``VisionConfig``'s), which ``qkv.config.resolve`` merges under a config file and the flags.
Each says why it is shaped as it is; the sweeps behind the numbers are in bench/README.md.
"""

from __future__ import annotations

from typing import Any

# A BERT-style encoder (Devlin et al., 2019) at a CPU size: a norm after the embeddings, segment embeddings,
# GELU, dropout 0.1; 4 layers of d_model 256. Pre-norm and RoPE instead of BERT's post-norm and learned
# positions: with them masked-LM pre-training left the unigram plateau (val loss ~6.3) within 300 steps,
# where BERT's own recipe was still on it after 1,800 (bench/README.md). Hugging Face BERTs load as BERTs.
BERT_SMALL = dict(max_len=128, n_layers=4, d_model=256, n_heads=4, mask="bidirectional", type_vocab_size=2,
                  norm_placement="pre", embed_norm=True, mlp="gelu", pos="rope", dropout=0.1, norm_eps=1e-12)

# Presets name a (model, train) pair. Values are overrides of the dataclass defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The default job: a char-level GPT on tiny shakespeare, chosen for the best val loss within
    # `--max-time 130` on 2 CPU cores (sweep in bench/README.md): small and fast beats big and slow here;
    # ReLU + LayerNorm have cheaper CPU kernels than GELU + RMSNorm and trained better per second;
    # a 256 context at batch 4 beat 64 x 16 and 512 x 2 at the same tokens per step. One head of width 128
    # since issue 14 (--precision auto: bf16 on AVX-512 BF16 CPUs): it took 38% more steps in the budget
    # than 4 heads of 32 (bf16 attention kernels pay per head) and ended lower (1.656 vs 1.681, 1 thread).
    "shakespeare-char": {
        "model": dict(max_len=256, n_layers=4, d_model=128, n_heads=1, pos="rope", norm="layernorm",
                      mlp="relu", bias=False, dropout=0.0),
        "train": dict(batch_size=4, lr=3e-3, warmup_iters=50, max_iters=5000, eval_interval=200,
                      eval_iters=10, weight_decay=0.1, out_dir="runs/shakespeare-char"),
    },
    # The "baby GPT" of the well-known minimal GPT, for comparison.
    "baby-gpt": {
        "model": dict(max_len=256, n_layers=6, d_model=384, n_heads=6, dropout=0.2),
        "train": dict(batch_size=64, lr=1e-3, warmup_iters=100, max_iters=5000, out_dir="runs/baby-gpt"),
    },
    # Seconds-long runs for tests and smoke checks.
    "tiny": {
        "model": dict(max_len=32, n_layers=2, d_model=32, n_heads=4),
        "train": dict(batch_size=4, max_iters=20, eval_interval=10, eval_iters=2, warmup_iters=2,
                      progress=False, precision="fp32", out_dir="runs/tiny"),   # fp32: the same figures anywhere
    },
    # The original Transformer, sized for Multi30k de->en within an hour on 2 CPU cores (bench/README.md):
    # a joint byte-level BPE vocabulary tying source, target and output embeddings, label smoothing 0.1.
    "multi30k": {
        "model": dict(max_len=128, n_layers=3, n_encoder_layers=3, d_model=256, n_heads=4, d_ff=1024,
                      pos="learned", norm_placement="pre", mlp="relu", dropout=0.1),
        "train": dict(task="translate", src_lang="de", tgt_lang="en", data="../shared/data/multi30k",
                      tokenizer="bpe", bpe_vocab_size=8000, batch_size=64, lr=1e-3, warmup_iters=300,
                      max_iters=20000, max_time=3600, label_smoothing=0.1, weight_decay=0.01, beta2=0.98,
                      eval_interval=250, eval_iters=16, out_dir="runs/multi30k"),
    },
    # The same machinery for abstract -> TLDR summarization on SciTLDR (long sources are truncated).
    "scitldr": {
        "model": dict(max_len=384, n_layers=3, n_encoder_layers=3, d_model=256, n_heads=4, d_ff=1024,
                      pos="learned", norm_placement="pre", mlp="relu", dropout=0.1),
        "train": dict(task="summarize", data="../shared/data/scitldr", tokenizer="bpe", bpe_vocab_size=8000,
                      batch_size=16, lr=1e-3, warmup_iters=200, max_iters=20000, max_time=1200,
                      label_smoothing=0.1, weight_decay=0.01, beta2=0.98, eval_interval=200, eval_iters=10,
                      out_dir="runs/scitldr"),
    },
    # Masked-LM pre-training of BERT_SMALL with a WordPiece vocabulary trained on the text (`qkv train --preset
    # bert-mlm --data TEXT`); BERT's optimizer settings (weight decay 0.01, warmup) at a small model's higher lr
    # (5e-4 left a 30-minute CPU run on the unigram plateau; bench/README.md).
    "bert-mlm": {
        "model": BERT_SMALL,
        "train": dict(objective="mlm", tokenizer="wordpiece", bpe_vocab_size=8000, batch_size=32, lr=1e-3,
                      warmup_iters=200, max_iters=20000, weight_decay=0.01, beta2=0.98, eval_interval=200,
                      eval_iters=10, out_dir="runs/bert-mlm"),
    },
    # `qkv finetune`'s defaults: the training part for every task; the model part only for --init none
    # (the from-scratch baseline: BERT_SMALL with a WordPiece vocabulary trained on the task's text).
    "bert-finetune": {
        "model": BERT_SMALL,
        "train": dict(tokenizer="wordpiece", bpe_vocab_size=8000, batch_size=32, lr=2e-4, warmup_iters=100,
                      max_iters=3000, weight_decay=0.01, beta2=0.999, eval_interval=200, eval_iters=8,
                      out_dir="runs/finetune"),
    },
    # MNIST (`qkv train --task image-classification --model vit|swin|cnn --data ../shared/data/mnist`): 15 minutes
    # of 2 CPU cores each (bench/README.md). "vision" is the VisionConfig; ViT's max_len is set from the image.
    "mnist-vit": {
        "model": dict(n_layers=6, d_model=64, n_heads=4, mlp="gelu", norm="layernorm", norm_placement="pre",
                      pos="sinusoidal", mask="bidirectional", norm_eps=1e-6, dropout=0.0),
        "vision": dict(model="vit", patch_size=4, pool="mean"),
        "train": dict(task="image-classification", data="../shared/data/mnist", batch_size=128, lr=2e-3,
                      warmup_iters=100, max_iters=100000, max_time=900, weight_decay=0.05, beta2=0.999,
                      eval_interval=200, eval_iters=4, out_dir="runs/mnist-vit"),
    },
    "mnist-swin": {
        "model": dict(n_layers=2, d_model=64, n_heads=2, mlp="gelu", norm="layernorm", norm_placement="pre",
                      mask="bidirectional", dropout=0.0),
        "vision": dict(model="swin", patch_size=2, window_size=7, depths=(2, 2)),
        "train": dict(task="image-classification", data="../shared/data/mnist", batch_size=128, lr=1e-3,
                      warmup_iters=100, max_iters=100000, max_time=900, weight_decay=0.05, beta2=0.999,
                      eval_interval=200, eval_iters=4, out_dir="runs/mnist-swin"),
    },
    "mnist-cnn": {
        "model": dict(n_layers=2, d_model=32, dropout=0.25),
        "vision": dict(model="cnn"),
        "train": dict(task="image-classification", data="../shared/data/mnist", batch_size=128, lr=1e-3,
                      warmup_iters=100, max_iters=100000, max_time=900, weight_decay=0.05, beta2=0.999,
                      eval_interval=200, eval_iters=4, out_dir="runs/mnist-cnn"),
    },
    # GPT-2 small's shape (124M parameters) for benchmarks.
    "gpt2-small": {
        "model": dict(vocab_size=50257, max_len=1024, n_layers=12, d_model=768, n_heads=12, mlp="gelu_tanh"),
        "train": dict(tokenizer="bpe", bpe_vocab_size=50257, out_dir="runs/gpt2-small"),
    },
}
