"""OmniSat: self-supervised fusion of a very-high-resolution image, Sentinel-1 and Sentinel-2 series.

Astruc, Gonthier, Mallet, Landrieu, "OmniSat: Self-Supervised Modality Fusion for Earth
Observation" (ECCV 2024; section and equation numbers below are the paper's). Reference settings
read from the authors' configuration (github.com/gastruc/OmniSat, `configs/model/network/`).

- Tokenisation (3.1): a tile of P x P Sentinel-2 pixels (a patch sample of `sits prepare
  --patch-size P`) is cut into a regular grid of patches of `patch` x `patch` Sentinel-2 pixels,
  the same grid for every modality: one 10 m pixel series per patch by default (TreeSatAI-TS), or
  larger patches whose pixels are flattened into the channels (4 x 4 on PASTIS-HD). A VHR patch
  is the k*patch x k*patch block of VHR pixels under it (k = 10 m / VHR resolution).
- Encoders (3.4): one token of d_model per (modality, patch).
  Series (S2, S1): an input MLP (Linear-BatchNorm-ReLU, widths `ltae_in`) on each date's
  flattened patch, then the project's L-TAE (`sitscli.models.ltae.LTAEEncoder`) over the dates.
  VHR: a 3 x 3 convolution, then 2 x 2 max-pooling (indices kept) and a residual block, repeated
  until the patch is one pixel.
- Decoders (3.3, for the pre-training reconstruction): series: the patch's vector repeated for
  each date, plus the date's sinusoidal encoding, a linear layer back to the patch's channels;
  VHR (SegNet): un-pooling with the encoder's pooling indices and 3 x 3 convolutions, mirroring
  the encoder (`vhr_unpooling: false` upsamples without indices: the paper's "no index bypass").
- Modality combiner (3.2, eq. 1-2): `depth` residual self-attention blocks over all M x N tokens
  of a tile with a relative positional encoding of the Euclidean distance between the tokens'
  patches (iRPE, Wu et al. ICCV 2021: contextual mode on the keys, shared by the heads, the
  distance bucketed by their piecewise index with ratio 1.9, as the reference), then one
  cross-attention from N copies of a learned combining token, each placed at its patch, to the
  tokens: one multimodal embedding per patch. The combining token being one fixed vector, its
  contextual term is one scalar per head and distance bucket: learnt as such, starting at
  -bucket (each copy first attends most to its own patch's tokens; from an even start every copy
  averages the whole tile, the same for all patches, until the product of two small vectors grows).
- Heads: `task: dense` one linear layer per patch (its class repeated over the patch's pixels, so
  the engine's per-pixel cross-entropy and reports apply); `task: tile` the mean of the patch
  embeddings and one linear layer of K logits for multi-label tile classification (TreeSatAI).
  The pre-training model (no classes) carries the decoders and the learned mask token; the
  pretext losses live in `sitscli.ssl.omnisat`.

Any subset of the modalities the model was built with works: the model uses the sensors present
in the batch (Sentinel-2 always), so a model pre-trained on three sensors maps from Sentinel-2 alone.

Resolved ambiguities (each a choice, written down):
- Combiner MLP width: mlp_ratio 2 gives the paper's 3.6 M combiner parameters (Section 3.4); the
  reference configuration's mlp_ratio 4 would give 5.5 M. The cross-attention has no query
  projection (its query is the learned token itself), as the reference.
- No absolute positional embedding and no modality embedding (the reference adds an absolute
  one to a fixed 6 x 6 grid; any tile size works here). A final LayerNorm on the embeddings.
- Clouds and padding: Sentinel-2 (and S1) pixels that are not valid are set to the band mean
  (0 once standardised), and a date enters a patch's L-TAE when at least one of its pixels is
  valid (the reference has no cloud mask and lets the attention learn to skip cloudy dates).
- VHR convolutions: GroupNorm(4) and GELU in the residual blocks as the reference; the stem keeps
  the full resolution (the reference's stride-2 stem would halve the un-pooling's precision).
- Drop-path of the reference (0.2) is left out; dropout 0.2 on the attention weights and MLPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.models.ltae import LTAEEncoder, mlp_layers
from sitscli.models.registry import BandNorm, DataInfo, ModelSpec, register
from sitscli.models.temporal import POSITIONS, positions, sinusoid

DEFAULTS: dict[str, Any] = {
    # 3.1: patch size in Sentinel-2 pixels (1 = 10 m patches, TreeSatAI-TS)
    "patch": 1,
    # 3.2 / reference Omni.yaml: embed_dim 256, depth 6, num_heads 16, dropout 0.2; RPE ratio 1.9
    "d_model": 256, "depth": 6, "heads": 16, "mlp_ratio": 2.0, "dropout": 0.2, "rpe_ratio": 1.9,
    # reference ltae projector: mlp_in [32, 128, 256], n_head 16, d_k 8, mlp [256, 512, 256], T 367
    "ltae_in": [32, 128, 256], "ltae_heads": 16, "ltae_d_k": 8, "ltae_mlp": [256, 512, 256],
    "ltae_dropout": 0.2, "T": 367, "positions": "doy",
    # reference DecoderDeconvAerial (False: DecoderDeconvNoIndicesAerial, the "no index bypass" ablation)
    "vhr_unpooling": True,
    "task": "dense",
}
# Optimisation (Section 4 / reference configs): Adam, lr 1e-4, ReduceLROnPlateau (patience 10, factor
# 0.1) on the validation loss, up to 250 epochs of pre-training; fine-tuning at lr 2e-5 with the same
# schedule (on the monitored val_oa); from scratch (no --from) at the pre-training lr. Early stopping,
# weight decay and warm-up are not in the paper: off.
_PLATEAU = {"optimizer": "adam", "weight_decay": 0.0, "schedule": "plateau", "plateau_factor": 0.1,
            "plateau_patience": 10, "warmup_epochs": 0.0, "patience": None}
TRAINING: dict[str, dict[str, Any]] = {
    "pretrain": {**_PLATEAU, "lr": 1e-4, "epochs": 250},
    "finetune": {**_PLATEAU, "lr": 2e-5},
    "scratch": {"lr": 1e-4},
}
TASKS = ("dense", "tile")
SERIES = {"s2": "", "s1": "s1_"}     # time-series modalities and their batch key prefixes
MODALITIES = ("s2", "s1", "vhr")
GROUPS = 4                           # GroupNorm groups of the VHR residual blocks (reference gp_norm 4)


# ---- tokenisation ------------------------------------------------------------------------------

def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """(rows, cols) of patches of a height x width tile; refuses a grid that does not divide it."""
    if height % patch or width % patch:
        raise ConfigError(f"omnisat patches of {patch} x {patch} pixels do not divide the {height} x {width} tiles: "
                          f"choose a patch size that divides the dataset's --patch-size (hparam patch)")
    return height // patch, width // patch


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, *lead, H, W) -> (B, N, *lead, patch * patch): N patches row-major, pixels flattened last."""
    b, *lead, height, width = x.shape
    rows, cols = height // patch, width // patch
    x = x.reshape(b, -1, rows, patch, cols, patch)                      # (B, L, r, p, c, p)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, *lead, patch * patch)
    return x


def unpatchify(x: Tensor, rows: int, cols: int, patch: int) -> Tensor:
    """(B, N, *lead, patch * patch) -> (B, *lead, rows * patch, cols * patch): the inverse of `patchify`."""
    b, n, *lead, _ = x.shape
    x = x.reshape(b, rows, cols, -1, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, *lead, rows * patch, cols * patch)


def patch_positions(rows: int, cols: int, device=None) -> Tensor:
    """(rows * cols, 2) float (row, col) of each patch, row-major."""
    r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack((r.flatten(), c.flatten()), 1).float()


@dataclass
class Encoded:
    """One modality of a batch, encoded.

    tokens (B, N, d); target (B, N, ...) the standardised input the decoder rebuilds and `weight`
    (same shape, bool) the entries that count (valid pixels); for series `days` (B, T) positions,
    `keep` (B, N, T) attended dates and `attention` (B, N, T) the L-TAE attention (mean of heads);
    for VHR `pool` the pooling indices and sizes of each level (flattened B*N first).
    """

    tokens: Tensor
    target: Tensor
    weight: Tensor
    days: Tensor | None = None
    keep: Tensor | None = None
    attention: Tensor | None = None
    pool: list[tuple[Tensor, torch.Size]] | None = None


# ---- encoders and decoders ------------------------------------------------------------------------

class SeriesEncoder(nn.Module):
    """A time series (S2 or S1) of patches -> one token per patch: input MLP + L-TAE (3.4).

    forward(values (B, T, C, H, W), dates (B, T), valid (B, T, H, W)) -> Encoded with tokens (B, N, d),
    target (B, N, T, C * p * p) standardised (0 where not valid), weight of the same shape.
    """

    def __init__(self, mean: list[float], std: list[float], h: dict[str, Any], reference_date: int | None):
        super().__init__()
        self.patch, self.positions, self.reference_date = h["patch"], h["positions"], reference_date
        self.norm = BandNorm(mean, std, channel_dim=-3)
        width = len(mean) * self.patch ** 2
        self.mlp_in = mlp_layers([width, *h["ltae_in"]])
        self.embedded_width = h["ltae_in"][-1]
        self.ltae = LTAEEncoder(h["ltae_in"][-1], h["d_model"], h["ltae_heads"], h["ltae_d_k"], h["ltae_mlp"],
                                h["ltae_dropout"], h["T"])

    def forward(self, values: Tensor, dates: Tensor, valid: Tensor) -> Encoded:
        b, t, c = values.shape[:3]
        x = self.norm(values) * valid[:, :, None]                       # invalid pixels at the band mean
        target = patchify(x, self.patch)                                # (B, N, T, C, p*p)
        pixels = patchify(valid, self.patch)                            # (B, N, T, p*p)
        n = target.shape[1]
        target = target.reshape(b, n, t, -1)                            # (B, N, T, C*p*p)
        weight = pixels[:, :, :, None, :].expand(-1, -1, -1, c, -1).reshape(b, n, t, -1)
        keep = pixels.any(-1)                                           # (B, N, T)
        days = positions(dates, self.positions, self.reference_date)    # (B, T)
        embedded = target.new_zeros(b, n, t, self.embedded_width)
        if keep.any():  # BatchNorm statistics of observed dates only
            embedded[keep] = self.mlp_in(target[keep])
        tokens, attention = self.ltae.encode(embedded.flatten(0, 1), days[:, None].expand(b, n, t).flatten(0, 1),
                                             keep.flatten(0, 1))
        return Encoded(tokens.reshape(b, n, -1), target, weight, days=days, keep=keep,
                       attention=attention.mean(1).reshape(b, n, t))


class SeriesDecoder(nn.Module):
    """fused (n, d) of n patches, days (n, T) -> (n, T, C * p * p): repeat, add the dates' encoding, linear."""

    def __init__(self, d_model: int, out: int, period: float):
        super().__init__()
        self.period = period
        self.out = nn.Linear(d_model, out)

    def forward(self, fused: Tensor, days: Tensor) -> Tensor:
        return self.out(fused[:, None, :] + sinusoid(days, fused.shape[-1], self.period))


class ResidualBlock(nn.Module):
    """conv3x3-GroupNorm-GELU-conv3x3-GroupNorm + identity, GELU: (n, d, s, s) -> same."""

    def __init__(self, d: int):
        super().__init__()
        self.conv1 = nn.Conv2d(d, d, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(GROUPS, d)
        self.conv2 = nn.Conv2d(d, d, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, d)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


def pool_levels(side: int) -> int:
    """Number of 2 x 2 max-poolings (floor) that take a side x side patch to one pixel."""
    levels = 0
    while side > 1:
        side //= 2
        levels += 1
    return levels


class ImageEncoder(nn.Module):
    """VHR patches (n, C, s, s) standardised -> tokens (n, d) and the pooling indices of each level."""

    def __init__(self, channels: int, side: int, d_model: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, d_model, 3, padding=1), nn.BatchNorm2d(d_model), nn.GELU())
        self.blocks = nn.ModuleList(ResidualBlock(d_model) for _ in range(pool_levels(side)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, torch.Size]]]:
        x = self.stem(x)
        pool = []
        for block in self.blocks:
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, return_indices=True)
            pool.append((indices, size))
            x = block(x)
        return x.flatten(1), pool


class ImageDecoder(nn.Module):
    """SegNet decoder: fused (n, d), the encoder's pooling (indices, size) per level -> (n, C, s, s).

    Each level (deepest first): un-pool to the size before that pooling, with its indices
    (`unpooling`) or by nearest-neighbour upsampling (no indices), then 3 x 3 conv-BatchNorm-GELU; a
    last 3 x 3 convolution gives the channels.
    """

    def __init__(self, channels: int, side: int, d_model: int, unpooling: bool):
        super().__init__()
        self.unpooling = unpooling
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d_model, d_model, 3, padding=1, bias=False), nn.BatchNorm2d(d_model), nn.GELU())
            for _ in range(pool_levels(side)))
        self.out = nn.Conv2d(d_model, channels, 3, padding=1)

    def forward(self, fused: Tensor, pool: list[tuple[Tensor, torch.Size]]) -> Tensor:
        x = fused[:, :, None, None]
        for conv, (indices, size) in zip(self.convs, reversed(pool)):
            if self.unpooling:
                x = F.max_unpool2d(x, indices, 2, output_size=size)
            else:
                x = F.interpolate(x, size=tuple(size), mode="nearest")
            x = conv(x)
        return self.out(x)


class VhrEncoder(nn.Module):
    """vhr values (B, C, kH, kW) reflectance, valid (B, kH, kW) -> Encoded with tokens (B, N, d),
    target (B, N, C, s, s) standardised (0 where not valid), weight (B, N, 1, s, s), s = k * patch."""

    def __init__(self, attrs: dict, h: dict[str, Any]):
        super().__init__()
        self.k = vhr_factor(attrs)
        self.patch = h["patch"]
        self.side = self.k * self.patch
        if self.side < 2:
            raise ConfigError(f"omnisat VHR patches would be {self.side} pixel wide: the VHR image must be finer than 10 m")
        self.norm = BandNorm(attrs["band_mean"], attrs["band_std"], channel_dim=-3)
        self.image = ImageEncoder(len(attrs["band_names"]), self.side, h["d_model"])

    def forward(self, values: Tensor, valid: Tensor, rows: int, cols: int) -> Encoded:
        b, c, height, width = values.shape
        if (height, width) != (rows * self.side, cols * self.side):
            raise DataContentError(f"the VHR blocks are {height} x {width} pixels but {rows} x {cols} patches of "
                                   f"{self.side} VHR pixels ({10 / self.k:g} m) need {rows * self.side} x "
                                   f"{cols * self.side}: the VHR resolution does not fit the model's")
        x = self.norm(values) * valid[:, None]
        target = patchify(x, self.side)                                  # (B, N, C, s*s)
        n = target.shape[1]
        target = target.reshape(b, n, c, self.side, self.side)
        weight = patchify(valid, self.side).reshape(b, n, 1, self.side, self.side)
        tokens, pool = self.image(target.flatten(0, 1))
        return Encoded(tokens.reshape(b, n, -1), target, weight, pool=pool)


def vhr_factor(attrs: dict) -> int:
    """k = 10 m / VHR resolution, refused unless a whole number (a patch then holds k x k VHR pixels per S2 pixel)."""
    k = 10.0 / float(attrs["resolution"])
    if abs(k - round(k)) > 1e-6:
        raise ConfigError(f"omnisat needs a VHR resolution that divides 10 m (got {attrs['resolution']} m): "
                          f"prepare the VHR image at e.g. 1, 0.5 or 0.2 m (--vhr-resolution)")
    return int(round(k))


# ---- modality combiner ----------------------------------------------------------------------------

def euclidean_buckets(queries: Tensor, keys: Tensor, ratio: float) -> Tensor:
    """iRPE piecewise index of the Euclidean distance: positions (Q, 2), (K, 2) -> buckets (Q, K) long.

    Distances up to alpha = ratio keep their rounded value; beyond, they grow logarithmically up to
    beta = 2 ratio, reached at gamma = 8 ratio (Wu et al. 2021, eq. 18). Buckets 0..round(beta).
    """
    alpha, beta, gamma = ratio, 2.0 * ratio, 8.0 * ratio
    distance = torch.cdist(queries, keys)
    far = alpha + torch.log(distance.clamp_min(alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    return torch.where(distance <= alpha, distance, far.clamp(max=beta)).round().long()


def n_buckets(ratio: float) -> int:
    return int(round(2.0 * ratio)) + 1


class RelativeAttention(nn.Module):
    """Multi-head attention with a relative position term from the Euclidean distance buckets (iRPE).

    Self-attention (`learned_query` False): score(i, j) = q_i . (k_j + r_b(i, j)) / sqrt(d_head), the
    contextual mode on the keys with the table r (n_buckets, d_head) shared by the heads, as the reference.
    Cross-attention from the learned combining token (`learned_query` True): the query is that one
    vector, so its contextual term is a free scalar per head and bucket; it is learnt as such, a table
    (heads, n_buckets), which trains faster than the product of two small vectors. It starts at
    -bucket, so that each copy of the token first looks at its own patch and fades with distance.
    queries (B, Q, d) (ignored with a learned query), memory (B, K, d), buckets (Q, K) -> (B, Q, d).
    """

    def __init__(self, d: int, heads: int, ratio: float, dropout: float, learned_query: bool = False):
        super().__init__()
        if d % heads:
            raise ConfigError(f"omnisat d_model {d} must be a multiple of heads ({heads})")
        self.heads, self.dropout = heads, dropout
        # q, k, v: the names LoRA adapts (`sits finetune --mode lora`)
        self.k, self.v, self.proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if learned_query:
            self.q = None
            self.token = nn.Parameter(torch.zeros(d))
            nn.init.trunc_normal_(self.token, std=0.02)
            self.bias = nn.Parameter(-torch.arange(n_buckets(ratio), dtype=torch.float32).expand(heads, -1).clone())
        else:
            self.q = nn.Linear(d, d)
            self.table = nn.Parameter(torch.zeros(n_buckets(ratio), d // heads))
            nn.init.trunc_normal_(self.table, std=0.02)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)          # (B, h, L, d_head)

    def forward(self, queries: Tensor | None, memory: Tensor, buckets: Tensor) -> Tensor:
        b = memory.shape[0]
        k, v = self._split(self.k(memory)), self._split(self.v(memory))           # (B, h, K, dh)
        if self.q is None:
            q = self._split(self.token[None, None]).expand(b, -1, buckets.shape[0], -1)   # (B, h, Q, dh)
            bias = self.bias[:, buckets][None]                                        # (1, h, Q, K)
        else:
            q = self._split(self.q(queries))                                          # (B, h, Q, dh)
            relative = q @ self.table.t()                                             # (B, h, Q, n_buckets)
            bias = relative.gather(-1, buckets.expand(b, self.heads, -1, -1)) / math.sqrt(q.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Linear (d -> ratio d) - GELU - dropout - Linear - dropout: (..., d) -> (..., d)."""

    def __init__(self, d: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(round(d * ratio))
        self.fc1, self.fc2, self.dropout = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class SelfBlock(nn.Module):
    """eq. 1: f <- f + SA(LN(f)) with relative positions; f <- f + MLP(LN(f)). (B, L, d) -> same."""

    def __init__(self, d: int, heads: int, ratio: float, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = RelativeAttention(d, heads, ratio, dropout)
        self.mlp = FeedForward(d, mlp_ratio, dropout)

    def forward(self, x: Tensor, buckets: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, buckets)
        return x + self.mlp(self.norm2(x))


class CombiningBlock(nn.Module):
    """eq. 2: N copies of a learned token, each at its patch, cross-attend to the tokens:
    tokens (B, L, d), buckets (N, L) -> (B, N, d)."""

    def __init__(self, d: int, heads: int, ratio: float, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm_memory, self.norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = RelativeAttention(d, heads, ratio, dropout, learned_query=True)
        self.mlp = FeedForward(d, mlp_ratio, dropout)

    def forward(self, tokens: Tensor, buckets: Tensor) -> Tensor:
        x = self.attention.token + self.attention(None, self.norm_memory(tokens), buckets)
        return x + self.mlp(self.norm(x))


class Combiner(nn.Module):
    """tokens (B, M, N, d) of M modalities on a rows x cols grid -> one embedding per patch (B, N, d)."""

    def __init__(self, h: dict[str, Any]):
        super().__init__()
        d, args = h["d_model"], (h["heads"], h["rpe_ratio"], h["mlp_ratio"], h["dropout"])
        self.ratio = h["rpe_ratio"]
        self.blocks = nn.ModuleList(SelfBlock(d, *args) for _ in range(h["depth"]))
        self.combine = CombiningBlock(d, *args)
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, rows: int, cols: int) -> Tensor:
        b, m, n, d = tokens.shape
        patches = patch_positions(rows, cols, tokens.device)                 # (N, 2)
        every = patches.repeat(m, 1)                                          # (M*N, 2), modality-major
        self_buckets = euclidean_buckets(every, every, self.ratio)
        x = tokens.reshape(b, m * n, d)
        for block in self.blocks:
            x = block(x, self_buckets)
        return self.norm(self.combine(x, euclidean_buckets(patches, every, self.ratio)))


# ---- the model ------------------------------------------------------------------------------------

class OmniSatEncoder(nn.Module):
    """Modality encoders + combiner: a patch batch -> (B, N, d) embeddings on a rows x cols patch grid.

    Uses the modalities it was built with that are in the batch: values/dates/valid (S2, always),
    s1_values/s1_dates/s1_valid, vhr_values/vhr_valid. So a step may leave encoders (and, in
    pre-training, decoders of modalities with no masked token) unused: `partial_steps` tells
    distributed training to expect it.
    """

    partial_steps = True

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.patch, self.d_model = h["patch"], h["d_model"]
        encoders: dict[str, nn.Module] = {"s2": SeriesEncoder(info.band_mean, info.band_std, h, info.reference_date)}
        if "s1" in info.modalities:
            s1 = info.modalities["s1"]
            encoders["s1"] = SeriesEncoder(s1["band_mean"], s1["band_std"], h, info.reference_date)
        if "vhr" in info.modalities:
            encoders["vhr"] = VhrEncoder(info.modalities["vhr"], h)
        self.encoders = nn.ModuleDict(encoders)
        self.combiner = Combiner(h)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def grid(self, batch: dict[str, Tensor]) -> tuple[int, int]:
        return patch_grid(*batch["values"].shape[-2:], self.patch)

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Encoded]:
        """Each modality present in the batch (and known to the model), encoded; S2 first."""
        if batch["values"].dim() != 5:
            raise DataContentError("omnisat takes patch samples (values B x T x C x H x W): prepare the data with "
                                   "--patch-size")
        rows, cols = self.grid(batch)
        out = {}
        for name, encoder in self.encoders.items():
            if name in SERIES and f"{SERIES[name]}values" in batch:
                p = SERIES[name]
                out[name] = encoder(batch[p + "values"], batch[p + "dates"], batch[p + "valid"])
            elif name == "vhr" and "vhr_values" in batch:
                out[name] = encoder(batch["vhr_values"], batch["vhr_valid"], rows, cols)
        return out

    def combine(self, tokens: Tensor, rows: int, cols: int) -> Tensor:
        return self.combiner(tokens, rows, cols)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """-> (B, N, d) multimodal embedding of each patch."""
        encoded = self.encode(batch)
        tokens = torch.stack([e.tokens for e in encoded.values()], 1)        # (B, M, N, d)
        return self.combine(tokens, *self.grid(batch))

    def represent(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, d, rows, cols): the patch embeddings as a map."""
        rows, cols = self.grid(batch)
        return self(batch).transpose(1, 2).reshape(-1, self.d_model, rows, cols)


class OmniSatPretrain(nn.Module):
    """Encoder + learned mask token + one decoder per modality (3.3).

    forward(batch, mask_ratio, generator) draws a mask over the M x N tokens of each tile (a share
    `mask_ratio` of them, jointly over the modalities, so masks differ across modalities and a patch may
    be fully masked), replaces the masked tokens by the mask token, combines, and decodes every masked
    token from its patch's fused embedding. Returns a dict:
        names: modality order; tokens (B, M, N, d) unmasked encoder tokens (for the contrastive loss);
        mask (B, M, N) bool; encoded {name: Encoded}; rebuilt {name: (prediction, index)} with index
        (n,) the flat b * N + p positions of that modality's masked tokens and prediction shaped as
        Encoded.target[index].
    """

    def __init__(self, encoder: OmniSatEncoder, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.mask_token = nn.Parameter(torch.zeros(h["d_model"]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        p2, d = h["patch"] ** 2, h["d_model"]
        decoders: dict[str, nn.Module] = {"s2": SeriesDecoder(d, info.num_bands * p2, h["T"])}
        if "s1" in encoder.encoders:
            decoders["s1"] = SeriesDecoder(d, len(info.modalities["s1"]["band_names"]) * p2, h["T"])
        if "vhr" in encoder.encoders:
            vhr = encoder.encoders["vhr"]
            decoders["vhr"] = ImageDecoder(len(info.modalities["vhr"]["band_names"]), vhr.side, d, h["vhr_unpooling"])
        self.decoders = nn.ModuleDict(decoders)

    def forward(self, batch: dict[str, Tensor], mask_ratio: float = 0.75,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        encoded = self.encoder.encode(batch)
        names = list(encoded)
        tokens = torch.stack([encoded[m].tokens for m in names], 1)          # (B, M, N, d)
        b, m, n, _ = tokens.shape
        mask = draw_mask(b, m * n, mask_ratio, generator).to(tokens.device).reshape(b, m, n)
        masked = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        fused = self.encoder.combine(masked, *self.encoder.grid(batch)).flatten(0, 1)   # (B*N, d)
        rebuilt = {}
        for i, name in enumerate(names):
            index = torch.nonzero(mask[:, i].flatten()).flatten()            # (n,) flat b * N + p
            rebuilt[name] = (self._decode(name, fused[index], encoded[name], index, n), index)
        return {"names": names, "tokens": tokens, "mask": mask, "encoded": encoded, "rebuilt": rebuilt}

    def _decode(self, name: str, fused: Tensor, encoded: Encoded, index: Tensor, n: int) -> Tensor:
        if name == "vhr":
            pool = [(indices[index], size) for indices, size in encoded.pool]
            return self.decoders[name](fused, pool)
        return self.decoders[name](fused, encoded.days[index // n])


def draw_mask(b: int, length: int, ratio: float, generator: torch.Generator | None) -> Tensor:
    """(B, length) bool with round(ratio * length) True per row (at least 1, at most length - 1 when
    length > 1, so something is always masked and something seen), at random positions."""
    count = min(max(1, int(round(ratio * length))), max(1, length - 1))
    noise = torch.rand(b, length, generator=generator)
    ranks = noise.argsort(1).argsort(1)
    return ranks < count


class OmniSatClassifier(nn.Module):
    """Encoder + one linear layer: `dense` -> logits (B, K, H, W), each patch's class on its pixels;
    `tile` -> logits (B, K) of the classes present in the tile (multi-label, `multilabel` True)."""

    def __init__(self, encoder: OmniSatEncoder, num_classes: int, task: str):
        super().__init__()
        self.encoder, self.task = encoder, task
        self.multilabel = task == "tile"
        self.head = nn.Linear(encoder.d_model, num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        embeddings = self.encoder(batch)                                     # (B, N, d)
        if self.multilabel:
            return self.head(embeddings.mean(1))
        rows, cols = self.encoder.grid(batch)
        logits = self.head(embeddings)                                       # (B, N, K)
        patch = self.encoder.patch
        return unpatchify(logits[..., None].expand(-1, -1, -1, patch * patch), rows, cols, patch)


def check(h: dict[str, Any]) -> None:
    """Refuse hyper-parameters the architecture cannot take, one line each."""
    if h["task"] not in TASKS:
        raise ConfigError(f"omnisat task {h['task']!r}: choose dense (per-patch classes) or tile (multi-label)")
    if h["positions"] not in POSITIONS:
        raise ConfigError(f"unknown positions {h['positions']!r}: choose one of {', '.join(POSITIONS)}")
    if int(h["patch"]) < 1:
        raise ConfigError(f"omnisat patch must be at least 1 Sentinel-2 pixel, got {h['patch']}")
    d = h["d_model"]
    if d % GROUPS or d % 2:
        raise ConfigError(f"omnisat d_model {d} must be a multiple of {GROUPS} (VHR GroupNorm)")
    if not h["ltae_in"] or list(h["ltae_mlp"])[-1] != d:
        raise ConfigError(f"omnisat ltae_mlp {list(h['ltae_mlp'])} must end with d_model ({d}), the token width, "
                          f"and ltae_in must list at least one width")
    if h["depth"] < 0 or h["rpe_ratio"] <= 0 or h["mlp_ratio"] <= 0:
        raise ConfigError("omnisat depth must be >= 0, rpe_ratio and mlp_ratio > 0")


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """The pre-training model when `info` has no classes, else the classifier of `task`."""
    h = {**DEFAULTS, **hparams}
    check(h)
    encoder = OmniSatEncoder(info, h)
    if info.num_classes == 0:
        return OmniSatPretrain(encoder, info, h)
    return OmniSatClassifier(encoder, info.num_classes, h["task"])


register(ModelSpec(
    name="omnisat",
    build=build,
    defaults=DEFAULTS,
    input="patch",
    pretext="omnisat",
    modalities=("s2",),
    optional_modalities=("s1", "vhr"),
    description="OmniSat (Astruc et al. 2024): VHR + S1 + S2 patch tokens fused by a relative-position transformer",
))
