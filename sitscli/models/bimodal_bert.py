"""Bi-modal BERT: a Transformer over a Sentinel-2 pixel series, pre-trained with PlanetScope targets.

Patnala, Schultz & Gall 2025, "BERT Bi-modal self-supervised learning for crop classification using
Sentinel-2 and Planetscope" (Front. Remote Sens. 6:1555887). PlanetScope serves pre-training only:
the encoder reads Sentinel-2 alone, so its classifiers map from Sentinel-2 alone.

- Input embedding: a 1-D convolution over time of the standardised bands (kernel `kernel`, "same"
  padding) instead of SITS-BERT's linear layer, so each date's embedding also sees its neighbours'
  spectra; plus a sinusoidal day-of-year encoding (sitsbert.DoyEncoding) of the full hidden size.
- Pre-norm Transformer blocks (sitsbert.Block: attention projections named q, k, v, so `--mode lora`
  applies), hidden 256, 8 heads, a feed-forward layer of `ffn` units, `layers` blocks.
- Representation: the per-date outputs (B, T, 256) after a final LayerNorm. Downstream base models
  (LSTM, InceptionTime, Transformer; `sits finetune --from RUN --model lstm`, models/stacked.py) read
  them; the model's own classifier pools them (mean or max) into one linear layer.
- Pre-training heads (the pretext is `sitscli.ssl.bimodal`): one linear layer from each date's output
  to PS_STEPS PlanetScope time steps x (4 bands x 3 x 3 pixels) = 3 x 36 values; one linear month
  classifier on the outputs averaged per calendar month; one linear cloud-level classifier (32 levels).

Which dates the encoder reads: `batch["observed"]` when the batch has it (the pretext passes the
Sentinel-2 dates that carry data, cloudy ones included: "cloudy observations stay in the input"),
else `batch["valid"]` (the clear dates: fine-tuning and `sits predict-map`, whose readers blank
clouds). Dates it does not read are set to the band mean before the convolution and kept out of
attention, so a clear date's embedding is the same whether the data kept cloudy values or not.

Resolved ambiguities (each a choice, written down):
- Depth: the paper's ablation uses 16 layers and its final model 32 (`layers: 16` or `32`); the
  default of 2 trains on a CPU in minutes.
- Feed-forward size: the paper's exact figure could not be checked here; we take 4 x hidden = 1024,
  BERT's ratio (Devlin et al. 2019), and expose `ffn` to set another.
- Convolution kernel 3 (one date each side); the date encoding is summed with the embedding (BERT's
  way), where SITS-BERT concatenates it.
- A series with no date to read attends to its padding (its outputs are then meaningless but finite).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.heads import PooledHead, masked_mean
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register
from sitscli.models.sitsbert import Block, DoyEncoding, day_of_year, month_of_year

DEFAULTS: dict[str, Any] = {"hidden": 256, "layers": 2, "heads": 8, "ffn": 1024, "kernel": 3, "dropout": 0.1,
                            "pooling": "mean"}
PAPER_LAYERS = (16, 32)     # the paper's ablation depth and final depth
PS_STEPS = 3                # PlanetScope steps regressed per date: the matching date and the two before
MONTHS = 12
CLOUD_LEVELS = 32           # Sentinel-2 cloud levels 0-31 (sitscli.data.readers: read_cloud)

# Training settings. Pre-training (the paper): 100 epochs, batch 64, 5 warm-up epochs then cosine
# annealing. The learning rate is SITS-BERT's 1e-4 (the paper's value could not be checked here).
# Fine-tuning the model's own classifier: the same optimiser at constant rate, 100 epochs.
TRAINING: dict[str, dict[str, Any]] = {
    "pretrain": {"epochs": 100, "batch_size": 64, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.01,
                 "schedule": "warmup_cosine", "warmup_epochs": 5.0, "min_lr": 0.0, "grad_clip": 1.0,
                 "patience": None},
    "finetune": {"epochs": 100, "batch_size": 64, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.01,
                 "schedule": "constant", "warmup_epochs": 0.0, "patience": None},
}


def read_mask(batch: dict[str, Tensor]) -> Tensor:
    """(B, T) bool: the Sentinel-2 dates the encoder reads (see the module docstring)."""
    return batch.get("observed", batch["valid"])


class BimodalBertEncoder(nn.Module):
    """Raw batch -> per-date outputs (B, T, hidden).

    Takes full (not compact) pixel batches: values (B, T, C) reflectance 0-1, dates (B, T) days since
    1970-01-01, valid (B, T), and optionally observed (B, T) (the pretext's dates to read).
    """

    def __init__(self, info: DataInfo, hidden: int, layers: int, heads: int, ffn: int, kernel: int, dropout: float):
        super().__init__()
        self.width = hidden
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.embed = nn.Conv1d(info.num_bands, hidden, kernel, padding="same")
        self.doy = DoyEncoding(hidden)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout, ffn, attention_dropout=dropout) for _ in range(layers))
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        keep = read_mask(batch)                                                   # (B, T)
        x = self.norm(batch["values"]) * keep.unsqueeze(-1)                       # (B, T, C), 0 = band mean
        x = self.embed(x.transpose(1, 2)).transpose(1, 2)                         # (B, T, D)
        x = self.dropout(x + self.doy(day_of_year(batch["dates"])))
        attend = keep | ~keep.any(1, keepdim=True)       # an empty series attends to its padding (no NaN)
        for block in self.blocks:
            x = block(x, attend)
        return self.out_norm(x)

    def represent_series(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The per-date representation: (outputs (B, T, hidden), dates read (B, T) bool)."""
        return self(batch), read_mask(batch)

    def represent(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, hidden): the mean of the outputs over the dates read (for probing)."""
        return masked_mean(self(batch), read_mask(batch))


def month_means(tokens: Tensor, dates: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs averaged per calendar month: tokens (B, T, D), dates (B, T), keep (B, T) ->
    (means (B, 12, D), present (B, 12) bool: the month has at least one date kept)."""
    member = F.one_hot(month_of_year(dates), MONTHS).to(tokens.dtype) * keep.unsqueeze(-1)   # (B, T, 12)
    counts = member.sum(1)                                                                # (B, 12)
    means = torch.einsum("btm,btd->bmd", member, tokens) / counts.clamp_min(1.0).unsqueeze(-1)
    return means, counts > 0


class BimodalBertPretrain(nn.Module):
    """Encoder + the three pre-training heads: batch -> dict of outputs.

    Returns tokens (B, T, D); month_logits (B, 12, 12) and month_present (B, 12) (row m: the outputs
    of month m averaged); cloud_logits (B, T, 32); with a PlanetScope head, ps (B, T, PS_STEPS, n) the
    predicted PlanetScope values of each date in standardised units (n = bands x pixels of the block,
    band-major) and, when the batch holds PlanetScope, ps_reference (B, T2, n) the standardised series.
    """

    def __init__(self, encoder: BimodalBertEncoder, planetscope: dict | None):
        super().__init__()
        self.encoder = encoder
        d = encoder.width
        self.month = nn.Linear(d, MONTHS)
        self.cloud = nn.Linear(d, CLOUD_LEVELS)
        self.ps_values = 0
        if planetscope is not None:
            # standardised per band: the regression loss then weighs the four bands alike
            self.ps_norm = BandNorm(planetscope["band_mean"], planetscope["band_std"], channel_dim=-3)
            self.ps_values = len(planetscope["band_names"]) * math.prod(planetscope["footprint"])
            self.ps = nn.Linear(d, PS_STEPS * self.ps_values)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        tokens = self.encoder(batch)                                           # (B, T, D)
        means, present = month_means(tokens, batch["dates"], read_mask(batch))
        out = {"tokens": tokens, "month_logits": self.month(means), "month_present": present,
               "cloud_logits": self.cloud(tokens)}
        if self.ps_values:
            b, t, _ = tokens.shape
            out["ps"] = self.ps(tokens).view(b, t, PS_STEPS, self.ps_values)
            if "ps_values" in batch:                                           # (B, T2, C, h, w)
                out["ps_reference"] = self.ps_norm(batch["ps_values"]).flatten(2)
        return out


class BimodalBertClassifier(nn.Module):
    """Encoder + pooled linear head: batch -> logits (B, K)."""

    def __init__(self, encoder: BimodalBertEncoder, num_classes: int, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.head = PooledHead(encoder.width, num_classes, pooling)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        tokens, keep = self.encoder.represent_series(batch)
        return self.head(tokens, keep)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """The pre-training model when `info` has no classes, else the classifier."""
    h = {**DEFAULTS, **hparams}
    if h["hidden"] % 2 or h["heads"] < 1 or h["hidden"] % h["heads"]:
        raise ConfigError(f"bimodal-bert hidden size {h['hidden']} must be even and a multiple of heads ({h['heads']})")
    if min(h["layers"], h["ffn"], h["kernel"]) < 1 or not 0 <= h["dropout"] < 1:
        raise ConfigError("bimodal-bert layers, ffn and kernel must be >= 1 and dropout in [0, 1)")
    if h["pooling"] not in ("mean", "max"):
        raise ConfigError(f"bimodal-bert pooling {h['pooling']!r}: choose mean or max (it has no [CLS] token)")
    encoder = BimodalBertEncoder(info, h["hidden"], h["layers"], h["heads"], h["ffn"], h["kernel"], h["dropout"])
    if info.num_classes == 0:
        return BimodalBertPretrain(encoder, info.modalities.get("planetscope"))
    return BimodalBertClassifier(encoder, info.num_classes, h["pooling"])


register(ModelSpec(
    name="bimodal-bert",
    build=build,
    defaults=DEFAULTS,
    input="pixel",
    pretext="bimodal",
    # Sentinel-2 is all it reads; PlanetScope is loaded when present because the pretext regresses it.
    modalities=("s2",),
    optional_modalities=("planetscope",),
    description="Bi-modal BERT (Patnala et al. 2025): Sentinel-2 Transformer pre-trained on PlanetScope, "
                "month and cloud targets",
))
