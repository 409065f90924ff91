"""Greedy and beam search for the encoder-decoder, teacher forcing, and the copy task end to end.

Legend: B sources, S source length, L target length, V vocab.
"""

import dataclasses
import itertools

import pytest
import torch

from qkv import ModelConfig
from qkv.data.pairs import PairBatches, teacher_forcing
from qkv.errors import InputError
from qkv.models import EncoderDecoder
from qkv.train.optim import make_optimizer
from qkv.translate import SearchConfig, beam_search, greedy_search

from tiny_models import tiny_model

PAD, BOS, EOS = 0, 1, 2


def tiny_seq2seq(V: int = 12, seed: int = 0, **overrides) -> EncoderDecoder:
    return tiny_model(EncoderDecoder, V, seed, **overrides)


def sources(B: int, S: int, V: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V, (B, S), generator=torch.Generator().manual_seed(seed))


def test_teacher_forcing_shifts_the_seeds_example():
    words = "I like eating mushrooms".split()
    inp, labels = teacher_forcing(words, "<bos>", "<eos>")
    assert inp == ["<bos>", "I", "like", "eating", "mushrooms"]
    assert labels == ["I", "like", "eating", "mushrooms", "<eos>"]
    assert inp[1:] == labels[:-1]                     # position i predicts the token at i + 1


def test_collate_pads_and_masks():
    data = PairBatches([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], [([5], [6])], PAD, BOS, EOS, seed=0)
    batch = data.collate(data.splits["train"])
    assert batch["src_BS"].tolist() == [[5, 6, 7], [5, PAD, PAD]]
    assert batch["src_mask_BS"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["ids_BL"].tolist() == [[BOS, 8, 9, PAD, PAD], [BOS, 8, 9, 10, 11]]
    assert batch["targets_BL"].tolist() == [[8, 9, EOS, -100, -100], [8, 9, 10, 11, EOS]]


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_decoding_equals_uncached(beam):
    model = tiny_seq2seq()
    src_BS = sources(3, 6)
    cached = beam_search(model, src_BS, None, BOS, EOS, SearchConfig(beam_size=beam, max_new_tokens=8))
    plain = beam_search(model, src_BS, None, BOS, EOS, SearchConfig(beam_size=beam, max_new_tokens=8,
                                                                      use_cache=False))
    assert cached == plain


def test_beam_of_one_is_greedy_and_greedy_is_argmax():
    model = tiny_seq2seq(seed=1)
    src_BS = sources(2, 5, seed=1)
    cfg = SearchConfig(beam_size=1, max_new_tokens=6)
    out = greedy_search(model, src_BS, None, BOS, EOS, cfg)
    assert beam_search(model, src_BS, None, BOS, EOS, cfg) == out
    for b in range(2):                                # each token is the argmax given the prefix
        prefix = [BOS] + out[b]
        with torch.no_grad():
            logits = model(src_BS[b:b + 1], torch.tensor([prefix])).logits[0]
        assert logits[:len(out[b])].argmax(-1).tolist() == out[b]


def wide_model(V: int, seed: int) -> EncoderDecoder:
    """Weights wide enough that distributions are peaked and depend on the source (answers differ)."""
    model = tiny_seq2seq(V=V, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


def test_greedy_search_ends_each_source_at_its_own_eos():
    """Batched greedy search against a one-source-at-a-time loop that recomputes everything: argmax, stop at
    <eos> (not returned), or return all tokens when the budget runs out. Sources end at different steps."""
    model = wide_model(V=8, seed=11)
    src_BS = sources(6, 5, V=8, seed=11)
    src_BS[2, 3:] = PAD
    mask_BS = src_BS != PAD
    budget = 7
    expected, lengths = [], set()
    for b in range(6):
        src_1S, prefix = src_BS[b:b + 1, :int(mask_BS[b].sum())], [BOS]
        for _ in range(budget):
            with torch.no_grad():
                nxt = int(model(src_1S, torch.tensor([prefix])).logits[0, -1].argmax())
            if nxt == EOS:
                break
            prefix.append(nxt)
        expected.append(prefix[1:])
        lengths.add((len(prefix) - 1, nxt == EOS))
    for use_cache in (True, False):
        cfg = SearchConfig(beam_size=1, max_new_tokens=budget, use_cache=use_cache)
        assert greedy_search(model, src_BS, mask_BS, BOS, EOS, cfg) == expected
    assert len(lengths) >= 3 and any(ended for _, ended in lengths) and (budget, False) in lengths


def sequence_logprob(model, src_1S, tokens: list[int], src_mask_1S=None) -> float:
    with torch.no_grad():
        logp = model(src_1S, torch.tensor([[BOS] + tokens[:-1]]), src_mask_BS=src_mask_1S).logits[0].log_softmax(-1)
    return sum(logp[i, t].item() for i, t in enumerate(tokens))


def test_wide_beam_finds_the_best_sequence_of_the_whole_space_by_brute_force():
    """With a beam as wide as every live prefix, beam search is exhaustive: for each source of a padded batch
    it must return the best of ALL sequences it could emit (any token but <eos> at each step, <pad> and
    <bos> included, ended by <eos> or cut at the budget of T tokens), scored as beam search scores them:
    log-probability / (tokens, <eos> included) ** length_penalty."""
    V, T = 5, 3
    model = wide_model(V=V, seed=7)         # peaked, source-dependent distributions, no near-ties
    src_BS = sources(3, 4, V=V, seed=7)
    src_BS[1, 2:] = PAD
    mask_BS = src_BS != PAD
    body = [t for t in range(V) if t != EOS]
    candidates = [list(b) + [EOS] for n in range(T) for b in itertools.product(body, repeat=n)]
    candidates += [list(b) for b in itertools.product(body, repeat=T)]              # cut at the budget
    logp = [{tuple(seq): sequence_logprob(model, src_BS[b:b + 1], seq, mask_BS[b:b + 1]) for seq in candidates}
            for b in range(3)]
    answers = {}
    for lp in (0.0, 1.0, 2.5):
        cfg = SearchConfig(beam_size=V ** T, max_new_tokens=T, length_penalty=lp, early_stopping=False)
        answers[lp] = beam_search(model, src_BS, mask_BS, BOS, EOS, cfg)
        for b in range(3):
            scores = {seq: lp_b / len(seq) ** lp for seq, lp_b in logp[b].items()}
            best = max(scores, key=scores.get)
            assert scores[best] - sorted(scores.values())[-2] > 1e-4, "a near tie: pick another seed"
            assert answers[lp][b] == [t for t in best if t != EOS], f"source {b}, length_penalty {lp}"
    # What makes the check strict: the penalty and the source change the answer, and <bos>/<pad> appear.
    assert len({str(a) for a in answers.values()}) == 3 and len({str(a) for a in answers[2.5]}) == 3
    assert any(t in (PAD, BOS) for a in answers.values() for seq in a for t in seq)


def reference_beam_search(model, src_1S, K: int, budget: int, lp: float, early_stopping: bool) -> list[int]:
    """Beam search as the module docstring states it, written plainly for one source: no cache, no batching,
    every prefix recomputed. Each step ranks all (beam, token) pairs; among the 2K best, those ending in
    <eos> within the top K retire, scored sum log p / length ** lp, and the K best others live on."""
    beams, finished = [(0.0, [])], []
    for t in range(1, budget + 1):
        candidates = []
        for score, tokens in beams:
            with torch.no_grad():
                logp = model(src_1S, torch.tensor([[BOS] + tokens])).logits[0, -1].log_softmax(-1)
            candidates += [(score + logp[v].item(), tokens + [v]) for v in range(logp.shape[0])]
        candidates.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, tokens) in enumerate(candidates[:2 * K]):
            if tokens[-1] == EOS:
                if rank < K:
                    finished.append((score / t ** lp, tokens[:-1]))
            elif len(beams) < K:
                beams.append((score, tokens))
        if len(finished) >= K:
            finished = sorted(finished, key=lambda h: -h[0])[:K]
            if early_stopping or finished[-1][0] >= beams[0][0] / t ** lp:
                return max(finished, key=lambda h: h[0])[1]
    finished += [(score / budget ** lp, tokens) for score, tokens in beams]
    return max(finished, key=lambda h: h[0])[1]


@pytest.mark.parametrize("K,early_stopping", [(1, True), (2, True), (2, False), (3, False)])
@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_batched_beam_search_equals_a_plain_reference(K, early_stopping, lp):
    model = wide_model(V=8, seed=11)
    src_BS = sources(6, 5, V=8, seed=11)
    src_BS[2, 3:] = PAD
    mask_BS = src_BS != PAD
    cfg = SearchConfig(beam_size=K, max_new_tokens=7, length_penalty=lp, early_stopping=early_stopping)
    expected = [reference_beam_search(model, src_BS[b:b + 1, :int(mask_BS[b].sum())], K, 7, lp, early_stopping)
                for b in range(6)]
    assert beam_search(model, src_BS, mask_BS, BOS, EOS, cfg) == expected
    assert beam_search(model, src_BS, mask_BS, BOS, EOS, dataclasses.replace(cfg, use_cache=False)) == expected
    assert len({len(e) for e in expected}) >= 2                    # sources end at different lengths


def test_batched_beams_equal_one_source_at_a_time():
    model = tiny_seq2seq(seed=4)
    src_BS = sources(3, 6, seed=4)
    src_BS[1, 4:] = PAD
    mask_BS = src_BS != PAD
    cfg = SearchConfig(beam_size=4, max_new_tokens=8)
    together = beam_search(model, src_BS, mask_BS, BOS, EOS, cfg)
    alone = [beam_search(model, src_BS[b:b + 1, :int(mask_BS[b].sum())], None, BOS, EOS, cfg)[0] for b in range(3)]
    assert together == alone


def test_bad_search_settings_are_errors():
    with pytest.raises(InputError, match="beam_size"):
        SearchConfig(beam_size=0)
    with pytest.raises(InputError, match="max_new_tokens"):
        SearchConfig(max_new_tokens=0)


def test_copy_task_learns_to_copy_exactly():
    """The whole encoder-decoder learns: copy random symbol strings, 100% exact match within 1,000 steps.

    How many steps it takes depends on the CPU's kernels (AVX2 and AVX-512 round differently, and a
    constant lr of 3e-3 has loss spikes), so greedy decoding is scored every 100 steps until it is exact.
    """
    torch.manual_seed(0)
    V = 13
    g = torch.Generator().manual_seed(0)

    def random_pairs(n):
        lengths = torch.randint(3, 9, (n,), generator=g).tolist()
        return [(s, s) for s in (torch.randint(3, V, (k,), generator=g).tolist() for k in lengths)]

    data = PairBatches(random_pairs(4000), random_pairs(100), PAD, BOS, EOS, seed=0)
    model = EncoderDecoder(ModelConfig(vocab_size=V, max_len=12, n_layers=2, d_model=64, n_heads=4,
                                       pos="learned", dropout=0.0))
    optimizer = make_optimizer(model, 3e-3, 0.0, (0.9, 0.98))
    src = [s for s, _ in data.splits["val"]]
    S = max(map(len, src))
    src_BS = torch.tensor([s + [PAD] * (S - len(s)) for s in src])
    exacts = []
    for step in range(1, 1001):
        model.train()
        loss = model(**data.collate(random_pairs(32))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            model.eval()
            out = greedy_search(model, src_BS, src_BS != PAD, BOS, EOS,
                                SearchConfig(beam_size=1, max_new_tokens=10))
            exacts.append(sum(o == s for o, s in zip(out, src)) / len(src))
            if exacts[-1] == 1.0:
                break
    assert exacts[-1] == 1.0, f"exact match every 100 steps: {exacts}, last loss {loss.item():.3f}"


# ---- the command line on bad input --------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    from qkv import save
    from qkv.tokenizers import Tokenizer
    tok = Tokenizer.train_char("abc de", special_tokens=("<pad>", "<bos>", "<eos>"))
    model = tiny_seq2seq(V=tok.vocab_size)
    save(model, tmp_path / "m", tok)
    return tmp_path / "m"


def test_translate_batches_by_length_and_returns_the_input_order(tmp_path):
    """Texts of different lengths, sorted and batched two at a time with padding: each output is what the
    text gets alone; the budget defaults to the model's positions; bad input names the fix."""
    from qkv import load, save
    from qkv.tokenizers import Tokenizer
    from qkv.translate import _budget, translate
    tok = Tokenizer.train_char("abcde fgh", special_tokens=("<pad>", "<bos>", "<eos>"))
    model = tiny_seq2seq(V=tok.vocab_size, seed=5)
    with torch.no_grad():                                  # wide weights: outputs that differ between sources
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    save(model, tmp_path / "m", tok)
    model = load(tmp_path / "m")
    texts = ["abc de", "a", "fgh ba", "edcba hg", "ggg", "b a"]
    cfg = SearchConfig(beam_size=2, max_new_tokens=6)
    together = translate(model, texts, cfg, batch_size=2)
    assert together == [translate(model, [t], cfg)[0] for t in texts]
    assert len(set(together)) >= 3
    assert _budget(model, SearchConfig()) == _budget(model, SearchConfig(max_new_tokens=99)) == 15
    assert _budget(model, cfg) == 6
    with pytest.raises(InputError, match="source 1 is empty"):
        translate(model, ["abc", ""], cfg)
    with pytest.raises(InputError, match="batch_size"):
        translate(model, texts, cfg, batch_size=0)
    with pytest.raises(InputError, match="source 0 has 20 tokens but the model has 16 positions"):
        translate(model, ["abcd" * 5], cfg)
    assert translate(model, ["abcd" * 5], cfg, truncate=True) == translate(model, ["abcd" * 4], cfg)


def test_translate_reads_sources_with_the_source_vocabulary(tmp_path):
    """A model with separate vocabularies encodes sources with its source tokenizer and decodes with the target's."""
    from qkv import load, save
    from qkv.tokenizers import Tokenizer
    from qkv.translate import translate
    specials = ("<pad>", "<bos>", "<eos>")
    src_tok, tgt_tok = Tokenizer.train_char("xyz w", special_tokens=specials), Tokenizer.train_char("abc",
                                                                                                    special_tokens=specials)
    model = wide_model(V=tgt_tok.vocab_size, seed=2)
    model = EncoderDecoder(ModelConfig(**{**vars(model.cfg), "src_vocab_size": src_tok.vocab_size}))
    model.src_tokenizer = src_tok
    save(model, tmp_path / "m", tgt_tok)
    model = load(tmp_path / "m")
    cfg = SearchConfig(beam_size=2, max_new_tokens=4)
    out = translate(model, ["xyz w", "zx"], cfg)
    ids = [src_tok.encode(t) for t in ("xyz w", "zx")]
    for text, src in zip(out, ids):
        best = beam_search(model, torch.tensor([src]), None, tgt_tok.bos_id, tgt_tok.eos_id, cfg)[0]
        assert text == tgt_tok.decode(best).strip()


def test_cli_rejects_bad_beam_and_long_sources(saved, capsys):
    from qkv.cli import main
    assert main(["translate", str(saved), "--text", "abc", "--beam", "0"]) == 2
    assert "beam_size=0 must be >= 1" in capsys.readouterr().err
    assert main(["translate", str(saved), "--text", "abc " * 10]) == 2
    assert "source 0 has 40 tokens but the model has 16 positions" in capsys.readouterr().err
    assert main(["translate", str(saved), "--text", "abc " * 10, "--truncate", "--beam", "2",
                 "--max-new-tokens", "3"]) == 0


def test_vocabulary_without_bos_eos_pad_is_an_error(tmp_path, capsys):
    from qkv import save
    from qkv.cli import main
    from qkv.tokenizers import Tokenizer
    tok = Tokenizer.train_char("abc de")                   # no special tokens at all
    save(tiny_seq2seq(V=tok.vocab_size), tmp_path / "m", tok)
    assert main(["translate", str(tmp_path / "m"), "--text", "abc"]) == 2
    assert "no <bos>, <eos>, <pad> token" in capsys.readouterr().err


def test_translate_of_a_decoder_only_model_is_an_error(tmp_path, capsys):
    from qkv import GPT, save
    from qkv.cli import main
    save(GPT(ModelConfig(vocab_size=8, max_len=8, n_layers=1, d_model=16, n_heads=2)), tmp_path / "g")
    assert main(["translate", str(tmp_path / "g"), "--text", "abc"]) == 2
    assert "needs an encoder-decoder" in capsys.readouterr().err
