"""L-TAE: the Lightweight Temporal Attention Encoder, on the clear observations of a pixel series.

Garnot & Landrieu 2020, "Lightweight Temporal Self-Attention for Classifying Satellite Images
Time Series" (AALTD, LNCS 12588; arXiv:2007.00586), reference code
github.com/VSainteuf/lightweight-temporal-attention-pytorch (`models/ltae.py`, `train.py`).

- Each observation: LayerNorm over the input channels, a linear map to d_model (the reference's
  1 x 1 convolution), a LayerNorm, plus a sinusoidal encoding of its acquisition day (period
  T = 1000 days, width d_model / n_head, the same encoding repeated for every head).
- Attention (Section 3): each head has ONE learnt master query of size d_k; keys are a
  linear map of the observations; the values are the observations themselves with their d_model
  channels split into n_head groups (no value projection). The head outputs are concatenated
  (d_model) and pass an MLP (Linear-BatchNorm-ReLU layers), dropout and a LayerNorm.
- Classifier: the reference's decoder MLP4 (Linear-BatchNorm-ReLU layers, then a linear layer).

Resolved ambiguities (each a choice, written down):
- Input: the paper runs L-TAE on the output of a Pixel-Set Encoder over a parcel; a pixel model
  has no pixel set, so the standardised bands go straight into the input LayerNorm and linear map.
- The reference normalises the projected sequence with LayerNorm((d_model, len_max_seq)), over
  channels AND a fixed sequence length, padding included; we normalise each observation over its
  d_model channels so that series of any length and padding leave the result unchanged.
- Positions: the reference counts days from the first acquisition of its single-season dataset.
  Our series are unaligned and may come from other years at mapping time, so the default is the
  day of year (`positions: doy`); `positions: reference` counts days since the dataset's first
  date (`DataInfo.reference_date`) as the paper does.
- Padding is masked out of the attention (the reference has equal-length series and no mask); a
  series with no clear observation attends to nothing and its head outputs are 0.
- Attention dropout 0.1 on the attention weights, as the reference's ScaledDotProductAttention.
- Loss: the reference trains with a focal loss of gamma = 1; the engine trains every classifier
  with cross-entropy (focal loss with gamma = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register
from sitscli.models.temporal import POSITIONS, channel_layer_norm, positions, require_classes, sinusoid

# Reference settings (train.py argparse defaults, the L-TAE configuration of the paper's experiments):
# d_model 256, 16 heads, d_k 8, MLP3 [256, 128], dropout 0.2, T 1000; decoder MLP4 [128, 64, 32, K].
DEFAULTS: dict[str, Any] = {
    "d_model": 256, "n_head": 16, "d_k": 8, "mlp": [256, 128], "dropout": 0.2, "T": 1000,
    "decoder": [64, 32], "positions": "doy",
}
ATTENTION_DROPOUT = 0.1   # reference ScaledDotProductAttention(attn_dropout=0.1)

# Optimisation settings of the reference train.py: Adam with torch's default lr 1e-3 (the --lr
# option is never passed to the optimiser), no weight decay, batch 128, 100 epochs, constant lr,
# no clipping, the epoch with the best validation mIoU kept (the engine keeps the best monitored
# value: validation overall accuracy, `val_oa`), no early stopping.
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 100, "batch_size": 128, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "patience": None,
                 "monitor": "val_oa", "monitor_mode": "max"},
}


def mlp_layers(sizes: Sequence[int]) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU for each consecutive pair of `sizes`: (B, sizes[0]) -> (B, sizes[-1])."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class MasterQueryAttention(nn.Module):
    """One learnt master query per head over the observations: x (B, T, D), keep (B, T) -> (B, D)."""

    def __init__(self, d_model: int, n_head: int, d_k: int, dropout: float):
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        # Initialisations of the reference: N(0, sqrt(2 / d_k)) for the queries and the key weights.
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, std=math.sqrt(2.0 / d_k))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.attend(x, keep)[0]

    def attend(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """-> (output (B, D), attention weights (B, H, T) before dropout; 0 on padding)."""
        b, t, d = x.shape
        k = self.key(x).view(b, t, self.n_head, self.d_k)                     # (B, T, H, d_k)
        scores = torch.einsum("hk,bthk->bht", self.query, k) / math.sqrt(self.d_k)   # (B, H, T)
        # A finite fill keeps an all-padding row finite; its weights are then zeroed below.
        scores = scores.masked_fill(~keep[:, None, :], torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1) * keep[:, None, :]                       # (B, H, T)
        v = x.view(b, t, self.n_head, d // self.n_head)                      # (B, T, H, D/H)
        out = torch.einsum("bht,bthv->bhv", self.dropout(weights), v).reshape(b, d)   # heads concatenated
        return out, weights


class LTAEEncoder(nn.Module):
    """L-TAE over embedded observations: x (B, T, in_channels), days (B, T) float, keep (B, T) bool
    (False = padding) -> (B, out_dim). `x` is already standardised (or any embedding)."""

    def __init__(self, in_channels: int, d_model: int = 256, n_head: int = 16, d_k: int = 8,
                 mlp: Sequence[int] = (256, 128), dropout: float = 0.2, T: float = 1000):
        super().__init__()
        check_hparams(d_model, n_head, d_k, mlp, dropout, T)
        self.n_head, self.period = n_head, float(T)
        self.in_norm = channel_layer_norm(in_channels)
        self.in_proj = nn.Linear(in_channels, d_model)
        self.proj_norm = nn.LayerNorm(d_model)
        self.attention = MasterQueryAttention(d_model, n_head, d_k, ATTENTION_DROPOUT)
        self.mlp = mlp_layers(list(mlp))
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(mlp[-1])
        self.out_dim = int(mlp[-1])

    def forward(self, x: Tensor, days: Tensor, keep: Tensor) -> Tensor:
        return self.encode(x, days, keep)[0]

    def encode(self, x: Tensor, days: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """-> (features (B, out_dim), attention (B, n_head, T) of the master queries, 0 on padding)."""
        x = self.proj_norm(self.in_proj(self.in_norm(x)))                    # (B, T, D)
        pos = sinusoid(days, x.shape[-1] // self.n_head, self.period)        # (B, T, D/H)
        x = x + pos.repeat(1, 1, self.n_head)                                # same encoding for each head
        out, weights = self.attention.attend(x, keep)
        return self.out_norm(self.dropout(self.mlp(out))), weights


def check_hparams(d_model: int, n_head: int, d_k: int, mlp_sizes: Sequence[int], dropout: float, T: float) -> None:
    """Refuse settings the architecture cannot take, in one line each."""
    if n_head < 1 or d_k < 1 or d_model % n_head or (d_model // n_head) % 2:
        raise ConfigError(f"ltae d_model {d_model} must split into n_head {n_head} groups of even width, and d_k >= 1")
    if not mlp_sizes or mlp_sizes[0] != d_model:
        raise ConfigError(f"ltae mlp {list(mlp_sizes)} must start with d_model ({d_model}), the heads' width")
    if not 0 <= dropout < 1 or T <= 0:
        raise ConfigError(f"ltae dropout must be in [0, 1) and T > 0 days, got {dropout} and {T}")


class LTAEClassifier(nn.Module):
    """Compact batch -> logits (B, K): BandNorm, L-TAE, decoder MLP4."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.positions, self.reference_date = h["positions"], info.reference_date
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.encoder = LTAEEncoder(info.num_bands, h["d_model"], h["n_head"], h["d_k"], h["mlp"],
                                   h["dropout"], h["T"])
        sizes = [self.encoder.out_dim, *h["decoder"]]
        self.decoder = nn.Sequential(mlp_layers(sizes), nn.Linear(sizes[-1], info.num_classes))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        days = positions(batch["dates"], self.positions, self.reference_date)          # (B, T)
        features = self.encoder(self.norm(batch["values"]), days, batch["valid"])      # (B, out_dim)
        return self.decoder(features)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = {**DEFAULTS, **hparams}
    if h["positions"] not in POSITIONS:
        raise ConfigError(f"unknown positions {h['positions']!r}: choose one of {', '.join(POSITIONS)}")
    require_classes("ltae", info)
    return LTAEClassifier(info, h)


register(ModelSpec(
    name="ltae",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("d_model", "n_head", "d_k", "mlp", "dropout", "T", "decoder"),
                             "Garnot & Landrieu 2020, reference train.py defaults"),
             "positions": "ours: day of year (the reference uses days since the first date)"},
    compact=True,
    description="L-TAE (Garnot & Landrieu 2020): master-query temporal attention on clear observations, supervised",
))
