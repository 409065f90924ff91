"""Every command, every bad input: one line on stderr, exit status 2, no traceback, and no file touched.

Two parts keep it so as commands arrive:
- ``CASES``: the mistakes people make, one row each (argv, a phrase the message must contain). Add rows for
  every new command.
- the sweep, generated from the parser itself: for every flag of every command, values of the wrong type,
  out of range, empty, NaN and huge; for every path, missing, a folder for a file and a file for a folder,
  empty; for every checkpoint argument, each other model family and a damaged directory. A new command is
  swept as soon as it is in ``qkv.cli.COMMANDS``; it only needs a row in ``SENTINELS`` (the test says so).

Each case runs ``main(argv)`` in-process from inside a zoo of real checkpoints and a person's files, and
compares the hashes of the whole tree before and after: a refused command must not create, change or
remove anything.
"""

import argparse
import dataclasses
import hashlib
import importlib
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

import qkv
from qkv import ModelConfig, Tokenizer
from qkv.checkpoint import write_model_files
from qkv.config import VisionConfig
from qkv.models import ViT
from qkv.cli import COMMANDS, build_parser, main
from qkv.models import BERT, BertClassifier, EncoderDecoder
from qkv.models.encoder import BertTagger
from qkv.models.swin import Swin
from qkv.rundir import atomic_dir
from qkv.train.finetune import FinetuneConfig
from vision_fixtures import write_mnist

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 12
SST2 = "sentence\tlabel\n" + "".join(f"{w} film .\t{i % 2}\n" for i, w in enumerate(["a fine", "a dull"] * 5))
WNUT = "".join(f"{w}\t{t}\n" + ("\n" if w == "." else "") for w, t in
               [("Speak", "O"), ("Citizen", "B-person"), (".", "O")] * 4)
# A person's own files where a command could write its output: each must survive every refused command.
MINE = {"mine.png": b"\x89PNG a person's picture", "mine.html": b"<p>my page</p>", "mine.pt": b"my tensors",
        "mine.json": b'{"mine": true}', "mine.txt": b"my translation"}

# ---- the zoo: one checkpoint of each family, damaged ones, and a person's files ----------------------
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    (root / "sst2.tsv").write_text(SST2, encoding="utf-8")
    (root / "wnut.tsv").write_text(WNUT, encoding="utf-8")
    (root / "src.txt").write_text("ein hund\n", encoding="utf-8")
    (root / "ref.txt").write_text("a dog\n", encoding="utf-8")
    (root / "docs.jsonl").write_text('{"source": ["ein hund"], "target": ["a dog"]}\n', encoding="utf-8")
    for name, data in MINE.items():
        (root / name).write_bytes(data)
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("a person's notes")
    (root / "plain.txt").write_text("a plain file")
    (root / "noassistant.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')   # issue 24
    (root / "empty.txt").write_text("\n\n")
    (root / "bigconfig.toml").write_text('preset = "tiny"\n[model]\nd_model = "big"\n')
    (root / "out").mkdir()                             # where a test may write on purpose: never snapshotted
    assert main(["train", "--preset", "tiny", "--data", str(root / "corpus.txt"), "--out-dir", str(root / "gpt"),
                 "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--max-len", "16"]) == 0
    torch.manual_seed(0)
    small = dict(max_len=16, n_layers=1, d_model=16, n_heads=2)
    wordpiece = Tokenizer.train_wordpiece([TEXT, SST2], vocab_size=80)
    bert_cfg = ModelConfig(vocab_size=wordpiece.vocab_size, mask="bidirectional", type_vocab_size=2, **small)
    qkv.save(BERT(bert_cfg), root / "bert", wordpiece)
    pairs = Tokenizer.train_char(TEXT + "ein hund", special_tokens=("<pad>", "<bos>", "<eos>"))
    qkv.save(EncoderDecoder(ModelConfig(vocab_size=pairs.vocab_size, **small)), root / "seq2seq", pairs)
    from qkv.adapters import LoRAConfig, add_lora, save_adapter      # issue 24: an adapter of another base
    deeper = BERT(dataclasses.replace(bert_cfg, n_layers=2))
    add_lora(deeper, LoRAConfig(rank=2, targets=("query",)))
    save_adapter(deeper, root / "other-adapter")
    finetune = FinetuneConfig(task="sst2", data=str(root / "sst2.tsv"), eval_data=str(root / "sst2.tsv"))
    with atomic_dir(root / "classifier") as tmp:
        write_model_files(tmp, BertClassifier(bert_cfg, ["0", "1"]), wordpiece,
                          {"finetune": dataclasses.asdict(finetune)})
    tagging = FinetuneConfig(task="wnut17", data=str(root / "wnut.tsv"), eval_data=str(root / "wnut.tsv"))
    with atomic_dir(root / "tagger") as tmp:                 # issue 20: scored with seqeval
        write_model_files(tmp, BertTagger(bert_cfg, ["O", "B-person", "I-person"]), wordpiece,
                          {"finetune": dataclasses.asdict(tagging)})
    quantized = qkv.load(root / "gpt")                 # issue 10: a quantized checkpoint and a fake GGUF
    qkv.quant.quantize_model(quantized, 8)
    qkv.save(quantized, root / "gpt-int8", quantized.tokenizer)
    (root / "fake.gguf").write_text("not a GGUF file")
    import transformers                                # issue 23: GGUF vocabularies qkv refuses
    from gguf_fixtures import random_llama, sentencepiece_metadata, train_sentencepiece, write_llama_gguf
    vocab, llama = sentencepiece_metadata(train_sentencepiece("bpe", 400)), random_llama(transformers, vocab=400)
    write_llama_gguf(root / "badvocab.gguf", llama, vocab={**vocab, "scores": vocab["scores"][:-5]})
    write_llama_gguf(root / "bertvocab.gguf", llama, vocab={**vocab, "model": "bert"})
    mnist = write_mnist(root / "mnist")                 # issue 13: MNIST-format folders, good and damaged, and a ViT
    for name, file, text in (("badidx", "t10k-images-idx3-ubyte", b"\x00\x00\x08\x01" + b"\x00" * 12),
                             ("badcsv", "mnist_5k_train_subset.csv", b"0," * 784 + b"1\n" + b"0," * 783 + b"1\n"),
                             ("badlabel", "mnist_5k_train_subset.csv", b"0," * 784 + b"12\n")):
        shutil.copytree(mnist, root / name)
        (root / name / file).write_bytes(text)         # read before the .gz of the same name
    vision = VisionConfig(patch_size=7)
    qkv.save(ViT(ModelConfig(mask="bidirectional", **dict(small, max_len=17)), vision, list("0123456789")),
             root / "vit")
    swin = VisionConfig(model="swin", patch_size=7, window_size=2, depths="1,1")   # issue 20: bertviz refused
    qkv.save(Swin(ModelConfig(mask="bidirectional", **small), swin, list("0123456789")), root / "swin")
    from PIL import Image
    Image.new("L", (28, 28)).save(root / "digit.png")
    for name, damage in (("truncated", lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 20)),
                         ("badconfig", lambda d: (d / "config.json").write_text('{"model_type": "qkv-gpt", "mo'))):
        shutil.copytree(root / "gpt", root / name)
        damage(root / name)
    return root


def paths(zoo) -> dict:
    return {"corpus": zoo / "corpus.txt", "sst2": zoo / "sst2.tsv", "notes": zoo / "notes", "plain": zoo / "plain.txt",
            "empty": zoo / "empty.txt", "bigconfig": zoo / "bigconfig.toml", "missing": zoo / "no-such-thing",
            "out": zoo / "out",
            "unwritable": "/proc/qkv-cannot-write-here", "int8": zoo / "gpt-int8", "fakegguf": zoo / "fake.gguf",
            "badvocab": zoo / "badvocab.gguf", "bertvocab": zoo / "bertvocab.gguf",
            "mnist": zoo / "mnist", "badidx": zoo / "badidx", "badcsv": zoo / "badcsv", "badlabel": zoo / "badlabel",
            "png": zoo / "digit.png", "wnut": zoo / "wnut.tsv", "tagger": zoo / "tagger", "swin": zoo / "swin",
            "src": zoo / "src.txt", "ref": zoo / "ref.txt", "docs": zoo / "docs.jsonl",
            "otheradapter": zoo / "other-adapter", "noassistant": zoo / "noassistant.jsonl",
            **{name.replace(".", "_"): zoo / name for name in MINE},
            **{k: zoo / k for k in FAMILIES}, **{k: zoo / k for k in DAMAGED}}


FAMILIES = {"gpt": "decoder", "bert": "encoder", "classifier": "fine-tuned encoder", "seq2seq": "encoder-decoder",
            "vit": "image classifier"}
DAMAGED = ("truncated", "badconfig")


def snapshot(root: Path) -> dict:
    """{relative path: content hash, or 'dir'} for everything outside out/."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.relative_to(root).parts[0] != "out"}


def refused(zoo, capsys, monkeypatch, argv: list[str]) -> str:
    """Run a command that must be refused; return its one line."""
    monkeypatch.chdir(zoo / "out")                   # defaults such as runs/NAME land where they may
    before = snapshot(zoo)
    code = main([a.format(**paths(zoo)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code} for {argv}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(zoo) == before, f"{argv} changed files"
    return err


# ---- the table ---------------------------------------------------------------------------------------
TRAIN = ["train", "--preset", "tiny", "--data", "{corpus}", "--max-len", "16", "--max-iters", "2"]
FINETUNE = ["finetune", "--task", "sst2", "--data", "{sst2}", "--eval-data", "{sst2}", "--max-iters", "2"]
IMAGES = ["train", "--task", "image-classification", "--data", "{mnist}", "--max-iters", "1", "--test-in-train", "20",
          "--val-images", "10"]
CASES = [
    # 1. data loss: an output directory is new, empty, or the run being resumed
    (TRAIN + ["--out-dir", "{notes}"], "not a qkv run (notes.txt"),
    (TRAIN + ["--out-dir", "{notes}", "--overwrite"], "not a qkv run (notes.txt"),
    (FINETUNE + ["--init", "{bert}", "--out-dir", "{notes}"], "not a qkv run (notes.txt"),
    (TRAIN + ["--out-dir", "{gpt}"], "--overwrite to replace it"),
    (TRAIN + ["--out-dir", "{plain}"], "is a file, not a directory"),
    (TRAIN + ["--out-dir", "."], "the folder you are working in"),
    (TRAIN + ["--out-dir", ".."], "the folder you are working in"),
    (TRAIN + ["--out-dir", ""], "out_dir='' must be a non-empty string"),
    (TRAIN + ["--out-dir", "{unwritable}"], "cannot be written"),
    (TRAIN + ["--out-dir", "{plain}/run"], "is a file, so no folder can be made below it"),
    (["train", "--resume", "{gpt}"], "has spent its budget: step 4 of --max-iters 4; pass a larger --max-iters"),
    (["train", "--resume", "{gpt}", "--max-iters", "6", "--out-dir", "{notes}"], "not a qkv run"),
    # 2. the wrong kind of checkpoint names the command that fits
    (["generate", "{bert}"], "use `qkv embed`"),
    (["generate", "{seq2seq}"], "use `qkv translate`"),
    (["eval", "{classifier}", "--data", "{corpus}"], "use `qkv predict` or `qkv evaluate`"),
    (["eval", "{seq2seq}", "--data", "{corpus}"], "use `qkv translate`"),
    (["eval", "{bert}", "--data", "{corpus}"], "qkv eval needs a decoder"),
    (["bench", "beam", "--checkpoint", "{gpt}"], "use `qkv generate`"),
    (["bench", "beam", "--checkpoint", "{bert}"], "needs an encoder-decoder"),
    (["predict", "{gpt}", "--text", "a"], "use `qkv generate`"),
    (["translate", "{gpt}", "--text", "a"], "use `qkv generate`"),
    (["embed", "{seq2seq}", "--text", "a"], "use `qkv translate`"),
    (["train", "--resume", "{classifier}"], "continue it with `qkv finetune --resume"),
    (["finetune", "--resume", "{gpt}"], "continue it with `qkv train --resume"),
    (["finetune", "--task", "wnut17", "--data", "{wnut}", "--eval-data", "{wnut}", "--init", "{gpt}"],
     "qkv finetune --init needs an encoder"),            # issue 24: sst2/cola take a decoder (last-token pooling)
    # 3. numbers out of range, from flags and from config files
    (TRAIN + ["--beta1", "2"], "beta1=2.0 must be in [0, 1)"),
    (TRAIN + ["--threads", "-3"], "threads=-3 must be in [1, 1024]"),
    (TRAIN + ["--threads", "0"], "threads=0"),
    (TRAIN + ["--batch-size", "0"], "batch_size=0 must be >= 1"),
    (TRAIN + ["--batch-size", "-1"], "batch_size=-1"),
    (TRAIN + ["--weight-decay", "-1"], "weight_decay=-1.0 must be >= 0"),
    (TRAIN + ["--grad-clip", "-1"], "grad_clip=-1.0 must be >= 0"),
    (TRAIN + ["--lr", "nan"], "lr=nan must be a finite number"),
    (["eval", "{gpt}", "--data", "{corpus}", "--batch-size", "-1"], "--batch-size -1 must be a positive integer"),
    (["translate", "{seq2seq}", "--text", "a", "--length-penalty", "nan"], "length_penalty=nan"),
    (["translate", "{seq2seq}", "--text", "a", "--beam", "0"], "beam_size=0 must be >= 1"),
    (["generate", "{gpt}", "--top-p", "0"], "top_p=0.0 must be in (0, 1]"),
    (["train", "--config", "{bigconfig}"], "d_model='big' must be an integer (in config"),
    # 4. paths
    (TRAIN[:3] + ["--data", ""], "data='' must be a non-empty string"),
    (TRAIN[:3] + ["--data", "{missing}"], "does not exist"),
    (["embed", "{bert}", "--file", "{notes}"], "is a directory; pass a file"),
    (["translate", "{seq2seq}", "--text", "a", "--output", "{notes}"], "--output"),
    (["translate", "{seq2seq}", "--text", "a", "--metrics-json", "{out}/m.json"], "need references"),
    (["evaluate", "{classifier}", "--out-dir", "{plain}"], "is a file"),
    # 5. conflicting flags, misspelled flags, wrong pairings
    (FINETUNE + ["--init", "{bert}", "--scratch"], "drop one of them"),
    (TRAIN + ["--objective", "span", "--tokenizer", "wordpiece"], "use --tokenizer bpe"),
    (["train", "--max-iterz", "3"], "unknown flag --max-iterz for qkv train; did you mean --max-iters?"),
    (["translate", "{seq2seq}", "--text", "a", "--bem", "2"], "see `qkv translate --help`"),
    # issue 10: chat, quantize, and the new things a checkpoint path may be
    (["chat", "{gpt}"], "has no chat template"),
    # issue 11: serve
    (["serve", "{gpt}", "--port", "70000"], "port=70000 must be"),
    (["serve", "{gpt}", "--max-batch", "0"], "max_batch=0 must be"),
    (["serve", "{gpt}", "--max-body-bytes", "10"], "max_body_bytes=10 must be"),
    (["serve", "{seq2seq}"], "use `qkv translate`"),
    (["generate", "{gpt}", "--json-schema", "{plain}"], "the JSON schema is not valid JSON"),
    (["generate", "{gpt}", "--json-schema", "{notes}"], "is not a file"),
    (["chat", "{bert}"], "use `qkv embed`"),
    (["chat", "{fakegguf}"], "not a readable GGUF file"),
    (["generate", "{fakegguf}", "--prompt", "a"], "not a readable GGUF file"),
    (["eval", "{fakegguf}", "--data", "{corpus}"], "not a readable GGUF file"),
    # issue 23: a GGUF's vocabulary damaged, or of a kind qkv does not rebuild
    (["generate", "{badvocab}", "--prompt", "a"], "tokenizer.ggml.scores has 395 entries for 400 tokens"),
    (["chat", "{badvocab}"], "the file is damaged: convert the model again"),
    (["info", "{badvocab}"], "tokenizer.ggml.scores has 395 entries"),
    (["eval", "{bertvocab}", "--data", "{corpus}"], "'bert' tokenizer (tokenizer.ggml.model); qkv rebuilds"),
    (["serve", "{bertvocab}"], "SentencePiece ('llama') vocabularies only"),
    (["generate", "{gpt}", "--chat", "hi"], "has no chat template"),
    (["generate", "{gpt}", "--chat", "hi", "--prompt", "a"], "not both"),
    (["generate", "{gpt}", "--system", "be brief"], "--system goes with --chat"),
    (["eval", "{gpt}", "--data", "{corpus}", "--bits", "3"], "--bits 3 is not supported"),
    (["eval", "{gpt}", "--data", "{corpus}", "--window", "0"], "--window 0 must be a positive integer"),
    (["quantize", "{gpt}", "{out}/q", "--bits", "3"], "--bits 3 is not supported; choose 8"),
    (["quantize", "{gpt}", "{out}/q", "--bits", "4", "--group-size", "48"], "--group-size 48 is not supported"),
    (["quantize", "{int8}", "{out}/q", "--bits", "4"], "already quantized"),
    (["quantize", "{gpt}", "{notes}", "--bits", "8"], "not a qkv run (notes.txt"),
    (["quantize", "{gpt}", "{int8}", "--bits", "8"], "--overwrite to replace it"),
    (["quantize", "{bert}", "{out}/q", "--bits", "8"], "use `qkv embed`"),
    (["quantize", "{fakegguf}", "{out}/q", "--bits", "8"], "not a readable GGUF file"),
    (["bench", "decode", "--model", "{bert}"], "use `qkv embed`"),
    # 6. empty input is said, not silently accepted
    (["embed", "{bert}", "--text", ""], "--text is empty"),
    (["embed", "{bert}", "--file", "{empty}"], "has no sentences"),
    (["predict", "{classifier}", "--text", " "], "an input is empty"),
    (["translate", "{seq2seq}", "--text", ""], "the input is empty"),
    # 7. seeing inside: qkv attention / next / plot / experiment
    (["attention", "{gpt}", "--text", "First Citizen, hear me", "--out", "{out}/a.png"],
     "is 22 tokens but the model's context is 16; shorten it or truncate it (--truncate keeps the first 16)"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png", "--layer", "2"],
     "layer 2 is out of range: this model has 2 layers, numbered 0 to 1"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png", "--head", "4"],
     "head 4 is out of range: this model has 4 heads, numbered 0 to 3"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png", "--layer", "-1"],
     "--layer -1 must be an integer >= 0"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.jpg"], "use a file ending in .png (heat-maps)"),
    (["attention", "{gpt}", "--text", "First", "--out", "{notes}"], "use a file ending in .png"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png", "--format", "html"], "writes a .html file"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.html", "--head", "0"], "choose what a PNG shows"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png", "--map", "cross"],
     "a decoder has no cross-attention; --map takes self"),
    (["attention", "{gpt}", "--out", "{out}/a.png"], "pass the text to look at: --text TEXT"),
    (["attention", "{gpt}", "--text", "F€", "--out", "{out}/a.png"], "never saw"),
    (["attention", "{gpt}", "--text", "", "--out", "{out}/a.png"], "the text is empty"),
    (["attention", "{seq2seq}", "--text", "a", "--out", "{out}/a.png"], "pass it (--source TEXT)"),
    (["attention", "{gpt}", "--text", "a", "--source", "b", "--out", "{out}/a.png"], "is for encoder-decoders"),
    (["next", "{gpt}", "--text", "First Citizen, hear me"],
     "context is 16; shorten it or truncate it (--truncate keeps the last 16)"),
    (["next", "{gpt}", "--text", "First", "--top", "0"], "--top 0 must be a positive integer"),
    (["next", "{gpt}", "--text", "First", "--out", "{out}/n.svg"], "use a file ending in .png"),
    (["next", "{bert}", "--text", "a dog"], "put [MASK] in the text"),
    (["next", "{classifier}", "--text", "a"], "use `qkv predict`"),
    (["plot", "{notes}"], "has no metrics.jsonl; point at a run directory"),
    (["plot", "{bert}"], "has no metrics.jsonl"),
    (["plot", "{gpt}", "--out", "{out}/c.pdf"], "use a file ending in .png"),
    (["plot", "{gpt}", "--out", "{notes}"], "use a file ending in .png"),
    (["experiment", "nope"], "unknown experiment 'nope'; choose one of long-range, prenorm-warmup, attention-cost"),
    (["experiment", "kv-cache", "--quick", "--out-dir", "{notes}"], "already holds other files"),
    (["experiment", "kv-cache", "--quick", "--out-dir", "{plain}"], "is a file"),
    (["experiment", "kv-cache", "--quick", "--threads", "0", "--out-dir", "{out}/kv"], "--threads 0"),
    (["experiment", "kv-cache", "--quick", "--seed", "-1", "--out-dir", "{out}/kv"], "--seed -1"),
    # issue 14: torchrun launches (WORLD_SIZE as torchrun sets it) and --fsdp, refused before any rendezvous
    (TRAIN + ["--batch-size", "2"], "4 processes but --batch-size 2: each process needs at least one row",
     {"WORLD_SIZE": "4"}),
    (TRAIN + ["--batch-size", "6"], "--batch-size 6 does not split over 4 processes; pass a multiple of 4",
     {"WORLD_SIZE": "4"}),
    (["train", "--resume", "{gpt}", "--max-iters", "6"],
     "the resumed run's batch_size 4 does not split over 3 processes; resume with a world size", {"WORLD_SIZE": "3"}),
    (TRAIN + ["--fsdp"], "--fsdp shards the model over GPUs and needs CUDA"),
    (FINETUNE + ["--init", "{bert}", "--fsdp"], "--fsdp shards the model over GPUs and needs CUDA"),
    # issue 24: LoRA and adapters
    (FINETUNE + ["--init", "{bert}", "--lora", "--lora-targets", "qproj"], "LoRA target 'qproj' matches no module"),
    (FINETUNE + ["--init", "{bert}", "--lora", "--lora-rank", "0"], "lora rank=0 must be a positive integer"),
    (FINETUNE + ["--init", "{bert}", "--lora-rank", "-2"], "lora rank=-2 must be a positive integer"),
    (FINETUNE + ["--init", "none", "--lora"], "--lora adapts a pre-trained model; pass --init DIR"),
    (FINETUNE + ["--init", "{bert}", "--lora", "--quantized"], "use it with --task chat --lora"),
    (FINETUNE + ["--init", "{gpt}", "--lora"], "LoRA needs a Llama-layout decoder (SwiGLU FFN"),
    (["merge-adapter", "{bert}", "{out}/m", "--adapter", "{otheradapter}"], "the adapter was trained on another base"),
    (["merge-adapter", "{bert}", "{out}/m", "--adapter", "{notes}"], "has no adapter_config.json"),
    (["merge-adapter", "{bert}", "{out}/m"], "has no LoRA adapters; pass --adapter DIR"),
    (["finetune", "--task", "chat", "--init", "{gpt}", "--data", "{noassistant}", "--eval-data", "{noassistant}"],
     "has no assistant turn; the loss is on assistant turns only"),
    (["finetune", "--task", "chat", "--init", "{bert}", "--data", "{noassistant}", "--eval-data", "{noassistant}"],
     "needs a decoder"),
    (["merge-adapter", "{bert}", "{bert}/m", "--adapter", "{otheradapter}"], "inside"),
    (TRAIN + ["--max-bad-steps", "0"], "max_bad_steps=0 must be"),
    (TRAIN + ["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["bench", "ddp", "--batch", "3"], "--batch 3 must be even"),
    # issue 13: images (MNIST files, image flags, image checkpoints)
    (IMAGES[:4] + ["{badidx}"] + IMAGES[5:], "t10k-images-idx3-ubyte is not an IDX image file: expected magic number "
                                            "0x00000803 (2051) in its first 4 bytes, found 0x00000801"),
    (IMAGES[:4] + ["{badcsv}"] + IMAGES[5:],
     "mnist_5k_train_subset.csv line 2 has 784 values but a 28x28 image needs 785"),
    (IMAGES[:4] + ["{badlabel}"] + IMAGES[5:], "line 1 has label 12, outside the 10 classes 0..9"),
    (IMAGES[:4] + ["{plain}"] + IMAGES[5:], "is not a folder; point it at the MNIST folder"),
    (IMAGES[:4] + ["{notes}"] + IMAGES[5:], "has no t10k-images-idx3-ubyte(.gz)"),
    (IMAGES + ["--patch-size", "5"], "image_size=28 must be a multiple of patch_size=5"),
    (IMAGES + ["--model", "swin", "--window-size", "5"], "cannot be cut into 5x5 windows"),
    (IMAGES + ["--image-size", "32", "--patch-size", "8"], "MNIST images are 28x28 grayscale; set image_size=28"),
    (IMAGES + ["--test-in-train", "9500", "--val-images", "600"], "leave no test images"),
    (IMAGES + ["--heads", "2"], "heads='2' needs one value per stage"),
    (IMAGES + ["--depths", "2,,2"], "--depths expects comma-separated integers (e.g. 2,2), got '2,,2'"),
    (IMAGES + ["--image-std", "0.5,x"], "--image-std expects a number, got 'x'"),
    (IMAGES + ["--image-std", "0.5,0"], "image_std='0.5,0.0' needs 1 or channels=1 values"),
    (["generate", "{gpt}", "--top-k", "many"], "--top-k expects an integer, got 'many' (or none, to leave it unset)"),
    (TRAIN + ["--model", "swin"], "--model describe images; add --task image-classification"),
    (["predict", "{vit}", "--image", "{plain}"], "could not be read as an image"),
    (["predict", "{vit}", "--image", "{missing}"], "does not exist; pass an image file"),
    (["predict", "{vit}", "--text", "a"], "an image classifier reads --image FILE"),
    (["predict", "{vit}", "--image", "{png}", "--top", "0"], "--top 0 must be a positive integer"),
    (["predict", "{classifier}", "--image", "{png}"], "--image, --invert and --top are for image classifiers"),
    (["evaluate", "{vit}", "--out-dir", "{out}/ev"],
     "was not trained here, so it has no held-out split: pass --data DIR"),
    (["evaluate", "{vit}", "--out-dir", "{out}/ev", "--data", "{badidx}"], "expected magic number 0x00000803"),
    (["evaluate", "{vit}", "--task", "sst2", "--out-dir", "{out}/ev"], "drop --task"),
    (["attention", "{gpt}", "--image", "{png}", "--out", "{out}/a.png"], "--image is for image classifiers"),
    (["attention", "{vit}", "--text", "a", "--out", "{out}/a.png"], "an image classifier reads --image FILE"),
    (["attention", "{vit}", "--image", "{png}", "--out", "{out}/a.png", "--layer", "5"], "layer 5 is out of range"),
    (["bench", "vision", "--image-size", "20"], "--image-size 20 must be a multiple of the 16-pixel patch"),
    (["bench", "finetune", "--decoder", "{gpt}", "--decoder-layers", "2", "--only", "decoder"], "drop one"),
    # issue 20, data loss: a person's own file at every output path is replaced only with --overwrite; a
    # checkpoint's own files (and weights anywhere) never; nor an input, nor the checkpoint being read
    (["attention", "{gpt}", "--text", "First", "--out", "{mine_png}"], "already exists; pass --overwrite"),
    (["attention", "{gpt}", "--text", "First", "--out", "{mine_html}"], "already exists; pass --overwrite"),
    (["attention", "{bert}", "--text", "a", "--format", "bertviz", "--out", "{mine_pt}"], "already exists"),
    (["attention", "{bert}", "--text", "a", "--format", "bertviz", "--out", "{mine_json}"], "already exists"),
    (["attention", "{gpt}", "--text", "First", "--format", "bertviz", "--out", "{gpt}/config.json", "--overwrite"],
     "is a file of the checkpoint"),
    (["attention", "{bert}", "--text", "a", "--format", "bertviz", "--out", "{bert}/tokenizer.json", "--overwrite"],
     "never writes over a checkpoint's files"),
    (["next", "{gpt}", "--text", "First", "--out", "{mine_png}"], "already exists; pass --overwrite"),
    (["next", "{gpt}", "--text", "First", "--overwrite"], "there is no --out"),
    (["plot", "{gpt}", "--out", "{mine_png}"], "already exists; pass --overwrite"),
    (["plot", "{gpt}", "--out", "{gpt}/confusion.png", "--overwrite"], "is a file of the checkpoint"),
    (["translate", "{seq2seq}", "--text", "a", "--output", "{mine_txt}"], "already exists; pass --overwrite"),
    (["translate", "{seq2seq}", "--text", "a", "--output", "{seq2seq}/config.json", "--overwrite"],
     "is a file of the checkpoint"),
    (["translate", "{seq2seq}", "--text", "a", "--output", "{fakegguf}", "--overwrite"], "is a file of the checkpoint"),
    (["translate", "{seq2seq}", "--file", "{src}", "--output", "{src}", "--overwrite"], "is also this command's input"),
    (["translate", "{seq2seq}", "--file", "{src}", "--ref", "{ref}", "--metrics-json", "{mine_json}"],
     "--metrics-json {mine_json} already exists"),
    (["translate", "{seq2seq}", "--file", "{src}", "--ref", "{ref}", "--output", "{out}/t.txt", "--metrics-json",
      "{out}/t.txt"], "name the same file"),
    (["translate", "{seq2seq}", "--text", "a", "--overwrite"], "neither is given"),
    (["quantize", "{gpt}", "{gpt}", "--bits", "8", "--overwrite"],
     "OUT {gpt} is the checkpoint {gpt} this command reads"),
    (["quantize", "{gpt}", "{gpt}/q", "--bits", "8"], "is inside the checkpoint"),
    (["quantize", "{gpt}", "{notes}/..", "--bits", "8", "--overwrite"], "holds the checkpoint"),
    (FINETUNE + ["--init", "{bert}", "--out-dir", "{bert}", "--overwrite"], "is the checkpoint"),
    (["evaluate", "{classifier}", "--out-dir", "{notes}"], "already holds files that qkv did not write (notes.txt)"),
    # issue 20, flags accepted and ignored: each names why it does not apply
    (["bench", "decode", "--bits", "8"], "add --model PATH or drop them"),
    (["bench", "decode", "--no-llama-cpp"], "--no-llama-cpp choose what qkv bench decode --model compares"),
    (["bench", "decode", "--threads", "1", "--threads", "2"], "give --threads once"),
    (["attention", "{vit}", "--image", "{png}", "--out", "{out}/a.png", "--window", "1"],
     "a ViT attends over the whole image"),
    (["attention", "{gpt}", "--text", "a", "--out", "{out}/a.png", "--stage", "0"], "a text model has neither"),
    (["attention", "{swin}", "--image", "{png}", "--format", "bertviz", "--out", "{out}/a.json"],
     "bertviz shows attention over one token sequence"),
    (["attention", "{swin}", "--image", "{png}", "--out", "{out}/a.html", "--stage", "1"],
     "--stage chooses the stage a PNG shows"),
    (["attention", "{vit}", "--image", "{png}", "--out", "{out}/a.png", "--truncate"], "--truncate cuts a long text"),
    (["attention", "{seq2seq}", "--source", "a", "--text", "a", "--out", "{out}/a.png", "--map", "self"],
     "an encoder-decoder has no self-attention"),
    (["predict", "{classifier}", "--text", "a", "--top", "2"], "--top are for image classifiers"),
    (["predict", "{vit}", "--image", "{png}", "--task", "sst2"], "drop --task"),
    (["serve", "{bert}", "--quantized"], "drop --quantized"),
    (["serve", "{gpt}", "--host", "no-such-host.invalid"], "--host no-such-host.invalid does not resolve"),
    # issue 20, counts: 0 and negatives refused where they are parsed, not read as "default" or crashing
    (["evaluate", "{vit}", "--batch-size", "-5"], "--batch-size -5 must be a positive integer"),
    (["evaluate", "{vit}", "--batch-size", "0"], "--batch-size 0 must be a positive integer"),
    (["bench", "decode", "--rounds", "0"], "--rounds 0 must be a positive integer"),
    # issue 20, messages that say what is wrong
    (["predict", "{vit}", "--image", "{notes}"], "is a directory; pass an image file"),
    (["plot", "{missing}"], "does not exist; check the path"),
    (["train", "--task", "image-classification", "--resume", "{gpt}"],
     "--task image-classification conflicts with --resume"),
    (["generate", "gpt2"], "qkv never downloads models: if gpt2 is a Hugging Face model, get a local copy with "
                           "`huggingface-cli download gpt2 --local-dir DIR`"),
    (["chat", "HuggingFaceTB/SmolLM2-135M-Instruct"], "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct"),
    (["chat", "smollm2:135m"], "looks like an Ollama tag: pass the path of the model's .gguf file"),
    # issue 20: next/attention/eval load as the decoding commands do (--threads, --quantized); past the context
    (["next", "{gpt}", "--text", "First", "--threads", "0"], "--threads 0 must be a positive integer"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.html", "--threads", "-1"],
     "--threads -1 must be a positive integer"),
    (["eval", "{gpt}", "--data", "{corpus}", "--threads", "0"], "--threads 0 must be a positive integer"),
    (["generate", "{gpt}", "--prompt", "First", "--max-new-tokens", "40"],
     "exceeds the model's context max_len=16; lower max_new_tokens (--max-new-tokens) to at most 11, shorten the "
     "prompt, or let the window slide past the context (--context-shift"),
    # issue 19/20: --device, --chat-template and the API key's sources, checked before the model loads
    (["generate", "{gpt}", "--device", "cuda:x"], "--device 'cuda:x' is not a device; use cpu, cuda or cuda:N"),
    (["chat", "{gpt}", "--device", "mps"], "--device 'mps': qkv runs on cpu or cuda"),
    (["bench", "train", "--device", "tpu"], "--device 'tpu' is not a device; use cpu, cuda or cuda:N"),
    (["chat", "{gpt}", "--chat-template", "{plain}"], "does not render the messages' content; it is not a chat "
                                                      "template"),
    (["generate", "{gpt}", "--chat", "hi", "--chat-template", "{missing}"], "does not exist; give a Jinja template"),
    (["serve", "{gpt}", "--api-key-file", "{empty}"], "is empty; write the key on its first line"),
    (["serve", "{gpt}", "--api-key", "k", "--api-key-file", "{plain}"], "give the API key once"),
    # issue 23: export (the zoo's gpt is GPT-2-shaped, its bert pre-norm: no BERT class holds it)
    (["export", "{gpt}", "{int8}"], "OUT {int8} already holds a checkpoint; pass --overwrite"),
    (["export", "{gpt}", "{notes}"], "not a qkv run (notes.txt"),
    (["export", "{gpt}", "{gpt}/hf"], "is inside the checkpoint"),
    (["export", "{gpt}", "{gpt}/m.gguf"], "is inside the checkpoint"),
    (["export", "{gpt}", "{mine_txt}", "--format", "gguf"], "already exists; pass --overwrite"),
    (["export", "{gpt}", "{mine_txt}", "--format", "gguf", "--overwrite"], "is not a GGUF file"),
    (["export", "{gpt}", "{out}/m.gguf"], "pos='learned'"),
    (["export", "{gpt}", "{gpt}", "--overwrite"], "is the checkpoint"),
    (["export", "{gpt}", "{out}/hf", "--type", "f16"], "a Hugging Face export is float32: drop --type"),
    (["export", "{gpt}", "{out}/m.gguf", "--type", "q5_k"], "invalid choice: 'q5_k'"),
    (["export", "{gpt}", "{out}/m", "--merge"], "has none: drop --merge"),
    (["export", "{int8}", "{out}/q"], "holds quantized weights (int8 from qkv quantize)"),
    (["export", "{bert}", "{out}/b"], "no transformers encoder class (BERT) holds this model's norm_placement='pre'"),
    (["export", "{seq2seq}", "{out}/s"], "use `qkv translate`"),
]


@pytest.mark.parametrize("argv, phrase, env", [(c + ({},))[:3] for c in CASES],   # a phrase may name {paths}
                         ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(CASES)])
def test_case_is_one_line_and_touches_nothing(zoo, capsys, monkeypatch, argv, phrase, env):
    """A row's third entry, when there is one, is the environment it runs in (torchrun's variables)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert phrase.format(**paths(zoo)) in refused(zoo, capsys, monkeypatch, argv)


def test_every_command_has_a_table_row():
    named = {argv[0] for argv, *_ in CASES}
    assert set(COMMANDS) - {"info"} <= named, f"add CASES rows for {set(COMMANDS) - named}"


# ---- output files: every flag that names one has rows above -----------------------------------------
OUTPUT_FILES = {("attention", "--out"), ("next", "--out"), ("plot", "--out"), ("translate", "--output"),
                ("translate", "--metrics-json")}


def test_every_output_file_flag_is_in_the_table():
    """A new --out FILE must get a person's own file in its way (a CASES row with {mine_*}) and --overwrite."""
    named = OUTPUT_FILES
    found = {(name, a.option_strings[-1]) for name, p in _commands().items() for a in p._actions
             if a.option_strings and a.metavar in ("FILE", "FILE.png") and a.option_strings[-1] in ("--out", "--output",
                                                                                                    "--metrics-json")}
    assert found == named, found ^ named
    for command, flag in named:
        rows = [argv for argv, *_ in CASES if argv[0] == command and flag in argv]
        assert any(argv[argv.index(flag) + 1].startswith("{mine_") for argv in rows), (command, flag)
        assert "--overwrite" in {a for p in [_commands()[command]] for action in p._actions
                                 for a in action.option_strings}, command


def test_a_file_qkv_may_replace_is_replaced_whole_only_with_overwrite(zoo, capsys, monkeypatch):
    """The other half of the rule: with --overwrite a person's file is replaced (atomically: no temp file
    is left beside it), and a refused one is left byte for byte."""
    monkeypatch.chdir(zoo / "out")
    target = zoo / "out" / "mine.png"
    target.write_bytes(MINE["mine.png"])
    assert main(["plot", str(zoo / "gpt"), "--out", str(target)]) == 2
    assert target.read_bytes() == MINE["mine.png"]
    assert main(["plot", str(zoo / "gpt"), "--out", str(target), "--overwrite"]) == 0
    assert target.read_bytes().startswith(b"\x89PNG\r\n") and sorted(p.name for p in target.parent.iterdir()
                                                                    if p.name.startswith(".")) == []
    capsys.readouterr()


# ---- optional packages: each blocked in turn, asked for before any work ------------------------------
# argv, the modules blocked, the extra the one line names, the work that must not have started (patched to
# fail loudly: reaching it is a bug, exit 1)
BLOCKED = [
    (FINETUNE[:2] + ["wnut17", "--init", "{bert}", "--data", "{wnut}", "--eval-data", "{wnut}", "--max-iters", "1",
                     "--out-dir", "{out}/ft"], ("seqeval",), "metrics", "qkv.train.finetune.build_finetune_task"),
    (["evaluate", "{tagger}", "--out-dir", "{out}/ev"], ("seqeval",), "metrics", "qkv.train.finetune.evaluate"),
    (["translate", "{seq2seq}", "--file", "{src}", "--ref", "{ref}"], ("sacrebleu",), "metrics", "qkv.loading.load"),
    (["translate", "{seq2seq}", "--jsonl", "{docs}"], ("rouge_score",), "metrics", "qkv.loading.load"),
    (["attention", "{gpt}", "--text", "First", "--out", "{out}/a.png"], ("matplotlib",), "plots",
     "qkv.loading.load"),
    (["next", "{gpt}", "--text", "First", "--out", "{out}/n.png"], ("matplotlib",), "plots", "qkv.loading.load"),
    (["plot", "{gpt}", "--out", "{out}/c.png"], ("matplotlib",), "plots", "qkv.viz.curves.plot_curves"),
    (["experiment", "kv-cache", "--quick", "--out-dir", "{out}/kv"], ("matplotlib",), "plots", None),
    (["predict", "{vit}", "--image", "{png}"], ("PIL",), "vision", "qkv.loading.load"),
    (["attention", "{vit}", "--image", "{png}", "--out", "{out}/a.html"], ("PIL",), "vision", "qkv.loading.load"),
    (["serve", "{gpt}"], ("fastapi", "uvicorn"), "serve", "qkv.loading.load"),
    (["generate", "{gpt}", "--prompt", "a", "--json-schema", "{mine_json}"], ("llguidance",), "serve",
     "qkv.loading.load"),
    (["info", "{fakegguf}"], ("gguf",), "gguf", None),
]


@pytest.mark.parametrize("argv, modules, extra, work", BLOCKED,
                         ids=[" ".join(b[0][:2]) + f" -{b[1][0]}" for b in BLOCKED])
def test_a_missing_package_is_named_before_the_work(zoo, capsys, monkeypatch, argv, modules, extra, work):
    for name in [m for m in sys.modules if m.partition(".")[0] in modules] + list(modules):
        monkeypatch.setitem(sys.modules, name, None)          # import raises ModuleNotFoundError, as uninstalled
    if work is not None:
        module, _, attr = work.rpartition(".")

        def reached(*args, **kwargs):
            raise AssertionError(f"{work} ran before the missing package was named")
        monkeypatch.setattr(importlib.import_module(module), attr, reached)
    err = refused(zoo, capsys, monkeypatch, argv)
    assert f"pip install 'qkv[{extra}]'" in err, err


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(zoo, capsys, monkeypatch):
    monkeypatch.setattr(qkv.loading, "load", lambda *a, **k: pytest.fail("loaded the model"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = refused(zoo, capsys, monkeypatch, ["serve", "{gpt}", "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is already in use" in err, err


def test_the_attention_summary_names_the_layer_and_head_a_png_shows(zoo, capsys, monkeypatch):
    monkeypatch.chdir(zoo / "out")
    assert main(["attention", str(zoo / "gpt"), "--text", "First", "--out", "l0h1.png", "--layer", "0",
                 "--head", "1", "--overwrite"]) == 0
    assert "(self-attention layer 0 x head 1, 5 x 5 tokens)" in capsys.readouterr().out


def test_message_words():
    """Counts and articles in messages: "1 head", "an encoder" (issue 20 found "1 heads", "a encoder")."""
    from qkv.errors import InputError, article, counted
    from qkv.viz.maps import check_index
    assert (counted(1, "head"), counted(2, "head"), article("encoder"), article("decoder")) == \
        ("1 head", "2 heads", "an encoder", "a decoder")
    with pytest.raises(InputError, match="this model has 1 head, numbered 0$"):
        check_index(1, 1, "head")


def test_help_texts_say_each_default_once():
    """Once, not "(default: off) (default None)"; and every bench count says its default."""
    for name, p in _commands().items():
        for action in p._actions:
            assert (action.help or "").count("(default") <= 1, (name, action.option_strings, action.help)
            if name.startswith("bench") and _kind(action) is int and action.dest != "threads":
                assert "default" in action.help, (name, action.option_strings, action.help)


def test_bench_decode_defaults_are_the_benchmarks_own():
    import inspect
    from qkv.bench import decode, decode_model
    from qkv.cli.bench import DECODE_DEFAULTS
    for key, (with_model, synthetic) in DECODE_DEFAULTS.items():
        assert inspect.signature(decode_model.run).parameters[key].default == with_model
        assert inspect.signature(decode.run).parameters[key].default == synthetic


# ---- the sweep ---------------------------------------------------------------------------------------
# Per command: an argv that is valid but fails at a known point (a missing file) after its flags are
# checked, so a value that is accepted still ends fast; None where the command has no such point (then
# only values that must be refused are swept).
SENTINELS = {
    "train": ["train", "--preset", "tiny", "--data", "{missing}"],
    "finetune": ["finetune", "--task", "sst2", "--init", "none", "--data", "{missing}", "--eval-data", "{missing}"],
    "generate": ["generate", "{missing}"],
    "chat": ["chat", "{missing}"],
    "serve": ["serve", "{missing}"],
    "quantize": ["quantize", "{missing}", "{out}/q", "--bits", "8"],
    "eval": ["eval", "{missing}", "--data", "{corpus}"],
    "translate": ["translate", "{missing}", "--text", "ein hund"],
    "embed": ["embed", "{missing}", "--text", "a dog"],
    "predict": ["predict", "{missing}", "--text", "a dog"],
    "evaluate": ["evaluate", "{missing}"],
    "info": ["info", "{missing}"],
    "bench beam": ["bench", "beam", "--checkpoint", "{missing}"],
    "bench decode": ["bench", "decode", "--model", "{missing}"],
    "bench serve": ["bench", "serve", "{missing}"],
    "bench finetune": ["bench", "finetune", "--data", "{missing}"],
    "merge-adapter": ["merge-adapter", "{missing}", "{out}/m"],
    "export": ["export", "{missing}", "{out}/e"],
    "bench train": None, "bench encoder": None, "bench ddp": None, "bench vision": None,
    "attention": ["attention", "{missing}", "--text", "a", "--out", "{out}/a.png"],
    "next": ["next", "{missing}", "--text", "a"],
    "plot": ["plot", "{missing}", "--out", "{out}/c.png"],
    "experiment": ["experiment", "no-such-experiment"],
}
MUST_REFUSE = {int: ["abc", "1.5", "", "nan"], float: ["abc", "", "nan", "inf", "1e400"], "choice": ["bogus", ""],
               "path": [""]}
MAY_ACCEPT = {int: ["-1", "0", "99999999999999999999"], float: ["-1", "0", "-1e30", "1e30"], "choice": [],
              "path": ["{missing}", "{notes}", "{plain}", "{unwritable}"], str: ["", " ", "\\n"]}


def _commands() -> dict[str, argparse.ArgumentParser]:
    """'train' -> its parser, 'bench beam' -> the nested one, ..."""
    top = build_parser()
    found, todo = {}, [(name, p) for name, p in _subparsers(top).items()]
    while todo:
        name, p = todo.pop()
        nested = _subparsers(p)
        found.update({} if nested else {name: p})
        todo += [(f"{name} {n}", q) for n, q in nested.items()]
    return found


def _subparsers(parser) -> dict:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _kind(action):
    if action.choices:
        return "choice"
    if getattr(action.type, "__name__", "") == "path_arg":
        return "path"
    name = getattr(action.type, "__name__", "")
    return {"int": int, "int or none": int, "_positive": int, "float": float, "float or none": float}.get(name, str)


def _sweep():
    cases = []
    for command, parser in sorted(_commands().items()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:      # positionals, switches and --help
                continue
            kind, flag = _kind(action), action.option_strings[-1]
            for value in MUST_REFUSE.get(kind, []):
                cases.append((command, flag, value, True))
            if SENTINELS.get(command) is not None:
                for value in MAY_ACCEPT.get(kind, []):
                    cases.append((command, flag, value, False))
            elif kind is int:
                cases += [(command, flag, "0", True), (command, flag, "-1", True)]   # every bench count is >= 1
    return cases


SWEEP = _sweep()


def test_every_command_has_a_sentinel():
    missing = set(_commands()) - set(SENTINELS)
    assert not missing, f"add SENTINELS rows (an argv that fails at a missing file after flag checks) for {missing}"


@pytest.mark.parametrize("command, flag, value, must_refuse", SWEEP,
                         ids=[f"{c} {f}={v!r}" for c, f, v, _ in SWEEP])
def test_sweep_flag_values(zoo, capsys, monkeypatch, command, flag, value, must_refuse):
    base = SENTINELS.get(command) or command.split()
    err = refused(zoo, capsys, monkeypatch, base + [flag, value])
    if must_refuse:
        name = flag.lstrip("-")
        assert any(n in err for n in (flag, name, name.replace("-", "_"), "invalid choice")), err


CHECKPOINT_COMMANDS = {   # argv with {ck}, and the families it runs
    "generate": (["generate", "{ck}", "--prompt", "a", "--max-new-tokens", "1"], {"decoder"}),
    "chat": (["chat", "{ck}"], {"decoder"}),
    "serve": (["serve", "{ck}"], {"decoder", "encoder", "fine-tuned encoder"}),
    "quantize": (["quantize", "{ck}", "{out}/q", "--bits", "8"], {"decoder"}),
    "export": (["export", "{ck}", "{out}/e"], {"decoder", "encoder", "fine-tuned encoder"}),
    "eval": (["eval", "{ck}", "--data", "{corpus}"], {"decoder"}),
    "translate": (["translate", "{ck}", "--text", "a"], {"encoder-decoder"}),
    "embed": (["embed", "{ck}", "--text", "a"], {"encoder", "fine-tuned encoder"}),
    "predict": (["predict", "{ck}", "--text", "a"], {"fine-tuned encoder", "image classifier"}),
    "evaluate": (["evaluate", "{ck}", "--out-dir", "{out}/evaluate"], {"fine-tuned encoder", "image classifier"}),
    "info": (["info", "{ck}"], set(FAMILIES.values())),
    "finetune": (["finetune", "--task", "sst2", "--init", "{ck}", "--data", "{missing}", "--eval-data", "{sst2}"],
                 {"encoder", "fine-tuned encoder", "decoder"}),      # issue 24: a decoder classifies too
    "train --resume": (["train", "--resume", "{ck}"], {"decoder"}),
    "bench beam": (["bench", "beam", "--checkpoint", "{ck}"], {"encoder-decoder"}),
    "bench serve": (["bench", "serve", "{ck}", "--clients", "1", "--max-tokens", "1", "--no-hf"], {"decoder"}),
    "attention": (["attention", "{ck}", "--text", "a", "--out", "{out}/a.png"], set(FAMILIES.values())),
    "next": (["next", "{ck}", "--text", "a [MASK]"], {"decoder", "encoder", "encoder-decoder"}),
}
USES = {"decoder": "qkv generate", "encoder": "qkv embed", "fine-tuned encoder": "qkv predict",
        "encoder-decoder": "qkv translate", "image classifier": "qkv predict --image"}
CHECKPOINT_SWEEP = [(c, ck) for c, (_, ok) in CHECKPOINT_COMMANDS.items()
                    for ck in [*FAMILIES, *DAMAGED, "missing", "plain", "notes"]
                    if FAMILIES.get(ck) not in ok or c == "train --resume"]


@pytest.mark.parametrize("command, ck", CHECKPOINT_SWEEP)
def test_sweep_checkpoints(zoo, capsys, monkeypatch, command, ck):
    argv, runs = CHECKPOINT_COMMANDS[command]
    err = refused(zoo, capsys, monkeypatch, [a.replace("{ck}", "{" + ck + "}") for a in argv])
    if ck in FAMILIES and command != "train --resume":
        assert USES[FAMILIES[ck]] in err                          # names the command that fits
    if ck == "badconfig" or (ck == "truncated" and "decoder" in runs):   # both damage a decoder run
        assert "truncated or corrupt" in err or "not valid JSON" in err


def test_the_checkpoint_sweep_covers_every_command_that_takes_one():
    takes = {name for name, p in _commands().items()
             if any(a.metavar in ("DIR", "PATH") and not a.option_strings for a in p._actions)}
    assert takes <= {c.split(" --")[0] for c in CHECKPOINT_COMMANDS}, takes     # "train --resume" -> "train"
