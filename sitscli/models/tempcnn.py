"""TempCNN: 1-D convolutions along time on a regularly resampled pixel series.

Pelletier, Webb & Petitjean 2019, "Temporal Convolutional Neural Network for the Classification
of Satellite Image Time Series" (Remote Sensing 11(5):523), reference code
github.com/charlotte-pel/temporalCNN (Keras, `deeplearning/architecture_features.py`).

- Three blocks Conv1d (64 filters, kernel 5, "same" padding) -> BatchNorm -> ReLU -> Dropout, the
  output flattened (time x filters), one dense layer of 256 units -> BatchNorm -> ReLU -> Dropout,
  then the softmax layer: the architecture the paper retains (reference `architecture_features.py`).

Resolved ambiguities (each a choice, written down):
- Time axis: the paper's series are gap-filled onto one regular grid of dates shared by every
  pixel. Our series are irregular and unaligned, so the model resamples each pixel's clear
  observations linearly onto 37 days 0, 10, ..., 360 of the year (10-day steps as the paper's
  gap-filled Formosat-2/Sentinel-2 series; `grid_len`, `grid_step`, `positions` change it) inside
  `forward` (`temporal.RegularGridInput`), so any dataset and `sits predict-map` work unchanged.
- Dropout: the reference code's default rate 0.5 for every block (conv_bn_relu_drop,
  fc_bn_relu_drop).
- L2 regularisation 1e-6 on the kernels (Keras `l2(1e-6)`, a penalty 1e-6 * sum(w^2)) becomes Adam's
  coupled weight decay 2e-6 (the gradient of that penalty), applied to every parameter.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.models.temporal import RegularGridInput, require_classes

DEFAULTS: dict[str, Any] = {
    "filters": 64, "kernel": 5, "conv_layers": 3, "dense": 256, "dropout": 0.5,   # paper / reference code
    "grid_len": 37, "grid_step": 10.0, "positions": "doy",                        # our regular time axis
}

# Optimisation settings of the reference code (trainValTestModel): Adam lr 1e-3 (betas 0.9, 0.999),
# batch 32, 20 epochs, L2 1e-6 (weight decay 2e-6, see above), no clipping, constant lr, the epoch
# with the lowest validation loss kept, no early stopping.
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "weight_decay": 2e-6,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "patience": None,
                 "monitor": "val_loss", "monitor_mode": "min"},
}


def conv_block(c_in: int, c_out: int, kernel: int, dropout: float) -> nn.Sequential:
    """(B, c_in, G) -> (B, c_out, G)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding="same"), nn.BatchNorm1d(c_out), nn.ReLU(),
                         nn.Dropout(dropout))


class TempCNN(nn.Module):
    """Batch -> logits (B, K)."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.input = RegularGridInput(info, h["grid_len"], h["grid_step"], h["positions"])
        widths = [info.num_bands] + [h["filters"]] * h["conv_layers"]
        self.convs = nn.Sequential(*(conv_block(a, b, h["kernel"], h["dropout"])
                                     for a, b in zip(widths[:-1], widths[1:])))
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(h["filters"] * h["grid_len"], h["dense"]),
                                   nn.BatchNorm1d(h["dense"]), nn.ReLU(), nn.Dropout(h["dropout"]))
        self.out = nn.Linear(h["dense"], info.num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.input(batch).transpose(1, 2)             # (B, C, G)
        return self.out(self.dense(self.convs(x)))        # (B, F, G) -> (B, F*G) -> (B, dense) -> (B, K)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = {**DEFAULTS, **hparams}
    if min(h["filters"], h["kernel"], h["conv_layers"], h["dense"]) < 1 or not 0 <= h["dropout"] < 1:
        raise ConfigError("tempcnn filters, kernel, conv_layers and dense must be >= 1 and dropout in [0, 1)")
    require_classes("tempcnn", info)
    return TempCNN(info, h)


register(ModelSpec(
    name="tempcnn",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("filters", "kernel", "conv_layers", "dense", "dropout"),
                             "Pelletier et al. 2019 and reference code"),
             "grid_len": "ours: a 10-day grid over the year (days 0-360)", "grid_step": "ours: a 10-day grid over the year (days 0-360)", "positions": "ours: day of year on the grid"},
    description="TempCNN (Pelletier et al. 2019): 1-D convolutions on series resampled to a 10-day grid, supervised",
))
