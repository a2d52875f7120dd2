"""ALISE: an aligned encoder for irregular and unaligned satellite image time series.

Dumeur, Valero, Inglada, "Paving the way toward foundation models for irregular and unaligned
Satellite Image Time Series" (2024; equation and table numbers below are theirs).

- U-BARN encoder: a per-date spatial convolutional encoder-decoder shared across dates (Table VIII)
  followed by a Transformer over each pixel's series (Table IX). Dates enter through a sinusoidal
  encoding of the days since a reference date (not the day of year, so multi-year series work).
- Temporal projector (eq. 1): n_q learnable queries cross-attend to each pixel's encoder outputs;
  the keys are a linear map of the outputs, the values are the outputs themselves with their
  channels split among the heads. The result Y (B, n_q, d_model, H, W) has a fixed size whatever
  the number and the dates of the acquisitions: the aligned representation.
- Pre-training model (no classes): encoder + the cross-reconstruction decoder (eq. 8-9: queries are
  a learned mask token plus the encoding of the date to rebuild, attending to the other view's Y,
  then a per-pixel linear layer back to the bands) + the projector (Linear -> BatchNorm -> ReLU ->
  Linear). The losses and view sampling live in `sitscli.ssl.alise`.
- Classifier: one linear layer (a 1 x 1 convolution) on each pixel's n_q x d_model vector: what the
  paper's linear probing evaluates, and what `sits finetune --mode full` trains end to end.

Resolved ambiguities (each a choice, written down):
- Table VIII fixes the input convolution (64 channels) and the bottleneck (8 x 8 x 128 from 64 x 64
  after three down blocks); the widths between them are ours: 64 -> 64 -> 128 -> 128, each down block
  a 2 x 2 max-pool then two 3 x 3 conv-BatchNorm-ReLU, each up block a bilinear x2 upsampling, the
  skip connection concatenated, then two 3 x 3 conv-BatchNorm-ReLU; a 1 x 1 conv gives d_model.
- Which dates the encoder attends to: a date with no valid pixel in the patch (batch padding, or a
  fully clouded acquisition, whose values readers set to 0) is left out of the attention and of the
  convolutional encoder. Within an attended date, clouded pixels are seen as they are: the validity
  mask never enters the input (Section III), only the loss.
- Key width of the projector's heads: the paper splits the value channels among 2 heads; the key /
  query width per head is d_model / heads here.
- Reference date: `DataInfo.reference_date` when the dataset gives one, else 1970-01-01; either
  way a sinusoid of the day count (base 10000, as in "Attention is all you need").
- Date encoding (hyper-parameter `positions`): "reference" (default, the paper's days since the
  reference date) or "season" (days since the last `season_start`, MM-DD): the paper notes that
  absolute days give a later year encodings never seen in pre-training; the season count gives
  every year the same ones, which change detection between two years needs ("doy" also works).
- Clouds: with a dataset prepared with `--keep-cloudy` (batches carry `cloud`), every acquisition
  is attended with its raw reflectance, fully clouded dates included, as the paper feeds them
  (Section III: the mask enters only the reconstruction loss). Without it the store holds 0 under
  clouds, and a date with no valid pixel carries nothing: it is left out as above. The run's card
  records `keep_cloudy`, so `embed`, `change-detect` and `predict-map` read their inputs the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register
from sitscli.models.temporal import SEASON_START, positions, real_observations, season_start_day

DEFAULTS: dict[str, Any] = {
    # Table IX (U-BARN temporal Transformer)
    "d_model": 64, "layers": 3, "heads": 4, "d_ff": 128, "dropout": 0.1,
    # Table VIII (spatial encoder-decoder widths: input conv, then the three down blocks)
    "unet_widths": [64, 64, 128, 128],
    # Table I (temporal projector and projector) and Section III (2 heads in the projector)
    "n_q": 10, "proj_heads": 2, "d_emb": 128,
    # Table I (pre-training): view windows, run of consecutive dates, loss weights; 64 x 64 crops
    "t_w": 2, "run_length": 60, "w_rec": 1.0, "w_inv": 1.0, "w_cov": 0.0, "crop": 64,
    # date encoding: the paper's days since the reference date, or days of the agronomic season
    "positions": "reference", "season_start": SEASON_START,
}
DOWNSAMPLING = 8  # three 2 x 2 down blocks

# Pre-training optimisation (Table I and Section IV-C): batch 2 patches, 260 epochs, cosine
# annealing with warm restarts (SGDR) T0 = 2 epochs from a maximum lr 1e-3, Adam; the paper names
# no weight decay, gradient clipping or early stopping, so none here (the epoch of the lowest
# validation loss is still the one kept). Linear probing (`sits probe`) sets its own protocol
# (Adam 1e-4, ReduceLROnPlateau patience 10, factor 0.05: workflows/probe.py).
TRAINING: dict[str, dict[str, Any]] = {
    "pretrain": {"batch_size": 2, "epochs": 260, "schedule": "cosine_restarts", "restart_period": 2, "lr": 1e-3,
                 "warmup_epochs": 0.0, "optimizer": "adam", "weight_decay": 0.0, "grad_clip": None, "patience": None},
}


def days_encoding(days: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding of day counts: days (...) float -> (..., dim), sin on even, cos on odd."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=days.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = days.float().unsqueeze(-1) * freqs                           # (..., dim/2)
    return torch.stack((angles.sin(), angles.cos()), -1).flatten(-2)      # (..., dim)


def split_head_attention(queries: Tensor, keys: Tensor, values: Tensor, heads: int, attend: Tensor) -> Tensor:
    """Cross-attention whose values are the inputs themselves, channels split among the heads (eq. 1).

    Args:
        queries (N, Q, heads * d_k), keys (N, S, heads * d_k), values (N, S, D), attend (N, S) bool.
    Returns:
        (N, Q, D): per head, softmax(q k^T / sqrt(d_k)) v over the attended positions, heads concatenated.
    """
    q = queries.unflatten(-1, (heads, -1)).transpose(1, 2)                # (N, h, Q, d_k)
    k = keys.unflatten(-1, (heads, -1)).transpose(1, 2)                   # (N, h, S, d_k)
    v = values.unflatten(-1, (heads, -1)).transpose(1, 2)                 # (N, h, S, D/h)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :])
    return out.transpose(1, 2).flatten(2)                                 # (N, Q, D)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3 x 3 conv -> BatchNorm -> ReLU, same size."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class SpatialUNet(nn.Module):
    """Per-date spatial encoder-decoder (Table VIII): images (N, C, H, W) -> features (N, d_model, H, W)."""

    def __init__(self, num_bands: int, d_model: int, widths: list[int]):
        super().__init__()
        self.inc = conv_block(num_bands, widths[0])
        self.down = nn.ModuleList(conv_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(conv_block(b + a, a) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Conv2d(widths[0], d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]                                             # (N, w0, H, W)
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))               # halves H, W each time
        x = skips.pop()                                                   # (N, w3, H/8, W/8)
        for block in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat((skip, x), 1))
        return self.out(x)


class TemporalProjector(nn.Module):
    """eq. 1: n_q learnable queries attend to each pixel's series: (N, T, D) -> (N, n_q, D)."""

    def __init__(self, d_model: int, n_q: int, heads: int):
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(n_q, d_model) / math.sqrt(d_model))
        self.key = nn.Linear(d_model, d_model)

    def forward(self, tokens: Tensor, attend: Tensor) -> Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)           # (N, n_q, D)
        return split_head_attention(queries, self.key(tokens), tokens, self.heads, attend)


class AliseEncoder(nn.Module):
    """U-BARN + temporal projector: a patch series -> aligned representation Y (B, n_q, d_model, H, W).

    Takes a patch batch: values (B, T, C, H, W) reflectance 0-1, dates (B, T) days since 1970-01-01,
    valid (B, T, H, W) (used only to leave out dates with no valid pixel, see the module notes).
    H and W must be multiples of 8.
    """

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.d_model, self.n_q = h["d_model"], h["n_q"]
        self.reference_date = int(info.reference_date or 0)
        self.keep_cloudy = info.keep_cloudy       # fed raw values under clouds: attend every acquisition
        self.positions, self.season_start = h["positions"], h["season_start"]
        self.norm = BandNorm(info.band_mean, info.band_std, channel_dim=-3)
        self.unet = SpatialUNet(info.num_bands, h["d_model"], h["unet_widths"])
        layer = nn.TransformerEncoderLayer(h["d_model"], h["heads"], h["d_ff"], h["dropout"], batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, h["layers"], enable_nested_tensor=False)
        self.projector = TemporalProjector(h["d_model"], h["n_q"], h["proj_heads"])

    @property
    def representation_size(self) -> int:
        return self.n_q * self.d_model

    def encode_dates(self, dates: Tensor) -> Tensor:
        """dates (B, T) days since 1970-01-01 -> (B, T, d_model) encoding of the days since the reference
        date, or of the day of the season (`positions`)."""
        return days_encoding(positions(dates, self.positions, self.reference_date, self.season_start), self.d_model)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        values, dates = batch["values"], batch["dates"]
        b, t, _, height, width = values.shape
        if height % DOWNSAMPLING or width % DOWNSAMPLING:
            raise ConfigError(f"ALISE takes patches whose sides are multiples of {DOWNSAMPLING} (three 2x downsamplings); "
                              f"got {height} x {width}: choose a patch size such as 32 or 64")
        present = attended_dates(batch, self.keep_cloudy)                 # (B, T)
        features = values.new_zeros(b, t, self.d_model, height, width)
        features[present] = self.unet(self.norm(values[present]))         # (n, D, H, W) for the n present dates
        features = features + self.encode_dates(dates)[..., None, None]   # (B, T, D, H, W)
        tokens = features.permute(0, 3, 4, 1, 2).reshape(b * height * width, t, self.d_model)
        attend = present[:, None, None, :].expand(b, height, width, t).reshape(-1, t)   # (B*H*W, T)
        tokens = self.transformer(tokens, src_key_padding_mask=~attend)   # (B*H*W, T, D)
        y = self.projector(tokens, attend)                                # (B*H*W, n_q, D)
        return y.reshape(b, height, width, self.n_q, self.d_model).permute(0, 3, 4, 1, 2)

    def represent(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, n_q * d_model, H, W): Y with each pixel's queries and channels flattened (query-major)."""
        return self(batch).flatten(1, 2)


def attended_dates(batch: dict[str, Tensor], keep_cloudy: bool = False) -> Tensor:
    """-> (B, T) the dates the encoder sees: valid (B, T, H, W), dates (B, T), optional cloud.

    Every acquisition (not the batch padding) when the values under clouds are kept (the batch carries
    `cloud`, or the model was trained on such data and its inputs are read that way: `keep_cloudy`),
    else the dates with at least one valid pixel; a series with none keeps all its dates (its values
    are all 0) so that attention stays defined.
    """
    present = batch["valid"].flatten(2).any(-1)
    if keep_cloudy or "cloud" in batch:
        present = real_observations(batch["dates"], present)
    return present | ~present.any(1, keepdim=True)


class CrossReconstructionDecoder(nn.Module):
    """eq. 8-9: rebuild a view's acquisitions from the other view's Y.

    Queries (one per date to rebuild) = a learned mask token + the date's encoding; they attend to
    the n_q vectors of Y of the same pixel; a per-pixel linear layer maps back to the bands.
    y (B, n_q, D, H, W), query_dates (B, T') -> standardised reflectance (B, T', C, H, W).
    """

    def __init__(self, encoder: AliseEncoder, num_bands: int, heads: int):
        super().__init__()
        d = encoder.d_model
        self.encode_dates = encoder.encode_dates
        self.heads = heads
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.to_bands = nn.Linear(d, num_bands)

    def forward(self, y: Tensor, query_dates: Tensor) -> Tensor:
        b, n_q, d, height, width = y.shape
        t = query_dates.shape[1]
        memory = y.permute(0, 3, 4, 1, 2).reshape(-1, n_q, d)             # (N = B*H*W, n_q, D)
        queries = self.query(self.mask_token + self.encode_dates(query_dates))    # (B, T', D)
        queries = queries[:, None, None].expand(b, height, width, t, d).reshape(-1, t, d)
        attend = memory.new_ones(memory.shape[:2], dtype=torch.bool)
        out = self.to_bands(split_head_attention(queries, self.key(memory), memory, self.heads, attend))
        return out.reshape(b, height, width, t, -1).permute(0, 3, 4, 1, 2)


class Projector(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear (Section III, d_emb from Table I): (N, D) -> (N, d_emb)."""

    def __init__(self, d_model: int, d_emb: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_emb), nn.BatchNorm1d(d_emb), nn.ReLU(inplace=True),
                                 nn.Linear(d_emb, d_emb))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AlisePretrain(nn.Module):
    """Encoder + cross-reconstruction decoder + projector; `forward` gives Y (B, n_q, D, H, W)."""

    def __init__(self, encoder: AliseEncoder, num_bands: int, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.decoder = CrossReconstructionDecoder(encoder, num_bands, h["proj_heads"])
        self.projector = Projector(h["d_model"], h["d_emb"])

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.encoder(batch)


class AliseClassifier(nn.Module):
    """Encoder + one linear layer per pixel on its n_q x d_model vector: batch -> logits (B, K, H, W)."""

    def __init__(self, encoder: AliseEncoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.representation_size, num_classes, 1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.encoder.represent(batch))


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """The pre-training model when `info` has no classes, else the per-pixel linear classifier."""
    h = {**DEFAULTS, **hparams}
    for heads_key in ("heads", "proj_heads"):
        if h["d_model"] % h[heads_key]:
            raise ConfigError(f"alise d_model {h['d_model']} must be a multiple of {heads_key} ({h[heads_key]})")
    if h["d_model"] % 2:
        raise ConfigError(f"alise d_model {h['d_model']} must be even (sinusoidal date encoding)")
    if h["positions"] == "season":
        season_start_day(h["season_start"])      # a bad MM-DD is refused when the model is made
    if len(h["unet_widths"]) != 4:
        raise ConfigError("alise unet_widths must list 4 widths: the input conv and the three down blocks (Table VIII)")
    encoder = AliseEncoder(info, h)
    if info.num_classes == 0:
        return AlisePretrain(encoder, info.num_bands, h)
    return AliseClassifier(encoder, info.num_classes)


register(ModelSpec(
    name="alise",
    build=build,
    defaults=DEFAULTS,
    sources={**dict.fromkeys(("d_model", "layers", "heads", "d_ff", "dropout"), "Dumeur et al. 2024, Table IX"),
             "unet_widths": "Dumeur et al. 2024, Table VIII",
             **dict.fromkeys(("n_q", "proj_heads", "d_emb"), "Dumeur et al. 2024, Table I and Section III"),
             **dict.fromkeys(("t_w", "run_length", "w_rec", "w_inv", "w_cov", "crop"), "Dumeur et al. 2024, Table I"),
             "positions": "Dumeur et al. 2024 (reference: days since the reference date); season: ours, issue 11",
             "season_start": "ours: 1 October, the agronomic year of the synthetic scenes and TimeSen2Crop"},
    input="patch",
    pretext="alise",
    description="ALISE (Dumeur et al. 2024): U-BARN + temporal projector, aligned n_q x d_model representation per pixel",
))
