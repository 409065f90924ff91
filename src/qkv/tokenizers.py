"""Text <-> token ids, one interface over char-level and byte-level BPE tokenizers.

Both kinds are real ``tokenizers`` library objects, so every qkv checkpoint stores its tokenizer the same
way, as ``tokenizer.json``, readable by any tool that reads Hugging Face tokenizers.

    >>> tok = Tokenizer.train_char("hello")
    >>> tok.encode("hell"), tok.decode([3, 1])
    ([1, 0, 2, 2], 'oh')

char: one token per character (WordLevel model, every character its own piece). Vocabulary = the
      sorted distinct characters of the training text; an unseen character is an error naming the fix.
bpe:  byte-level BPE (Sennrich et al., 2016; GPT-2's byte-level variant) trained at a chosen vocab size;
      it can encode any string.
wordpiece: BERT's tokenizer (Devlin et al., 2019; Wu et al., 2016), trained here or read from a BERT
      vocab.txt. Text is cleaned, optionally lowercased and stripped of accents, split on whitespace and
      punctuation, then each word greedily into the longest vocabulary pieces ("playing" -> "play ##ing");
      a word with no split is [UNK]. Models see it wrapped in special tokens, with segment (type) ids:

          single:  [CLS] a b [SEP]              type ids 0 0 0 0
          pair:    [CLS] a b [SEP] c d [SEP]    type ids 0 0 0 0 1 1 1
sentencepiece: a BPE over SentencePiece pieces ("▁" for a space, <0xNN> byte pieces), as Llama 2's
      tokenizer.json and a GGUF's 'llama' vocabulary (``qkv.interop.gguf_sentencepiece``) have it.

``encode`` never adds special tokens (language modelling wants the bare text); ``encode_for_model`` adds
them, and returns the backend ``Encoding`` with ids, type ids, attention mask, word ids and offsets.

Released models say which tokens are special in ``tokenizer_config.json`` (bos/eos/pad/unk token, whether
a prompt starts with bos, and the chat template), and ``generation_config.json`` may add more ids that
end a reply. ``from_dir`` reads them, ``save`` writes them back, and they win over the names guessed here
(``<eos>``, ``</s>``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Encoding, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from .errors import CheckpointError, InputError

EOS_NAMES = ("<eos>", "<|endoftext|>", "</s>")
BOS_NAMES = ("<bos>", "<s>")
PAD_NAMES = ("<pad>", "[PAD]")
CLS_NAMES = ("[CLS]", "<cls>")
SEP_NAMES = ("[SEP]", "<sep>")
MASK_NAMES = ("[MASK]", "<mask>")
UNK_NAMES = ("[UNK]", "<unk>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")    # ids 0..4 in a trained vocabulary
KINDS = {models.WordLevel: "char", models.BPE: "bpe", models.WordPiece: "wordpiece"}


SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")    # tokenizer_config.json's names


class Tokenizer:
    def __init__(self, backend: Backend, specials: dict[str, str] | None = None, chat_template: str | None = None,
                 add_bos: bool = False, extra_stop_ids: Iterable[int] = (), add_eos: bool = False):
        """specials: {"bos_token": "<s>", ...} as tokenizer_config.json names them (they win over the guesses);
        chat_template: the Jinja template of ``qkv.chat``; add_bos: prompts start with bos (Llama's rule);
        extra_stop_ids: ids besides eos that end a reply (generation_config.json's eos_token_id list);
        add_eos: prompts end with eos (a few embedding models' rule)."""
        self.backend = backend
        # a BPE behind SentencePiece's "▁" spaces (a GGUF's 'llama' vocabulary, Llama 2's tokenizer.json)
        sentencepiece = isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace)
        self.kind = "sentencepiece" if sentencepiece else KINDS.get(type(backend.model), "bpe")
        vocab = backend.get_vocab(with_added_tokens=True)
        self.specials = {k: v for k, v in (specials or {}).items() if k in SPECIAL_KEYS and v in vocab}
        self.chat_template, self.add_bos, self.add_eos = chat_template, add_bos, add_eos
        self.eos_id = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
        self.pad_id = next((vocab[n] for n in PAD_NAMES if n in vocab), None)
        self.bos_id = next((vocab[n] for n in BOS_NAMES if n in vocab), None)
        self.unk_id = next((vocab[n] for n in UNK_NAMES if n in vocab), None)
        for key, name in self.specials.items():
            setattr(self, key.replace("_token", "_id"), vocab[name])
        self.extra_stop_ids = tuple(i for i in extra_stop_ids if i != self.eos_id)
        self.cls_id = next((vocab[n] for n in CLS_NAMES if n in vocab), None)
        self.sep_id = next((vocab[n] for n in SEP_NAMES if n in vocab), None)
        self.mask_id = next((vocab[n] for n in MASK_NAMES if n in vocab), None)
        # Char vocabularies map one character to one id: a dict lookup is far faster than the backend
        # (bench/README.md, "Figures behind the code's comments"), and a test holds the two equal.
        # (Only without special tokens: "<eos>" inside text must still become one token.)
        plain_chars = self.kind == "char" and not backend.get_added_tokens_decoder()
        self._char_ids = {t: i for t, i in vocab.items() if len(t) == 1} if plain_chars else None

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def train_char(cls, text: str, special_tokens: Iterable[str] = ()) -> "Tokenizer":
        chars = sorted(set(text))
        specials = list(special_tokens)
        vocab = {c: i for i, c in enumerate(specials + chars)}
        backend = Backend(models.WordLevel(vocab, unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        if specials:
            backend.add_special_tokens(specials)
        return cls(backend)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int,
                  special_tokens: Iterable[str] = ("<eos>",)) -> "Tokenizer":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        backend.train_from_iterator(texts, trainer)
        return cls(backend)

    @classmethod
    def train_wordpiece(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> "Tokenizer":
        """BERT's WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4.

        >>> tok = Tokenizer.train_wordpiece(["the cat sat", "the cats sat"] * 10, vocab_size=60)
        >>> tok.backend.encode("The cats", "sat").tokens             # doctest: +SKIP
        ['[CLS]', 'the', 'cats', '[SEP]', 'sat', '[SEP]']
        """
        backend = Backend(models.WordPiece(unk_token="[UNK]"))
        _bert_pipeline(backend, lowercase)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                            show_progress=False)
        backend.train_from_iterator(texts, trainer)
        _bert_template(backend, "[CLS]", "[SEP]")
        return cls(backend)

    @classmethod
    def from_bert_vocab(cls, path: str | Path, lowercase: bool = True, strip_accents: bool | None = None,
                        chinese_chars: bool = True, specials: dict[str, str] | None = None) -> "Tokenizer":
        """A BERT vocab.txt (one token per line, the line number is the id), wired as BERT's tokenizer.

        specials: {"unk_token": ..., "cls_token": ..., ...} where they are not [UNK] [CLS] [SEP] [PAD] [MASK].
        """
        names = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]", **(specials or {})}
        try:
            backend = Backend(models.WordPiece.from_file(str(path), unk_token=names["unk_token"]))
        except Exception as e:  # the library raises plain Exceptions for unreadable files
            raise CheckpointError(f"{path} is not a readable BERT vocab.txt ({e}); re-save the tokenizer") \
                from None
        _bert_pipeline(backend, lowercase, strip_accents, chinese_chars)
        vocab = backend.get_vocab()
        backend.add_special_tokens([n for n in names.values() if n in vocab])
        if names["cls_token"] in vocab and names["sep_token"] in vocab:
            _bert_template(backend, names["cls_token"], names["sep_token"])
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the library raises plain Exceptions for malformed files
            raise CheckpointError(f"{path} is not a valid tokenizer.json ({e}); re-save the tokenizer") from None
        # qkv pads batches itself, with a key mask. A file saved with padding on (sentence-transformers'
        # MiniLM: Fixed 128) would make every text 128 ids whose [PAD]s a batch reads as real tokens: several
        # times the work of a fine-tuning step on SST-2 (bench/README.md), and other logits. transformers
        # drops it too unless asked.
        backend.no_padding()
        return cls(backend)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer | None":
        """tokenizer.json, GPT-2's vocab.json + merges.txt, or BERT's vocab.txt (options from
        tokenizer_config.json when present); None when the directory has none of them."""
        d = Path(directory)
        options = _tokenizer_config(d / "tokenizer_config.json")
        if (d / "tokenizer.json").is_file():
            tok = cls.from_file(d / "tokenizer.json")
            tok = cls(tok.backend, {k: _token_name(options.get(k)) for k in SPECIAL_KEYS},
                      _chat_template(d, options), bool(options.get("add_bos_token", False)),
                      _generation_eos_ids(d / "generation_config.json"), bool(options.get("add_eos_token", False)))
            normalizer = tok.backend.normalizer
            # transformers lets tokenizer_config.json's do_lower_case override the saved normalizer; so do we
            if isinstance(normalizer, normalizers.BertNormalizer) and "do_lower_case" in options \
                    and normalizer.lowercase != bool(options["do_lower_case"]):
                tok.backend.normalizer = normalizers.BertNormalizer(
                    clean_text=normalizer.clean_text, handle_chinese_chars=normalizer.handle_chinese_chars,
                    strip_accents=normalizer.strip_accents, lowercase=bool(options["do_lower_case"]))
            return tok
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            backend = Backend(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
            backend.add_special_tokens([n for n in EOS_NAMES if n in vocab])
            return cls(backend)
        if (d / "vocab.txt").is_file():
            specials = {k: _token_name(v) for k, v in options.items()
                        if k.endswith("_token") and _token_name(v)}
            return cls.from_bert_vocab(d / "vocab.txt", lowercase=bool(options.get("do_lower_case", True)),
                                       strip_accents=options.get("strip_accents"),
                                       chinese_chars=bool(options.get("tokenize_chinese_chars", True)),
                                       specials=specials)
        return None

    def save(self, path: str | Path) -> None:
        """tokenizer.json at ``path``; special token names and the chat template, when there are any, go to
        tokenizer_config.json beside it, extra stop ids to generation_config.json (where Hugging Face tools
        read them)."""
        self.backend.save(str(path))
        config = dict(self.specials)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        if self.add_bos:
            config["add_bos_token"] = True
        if self.add_eos:
            config["add_eos_token"] = True
        if config:
            (Path(path).parent / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                                     encoding="utf-8")
        if self.extra_stop_ids:
            (Path(path).parent / "generation_config.json").write_text(
                json.dumps({"eos_token_id": list(self.stop_ids)}) + "\n", encoding="utf-8")

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a reply: eos (the end-of-turn token of chat models) and any extra ones."""
        return ((self.eos_id,) if self.eos_id is not None else ()) + self.extra_stop_ids

    def prompt_ids(self, text: str) -> list[int]:
        """``encode(text)``, after bos and before eos when this tokenizer's models expect them (``add_bos``,
        ``add_eos``)."""
        ids = self.encode(text)
        ids = [self.bos_id] + ids if self.add_bos and self.bos_id is not None else ids
        return ids + [self.eos_id] if self.add_eos and self.eos_id is not None else ids

    # ---- use ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self._char_ids is not None:
            try:
                return [self._char_ids[c] for c in text]
            except KeyError:
                pass                        # fall through to the backend for the error message
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        except Exception as e:  # WordLevel without an unk token raises on unseen characters
            unseen = sorted({c for c in text if self.backend.token_to_id(c) is None})
            raise InputError(f"text has characters this {self.kind} tokenizer never saw: {unseen!r}; "
                             f"remove them or train the tokenizer on text that has them ({e})") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_for_model(self, text: str | list[str], pair: str | list[str] | None = None,
                         max_len: int | None = None) -> Encoding:
        """One text (or a pair) as a model reads it: special tokens added by the post-processor
        ([CLS] a [SEP] b [SEP] for WordPiece), truncated longest-first to ``max_len`` tokens when given.

        A list of words is taken as already split (tagging: one label per word). The result is the
        backend's ``Encoding``: ``.ids``, ``.type_ids``, ``.attention_mask``, ``.word_ids``, ``.offsets``
        (characters in its own text), ``.sequence_ids`` (0, 1, None for specials), ``.char_to_token``.
        """
        return self.encode_batch_for_model([text], None if pair is None else [pair], max_len)[0]

    def encode_batch_for_model(self, texts: list, pairs: list | None = None,
                               max_len: int | None = None) -> list[Encoding]:
        """``encode_for_model`` over a batch (the backend runs it in parallel); not padded."""
        if pairs is not None and len(pairs) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(pairs)} pairs; pass one pair per text")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        pretokenized = bool(texts) and isinstance(texts[0], (list, tuple))
        saved = self.backend.truncation
        if max_len is not None:
            self.backend.enable_truncation(max_len)
        try:
            return self.backend.encode_batch(inputs, is_pretokenized=pretokenized, add_special_tokens=True)
        finally:                            # the backend's setting is shared state: put it back
            if saved is None:
                self.backend.no_truncation()
            else:
                self.backend.enable_truncation(**saved)

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_text(self, i: int) -> str:
        return self.decode([i])


# ---- BERT's pipeline ------------------------------------------------------------------------------------
def _bert_pipeline(backend: Backend, lowercase: bool, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> None:
    """BERT's text cleaning, word splitting and decoding. strip_accents None follows lowercase (BERT's rule)."""
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")


def _bert_template(backend: Backend, cls_token: str, sep_token: str) -> None:
    """[CLS] $A [SEP] for one text, [CLS] $A [SEP] $B [SEP] for a pair, B's tokens with type id 1."""
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(t, backend.token_to_id(t)) for t in (cls_token, sep_token)])


def _tokenizer_config(path: Path) -> dict:
    """tokenizer_config.json as a dict ({} when absent): do_lower_case, strip_accents, special token names."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _chat_template(d: Path, options: dict) -> str | None:
    """The chat template: chat_template.jinja (transformers >= 4.50 writes it there) or tokenizer_config.json's
    string (or the one named "default" in a list of named templates)."""
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = options.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) else None


def _generation_eos_ids(path: Path) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (an int or a list: Llama 3 ends turns with several ids)."""
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ()
    eos = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else []
    return tuple(i for i in eos if isinstance(i, int))


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
