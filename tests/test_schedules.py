"""Learning-rate schedules of the papers' recipes, at chosen points of training."""

from __future__ import annotations

import pytest
import torch

from sitscli.engine.schedule import LRSchedule
from sitscli.engine.trainer import TrainConfig
from sitscli.models import registry
from sitscli.workflows.pretrain import model_training_defaults


def _lr_at(schedule: LRSchedule, epoch: float) -> float:
    schedule.set_progress(epoch, epoch + 0.01)
    return schedule.optimizer.param_groups[0]["lr"]


def _schedule(**options) -> LRSchedule:
    cfg = TrainConfig(**options)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return LRSchedule(optimizer, cfg.schedule, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                      restart_period=cfg.restart_period, monitor_mode=cfg.monitor_mode,
                      plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
                      hold_epochs=cfg.hold_epochs, decay_gamma=cfg.decay_gamma)


def test_sitsbert_pretraining_holds_lr_ten_epochs_then_decays_by_0_99():
    schedule = _schedule(**model_training_defaults(registry.get("sitsbert"), "pretrain"))
    assert _lr_at(schedule, 0.0) == pytest.approx(1e-4)          # the full rate from the first step
    assert _lr_at(schedule, 9.5) == pytest.approx(1e-4)
    assert _lr_at(schedule, 10.0) == pytest.approx(1e-4)         # epoch 11 (0-based 10): not yet decayed
    assert _lr_at(schedule, 11.2) == pytest.approx(0.99e-4)
    assert _lr_at(schedule, 99.0) == pytest.approx(1e-4 * 0.99 ** 89)


def test_sitsbert_lora_uses_its_own_lower_lr():
    assert model_training_defaults(registry.get("sitsbert"), "lora") == {"lr": 1e-5}


@pytest.mark.parametrize("schedule", ["warmup_cosine", "hold_exponential", "constant", "cosine_restarts", "plateau"])
def test_every_schedule_scales_each_parameter_groups_own_base_lr(schedule):
    """LoRA adapters at 1e-5 beside a head at 2e-4: the schedule keeps their 20x ratio at every point."""
    cfg = TrainConfig(schedule=schedule, lr=1e-5, epochs=20, warmup_epochs=2.0, hold_epochs=3, decay_gamma=0.9)
    optimizer = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                                  {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2e-4}], lr=cfg.lr)
    lrs = LRSchedule(optimizer, cfg.schedule, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                     restart_period=cfg.restart_period, monitor_mode=cfg.monitor_mode, plateau_factor=cfg.plateau_factor,
                     plateau_patience=cfg.plateau_patience, hold_epochs=cfg.hold_epochs, decay_gamma=cfg.decay_gamma)
    for epoch in (0.0, 1.0, 2.5, 7.0, 15.3):
        lrs.set_progress(epoch, epoch + 0.01)
        adapters, head = (group["lr"] for group in optimizer.param_groups)
        assert 0 < adapters < 1e-5 * (1 + 1e-9) and head == pytest.approx(20 * adapters)
