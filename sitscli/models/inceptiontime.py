"""InceptionTime: a deep residual network of Inception modules on a regularly resampled series.

Ismail Fawaz et al. 2020, "InceptionTime: Finding AlexNet for Time Series Classification" (Data
Mining and Knowledge Discovery 34:1936-1962; reference code github.com/hfawaz/InceptionTime).

- Inception module (Section 3, Fig. 1; reference `classifiers/inception.py`): a 1 x 1 bottleneck
  convolution to 32 channels (when the input has more than one channel), three convolutions of 32
  filters with kernels 40, 20 and 10 on it, in parallel a 3-wide max-pooling followed by a 1 x 1
  convolution of 32 filters; the four outputs concatenated (128 channels), BatchNorm, ReLU.
- Network: depth 6 modules, a residual connection every 3 modules (a 1 x 1 convolution +
  BatchNorm on the shortcut, added, ReLU), global average pooling over time, one linear layer.

Resolved ambiguities (each a choice, written down):
- Kernel sizes: the paper's 40/20/10 were chosen for UCR series of hundreds of steps (the paper
  finds that longer series want a larger receptive field). Our default grid has 37 steps, so they
  are halved and made odd, 21/11/5, so that "same" padding is centred (the paper's even kernels shift
  features by half a step): the longest kernel then spans 210 days, about half a season.
- Time axis: series are resampled onto 37 days 0, 10, ..., 360 of the year
  (`temporal.RegularGridInput`; `grid_len`, `grid_step`, `positions` change it).
- Ensemble: InceptionTime proper averages 5 such networks trained from different initialisations;
  one model here is one network (train several runs and average for the ensemble).
- Convolutions without biases (followed by BatchNorm), as in the reference code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.models.temporal import RegularGridInput, require_classes

DEFAULTS: dict[str, Any] = {
    "depth": 6, "filters": 32, "bottleneck": 32, "kernels": [21, 11, 5], "residual_every": 3,   # paper / reference code
    "grid_len": 37, "grid_step": 10.0, "positions": "doy",                                       # our time axis
}

# Optimisation settings of the reference code (classifiers/inception.py): Adam lr 1e-3, batch 64, 1500 epochs,
# ReduceLROnPlateau halving the lr after 50 epochs without progress (the reference watches the
# training loss, min_lr 1e-4), the model with the lowest training loss kept. The engine's plateau
# schedule watches `monitor`; we point it at the training loss as the reference does.
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 1500, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0,
                 "schedule": "plateau", "plateau_factor": 0.5, "plateau_patience": 50, "min_lr": 1e-4,
                 "warmup_epochs": 0.0, "grad_clip": None, "patience": None,
                 "monitor": "train_loss", "monitor_mode": "min"},
}


class InceptionModule(nn.Module):
    """(B, c_in, G) -> (B, 4 * filters, G)."""

    def __init__(self, c_in: int, filters: int, bottleneck: int, kernels: list[int]):
        super().__init__()
        narrow = bottleneck if c_in > 1 else c_in
        self.bottleneck = nn.Conv1d(c_in, narrow, 1, bias=False) if c_in > 1 else nn.Identity()
        self.convs = nn.ModuleList(nn.Conv1d(narrow, filters, k, padding="same", bias=False) for k in kernels)
        self.pool = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(c_in, filters, 1, bias=False))
        self.bn = nn.BatchNorm1d(filters * (len(kernels) + 1))

    def forward(self, x: Tensor) -> Tensor:
        narrow = self.bottleneck(x)
        branches = [conv(narrow) for conv in self.convs] + [self.pool(x)]
        return torch.relu(self.bn(torch.cat(branches, 1)))


class InceptionTime(nn.Module):
    """Batch -> logits (B, K)."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.input = RegularGridInput(info, h["grid_len"], h["grid_step"], h["positions"])
        width = h["filters"] * (len(h["kernels"]) + 1)
        self.blocks = nn.ModuleList(
            InceptionModule(info.num_bands if i == 0 else width, h["filters"], h["bottleneck"], h["kernels"])
            for i in range(h["depth"]))
        self.every = h["residual_every"]
        starts = range(0, h["depth"] - self.every + 1, self.every)     # a shortcut spans each full group
        self.shortcuts = nn.ModuleList(
            nn.Sequential(nn.Conv1d(info.num_bands if s == 0 else width, width, 1, bias=False),
                          nn.BatchNorm1d(width))
            for s in starts)
        self.out = nn.Linear(width, info.num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.input(batch).transpose(1, 2)                         # (B, C, G)
        residual = x
        for i, module in enumerate(self.blocks):
            x = module(x)                                             # (B, width, G)
            if (i + 1) % self.every == 0:
                x = torch.relu(x + self.shortcuts[i // self.every](residual))
                residual = x
        return self.out(x.mean(-1))                                   # global average pooling -> (B, K)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = {**DEFAULTS, **hparams}
    if min(h["depth"], h["filters"], h["bottleneck"], h["residual_every"]) < 1 or not h["kernels"] \
            or min(h["kernels"]) < 1:
        raise ConfigError("inceptiontime depth, filters, bottleneck, residual_every and every kernel must be >= 1")
    require_classes("inceptiontime", info)
    return InceptionTime(info, h)


register(ModelSpec(
    name="inceptiontime",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("depth", "filters", "bottleneck", "residual_every"), "Ismail Fawaz et al. 2020 and reference code"),
             "kernels": "the paper's 40/20/10 halved and made odd for a 37-step grid (module docstring)",
             "grid_len": "ours: a 10-day grid over the year (days 0-360)", "grid_step": "ours: a 10-day grid over the year (days 0-360)", "positions": "ours: day of year on the grid"},
    description="InceptionTime (Ismail Fawaz et al. 2020): residual Inception network on a 10-day grid",
))
