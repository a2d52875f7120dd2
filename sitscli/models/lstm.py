"""Bidirectional LSTM on a regularly resampled pixel series.

Rußwurm & Körner 2017, "Temporal Vegetation Modelling using Long Short-Term Memory Networks for
Crop Identification from Medium-Resolution Multi-Spectral Satellite Images" (CVPR Workshops), in
the form of the BreizhCrops benchmark (Rußwurm et al. 2020, ISPRS Archives XLIII-B2; reference code
github.com/dl4sits/BreizhCrops, `breizhcrops/models/LongShortTermMemory.py`, `examples/train.py`).

- LayerNorm over the bands of each step, a stacked LSTM without biases (dropout between layers),
  the final CELL states of every layer and direction concatenated, LayerNorm, one linear layer.

Resolved ambiguities (each a choice, written down):
- Depth, width and dropout: the reference module's defaults (128 hidden units, 2 layers, dropout
  0.2); bidirectional, as the benchmark's tuned LSTM (the module's default is one direction).
- Time axis: an LSTM reads a sequence step by step, so unaligned series with clouds are resampled
  onto one grid of days shared by every pixel, 37 steps of 10 days by day of year
  (`temporal.RegularGridInput`; `grid_len`, `grid_step`, `positions` change it). The reference
  instead samples 45 observations per series at random; the grid makes predictions repeatable.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.models.temporal import RegularGridInput, channel_layer_norm, require_classes

DEFAULTS: dict[str, Any] = {
    "hidden": 128, "layers": 2, "dropout": 0.2, "bidirectional": True,    # reference module / benchmark
    "grid_len": 37, "grid_step": 10.0, "positions": "doy",                 # our regular time axis
}

# Optimisation settings of the benchmark script (examples/train.py defaults): Adam, lr 1e-2, weight
# decay 1e-6, batch 256, 150 epochs, constant lr, cross-entropy, no clipping, no early stopping.
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 150, "batch_size": 256, "lr": 1e-2, "optimizer": "adam", "weight_decay": 1e-6,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "patience": None},
}


class LSTMClassifier(nn.Module):
    """Batch -> logits (B, K)."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.input = RegularGridInput(info, h["grid_len"], h["grid_step"], h["positions"])
        self.in_norm = channel_layer_norm(info.num_bands)
        self.lstm = nn.LSTM(info.num_bands, h["hidden"], h["layers"], bias=False, batch_first=True,
                            dropout=h["dropout"] if h["layers"] > 1 else 0.0, bidirectional=h["bidirectional"])
        states = h["hidden"] * h["layers"] * (2 if h["bidirectional"] else 1)
        self.out_norm = nn.LayerNorm(states)
        self.out = nn.Linear(states, info.num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.in_norm(self.input(batch))                         # (B, G, C)
        _, (_, cell) = self.lstm(x)                                 # cell (layers * directions, B, hidden)
        features = cell.transpose(0, 1).flatten(1)                 # (B, layers * directions * hidden)
        return self.out(self.out_norm(features))


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = {**DEFAULTS, **hparams}
    if h["hidden"] < 1 or h["layers"] < 1 or not 0 <= h["dropout"] < 1:
        raise ConfigError(f"lstm hidden and layers must be >= 1 and dropout in [0, 1), "
                          f"got {h['hidden']}, {h['layers']}, {h['dropout']}")
    require_classes("lstm", info)
    return LSTMClassifier(info, h)


register(ModelSpec(
    name="lstm",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("hidden", "layers", "dropout", "bidirectional"), "BreizhCrops LSTM module and benchmark"),
             "grid_len": "ours: a 10-day grid over the year (days 0-360)", "grid_step": "ours: a 10-day grid over the year (days 0-360)", "positions": "ours: day of year on the grid"},
    description="Bidirectional LSTM (Rußwurm & Körner 2017, BreizhCrops) on series resampled to a 10-day grid",
))
