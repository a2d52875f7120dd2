"""mTAN interpolator with a spatial positional encoding: irregular, unaligned series -> a fixed latent grid.

Bellet, Fauvel, Inglada, Michel 2024, "End-to-end learning for land cover classification using
irregular and unaligned SITS by combining attention-based interpolation with sparse variational
Gaussian processes" (IEEE JSTARS 17, doi:10.1109/JSTARS.2023.3343921; equation numbers are theirs),
built on the multi-time attention network (mTAN) of Shukla & Marlin 2021 (ICLR).

- Input features: the bands (the paper's 10 Sentinel-2 bands) standardised with `BandNorm`, plus
  NDVI, NDWI and the brightness, computed from the reflectance before standardisation.
- Time embedding (eq. 4): phi(t) = [w_0 t + a_0, sin(w_1 t + a_1), ..., sin(w_{E-1} t + a_{E-1})],
  all w and a learned.
- Interpolation (eq. 5): R reference dates r_i on a regular grid over the year attend to the
  observed dates t_j: x_hat_h(r_i) = sum_j softmax_j(q_h(phi(r_i)) . k_h(phi(t_j)) / sqrt(d_k)) x_j,
  the softmax taken over the valid observations only (clouds and padding get weight exactly 0).
- H heads (eq. 6) are combined by a learned linear layer and the spectral dimension is reduced to
  D' features (eq. 7-8): latent representation (B, R, D').
- Spatial positional encoding (eq. 9): sinusoids of the pixel's map coordinates pass a 2-layer MLP
  whose output is added to every observation's features before the interpolation, so the latent
  grid knows where the pixel is.

Resolved ambiguities (each a choice, written down):
- Time t is the day of year: t = (doy - 1) / 365 in [0, 1), so one model maps any year (the paper
  uses the single year 2018). A series spanning two years folds onto one year.
- Reference dates: R dates evenly spread over days 0..360 of the year (the paper's 10-day grid is
  R = 37; its best accuracy/size trade-off, our default, is R = 13, one date a month).
- Initialisation of eq. 4: mTAN initialises w at random around 0, which on a one-year t in [0, 1)
  gives almost linear sinusoids; we start the periodic frequencies at 2 pi k (periods of a year,
  half a year, ...) with random phases, so seasonal shapes are available from the first step.
- Eq. 6 (heads combined linearly) and eq. 7-8 (linear spectral reduction) follow each other with no
  non-linearity between them, so they are one linear map H x D -> D' here: the same functions.
- NDVI = (B08 - B04) / (B08 + B04), NDWI (McFeeters) = (B03 - B08) / (B03 + B08), brightness = the
  Euclidean norm of all bands' reflectance. Band names are matched as B4 / B04 / red etc. When B03,
  B04 or B08 is missing the model uses the bands alone (`features` says which it uses).
- Spatial encoding: the coordinates (projected metres, the prepared datasets' CRS) are encoded by
  sin and cos at 4 wavelengths (1000, 100, 10, 1 km) per axis: L1 = 16 features; the MLP is
  L1 -> L2 = 14 (ReLU) -> D, the width of the input features it is added to.
- A series with no valid observation gets all-zero attention weights: its latent grid is the
  bias of the combining layer (no data, no information), never NaN.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import BandNorm, DataInfo
from sitscli.models.temporal import positions, regular_grid, resample_to_grid

DEFAULTS: dict[str, Any] = {
    "ref_points": 13,      # R: the paper's best trade-off (10-day grid = 37)
    "heads": 1,            # H = 1 (Bellet et al. 2024, experimental setting)
    "time_dim": 32,        # E, width of phi(t) (ours; mTAN uses 128 on PhysioNet)
    "latent_dim": 9,       # D' after the spectral reduction (eq. 7-8)
    "spatial": True,       # eq. 9 on
    "spatial_hidden": 14,  # L2 (L1 = 16 is the sinusoid width)
}
SPATIAL_WAVELENGTHS_M = (1e6, 1e5, 1e4, 1e3)   # 4 per axis x sin, cos x 2 axes = L1 = 16
YEAR_DAYS = 365.0
REFERENCE_SPAN = 360.0   # last reference date: day 360, so R = 37 is the 10-day grid
INDICES = ("NDVI", "NDWI", "brightness")


def canonical_band(name: str) -> str:
    """'B4', 'b04', 'red' -> 'B04'; 'B8A' stays 'B8A'; anything else upper-cased."""
    common = {"BLUE": "B02", "GREEN": "B03", "RED": "B04", "NIR": "B08"}
    upper = name.strip().upper()
    match = re.fullmatch(r"B0*(\d+)(A?)", upper)
    if match:
        number = int(match.group(1))
        return f"B{number}A" if match.group(2) else f"B{number:02d}"
    return common.get(upper, upper)


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    """(a - b) / (a + b), 0 where the sum vanishes (padding is all zeros), clamped to [-1, 1]."""
    total = a + b
    safe = torch.where(total.abs() > 1e-6, total, torch.ones_like(total))
    return torch.where(total.abs() > 1e-6, (a - b) / safe, torch.zeros_like(total)).clamp(-1, 1)


class SpectralFeatures(nn.Module):
    """values (B, T, C) reflectance 0-1 -> (B, T, C + 3) standardised bands, NDVI, NDWI, brightness.

    Without B03, B04 and B08 among the bands: (B, T, C), the standardised bands alone.
    The indices are standardised like the bands (the paper standardises every input feature): their
    mean and standard deviation are measured on the observations (rows not all zero) of the first
    training batch, kept as buffers (so they travel in the checkpoint), averaged over DDP ranks.
    """

    def __init__(self, info: DataInfo):
        super().__init__()
        self.norm = BandNorm(info.band_mean, info.band_std)
        names = [canonical_band(b) for b in info.band_names]
        needed = ("B03", "B04", "B08")   # green, red, near infrared
        self.index_bands = [names.index(b) for b in needed] if set(needed) <= set(names) else None
        self.out_dim = info.num_bands + (len(INDICES) if self.index_bands else 0)
        self.features = list(info.band_names) + (list(INDICES) if self.index_bands else [])
        self.register_buffer("index_mean", torch.zeros(len(INDICES)))
        self.register_buffer("index_std", torch.ones(len(INDICES)))
        self.register_buffer("index_stats_set", torch.tensor(False))

    def forward(self, values: Tensor) -> Tensor:
        bands = self.norm(values)
        if self.index_bands is None:
            return bands
        green, red, nir = (values[..., i] for i in self.index_bands)          # (B, T) each
        brightness = values.square().sum(-1).sqrt()
        indices = torch.stack((_ratio(nir, red), _ratio(green, nir), brightness), -1)   # (B, T, 3)
        if self.training and not bool(self.index_stats_set):
            self._measure(indices[values.abs().sum(-1) > 0])
        return torch.cat((bands, (indices - self.index_mean) / self.index_std), -1)

    @torch.no_grad()
    def _measure(self, observed: Tensor) -> None:
        """observed (N, 3) indices of real observations -> index_mean, index_std (N >= 2 needed)."""
        if observed.shape[0] < 2:
            return
        moments = torch.cat((observed.mean(0), observed.square().mean(0)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, square = moments.split(len(INDICES))
        self.index_mean.copy_(mean)
        self.index_std.copy_((square - mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-6))
        self.index_stats_set.fill_(True)


class TimeEmbedding(nn.Module):
    """Eq. 4: t (...) in [0, 1) -> (..., dim) = [w_0 t + a_0, sin(w_k t + a_k) for k = 1..dim-1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)
        with torch.no_grad():   # yearly harmonics, random phases (see the module docstring)
            self.periodic.weight.copy_(2 * math.pi * torch.arange(1, dim, dtype=torch.float32).unsqueeze(1))
            self.periodic.bias.uniform_(0, 2 * math.pi)

    def forward(self, t: Tensor) -> Tensor:
        t = t.unsqueeze(-1)
        return torch.cat((self.linear(t), torch.sin(self.periodic(t))), -1)


class MultiTimeAttention(nn.Module):
    """Eq. 5-8: values (B, T, D) at times t (B, T), keep (B, T) -> (B, R, D') at the reference times.

    With `return_attention`, also the weights (B, H, R, T): each row sums to 1 over the kept
    observations and is exactly 0 on the others (all 0 for a series with nothing kept).
    """

    def __init__(self, in_dim: int, out_dim: int, ref_points: int, heads: int, time_dim: int):
        super().__init__()
        if ref_points < 2 or heads < 1 or time_dim < 2 or time_dim % heads:
            raise ConfigError(f"mtan needs ref_points >= 2, heads >= 1 and time_dim a multiple of heads, "
                              f"got ref_points={ref_points}, heads={heads}, time_dim={time_dim}")
        self.heads, self.key_dim = heads, time_dim // heads
        ref_days = torch.linspace(0, REFERENCE_SPAN, ref_points)
        self.register_buffer("ref_days", ref_days, persistent=False)          # (R,) day of year - 1
        self.embed = TimeEmbedding(time_dim)
        self.query = nn.Linear(time_dim, time_dim)
        self.key = nn.Linear(time_dim, time_dim)
        self.combine = nn.Linear(heads * in_dim, out_dim)                     # eq. 6 then eq. 7-8

    def forward(self, values: Tensor, t: Tensor, keep: Tensor,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, n, d = values.shape
        r = self.ref_days.numel()
        q = self.query(self.embed(self.ref_days / YEAR_DAYS)).view(r, self.heads, self.key_dim)   # (R, H, dk)
        k = self.key(self.embed(t)).view(b, n, self.heads, self.key_dim)                         # (B, T, H, dk)
        scores = torch.einsum("rhk,bthk->bhrt", q, k) / math.sqrt(self.key_dim)                  # (B, H, R, T)
        mask = keep[:, None, None, :]
        # A finite fill keeps all-masked rows finite; multiplying by the mask then zeroes them exactly.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1) * mask                                                      # (B, H, R, T)
        interpolated = torch.einsum("bhrt,btd->brhd", weights, values).reshape(b, r, self.heads * d)
        out = self.combine(interpolated)                                                         # (B, R, D')
        return (out, weights) if return_attention else out


class SpatialEncoding(nn.Module):
    """Eq. 9: xy (B, 2) map coordinates in metres -> (B, out_dim) added to every observation."""

    def __init__(self, out_dim: int, hidden: int):
        super().__init__()
        inv = torch.tensor([2 * math.pi / w for w in SPATIAL_WAVELENGTHS_M], dtype=torch.float64)
        self.register_buffer("inv_wavelength", inv, persistent=False)
        width = 4 * len(SPATIAL_WAVELENGTHS_M)                                 # L1 = 16
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, xy: Tensor) -> Tensor:
        if torch.isnan(xy).any():
            raise ConfigError("the data has no map coordinates (xy is NaN) but the model's spatial encoding "
                              "needs them: prepare the data with map coordinates, or train with --hparam spatial=false")
        # float64 angles: projected coordinates (~1e6 m) lose metres in float32
        angle = xy.double().unsqueeze(-1) * self.inv_wavelength.to(xy.device)   # (B, 2, 4)
        code = torch.cat((angle.sin(), angle.cos()), -1).flatten(1).float()     # (B, 16)
        return self.mlp(code.to(self.mlp[0].weight.dtype))


def observation_times(dates: Tensor) -> Tensor:
    """dates (B, T) days since 1970-01-01 -> t (B, T) = (day of year - 1) / 365 in [0, 1)."""
    return positions(dates, "doy", None) / YEAR_DAYS


class MTANEncoder(nn.Module):
    """Batch -> latent representation (B, R, D') (+ attention weights (B, H, R, T) on request).

    Takes values (B, T, C) reflectance 0-1, dates (B, T), valid (B, T) and, with `spatial`, xy (B, 2).
    """

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.features = SpectralFeatures(info)
        d = self.features.out_dim
        self.spatial = SpatialEncoding(d, h["spatial_hidden"]) if h["spatial"] else None
        self.attention = MultiTimeAttention(d, h["latent_dim"], h["ref_points"], h["heads"], h["time_dim"])
        self.ref_points, self.latent_dim = h["ref_points"], h["latent_dim"]

    @property
    def ref_days(self) -> Tensor:
        """(R,) the reference dates as day of year - 1."""
        return self.attention.ref_days

    def forward(self, batch: dict[str, Tensor], return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        x = self.features(batch["values"])                                     # (B, T, D)
        if self.spatial is not None:
            x = x + self.spatial(batch["xy"]).unsqueeze(1)                    # eq. 9
        return self.attention(x, observation_times(batch["dates"]), batch["valid"], return_attention)


class GapFilledEncoder(nn.Module):
    """The paper's linear-interpolation baseline: batch -> (B, G, D) features gap-filled linearly
    onto G days of the year every `grid_step` days (day of year - 1 = 0, step, ...)."""

    def __init__(self, info: DataInfo, grid_len: int, grid_step: float):
        super().__init__()
        self.features = SpectralFeatures(info)
        self.register_buffer("grid", regular_grid(grid_len, grid_step), persistent=False)
        self.out_dim = self.features.out_dim

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        days = positions(batch["dates"], "doy", None)                          # (B, T)
        return resample_to_grid(self.features(batch["values"]), days, batch["valid"], self.grid)
