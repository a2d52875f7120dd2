"""Learning-rate schedules as functions of training progress in (fractional) epochs.

Progress is counted in epochs rather than optimizer steps so that the schedule does not depend on
the batch size: after an out-of-memory fallback halves the batch, or on a resume, the learning rate
at a given point of the data is unchanged.

- "warmup_cosine": linear warm-up over `warmup_epochs` then a half-cosine from `lr` down to
  `min_lr` at the last epoch (the warm-up + cosine decay of BERT-style pre-training).
- "cosine_restarts": SGDR (Loshchilov & Hutter 2017, eq. 5) with restarts every `restart_period`
  epochs, through torch's CosineAnnealingWarmRestarts, which takes fractional epochs.
- "plateau": ReduceLROnPlateau on the monitored metric, once per epoch after the warm-up.
- "constant": `lr` after the warm-up.
- "hold_exponential": `lr` held for `hold_epochs` whole epochs, then multiplied by `decay_gamma` at
  the start of each further epoch (torch's ExponentialLR stepped once an epoch after the hold): the
  schedule of the SITS-BERT reference code (lr 1e-4 held 10 epochs, then x0.99 an epoch).
A warm-up (`warmup_epochs` > 0) scales the first epochs of every schedule linearly from ~0 to 1.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, ReduceLROnPlateau

from sitscli.core.errors import ConfigError

SCHEDULES = ("warmup_cosine", "cosine_restarts", "plateau", "constant", "hold_exponential")


class LRSchedule:
    def __init__(self, optimizer: Optimizer, name: str, *, epochs: int, warmup_epochs: float, min_lr: float,
                 restart_period: int, monitor_mode: str, plateau_factor: float, plateau_patience: int,
                 hold_epochs: int = 0, decay_gamma: float = 1.0):
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
        if name == "cosine_restarts" and restart_period < 1:
            raise ConfigError(f"restart_period must be at least 1 epoch, got {restart_period}")
        self.optimizer, self.name = optimizer, name
        self.epochs, self.warmup, self.min_lr = epochs, max(0.0, warmup_epochs), min_lr
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.restarts = (CosineAnnealingWarmRestarts(optimizer, T_0=restart_period, eta_min=min_lr)
                         if name == "cosine_restarts" else None)
        self.plateau = (ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=plateau_factor,
                                          patience=plateau_patience, min_lr=min_lr)
                        if name == "plateau" else None)
        self.in_warmup = self.warmup > 0
        self.hold_epochs, self.decay_gamma = hold_epochs, decay_gamma

    def _warmup_factor(self, progress: float) -> float:
        return min(1.0, progress / self.warmup) if self.warmup > 0 else 1.0

    def set_progress(self, start: float, end: float) -> None:
        """Set the learning rate of the step that covers the data from `start` to `end` epochs.

        The decay reads the start (so the last step of a cycle is at its lowest rate); the warm-up
        reads the end (so the very first step does not have a zero rate).
        """
        factor, progress = self._warmup_factor(end), start
        if self.name == "plateau":
            if self.in_warmup:  # the plateau logic only acts after the warm-up, so base_lrs still hold
                self._set([lr * factor for lr in self.base_lrs])
                self.in_warmup = factor < 1.0
            return
        if self.name == "cosine_restarts":
            self.restarts.step(progress)
            self._set([group["lr"] * factor for group in self.optimizer.param_groups])
            return
        lrs = self.base_lrs
        if self.name == "warmup_cosine" and progress > self.warmup:
            span = max(self.epochs - self.warmup, 1e-12)
            t = min(1.0, (progress - self.warmup) / span)
            lrs = [self.min_lr + (lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t)) for lr in lrs]
        if self.name == "hold_exponential":
            # the decay counts whole epochs, as an ExponentialLR stepped at each epoch's end
            decays = max(0, math.floor(progress + 1e-9) - self.hold_epochs)
            lrs = [max(self.min_lr, lr * self.decay_gamma ** decays) for lr in lrs]
        self._set([lr * factor for lr in lrs])

    def end_epoch(self, metric: float) -> None:
        if self.plateau is not None and not self.in_warmup:
            self.plateau.step(metric)

    def _set(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def state_dict(self) -> dict:
        """Only the plateau logic carries state; the others are closed forms of the progress."""
        if self.plateau is None:
            return {}
        return {"plateau": self.plateau.state_dict(), "in_warmup": self.in_warmup}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])
            self.in_warmup = state["in_warmup"]
