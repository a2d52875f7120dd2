"""ResMLP-contrastive: a spectral residual-MLP encoder pre-trained by Sentinel-2 / PlanetScope contrast.

Patnala, Stadtler, Schultz & Gall 2024, "Bi-modal contrastive learning for crop classification using
Sentinel-2 and Planetscope" (Front. Remote Sens. 5:1480101), the baseline of the bi-modal BERT paper
(Patnala et al. 2025). The pretext is `sitscli.ssl.bimodal_contrastive`.

- Encoder: one observation's spectrum at a time (no time mixing): standardised bands -> a linear
  layer to `width` -> `blocks` pre-norm residual MLP blocks (x + W2 GELU(W1 LayerNorm(x))) -> LayerNorm.
  Applied to every date, it gives the same kind of per-date representation (B, T, width) as
  bimodal-bert, which downstream base models read (`sits finetune --from RUN --model lstm`).
- Pre-training model: the Sentinel-2 encoder and a PlanetScope encoder of the same form (4 bands),
  each followed by a linear projection to `projection` dimensions; the pretext contrasts the two
  projections of spectra of the same place and date against the other pairs of the batch.
- Classifier: the per-date outputs of the clear dates pooled (mean or max), one linear layer.

Resolved ambiguities (each a choice, written down):
- Sizes: width 256 (the size of the BERT representation it is compared with), 3 residual blocks,
  projection 128, dropout 0.1: the 2024 paper's exact figures could not be checked here.
- The PlanetScope spectrum of a 10 m pixel is the mean of its clear 3 m pixels (3 x 3 block).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.heads import PooledHead, masked_mean
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register

DEFAULTS: dict[str, Any] = {"width": 256, "blocks": 3, "projection": 128, "dropout": 0.1, "pooling": "mean"}

# Pre-training as the bi-modal BERT it is compared with (100 epochs, warm-up then cosine), with the
# larger batch a contrastive loss wants (more negatives); fine-tuning its own classifier: constant rate.
TRAINING: dict[str, dict[str, Any]] = {
    "pretrain": {"epochs": 100, "batch_size": 256, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.01,
                 "schedule": "warmup_cosine", "warmup_epochs": 5.0, "min_lr": 0.0, "grad_clip": 1.0,
                 "patience": None},
    "finetune": {"epochs": 100, "batch_size": 64, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.01,
                 "schedule": "constant", "warmup_epochs": 0.0, "patience": None},
}


class ResidualBlock(nn.Module):
    """x (..., D) -> x + W2 GELU(W1 LayerNorm(x)), dropout on the branch."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.norm(x)))))


class SpectralMLP(nn.Module):
    """Standardised spectra (..., C) -> (..., width)."""

    def __init__(self, num_bands: int, width: int, blocks: int, dropout: float):
        super().__init__()
        self.stem = nn.Linear(num_bands, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(blocks)))
        self.out_norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_norm(self.blocks(self.stem(x)))


class ResMLPEncoder(nn.Module):
    """The Sentinel-2 spectral encoder: raw reflectance (..., C) -> (..., width); per date on batches."""

    def __init__(self, info: DataInfo, width: int, blocks: int, dropout: float):
        super().__init__()
        self.width = width
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.mlp = SpectralMLP(info.num_bands, width, blocks, dropout)

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(self.norm(values))

    def represent_series(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(outputs (B, T, width) of every date, the clear dates (B, T) bool)."""
        return self(batch["values"]), batch["valid"]

    def represent(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, width): the mean over the clear dates (for probing)."""
        return masked_mean(*self.represent_series(batch))


class ResMLPContrastive(nn.Module):
    """Both encoders and projections: batch with pair indices -> unit-norm projections of the pairs.

    The batch carries `pair_s2` (B,) a Sentinel-2 date index, `pair_ps` (B,) a PlanetScope date index
    (chosen by the pretext). Returns s2 (B, P) and ps (B, P), L2-normalised.
    """

    def __init__(self, encoder: ResMLPEncoder, planetscope: dict, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.ps_norm = BandNorm(planetscope["band_mean"], planetscope["band_std"])
        self.ps_encoder = SpectralMLP(len(planetscope["band_names"]), h["width"], h["blocks"], h["dropout"])
        self.s2_projection = nn.Linear(h["width"], h["projection"])
        self.ps_projection = nn.Linear(h["width"], h["projection"])

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        rows = torch.arange(len(batch["pair_s2"]), device=batch["pair_s2"].device)
        s2 = batch["values"][rows, batch["pair_s2"]]                                   # (B, C)
        block = batch["ps_values"][rows, batch["pair_ps"]].flatten(2)                  # (B, 4, h*w)
        clear = batch["ps_valid"][rows, batch["pair_ps"]].flatten(1).unsqueeze(1)      # (B, 1, h*w)
        ps = (block * clear).sum(-1) / clear.sum(-1).clamp_min(1)                      # (B, 4): mean of clear pixels
        return {"s2": F.normalize(self.s2_projection(self.encoder(s2)), dim=-1),
                "ps": F.normalize(self.ps_projection(self.ps_encoder(self.ps_norm(ps))), dim=-1)}


class ResMLPClassifier(nn.Module):
    """Encoder per date + pooled linear head: batch -> logits (B, K)."""

    def __init__(self, encoder: ResMLPEncoder, num_classes: int, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.head = PooledHead(encoder.width, num_classes, pooling)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(*self.encoder.represent_series(batch))


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """The pre-training model when `info` has no classes (it needs PlanetScope), else the classifier."""
    h = {**DEFAULTS, **hparams}
    if min(h["width"], h["blocks"], h["projection"]) < 1 or not 0 <= h["dropout"] < 1:
        raise ConfigError("resmlp-contrastive width, blocks and projection must be >= 1 and dropout in [0, 1)")
    if h["pooling"] not in ("mean", "max"):
        raise ConfigError(f"resmlp-contrastive pooling {h['pooling']!r}: choose mean or max")
    encoder = ResMLPEncoder(info, h["width"], h["blocks"], h["dropout"])
    if info.num_classes:
        return ResMLPClassifier(encoder, info.num_classes, h["pooling"])
    if "planetscope" not in info.modalities:
        raise ConfigError("resmlp-contrastive pre-trains on Sentinel-2 and PlanetScope pairs: the data has no "
                          "PlanetScope (prepare it with `sits prepare s2 ... --planetscope DIR`)")
    return ResMLPContrastive(encoder, info.modalities["planetscope"], h)


register(ModelSpec(
    name="resmlp-contrastive",
    build=build,
    defaults=DEFAULTS,
    input="pixel",
    pretext="bimodal-contrastive",
    modalities=("s2",),
    optional_modalities=("planetscope",),
    description="Residual MLP on single-date spectra, Sentinel-2 / PlanetScope contrastive pre-training "
                "(Patnala et al. 2024)",
))
