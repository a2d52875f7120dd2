"""The training loop every model shares: `fit(model, task, train_set, val_set, collate_fn, cfg, run_dir)`.

A `Task` says how to turn a batch into a loss (pretext task, classification...); `fit` does the rest:
device and bf16 autocast, DataLoader workers, AdamW/Adam, learning-rate schedule, gradient clipping,
validation, early stopping, best weights, resumable state, graceful stop on SIGTERM/SIGUSR1, halving
the batch on out-of-memory, DDP under torchrun, and the per-epoch history (CSV, JSON, PNG).

Reproducibility: the training order of epoch e is a permutation seeded by `seed + e` (through
DistributedSampler, also in one process; with `bucket_by_length` its batches of similar length are
shuffled by a generator seeded from seed, e and the rank), DataLoader worker seeds come from a
generator seeded the same way, and every random generator state is saved with the model, so a run
stopped at any step and resumed ends with bitwise the same weights as one that was never stopped
(CPU; on GPU up to non-deterministic kernels). That holds if the dataset's `__getitem__` is a
function of the index (or of the index and epoch) and `Task.on_epoch_start` draws its randomness
from the epoch number.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Protocol

import numpy as np
import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from sitscli.core.errors import CheckpointError, ConfigError
from sitscli.core.io import atomic_output
from sitscli.core.progress import Progress, log
from sitscli.engine import distributed
from sitscli.engine.curves import plot_curves
from sitscli.engine.device import autocast, free_cached_memory, is_out_of_memory
from sitscli.engine.distributed import DistContext
from sitscli.engine.resume import load_state, rng_state, save_state, set_rng_state
from sitscli.engine.sampling import bucketed_order, series_lengths
from sitscli.engine.schedule import SCHEDULES, LRSchedule
from sitscli.engine.signals import StopSignals

RESUME_DIR = "resume"
# Options a resumed run must share with the interrupted one to continue it exactly; the others
# (epochs, patience, device, workers, logging) may change between the two.
_FIXED_ON_RESUME = ("batch_size", "min_steps_per_epoch", "min_total_steps", "lr", "weight_decay", "optimizer", "schedule", "warmup_epochs",
                    "hold_epochs", "decay_gamma", "restart_period", "min_lr", "grad_clip", "monitor", "monitor_mode", "seed",
                    "bucket_by_length")


Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """The engine's options, typed and bounded: a value out of its range is refused when the config is
    made (`core.config.validated` turns pydantic's error into one line naming key, value and range)."""

    epochs: Positive = 100
    batch_size: Positive = 128
    # at least this many steps an epoch: the batch shrinks (not below MIN_SCALED_BATCH) on small
    # training sets; None = `batch_size` whatever the data
    min_steps_per_epoch: Positive | None = None
    # at least this many optimizer steps in all: `epochs` is raised on training sets too small to
    # make them (`planned_epochs`); None = `epochs` whatever the data
    min_total_steps: Positive | None = None
    lr: Rate = 1e-4
    weight_decay: NonNegativeFloat = 0.01
    optimizer: Literal["adamw", "adam"] = "adamw"
    schedule: Literal[SCHEDULES] = "warmup_cosine"     # schedule.py
    warmup_epochs: NonNegativeFloat = 1.0
    hold_epochs: NonNegative = 10       # hold_exponential: epochs at `lr` before the decay starts
    decay_gamma: Annotated[float, Field(gt=0, le=1)] = 0.99   # hold_exponential: factor an epoch
    restart_period: Positive = 2        # cosine_restarts: epochs per cycle (SGDR's T_0)
    min_lr: NonNegativeFloat = 0.0
    # plateau: ReduceLROnPlateau's factor and patience. Not from a paper: halving after 3 flat epochs
    # leaves room for two or three reductions before the default early stopping (10 epochs).
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    plateau_patience: NonNegative = 3
    grad_clip: Rate | None = 1.0        # max global L2 norm of the gradients (None = off)
    patience: Positive | None = 10      # early stopping on `monitor` (None = off)
    # early stopping: an epoch is progress only when `monitor` beats its value at the last progress
    # by more than this share of it (0.01 = 1 %), so that a loss still creeping down by a fraction
    # of a percent an epoch counts as converged; the best weights are kept on any gain
    min_delta: Annotated[float, Field(ge=0, lt=1)] = 0.0
    monitor: str = "val_loss"           # a history column: val_loss, val_<metric>, train_loss...; epoch (max) keeps the last
    monitor_mode: Literal["min", "max"] = "min"
    device: str = "auto"
    amp: bool = True                    # bf16 autocast, on CUDA only
    seed: NonNegative = 0
    num_workers: NonNegative = 0
    log_every_s: Rate = 30.0
    # batches of series of similar length (engine/sampling.py): less padding, same epoch content;
    # for models whose batches pad to the longest series (compact series: SITS-BERT)
    bucket_by_length: bool = False


class Task(Protocol):
    """How a batch becomes a loss. `model` in `training_step` may be DDP-wrapped: call `model(batch)`
    for everything that needs gradients (calling a submodule directly would skip DDP's gradient
    synchronisation). `validation_step` gets the bare model, in eval mode under no_grad."""

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """-> scalar loss, extra metrics to log (averaged over the epoch, weighted by batch size)."""
        ...

    def validation_step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """-> metrics including "loss" (averaged over the validation set, weighted by batch size)."""
        ...


# Parameters trained at their own base learning rate (None: the config's `lr`), e.g. LoRA adapters
# at a low rate beside a new classification head at the fine-tuning rate. The schedule scales every
# group's base rate by the same factor.
ParamGroup = tuple[Sequence[nn.Parameter], float | None]


@dataclass
class FitResult:
    best_epoch: int                  # 1-based, as in `history[i]["epoch"]`; 0 when no epoch finished
    best_metric: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False        # stopped by SIGTERM/SIGUSR1/SIGINT: exit with signals.INTERRUPTED_EXIT_CODE
    stopped_by: str | None = None    # the signal's name (None: it came to another rank)
    planned_epochs: int = 0          # `epochs`, or more by `min_total_steps` (`planned_epochs`)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): call before building a model to repeat a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(model: nn.Module, task: Task, train_set: Dataset, val_set: Dataset | None, collate_fn: Callable,
        cfg: TrainConfig, run_dir: Path, *, resume: bool = False,
        trainable: Sequence[ParamGroup] | None = None) -> FitResult:
    """Train `model` on `train_set`, keep the best weights by `cfg.monitor`, load them into `model`.

    `trainable`: the groups of parameters to train, each at its own base learning rate (frozen
    encoder: the head; LoRA: the adapters and the head); every other parameter gets
    requires_grad=False. Default: all parameters that require grad, at `cfg.lr`.
    Writes into `run_dir` (rank 0): history.csv, history.json, curves.png and resume/.
    """
    ctx = distributed.setup(cfg.device)
    try:
        return _Run(model, task, train_set, val_set, collate_fn, cfg, Path(run_dir), ctx, trainable).run(resume)
    finally:
        distributed.teardown(ctx)


class ResumableSampler(DistributedSampler):
    """This rank's share of the permutation seeded by `seed + epoch`, from sample `skip` on.

    `skip` continues an epoch mid-way: after a resume, or after the batch size was halved.
    `bucket(lengths, batch_size)` turns on length bucketing (`sampling.bucketed_order`): the rank's
    share is rearranged into batches of `batch_size` series of similar length, in an order drawn
    from (seed, epoch, rank), so a resumed epoch continues the same order. `batch_size` is the
    run's first one: a halved batch then splits each bucketed batch in two.
    """

    skip = 0
    lengths: np.ndarray | None = None
    bucket_batch = 1

    def bucket(self, lengths: np.ndarray, batch_size: int) -> None:
        self.lengths, self.bucket_batch = lengths, batch_size

    def __iter__(self):
        order = list(super().__iter__())
        if self.lengths is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank])
            order = bucketed_order(np.asarray(order), self.lengths, self.bucket_batch, rng).tolist()
        return itertools.islice(order, self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class _Mean:
    """Sample-weighted means of per-batch values, summed over ranks before dividing."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0):
        self.sums, self.count = dict(sums or {}), count

    def add(self, values: dict[str, float], n: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.count += n

    def result(self, ctx: DistContext) -> dict[str, float]:
        keys = sorted(self.sums)  # every rank runs the same task code, hence has the same keys
        totals = distributed.sum_over_ranks(torch.tensor([self.sums[k] for k in keys] + [self.count], dtype=torch.float64), ctx)
        count = totals[-1].item()
        return {k: totals[i].item() / count for i, k in enumerate(keys)} if count else {}


class _Run:
    def __init__(self, model, task, train_set, val_set, collate_fn, cfg: TrainConfig, run_dir: Path,
                 ctx: DistContext, trainable):
        _check_config(cfg, train_set, val_set, ctx)
        self.task, self.train_set, self.val_set, self.collate_fn = task, train_set, val_set, collate_fn
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        self.model = model.to(ctx.device)
        groups = _select_trainable(self.model, trainable)
        self.params = [p for params, _ in groups for p in params]
        self.optimizer = _make_optimizer(groups, cfg)
        self.sampler = ResumableSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
        self.batch_size = scaled_batch_size(cfg.batch_size, len(self.sampler), cfg.min_steps_per_epoch)
        # from the first batch size, not a halved one: a resumed run then plans the same epochs
        self.epochs = planned_epochs(cfg.epochs, len(self.sampler), self.batch_size, cfg.min_total_steps)
        self.schedule = LRSchedule(
            self.optimizer, cfg.schedule, epochs=self.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
            restart_period=cfg.restart_period, monitor_mode=cfg.monitor_mode,
            plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
            hold_epochs=cfg.hold_epochs, decay_gamma=cfg.decay_gamma)
        # Without a validation set the best epoch is the one with the lowest training loss.
        self.monitor, self.mode = (cfg.monitor, cfg.monitor_mode) if val_set is not None or not cfg.monitor.startswith("val_") \
            else ("train_loss", "min")
        if cfg.bucket_by_length:
            self.sampler.bucket(series_lengths(train_set), self.batch_size)
        self.epoch, self.samples_done, self.epoch_seconds = 0, 0, 0.0
        self.train_mean = _Mean()
        self.history: list[dict] = []
        self.plotted_at = time.monotonic()
        self.best_metric = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.best_state, self.bad_epochs = 0, None, 0
        self.progress_ref = self.best_metric        # `monitor` at the last epoch that counted as progress
        self.stopped_early = self.finished = False

    # ---- the loop -------------------------------------------------------------------------
    def run(self, resume: bool) -> FitResult:
        if resume:
            self._restore()
        else:
            seed_everything(self.cfg.seed + self.ctx.rank)
        if self.epochs > self.cfg.epochs and self.ctx.is_main and not self.finished:
            log(f"{self.epochs} epochs instead of {self.cfg.epochs}: at least {self.cfg.min_total_steps} optimizer "
                f"steps (min_total_steps) at {math.ceil(len(self.sampler) / self.batch_size)} steps an epoch")
        if self.finished:
            log(f"{self.run_dir}: training had already finished; nothing to resume")
            return self._finish()
        self.ddp = distributed.wrap(self.model, self.ctx)
        with StopSignals() as stop:
            while self.epoch < self.epochs:
                if hasattr(self.task, "on_epoch_start"):
                    self.task.on_epoch_start(self.epoch)
                if self._train_epoch(stop):
                    return self._interrupted(stop.received)
                self._end_epoch()
                if self.stopped_early:
                    break
            self.finished = True
            self._save()
        return self._finish()

    def _train_epoch(self, stop: StopSignals) -> bool:
        """Train until the end of this rank's share of the epoch; True when a stop signal came."""
        self.model.train()
        started = time.monotonic()
        try:
            while self.samples_done < self.sampler.num_samples:
                self.sampler.set_epoch(self.epoch)
                self.sampler.skip = self.samples_done
                loader = self._loader(self.train_set, self.sampler, seed=self.cfg.seed + self.epoch)
                with self._progress(len(loader)) as bar:
                    for batch in loader:
                        out_of_memory = False
                        try:
                            self._step(batch)
                        except Exception as exc:
                            if not is_out_of_memory(exc):
                                raise
                            out_of_memory = True  # handled below, once `exc` and its frames are released
                        if out_of_memory:
                            self._halve_batch()
                            break
                        bar.advance(1, status=f"loss {self.train_mean.sums['loss'] / self.train_mean.count:.4f}")
                        if distributed.any_rank(stop.received is not None, self.ctx):
                            return True
        finally:
            self.epoch_seconds += time.monotonic() - started
        return False

    def _step(self, batch: dict) -> None:
        n = _batch_len(batch)
        batch = _to_device(batch, self.ctx.device)
        shard = self.sampler.num_samples
        self.schedule.set_progress(self.epoch + self.samples_done / shard, self.epoch + (self.samples_done + n) / shard)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.ctx.device, self.cfg.amp):
            loss, logs = self.task.training_step(self.ddp, batch)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"training diverged (loss {value} in epoch {self.epoch + 1}): lower --lr, keep "
                              f"gradient clipping on, or check the data for invalid values")
        self.train_mean.add({"loss": value, **logs}, n)
        self.samples_done += n

    def _halve_batch(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        free_cached_memory(self.ctx.device)
        old = self.batch_size
        if self.ctx.distributed:  # the other ranks wait in a collective: they cannot shrink in step
            raise ConfigError(f"out of memory at batch size {old} per process: run again with --batch-size {max(1, old // 2)}")
        if old == 1:
            raise ConfigError("out of memory with one sample per batch: use a smaller model, shorter series or another device")
        self.batch_size = old // 2
        log(f"out of memory at batch size {old}: going on with batch size {self.batch_size}")

    def _end_epoch(self) -> None:
        train = self.train_mean.result(self.ctx)
        val = self._validate()
        row = {"epoch": self.epoch + 1}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update(lr=self.optimizer.param_groups[0]["lr"], batch_size=self.batch_size, time_s=round(self.epoch_seconds, 3))
        if self.monitor not in row:
            raise ConfigError(f"monitor {self.monitor!r} is not among the logged values: {', '.join(k for k in row if k != 'epoch')}")
        value = row[self.monitor]
        improved = value < self.best_metric if self.mode == "min" else value > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = value, self.epoch + 1
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if self._is_progress(value):
            self.progress_ref, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        self.schedule.end_epoch(value)
        self.history.append(row)
        self.stopped_early = self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience
        self.epoch, self.samples_done, self.epoch_seconds, self.train_mean = self.epoch + 1, 0, 0.0, _Mean()
        self._save()
        if self.ctx.is_main:
            # Redrawing the PNG costs about a second: at most once a minute during training.
            self._write_history(plot=time.monotonic() - self.plotted_at > 60)
            log(_epoch_line(row, self.epochs, improved))
            if self.stopped_early:
                by = f" by more than {self.cfg.min_delta:.3g} of its value" if self.cfg.min_delta else ""
                log(f"early stop: {self.monitor} has not improved{by} for {self.bad_epochs} epochs (best at epoch {self.best_epoch})")

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        if self.val_set is None:
            return {}
        shard = Subset(self.val_set, range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
        mean = _Mean()
        self.model.eval()
        for batch in self._loader(shard, None, seed=self.cfg.seed):
            n = _batch_len(batch)
            with autocast(self.ctx.device, self.cfg.amp):
                mean.add(self.task.validation_step(self.model, _to_device(batch, self.ctx.device)), n)
        self.model.train()
        return mean.result(self.ctx)

    def _loader(self, dataset, sampler, seed: int) -> DataLoader:
        # A generator of our own: the loader's base seed (worker seeds) then neither depends on nor
        # consumes the global torch generator that dropout and the tasks draw from.
        # A training batch of one sample breaks BatchNorm on (B, F) features: that lone sample waits
        # for the next epoch (the permutation changes, so no sample is left out for good).
        lone_last = sampler is not None and len(sampler) % self.batch_size == 1 and len(sampler) > 1
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, shuffle=False,
                          collate_fn=self.collate_fn, num_workers=self.cfg.num_workers,
                          pin_memory=self.ctx.device.type == "cuda", drop_last=lone_last,
                          generator=torch.Generator().manual_seed(seed))

    def _progress(self, steps: int) -> Progress:
        description = f"epoch {self.epoch + 1}/{self.epochs}"
        return Progress(steps, description, interval=self.cfg.log_every_s) if self.ctx.is_main else Progress(steps, description, interval=math.inf)

    def _is_progress(self, value: float) -> bool:
        """`value` beats the last progress by more than `min_delta` of it (any gain at min_delta 0)."""
        margin = self.cfg.min_delta * abs(self.progress_ref) if math.isfinite(self.progress_ref) else 0.0
        return value < self.progress_ref - margin if self.mode == "min" else value > self.progress_ref + margin

    # ---- state -----------------------------------------------------------------------------
    def _save(self) -> None:
        rngs = distributed.gather(rng_state(), self.ctx)  # every rank's generators, for an exact resume
        if not self.ctx.is_main:
            return
        meta = {
            "epoch": self.epoch, "samples_done": self.samples_done, "epoch_seconds": self.epoch_seconds,
            "batch_size": self.batch_size, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "progress_ref": self.progress_ref, "stopped_early": self.stopped_early, "finished": self.finished,
            "history": self.history, "train_mean": {"sums": self.train_mean.sums, "count": self.train_mean.count},
            "schedule": self.schedule.state_dict(), "rng": rngs, "world_size": self.ctx.world_size,
            "config": dataclasses.asdict(self.cfg),
        }
        save_state(self.run_dir / RESUME_DIR, model_state=self.model.state_dict(),
                   optimizer_state=self.optimizer.state_dict(), best_state=self.best_state, meta=meta)

    def _restore(self) -> None:
        model_state, optimizer_state, self.best_state, meta = load_state(self.run_dir / RESUME_DIR)
        # an option absent from an older run's state did not exist then: nothing to compare
        changed = [f"{k} was {meta['config'][k]!r}, now {getattr(self.cfg, k)!r}"
                   for k in _FIXED_ON_RESUME if k in meta["config"] and meta["config"][k] != getattr(self.cfg, k)]
        if changed:
            raise ConfigError(f"cannot resume {self.run_dir} with other options ({'; '.join(changed)}): use the interrupted run's options")
        if "bucket_by_length" not in meta["config"] and self.sampler.lengths is not None:
            # a state saved before length bucketing existed drew plain random batches: go on with them,
            # or the rest of the interrupted epoch would see some samples twice and others not at all
            self.sampler.lengths = None
            log("resuming a run saved before length bucketing: it goes on with random batches")
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"the resume state in {self.run_dir} is for another model or other trainable "
                                  f"parameters ({str(exc).splitlines()[0]}): start again without --resume") from None
        self.schedule.load_state_dict(meta["schedule"])
        self.epoch, self.samples_done, self.epoch_seconds = meta["epoch"], meta["samples_done"], meta["epoch_seconds"]
        self.batch_size, self.history = meta["batch_size"], meta["history"]
        self.best_metric, self.best_epoch, self.bad_epochs = meta["best_metric"], meta["best_epoch"], meta["bad_epochs"]
        # a state saved before min_delta existed counted progress on any gain: from the best value
        self.progress_ref = meta.get("progress_ref", self.best_metric)
        self.stopped_early, self.finished = meta["stopped_early"], meta["finished"]
        self.train_mean = _Mean(**meta["train_mean"])
        if meta["world_size"] == self.ctx.world_size:
            set_rng_state(meta["rng"][self.ctx.rank])
        else:
            log(f"resuming on {self.ctx.world_size} process(es) instead of {meta['world_size']}: the data order "
                f"of the current epoch changes, so the run will not repeat the uninterrupted one exactly")
            self.samples_done = self.samples_done * meta["world_size"] // self.ctx.world_size
            seed_everything(self.cfg.seed + self.ctx.rank + self.epoch)
        if self.ctx.is_main and not self.finished:
            log(f"resuming {self.run_dir} at epoch {self.epoch + 1}/{self.epochs}"
                + (f", {self.samples_done} samples into it" if self.samples_done else ""))

    def _interrupted(self, signal_name: str | None) -> FitResult:
        """Save the state; the caller says how to continue (one line, `cli.common.finish_run`)."""
        self._save()
        if self.ctx.is_main:
            self._write_history()
        return FitResult(self.best_epoch, self.best_metric, list(self.history), self.stopped_early, interrupted=True,
                         stopped_by=signal_name, planned_epochs=self.epochs)

    def _finish(self) -> FitResult:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.ctx.is_main:
            if self.best_state is not None:
                log(f"kept the weights of the best epoch, {self.best_epoch} of {len(self.history)} "
                    f"({self.monitor} {self.best_metric:.4g})")
                if still_improving(self.best_epoch, len(self.history), self.monitor, self.stopped_early):
                    log(f"note: {self.monitor} was still improving when training ended (best at epoch {self.best_epoch} "
                        f"of {len(self.history)}): the run may be under-trained; more --epochs or a higher --lr may do better")
            self._write_history()
        return FitResult(self.best_epoch, self.best_metric, list(self.history), self.stopped_early, interrupted=False,
                         planned_epochs=self.epochs)

    def _write_history(self, plot: bool = True) -> None:
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_output(self.run_dir / "history.csv", overwrite=True) as tmp:
            tmp.write_text(text.getvalue())
        summary = {"monitor": self.monitor, "best_epoch": self.best_epoch, "best_metric": self.best_metric,
                   "stopped_early": self.stopped_early, "planned_epochs": self.epochs, "epochs": self.history}
        with atomic_output(self.run_dir / "history.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if self.history and plot:
            plot_curves(self.history, self.run_dir / "curves.png", best_epoch=self.best_epoch)
            self.plotted_at = time.monotonic()


def still_improving(best_epoch: int, epochs_run: int, monitor: str, stopped_early: bool) -> bool:
    """Whether a run that used its whole budget had its best epoch among the last 5 % (at least the
    last 2) of at least 10: a sign of under-training. Not asked of a monitor that is the epoch itself."""
    if stopped_early or monitor == "epoch" or epochs_run < 10:
        return False
    return best_epoch > epochs_run - max(2, math.ceil(0.05 * epochs_run))


def _check_config(cfg: TrainConfig, train_set, val_set, ctx: DistContext) -> None:
    """What the TrainConfig schema cannot know: the data's sizes."""
    if len(train_set) == 0:
        raise ConfigError("the training split is empty: check the dataset's split (sits info DATASET)")
    if val_set is not None and len(val_set) < ctx.world_size:
        raise ConfigError(f"the validation split has {len(val_set)} sample(s), fewer than the {ctx.world_size} processes")


def _select_trainable(model: nn.Module, trainable: Sequence[ParamGroup] | None) -> list[ParamGroup]:
    """The groups to train (all parameters that require grad when None); freezes the model's others."""
    if trainable is None:
        groups: list[ParamGroup] = [([p for p in model.parameters() if p.requires_grad], None)]
    else:
        groups = [(list(params), lr) for params, lr in trainable]
        chosen = {id(p) for params, _ in groups for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
    if not any(params for params, _ in groups):
        raise ConfigError("the model has no trainable parameter: check the fine-tuning mode")
    return groups


# The smallest batch `min_steps_per_epoch` shrinks to: below ~32 samples a step's gradient (and an
# SVGP's minibatch ELBO) is mostly noise (a rule of thumb, not a paper's figure).
MIN_SCALED_BATCH = 32


def scaled_batch_size(batch_size: int, n_samples: int, min_steps: int | None) -> int:
    """min(batch_size, max(MIN_SCALED_BATCH, n_samples // min_steps)): `batch_size` on large data,
    smaller batches (so at least ~min_steps steps an epoch) on small data; `batch_size` when min_steps is None."""
    if min_steps is None:
        return batch_size
    return min(batch_size, max(MIN_SCALED_BATCH, n_samples // min_steps))


def planned_epochs(epochs: int, n_samples: int, batch_size: int, min_total_steps: int | None) -> int:
    """max(epochs, ceil(min_total_steps / steps an epoch)): `epochs` on large data, more epochs on data
    too small to make `min_total_steps` optimizer steps in `epochs`; `epochs` when min_total_steps is None."""
    if min_total_steps is None:
        return epochs
    steps = max(1, math.ceil(n_samples / batch_size))   # a lone last sample may be held over: ~1 step less
    return max(epochs, math.ceil(min_total_steps / steps))


def _make_optimizer(groups: list[ParamGroup], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices (linear, attention, embeddings) only, not on biases and norm scales:
    # decaying those only pulls them to zero without regularising (the usual AdamW practice).
    param_groups = []
    for params, lr in groups:
        lr = cfg.lr if lr is None else lr
        param_groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
                         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer(param_groups, lr=cfg.lr)


def _batch_len(batch) -> int:
    return next(v for v in batch.values() if isinstance(v, Tensor)).shape[0]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "batch_size", "time_s"))
    return f"epoch {row['epoch']}/{epochs}  {values}  {row['time_s']:.0f}s" + ("  [best]" if improved else "")
