"""Transformer encoder for optical satellite time series, supervised.

Rußwurm & Körner 2020, "Self-attention for raw optical Satellite Time Series Classification"
(ISPRS J. Photogramm. Remote Sens. 169:421-435), in the form of the BreizhCrops benchmark model
(github.com/dl4sits/BreizhCrops, `breizhcrops/models/TransformerModel.py`, same authors).

- A linear layer from the bands to d_model and a ReLU, a stack of post-norm Transformer encoder
  layers (self-attention, ReLU feed-forward of d_inner) with a final LayerNorm, max-pooling over
  time, a ReLU and one linear layer to the classes.

Resolved ambiguities (each a choice, written down):
- Sizes: the BreizhCrops model's defaults (d_model 64, 1 head, 3 layers, d_inner 256, dropout
  0.4, the authors' hyper-parameter search).
- Raw observations: the paper's point is that self-attention copes with clouded observations left
  in the series. Our batches cannot tell a clouded observation from padding (both are valid=False,
  and readers may blank clouded values), so the model takes the clear observations only
  (compact batches) and padding is masked out of the attention and of the max-pooling.
- Time: the reference model has no positional encoding (its series share one sampling). Ours are
  unaligned and, once clouds are dropped, the position in the sequence says nothing about time, so
  a sinusoidal encoding of the day of year (period 10000 as Vaswani et al. 2017, Eq. 5;
  `positions: reference` for days since the dataset's first date) is added to the embedding.
- A series with no clear observation pools to 0 (masked max), so its logits stay finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.heads import masked_max
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register
from sitscli.models.temporal import POSITIONS, positions, require_classes, sinusoid

DEFAULTS: dict[str, Any] = {
    "d_model": 64, "heads": 1, "layers": 3, "d_inner": 256, "dropout": 0.4,   # BreizhCrops TransformerModel
    "positions": "doy",
}
PERIOD = 10000.0

# Optimisation settings of the benchmark script (examples/train.py): Adam, weight decay 1e-6,
# batch 256, 150 epochs, constant lr, cross-entropy, no clipping. Its lr default of 1e-2 is meant
# to be replaced by each model's tuned value; we take 1e-3, the middle of the searched range
# (1e-4 .. 1e-2), as a Transformer does not train stably at 1e-2 without warm-up.
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 150, "batch_size": 256, "lr": 1e-3, "optimizer": "adam", "weight_decay": 1e-6,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "patience": None},
}


class TransformerClassifier(nn.Module):
    """Compact batch -> logits (B, K)."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.positions, self.reference_date = h["positions"], info.reference_date
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.embed = nn.Linear(info.num_bands, h["d_model"])
        layer = nn.TransformerEncoderLayer(h["d_model"], h["heads"], h["d_inner"], h["dropout"], batch_first=True)
        # enable_nested_tensor off: the nested fast path returns 0 at padded positions only in eval
        # mode, and we want one behaviour; the masked max below ignores padding either way.
        self.encoder = nn.TransformerEncoder(layer, h["layers"], nn.LayerNorm(h["d_model"]),
                                             enable_nested_tensor=False)
        self.out = nn.Linear(h["d_model"], info.num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        keep = batch["valid"]                                                           # (B, T)
        days = positions(batch["dates"], self.positions, self.reference_date)          # (B, T)
        x = torch.relu(self.embed(self.norm(batch["values"])))                         # (B, T, D)
        x = x + sinusoid(days, x.shape[-1], PERIOD)
        # An all-padding series would make every attention row empty (NaN): let it attend to its
        # padding; its outputs are dropped by the masked max anyway.
        attend = keep | ~keep.any(1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=~attend)                              # (B, T, D)
        return self.out(torch.relu(masked_max(x, keep)))                               # (B, K)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = {**DEFAULTS, **hparams}
    if h["heads"] < 1 or h["d_model"] % h["heads"] or h["d_model"] % 2:
        raise ConfigError(f"transformer d_model {h['d_model']} must be even and a multiple of heads ({h['heads']})")
    if h["layers"] < 1 or h["d_inner"] < 1 or not 0 <= h["dropout"] < 1:
        raise ConfigError("transformer layers and d_inner must be >= 1 and dropout in [0, 1)")
    if h["positions"] not in POSITIONS:
        raise ConfigError(f"unknown positions {h['positions']!r}: choose one of {', '.join(POSITIONS)}")
    require_classes("transformer", info)
    return TransformerClassifier(info, h)


register(ModelSpec(
    name="transformer",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("d_model", "heads", "layers", "d_inner", "dropout"), "BreizhCrops TransformerModel"),
             "positions": "ours: day-of-year encoding"},
    compact=True,
    description="Transformer (Rußwurm & Körner 2020) on clear observations with day-of-year encoding, supervised",
))
