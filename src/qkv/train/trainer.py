"""The training loop: batches, AdamW, schedule, evaluation, atomic checkpoints and exact resume.

A run directory is a checkpoint directory (see ``qkv.checkpoint``) plus ``trainer_state.pt`` and
``metrics.jsonl``. Resuming restores the weights, the optimizer moments, the step, the elapsed time (which
drives a ``max_time`` schedule), the global RNG (dropout) and the data generator (batch order), so an
interrupted and resumed iteration-budget run ends with the same weights as an uninterrupted one.

Under torchrun the same loop runs on every rank (``qkv.train.distributed`` says how batches are split and
what a resume with another world size restores); precision is decided once (``qkv.train.precision``) and
non-finite steps are skipped (``qkv.train.guard``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from contextlib import closing
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import SRC_TOKENIZER_FILE, load_weights, read_config, write_model_files
from ..config import ModelConfig, TrainConfig, build
from ..errors import CheckpointError, ConfigError, require_extra
from ..rundir import atomic_dir, claim_out_dir, recover
from ..tokenizers import Tokenizer
from ..weights import with_aliases
from .distributed import (World, check_launch, dropout_seed, full_state, is_sharded, load_full_state, parallel,
                          sync_gradients)
from .guard import NonFiniteGuard
from .interrupt import StopRequest, TrainingInterrupted
from .optim import lr_at, make_optimizer
from .precision import choose_precision
from .parts import RunParts, build_parts

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"                 # --keep-best: a loadable model directory inside the run


class Trainer:
    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer: Tokenizer | None = None,
                 log=print, src_tokenizer: Tokenizer | None = None, parts: RunParts | None = None,
                 resuming: Path | None = None, kept_threads: int | None = None):
        """``parts``: the run's parts built by its task's owner (fine-tuning, images); by default built from the
        configs.
        ``resuming``: the run directory being continued (the one place out_dir may already hold a run);
        ``kept_threads``: the thread count it ran with, used unless ``train_cfg.threads`` says otherwise."""
        self.train_cfg, self.log = train_cfg, log
        self.world = world = World.from_env()
        # --tensorboard's package is asked for first: a missing one is named before any line or work
        self._tensorboard = (require_extra("torch.utils.tensorboard", "tensorboard", "--tensorboard", "tensorboard")
                             if train_cfg.tensorboard and world.is_main else None)
        self.precision = choose_precision(train_cfg.precision, world.device.type)
        processes = f"; {world.size} processes ({world.backend})" if world.distributed else ""
        self.threads = world.threads(train_cfg.threads or kept_threads)
        if self.threads:
            torch.set_num_threads(self.threads)
            why = "--threads" if train_cfg.threads else "as the run being resumed" if kept_threads else \
                "the cores other processes leave idle"
            processes += f"; {self.threads} thread{'s' * (self.threads > 1)} ({why})"
        log(f"{self.precision.describe()}; device {world.device.type}{processes}")       # the run's first line
        if self.precision.warning and world.is_main:
            print(f"warning: {self.precision.warning}", file=sys.stderr)
        check_launch(train_cfg.batch_size, train_cfg.fsdp, resuming is not None, world.size)
        if world.is_main:                          # the one writer claims the run directory, before any work
            self.out_dir = claim_out_dir(train_cfg.out_dir, train_cfg.overwrite, resuming)
        else:
            self.out_dir = Path(train_cfg.out_dir)
        # --overwrite: the first save replaces the old run whole instead of keeping its other entries
        self._replacing = resuming is None and self.out_dir.is_dir() and any(self.out_dir.iterdir())
        parts = parts or build_parts(model_cfg, train_cfg, tokenizer, src_tokenizer)
        self.task_config = parts.config
        self.model_cfg, self.tokenizer, self.data = parts.model_cfg, parts.tokenizer, parts.data
        if self.tokenizer is not None:                 # image tasks have none
            world.same_everywhere(self.tokenizer.backend.to_str(), "tokenizers")
        torch.manual_seed(train_cfg.seed)
        self.model = parts.model if parts.model is not None else parts.model_cls(self.model_cfg)
        self.model.src_tokenizer = parts.src_tokenizer
        self.reseed_dropout(0)
        self.parallel_model = parallel(self.model, world, train_cfg.fsdp)    # before the optimizer: FSDP2 shards
        self.optimizer = make_optimizer(self.model, train_cfg.lr, train_cfg.weight_decay,
                                        (train_cfg.beta1, train_cfg.beta2))
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        self.eval_s = 0.0          # the last evaluation's seconds: a max_time run keeps them in hand for the final one
        self.guard = NonFiniteGuard(train_cfg.max_bad_steps)
        self.saved_step: int | None = None
        self.metrics: list[dict] = []

    def reseed_dropout(self, step: int) -> None:
        """Ranks after the first draw dropout masks of their own (rank 0's stream is the run's saved RNG)."""
        if self.world.rank > 0:
            torch.manual_seed(dropout_seed(self.train_cfg.seed, self.world.rank, step))

    # ---- resume -------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, train_overrides: dict | None = None, log=print,
               parts: RunParts | None = None) -> "Trainer":
        """Continue the run in ``run_dir``; ``train_overrides`` may extend the budget (max_iters, max_time),
        move the data (data) or write the continued run elsewhere (out_dir; ``run_dir`` then stays as it is).
        ``parts``: the run's parts rebuilt by its task's owner (fine-tuning, images); by default from the
        saved configs."""
        run_dir = Path(run_dir)
        world = World.from_env()
        if world.is_main:
            recover(run_dir)                       # a save that a kill interrupted (two-rename filesystems)
        world.barrier()
        config = read_config(run_dir)
        state_path = run_dir / STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(f"{run_dir} has no {STATE_FILE}; it is a saved model, not a resumable run")
        model_cfg = build(ModelConfig, config["model"], str(run_dir / "config.json"))
        train = {**config.get("train", {}), "out_dir": str(run_dir), "overwrite": False, **(train_overrides or {})}
        train_cfg = build(TrainConfig, train, "the resumed run's options")
        tokenizer = Tokenizer.from_dir(run_dir)
        if tokenizer is None and parts is None:         # parts rebuilt by their owner may have none (images)
            raise CheckpointError(f"{run_dir} has no tokenizer.json; the run cannot be resumed")
        src_path = run_dir / SRC_TOKENIZER_FILE
        src_tokenizer = Tokenizer.from_file(src_path) if src_path.is_file() else None
        # the thread count the run chose, on the same world: another count sums in another order
        same_world = config.get("world", {}).get("processes", 1) == world.size
        trainer = cls(model_cfg, train_cfg, tokenizer, log, src_tokenizer, parts, resuming=run_dir,
                      kept_threads=config.get("threads") if same_world else None)
        try:
            state = torch.load(state_path, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{state_path} is corrupt ({e}); resume from an earlier copy") from None
        trainer.load_weights_and_optimizer(run_dir / "model.safetensors", state)
        trainer.step, trainer.elapsed, trainer.tokens = state["step"], state["elapsed_s"], state["tokens"]
        trainer.guard.skipped = state.get("skipped_steps", 0)
        trainer.eval_s = state.get("eval_s", 0.0)      # saved since evaluations count against max_time
        trainer.saved_step = trainer.step
        torch.set_rng_state(state["torch_rng"])        # rank 0's dropout stream; the others reseed
        trainer.reseed_dropout(trainer.step)
        trainer.data.generator.set_state(state["data_rng"])     # one stream for every world size
        metrics_path = run_dir / METRICS_FILE
        if metrics_path.is_file():
            trainer.metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        trainer._steps_replace_a_spent_time_budget(train_overrides or {}, log)
        return trainer

    def _steps_replace_a_spent_time_budget(self, overrides: dict, log) -> None:
        """`--resume RUN --max-iters N` on a run that stopped on its --max-time: the person asks for steps,
        and the spent time budget would refuse them all, so N steps become the budget. The learning rate
        then follows the steps (a warm restart of the cosine); --max-time with --max-iters keeps time too."""
        cfg = self.train_cfg
        if "max_iters" not in overrides or "max_time" in overrides or cfg.max_time is None \
                or self._time_left() > 0 or self.step >= cfg.max_iters:
            return
        log(f"the run's --max-time {cfg.max_time:g} s is spent: continuing to step {cfg.max_iters} on steps alone "
            f"(add --max-time SECONDS to keep a time budget)")
        self.train_cfg = dataclasses.replace(cfg, max_time=None)

    def load_weights_and_optimizer(self, weights: Path, state: dict) -> None:
        saved_sharded = state.get("optimizer_format") == "full"
        if not is_sharded(self.model) and not saved_sharded:
            load_weights(self.model, weights)
            self.optimizer.load_state_dict(state["optimizer"])
            return
        if not saved_sharded:
            raise ConfigError("this run was saved without --fsdp; resume it without --fsdp (its optimizer state is "
                              "not in FSDP's layout)")
        if not is_sharded(self.model):
            raise ConfigError("this run was saved with --fsdp; resume it with --fsdp")
        from safetensors.torch import load_file
        weights_state = with_aliases(self.model, load_file(str(weights)))
        load_full_state(self.model, weights_state, self.optimizer, state["optimizer"])

    # ---- pieces -------------------------------------------------------------------------------------
    def progress(self) -> float:
        cfg = self.train_cfg
        p = (self.step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
        if cfg.max_time:
            p = max(p, self.elapsed / cfg.max_time)
        return p

    def done(self) -> bool:
        """The budget is spent: max_iters steps, or too little of max_time left for another evaluation (the
        last one measured), which the final step is followed by: so the run ends within max_time."""
        cfg = self.train_cfg
        return self.step >= cfg.max_iters or (cfg.max_time is not None and self._time_left() <= 0)

    def _time_left(self) -> float:
        """Seconds of max_time left for training steps, the final evaluation and save set aside."""
        return self.train_cfg.max_time - self.elapsed - self.eval_s

    def spent_budget(self) -> str:
        """Which budget ended the run, and the flag that extends it (for a resume that has nothing to do)."""
        cfg = self.train_cfg
        if self.step >= cfg.max_iters:
            return f"step {self.step} of --max-iters {cfg.max_iters}; pass a larger --max-iters to train further"
        return (f"{self.elapsed:.1f} s of --max-time {cfg.max_time:g} s; pass a larger --max-time (seconds) to "
                f"train further")

    def autocast(self):
        """The forward pass's precision: fp32, or bf16 mixed precision (matrix products in bf16, losses,
        norms and softmax in fp32, as autocast's op lists say; parameters and AdamW stay fp32)."""
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.precision.bf16)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the val batches. Ranks split the batches between them (FSDP2: every rank
        runs them all, since each forward gathers the shards from all ranks)."""
        batches = list(self.data.val_batches(self.train_cfg.batch_size, self.train_cfg.eval_iters))
        if not is_sharded(self.model):
            batches = batches[self.world.rank::self.world.size]
        self.model.eval()
        with self.autocast():
            losses = [self.model(**{k: v.to(self.world.device) for k, v in batch.items()}).loss.item()
                      for batch in batches]                # true cross-entropy: no label smoothing here
        self.model.train()
        if is_sharded(self.model):
            self.model.reshard()        # a forward without backward leaves the root's parameters gathered
            return sum(losses) / len(losses)
        total, count = self.world.sum([sum(losses), len(losses)])
        return total / count

    def save(self) -> None:
        """Write the whole run atomically: weights, tokenizer, configs, trainer state, metrics. Every rank
        calls this (FSDP2 gathers the shards); rank 0 alone writes."""
        weights, optimizer = full_state(self.model, self.optimizer)
        self.saved_step = self.step
        if not self.world.is_main:
            return
        train = dataclasses.asdict(self.train_cfg)
        if train["data"] is not None:              # resumable from any working directory
            train["data"] = str(Path(train["data"]).resolve())
        config = {"train": train, "precision": self.precision.as_config(), "threads": self.threads,
                  "world": {"processes": self.world.size, "backend": self.world.backend}, **self.task_config}
        with atomic_dir(self.out_dir, carry_over=not self._replacing) as tmp:
            write_model_files(tmp, self.model, self.tokenizer, config, weights)
            if self.train_cfg.keep_best and self._is_best():
                best = self.metrics[-1]
                (tmp / BEST_DIR).mkdir()
                write_model_files(tmp / BEST_DIR, self.model, self.tokenizer,
                                  {**config, "best": {"step": best["step"], "val_loss": best["val_loss"]}}, weights)
            torch.save({"step": self.step, "elapsed_s": self.elapsed, "eval_s": self.eval_s, "tokens": self.tokens,
                        "skipped_steps": self.guard.skipped, "optimizer": optimizer,
                        "optimizer_format": "full" if is_sharded(self.model) else "plain",
                        "torch_rng": torch.get_rng_state(), "data_rng": self.data.generator.get_state()},
                       tmp / STATE_FILE)
            (tmp / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        self._replacing = False

    def _is_best(self) -> bool:
        """The last evaluation has the lowest val_loss so far (a tie keeps the earlier checkpoint)."""
        if not self.metrics or self.metrics[-1]["step"] != self.step:
            return False
        return all(self.metrics[-1]["val_loss"] < m["val_loss"] for m in self.metrics[:-1])

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None, on_step=None) -> dict:
        """Train until the budget is spent (or ``stop_at_step``, to simulate an interruption).
        Ctrl-C saves the run after the current step and raises ``TrainingInterrupted``; too many non-finite
        steps in a row raise ``TrainingDiverged``. ``on_step(step, loss)``: called after every optimizer step
        with its loss (the mean over the ranks' rows)."""
        cfg = self.train_cfg
        model = torch.compile(self.parallel_model) if cfg.compile else self.parallel_model
        model.train()
        writer = None
        if self._tensorboard is not None:
            writer = self._tensorboard.SummaryWriter(str(self.out_dir.with_name(self.out_dir.name + "-tb")))
        bar = tqdm(total=self._projected_steps(), initial=self.step, dynamic_ncols=True,
                   disable=not cfg.progress or not sys.stderr.isatty() or not self.world.is_main,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")   # no terminal: eval lines
        clock = time.perf_counter() - self.elapsed
        train_losses: list[float] = []              # the steps' losses since the last evaluation
        last = None
        with StopRequest() as stop, closing(bar):
            while not self.done():
                lr = lr_at(self.progress(), self.step, cfg.lr, cfg.warmup_iters, cfg.min_lr_ratio, cfg.schedule)
                step_loss, stopping = self._optimizer_step(model, lr, stop, clock)
                stepped = self.guard.in_a_row == 0          # False: a non-finite step changed nothing
                if stepped:
                    train_losses.append(step_loss)
                    if on_step is not None:
                        on_step(self.step, step_loss)
                    bar.total = self._projected_steps()
                    bar.update(1)
                    bar.set_postfix_str(self._postfix(step_loss), refresh=False)
                saved, ends_here = False, self.done() or self.step == stop_at_step     # this fit call's last step
                if stepped and (self.step % cfg.eval_interval == 0 or ends_here):
                    last, saved = self._evaluate_and_save(train_losses, lr, writer, clock, bar, ends_here)
                    train_losses = []
                if stopping:
                    if not saved:
                        self.save()
                    raise TrainingInterrupted(self.step, self.out_dir)
                if self.step == stop_at_step:
                    break
        if writer is not None:
            writer.close()
        if last is None:                                  # nothing left to do (e.g. resumed at the end)
            last = self.metrics[-1] if self.metrics else self._record(float("nan"), 0.0, None, clock)
        return last

    def _optimizer_step(self, model, lr: float, stop: StopRequest, clock: float) -> tuple[float, bool]:
        """One optimizer step over ``grad_accum`` micro-batches of the global batch, unless the NaN guard
        skips it (``self.step`` unchanged; too many in a row raise ``TrainingDiverged``). Returns the step's
        loss (the mean over the ranks) and whether a Ctrl-C on any rank asks the run to stop after it."""
        cfg = self.train_cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        smoothing = {"label_smoothing": cfg.label_smoothing} if cfg.label_smoothing else {}  # encoders: none
        step_tokens, step_loss = 0, 0.0
        for micro in range(cfg.grad_accum):
            batch = self.data.batch("train", cfg.batch_size)        # the global batch: every rank draws it
            with sync_gradients(model, micro == cfg.grad_accum - 1):
                with self.autocast():
                    loss = model(**self.world.shard(batch), **smoothing).loss
                (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            targets = batch["targets_BL"] if "targets_BL" in batch else batch["labels"]   # encoders
            step_tokens += int((targets != -100).sum())                  # tokens that were predicted
        # one small all-reduce: the step's loss, a Ctrl-C on any rank, and one clock for all ranks
        total_loss, stops, elapsed = self.world.sum([step_loss, float(bool(stop)), time.perf_counter() - clock])
        step_loss = total_loss / self.world.size
        self.elapsed = elapsed / self.world.size
        grad_norm = self._grad_norm(cfg.grad_clip)
        if self.guard.check(step_loss, grad_norm):
            self.optimizer.step()
            self.step += 1
            self.tokens += step_tokens
        elif self.guard.gave_up:
            raise self.guard.error(self.step, step_loss, grad_norm, self.saved_step, self.out_dir, lr,
                                   cfg.warmup_iters, self.precision.chosen)
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, stops > 0

    def _evaluate_and_save(self, train_losses: list[float], lr: float, writer, clock: float, bar,
                           ends_here: bool) -> tuple[dict, bool]:
        """Evaluate (a metrics row and its line), then save when a save is due: on the step this fit call ends
        on (``ends_here``, or the evaluation spent a --max-time budget), at every evaluation by default
        (--save-interval 0), every ``save_interval`` steps, and at a new best under --keep-best. Returns the
        row and whether the run was saved."""
        cfg = self.train_cfg
        final = self.done()
        started = self._agreed_elapsed(clock)
        row = self._record(sum(train_losses) / max(len(train_losses), 1), lr, writer, clock)
        if not final:    # the final one keeps the reserve that ended the run: saved with it, a resume agrees
            self.eval_s = self.elapsed - started    # _record left elapsed agreed by every rank
        scores = "".join(f" | {k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and k != "val_loss")
        bar.write(f"step {self.step:>6} | train_loss {row['train_loss']:.4f} | "
                  f"val_loss {row['val_loss']:.4f}{scores} | {self.elapsed:6.1f}s")
        ends_here = ends_here or self.done()           # the evaluation's own time may spend a --max-time budget
        due = (ends_here or cfg.save_interval == 0 or self.step % cfg.save_interval == 0
               or (cfg.keep_best and self._is_best()))
        if due:
            self.save()
        self.elapsed = self._agreed_elapsed(clock)     # ... and so do saves
        return row, due

    def _grad_norm(self, clip: float) -> float:
        """The global gradient norm (after DDP's all-reduce; FSDP2 combines its shards), clipped to ``clip``."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _agreed_elapsed(self, clock: float) -> float:
        """Seconds since the run began, the same on every rank (a --max-time run must stop on one step)."""
        return self.world.sum([time.perf_counter() - clock])[0] / self.world.size

    def _projected_steps(self) -> int:
        """The step the run will end at: max_iters, or sooner where max_time runs out first at the rate so far."""
        cfg = self.train_cfg
        if cfg.max_time is None or self.step == 0 or self.elapsed <= 0:
            return cfg.max_iters
        if self.done():
            return self.step
        left = self._time_left() * self.step / self.elapsed
        return min(cfg.max_iters, self.step + max(1, int(left)))

    def _record(self, train_loss: float, lr: float, writer, clock: float) -> dict:
        val_loss = self.evaluate()
        scores = self._scores()
        self.elapsed = self._agreed_elapsed(clock)          # the budget is wall time: evaluations count
        row = {"step": self.step, "elapsed_s": round(self.elapsed, 3), "tokens": self.tokens,
               "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5), "lr": lr,
               "skipped_steps": self.guard.skipped, **scores}
        self.metrics.append(row)
        if writer is not None:
            for key in ("train_loss", "val_loss", "lr"):
                writer.add_scalar(key, row[key], self.step)
        return row

    @torch.no_grad()
    def _scores(self) -> dict:
        """Task metrics on the validation split besides the loss (image batches: val_accuracy), if any."""
        score = getattr(self.data, "score", None)
        if score is None:
            return {}
        self.model.eval()
        try:
            with self.autocast():
                return score(self.model)
        finally:
            self.model.train()

    def _postfix(self, loss: float) -> str:
        cfg = self.train_cfg
        rate = self.step / max(self.elapsed, 1e-9)
        remaining = (cfg.max_iters - self.step) / max(rate, 1e-9)
        if cfg.max_time:
            remaining = min(remaining, self._time_left())
        eta = time.strftime("%M:%S", time.gmtime(max(remaining, 0)))
        unit = getattr(self.data, "unit", "tok")            # what ``tokens`` counts (image batches: images)
        return f"loss {loss:.3f}, {self.tokens / max(self.elapsed, 1e-9):,.0f} {unit}/s, eta {eta}"

