"""positions: what sinusoidal, learned, RoPE and ALiBi positions encode, and what happens past the training length.

Attention by itself is blind to order: permute the keys and the output permutes with them. Each scheme
puts position back in a different place (``qkv.nn.position``): sinusoidal and learned vectors are added to
the token embeddings (absolute positions), RoPE rotates queries and keys so their dot product depends only
on the offset (relative), ALiBi subtracts slope x distance from the scores (relative, and a bias toward
nearby tokens).

Two measurements. (1) Similarity maps: for each pair of positions (i, j), how alike the scheme makes them:
the cosine of the two position vectors (sinusoidal; learned, after training), the score <R_i u, R_j u> one
vector u gets against itself at two positions under RoPE (averaged over random u), and ALiBi's bias.
(2) Length extrapolation: four identical GPTs on tiny shakespeare (characters), one per scheme, trained
with a context of ``train_context`` tokens, then run on validation windows several times longer; we read the
loss at each position of the window. Inside the training length every scheme has seen such positions;
past it, a learned table has rows that were never trained, the sinusoidal and RoPE formulas produce
angles never seen in training, and ALiBi sees longer distances with larger penalties.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..config import ModelConfig
from ..data.lm import LMStream
from ..data.text import read_text
from ..models.decoder import GPT
from ..nn.position import apply_rotary, make_position
from ..tokenizers import Tokenizer
from .fit import train
from .report import Report

TITLE = "Positions: what each scheme encodes, and length extrapolation"
SCHEMES = ("sinusoidal", "learned", "rope", "alibi")


@dataclass(frozen=True)
class Config:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    train_context: int = 64
    eval_length: int = 512                # the window the models are run on after training
    batch_size: int = 16
    steps: int = 800
    lr: float = 2e-3
    warmup: int = 50
    eval_tokens: int = 16384              # validation tokens scored (windows of eval_length)
    map_positions: int = 64               # positions shown in the similarity maps
    seed: int = 0


FULL = Config()
QUICK = Config(n_layers=2, d_model=64, train_context=32, eval_length=128, batch_size=8, steps=150,
               eval_tokens=4096, map_positions=32)


def similarity_maps(cfg: Config, learned_table_PC: torch.Tensor) -> dict[str, torch.Tensor]:
    """sim_PP for each scheme over the first ``map_positions`` positions (see the module docstring)."""
    P = cfg.map_positions
    model_cfg = ModelConfig(vocab_size=1, max_len=P, d_model=cfg.d_model, n_heads=cfg.n_heads)
    sinusoidal_PC = make_position(_replace(model_cfg, pos="sinusoidal")).table[:P]
    rope = make_position(_replace(model_cfg, pos="rope"))
    cos_11PD, sin_11PD = rope.rotary(torch.arange(P)[None])
    u_N11D = torch.randn(256, 1, 1, model_cfg.head_dim, generator=torch.Generator().manual_seed(cfg.seed))
    u_N11D = u_N11D / u_N11D.norm(dim=-1, keepdim=True)
    rotated_N1PD = apply_rotary(u_N11D.expand(-1, 1, P, -1), cos_11PD, sin_11PD)
    rope_PP = torch.einsum("NHPD,NHpD->Pp", rotated_N1PD, rotated_N1PD) / len(u_N11D)
    alibi_PP = make_position(_replace(model_cfg, pos="alibi")).bias(P, P)[0, 0]
    cosine = lambda x_PC: F.normalize(x_PC, dim=-1) @ F.normalize(x_PC, dim=-1).T       # noqa: E731
    return {"sinusoidal": cosine(sinusoidal_PC), "learned": cosine(learned_table_PC[:P]), "rope": rope_PP,
            "alibi": alibi_PP}


def _replace(model_cfg: ModelConfig, **changes) -> ModelConfig:
    import dataclasses
    return dataclasses.replace(model_cfg, **changes)


def buckets(cfg: Config) -> list[tuple[int, int]]:
    """Position ranges: inside the training context, then doubling: [0, c), [c, 2c), [2c, 4c), ..."""
    edges = [0, cfg.train_context]
    while edges[-1] < cfg.eval_length:
        edges.append(min(2 * edges[-1], cfg.eval_length))
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def loss_by_position(model: GPT, batch: dict) -> torch.Tensor:
    """loss_L: the mean cross-entropy at each position of the windows."""
    logits_BLV = model(batch["ids_BL"]).logits
    loss_BL = F.cross_entropy(logits_BLV.transpose(1, 2), batch["targets_BL"], reduction="none")
    return loss_BL.mean(0)


def run(cfg: Config, report: Report, log=print) -> dict:
    text = read_text(None)
    tokenizer = Tokenizer.train_char(text)
    ids = tokenizer.encode(text)
    n_windows = max(1, cfg.eval_tokens // cfg.eval_length)
    windows = LMStream(ids, cfg.eval_length, 0.1, cfg.seed).val_batches(n_windows, 1)[0]
    results = {"by_position": {}, "buckets": {}}
    models = {}
    for scheme in SCHEMES:
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        # The original Transformer scales token embeddings by sqrt(d_model) so that they are not drowned by
        # the unit-size sinusoids; without it this model stalls on character frequencies.
        model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, max_len=cfg.eval_length, n_layers=cfg.n_layers,
                                d_model=cfg.d_model, n_heads=cfg.n_heads, pos=scheme,
                                embed_scale=scheme == "sinusoidal"))
        data = LMStream(ids, cfg.train_context, 0.1, cfg.seed)
        train(model, lambda: data.batch("train", cfg.batch_size), cfg.steps, cfg.lr, warmup=cfg.warmup, clip=1.0)
        loss_L = loss_by_position(model, windows)
        results["by_position"][scheme] = loss_L.tolist()
        results["buckets"][scheme] = {span: loss_L[span[0]:span[1]].mean().item() for span in buckets(cfg)}
        models[scheme] = model
        log(f"positions: {scheme:<10} " + " ".join(f"[{a},{b}): {x:.3f}" for (a, b), x in
                                                   results["buckets"][scheme].items())
            + f" ({time.perf_counter() - start:.1f} s)")
    results["maps"] = similarity_maps(cfg, models["learned"].pos.table.weight.detach())
    _write(cfg, report, results)
    return results


def _write(cfg: Config, report: Report, r: dict) -> None:
    from ..viz.output import png_figure
    paragraphs = __doc__.split("\n\n")
    report.section("Question", paragraphs[1])
    report.section("Setup", paragraphs[2] + f"\n\nGPT: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} "
                   f"heads; AdamW lr {cfg.lr} ({cfg.warmup} warm-up steps), batch {cfg.batch_size}, {cfg.steps} "
                   f"steps at context {cfg.train_context}; each evaluation length scores about "
                   f"{cfg.eval_tokens} validation tokens (every position of each window).")
    # two lines each: one line of the longest ran into the next panel's colour bar at the width people view
    titles = {"sinusoidal": "sinusoidal\ncos(PE_i, PE_j)", "learned": "learned (trained)\ncos(P_i, P_j)",
              "rope": "RoPE\n<R_i u, R_j u>, mean over u", "alibi": "ALiBi head 0\n-slope |i - j|"}
    with png_figure(report.figure("similarity.png", "How alike each scheme makes positions i and j"),
                    11.0, 3.3) as fig:
        axes = fig.subplots(1, 4)
        for ax, scheme in zip(axes, SCHEMES):
            image = ax.imshow(r["maps"][scheme].numpy(), cmap="RdBu_r" if scheme != "alibi" else "Blues_r",
                              interpolation="nearest")
            ax.set_title(titles[scheme], fontsize=8)
            ax.set(xlabel="position j", ylabel="position i")
            fig.colorbar(image, ax=ax, shrink=0.7)
    report.section("Results")
    spans = buckets(cfg)
    report.table(["scheme"] + [f"loss at positions {a}-{b - 1}" + (" (trained)" if b <= cfg.train_context else "")
                               for a, b in spans],
                 [[s] + [f"{r['buckets'][s][span]:.3f}" for span in spans] for s in SCHEMES])
    with png_figure(report.figure("extrapolation.png", f"Validation loss at each position of a "
                                  f"{cfg.eval_length}-token window (trained at {cfg.train_context}; "
                                  f"moving average)"), 6.4, 4.0) as fig:
        ax = fig.subplots()
        for scheme in SCHEMES:
            curve = torch.tensor(r["by_position"][scheme])
            smooth = F.avg_pool1d(curve[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
            ax.plot(range(1, cfg.eval_length + 1), smooth.tolist(), label=scheme)
        ax.axvline(cfg.train_context, color="gray", ls=":", label="training context")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="position in the window", ylabel="loss (nats/char)")
        ax.legend()
        ax.grid(alpha=0.3)
    inside, last = spans[0], spans[-1]
    growth = {s: r["buckets"][s][last] - r["buckets"][s][inside] for s in SCHEMES}
    order = sorted(SCHEMES, key=growth.get)
    report.section("What it shows", "\n".join([
        "- Sinusoidal similarity depends only on |i - j| and falls off smoothly; RoPE's score depends only on "
        "i - j by construction; ALiBi is a straight penalty on distance; the learned table shows what training "
        f"made of {cfg.map_positions} free vectors.",
        f"- Loss at positions {last[0]}-{last[1] - 1} minus loss inside the training length: " + ", ".join(
            f"{s} {growth[s]:+.3f}" for s in order) + " (smallest first).",
        "- Past the training length a learned table feeds rows that were never trained, and sinusoidal and RoPE "
        "models meet angles they never saw; ALiBi only meets larger distances with larger penalties, which "
        "is what it was designed for (Press et al., 2022).",
    ]))
