"""SITS-BERT: a Transformer encoder over the clear observations of a pixel time series.

Yuan & Lin 2021, "Self-supervised pre-training of Transformers for satellite image time series
classification" (IEEE JSTARS 14:474-487), reference code github.com/linlei1214/SITS-BERT.

- Observation embedding: the CONCATENATION (not the sum) of a linear projection of the bands and
  a sinusoidal encoding of the acquisition day of year, each half the hidden size.
- Pre-norm Transformer blocks (the reference builds on BERT-pytorch: x + Dropout(f(LayerNorm(x))))
  with GELU feed-forward layers of 4 x hidden; padding is masked out of attention.
- Pre-training model (no classes): a linear layer predicts every observation's reflectance from its
  output (the contamination pretext lives in `sitscli.ssl.contamination`).
- Classifier: a linear head on the [CLS] output or on the mean/max of the observation outputs.

Resolved ambiguities (each a choice, written down):
- [CLS]: the reference has no [CLS] token and max-pools. We always prepend a learnable [CLS]
  embedding (as BERT does) so that any pre-trained encoder supports every pooling, and so that a
  series with no clear observation still has one key to attend to. It is excluded from mean/max.
- Day of year: the reference looks DOY up in a table indexed 1..366; we compute the same sinusoid
  of the DOY directly, from the `dates` of the batch (days since 1970-01-01).
- Input scale: the reference feeds raw reflectance; we standardise with `BandNorm` (project rule,
  so the statistics travel in the checkpoint).
- The reference adds one more dropout after each block; we keep the two residual dropouts only.
- Attention dropout (a deviation, for speed): the reference drops attention probabilities with
  the same rate as everything else (0.1); our default `attention_dropout` is 0, which keeps
  `scaled_dot_product_attention` on its fused kernels (a dropout mask on the attention matrix
  sends it to the unfused path). The residual, feed-forward and embedding dropouts keep 0.1, so
  the model is still regularised; `--hparam attention_dropout=0.1` restores the reference. A model
  card written before this hyper-parameter existed has no such key and loads with the new default
  0: the same model at inference, where dropout is off anyway.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.heads import POOLINGS, PooledHead, masked_mean
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register

# Reference settings (the paper's experiments; README and run scripts of the reference code):
# hidden 256, 3 layers, 8 heads, dropout 0.1, series of at most 64 clear observations.
# Pooling "max" is what the reference classifier does (MaxPool1d over the sequence).
# attention_dropout 0 instead of the reference's 0.1: see "Attention dropout" above.
DEFAULTS: dict[str, Any] = {"hidden": 256, "layers": 3, "heads": 8, "dropout": 0.1, "attention_dropout": 0.0,
                            "pooling": "max"}
MAX_LEN = 64

# Optimisation settings of the reference code (README commands, pretraining.py, trainer/*.py),
# read by `sits pretrain` / `sits finetune` as this model's defaults (engine TrainConfig fields).
# - Pre-training: Adam, lr 1e-4, batch 256 (the README command; pretraining.py's Config says 512),
#   100 epochs, gradient clipping at norm 5, no weight decay, the best epoch on a validation
#   loss kept, no early stopping. Schedule: the reference holds lr for 10 "warm-up" epochs (no
#   ramp: the full lr from the first step), then multiplies it by 0.99 each epoch (ExponentialLR),
#   ending at 0.99^90 = 0.40 x lr: the engine's "hold_exponential" schedule.
# - Fine-tuning: Adam, lr 2e-4 and batch 128 (README and run_finetuning.sh; finetuning.py's argparse
#   default of 2e-5 is overridden there), constant lr, no clipping, 100 epochs from a pre-trained
#   encoder and 300 from scratch, the epoch with the best validation accuracy kept.
# - Both: batches of series of similar length (engine `bucket_by_length`; not in the reference,
#   which pads every series to 64). A compact batch pads to its longest series, and about a third
#   of the tokens of random batches were padding; bucketed batches hold the same samples per epoch.
TRAINING: dict[str, dict[str, Any]] = {
    "pretrain": {"epochs": 100, "batch_size": 256, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0,
                 "schedule": "hold_exponential", "warmup_epochs": 0.0, "hold_epochs": 10, "decay_gamma": 0.99,
                 "min_lr": 0.0, "grad_clip": 5.0, "patience": None, "bucket_by_length": True},
    "finetune": {"epochs": 100, "batch_size": 128, "lr": 2e-4, "optimizer": "adam", "weight_decay": 0.0,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "patience": None,
                 "bucket_by_length": True},
    "scratch": {"epochs": 300},
    # LoRA fine-tuning: lr 1e-5 (the LoRA configuration reported for SITS-BERT, issue 11; the
    # adapter shape is in models/lora.py)
    "lora": {"lr": 1e-5},
}


def _day_from_march(days: Tensor) -> tuple[Tensor, Tensor]:
    """(day of the March-based year, 0 = 1 March; that year) of integer days since 1970-01-01.

    The civil-from-days algorithm (H. Hinnant, "chrono-compatible low-level date algorithms").
    """
    z = days.long() + 719468                      # days since 0000-03-01
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097                        # day of the 400-year era, 0..146096
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    return doe - (365 * yoe + yoe // 4 - yoe // 100), yoe + era * 400


def day_of_year(days: Tensor) -> Tensor:
    """Day of year 1..366 of integer days since 1970-01-01 (any shape), on the tensor's device,
    matching `sitscli.core.dates.day_of_year` for numpy."""
    day_from_march, year = _day_from_march(days)  # year: the one that holds this March-to-December
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    # 1 March is day 60 (61 in a leap year); January and February belong to the next year.
    return torch.where(day_from_march >= 306, day_from_march - 305, day_from_march + 60 + leap.long())


def month_of_year(days: Tensor) -> Tensor:
    """Calendar month 0..11 (0 = January) of integer days since 1970-01-01 (any shape)."""
    day_from_march, _ = _day_from_march(days)
    month_from_march = (5 * day_from_march + 2) // 153          # 0 = March .. 11 = February (Hinnant)
    return (month_from_march + 2) % 12


class DoyEncoding(nn.Module):
    """Sinusoidal encoding of the day of year (Vaswani et al. 2017, Eq. 5): doy (B, T) -> (B, T, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        inv_freq = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))   # (dim/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, doy: Tensor) -> Tensor:
        angle = doy.float().unsqueeze(-1) * self.inv_freq                   # (B, T, dim/2)
        return torch.stack((angle.sin(), angle.cos()), -1).flatten(-2)      # interleaved sin, cos


class ObservationEmbedding(nn.Module):
    """[linear(bands) ; sinusoid(doy)]: values (B, T, C), days (B, T) -> (B, T, hidden)."""

    def __init__(self, num_bands: int, hidden: int):
        super().__init__()
        self.bands = nn.Linear(num_bands, hidden // 2)
        self.doy = DoyEncoding(hidden // 2)

    def forward(self, values: Tensor, days: Tensor) -> Tensor:
        return torch.cat((self.bands(values), self.doy(day_of_year(days))), -1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections (LoRA targets them by name)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, L, D), keep (B, L) bool (False = padding, never attended to) -> (B, L, D)."""
        b, length, d = x.shape
        q, k, v = (proj(x).view(b, length, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))                     # (B, H, L, D/H)
        mask = keep[:, None, None, :]                                        # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class CheapDropout(nn.Module):
    """nn.Dropout whose CPU mask is cut from 16-bit slices of random 64-bit words.

    torch's CPU dropout draws a random float per element (bernoulli_), about a fifth of a SITS-BERT
    step on a CPU; here one 64-bit draw gives the keep flags of four elements, an element kept
    when its 16-bit slice is >= p * 65536 (so p is rounded to 1/65536). Same distribution, from
    torch's generator (a seeded run repeats). Off the CPU: `F.dropout` (fused kernels there).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _KeepAndScale.apply(x, _keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _keep_mask(shape: torch.Size, p: float) -> Tensor:
    """Bool mask of `shape`, each element True with probability 1 - round(p * 65536) / 65536."""
    n = math.prod(shape)
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // 4),), dtype=torch.int64)      # (ceil(n/4),) random words
    slices = words.view(torch.int16)[:n]                                               # (n,) uniform on -32768..32767
    return (slices >= round(p * 65536) - 32768).view(shape)


class _KeepAndScale(torch.autograd.Function):
    """x * keep * scale, keeping only the bool mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        keep, = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


class FeedForward(nn.Module):
    """hidden -> inner (default 4 x hidden, BERT's ratio) -> hidden, GELU between."""

    def __init__(self, hidden: int, dropout: float, inner: int | None = None):
        super().__init__()
        inner = inner or 4 * hidden
        self.fc1, self.fc2 = nn.Linear(hidden, inner), nn.Linear(inner, hidden)
        self.dropout = CheapDropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: x (B, L, D), keep (B, L) -> (B, L, D).

    `dropout` on the residual branches and inside the feed-forward layer, `attention_dropout` on
    the attention probabilities.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, inner: int | None = None, *, attention_dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, attention_dropout)
        self.ff = FeedForward(hidden, dropout, inner)
        self.dropout = CheapDropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), keep))
        return x + self.dropout(self.ff(self.norm2(x)))


class SitsBertEncoder(nn.Module):
    """Raw batch -> [CLS] output (B, D) and observation outputs (B, T, D).

    Takes a compact batch (`collate(..., compact=True)`): values (B, T, C) reflectance 0-1 of clear
    observations, dates (B, T) days since 1970-01-01, valid (B, T) False on padding.
    """

    def __init__(self, info: DataInfo, hidden: int, layers: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.hidden = hidden
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.embed = ObservationEmbedding(info.num_bands, hidden)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)   # BERT's N(0, 0.02) embedding init
        self.dropout = CheapDropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout, attention_dropout=attention_dropout) for _ in range(layers))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        keep = batch["valid"]                                                   # (B, T)
        x = self.embed(self.norm(batch["values"]), batch["dates"])              # (B, T, D)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1)              # (B, 1+T, D)
        keep = torch.cat((keep.new_ones(keep.shape[0], 1), keep), 1)            # (B, 1+T)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, keep)
        return x[:, 0], x[:, 1:]

    def represent(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, D): mean of the observation outputs. The [CLS] output is not used because the
        pretext never trains it, so it carries nothing before fine-tuning."""
        _, tokens = self(batch)
        return masked_mean(tokens, batch["valid"])


class SitsBertPretrain(nn.Module):
    """Encoder + linear reconstruction: batch -> predicted reflectance (B, T, C) on the 0-1 scale.

    The prediction is made in standardised units and mapped back, so the pretext's MSE is on
    reflectance as in the reference code (which never standardises).
    """

    def __init__(self, encoder: SitsBertEncoder, num_bands: int):
        super().__init__()
        self.encoder = encoder
        self.reconstruct = nn.Linear(encoder.hidden, num_bands)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        _, tokens = self.encoder(batch)
        norm = self.encoder.norm
        return self.reconstruct(tokens) * norm.std + norm.mean


class SitsBertClassifier(nn.Module):
    """Encoder + pooled linear head: batch -> logits (B, K)."""

    def __init__(self, encoder: SitsBertEncoder, num_classes: int, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.head = PooledHead(encoder.hidden, num_classes, pooling)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        cls, tokens = self.encoder(batch)
        return self.head(tokens, batch["valid"], cls)


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """The pre-training model when `info` has no classes, else the classifier."""
    h = {**DEFAULTS, **hparams}
    if h["hidden"] % 2 or h["hidden"] % h["heads"]:
        raise ConfigError(f"sitsbert hidden size {h['hidden']} must be even and a multiple of heads ({h['heads']})")
    if h["pooling"] not in POOLINGS:
        raise ConfigError(f"unknown pooling {h['pooling']!r}: choose one of {', '.join(POOLINGS)}")
    encoder = SitsBertEncoder(info, h["hidden"], h["layers"], h["heads"], h["dropout"], h["attention_dropout"])
    if info.num_classes == 0:
        return SitsBertPretrain(encoder, info.num_bands)
    return SitsBertClassifier(encoder, info.num_classes, h["pooling"])


register(ModelSpec(
    name="sitsbert",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("hidden", "layers", "heads", "dropout"), "Yuan & Lin 2021, experiments (reference README)"),
             "attention_dropout": "0, not the reference's 0.1: keeps fused attention kernels (module docstring)",
             "pooling": "reference classifier (MaxPool1d over the sequence)"},
    input="pixel",
    compact=True,
    max_len=MAX_LEN,
    day_of_year=True,
    pretext="contamination",
    description="SITS-BERT (Yuan & Lin 2021): Transformer on clear observations, DOY encoding, contamination pre-training",
))
