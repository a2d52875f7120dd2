"""Time axes for the supervised baselines: where an observation sits in time, sinusoidal
encodings of that position, and resampling of irregular series onto a regular grid of days.

Series are irregular and unaligned (every pixel has its own dates and clouds), so:
- attention models (`ltae`, `transformer`) take the clear observations as they are and encode
  each one's date (`positions` + `sinusoid`);
- convolutional and recurrent models (`tempcnn`, `inceptiontime`, `lstm`) need one regular time
  axis shared by every pixel: `resample_to_grid` interpolates each pixel's clear observations
  linearly onto fixed days inside the model, so any dataset and `sits predict-map` work unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.registry import BandNorm, DataInfo
from sitscli.models.sitsbert import day_of_year

POSITIONS = ("doy", "reference", "season")
# Start (MM-DD) of the agronomic year for "season" positions: October, the start of the winter
# crops' season in Europe (TimeSen2Crop and the synthetic scenes run September/October to August).
SEASON_START = "10-01"


def channel_layer_norm(channels: int) -> nn.Module:
    """The per-observation LayerNorm over the input channels of the L-TAE and LSTM references, or an
    identity for 1 or 2 channels: LayerNorm over k values leaves k - 2 degrees of freedom, so one
    band (an NDVI series) becomes a constant and two only the sign of their difference, and the
    classifier collapses to one class. The bands are standardised by BandNorm anyway."""
    return nn.LayerNorm(channels) if channels > 2 else nn.Identity()


def positions(dates: Tensor, mode: str, reference_date: int | None, season_start: str = SEASON_START) -> Tensor:
    """Position in days of each observation: dates (B, T) int days since 1970-01-01 -> (B, T) float.

    "doy": day of year - 1 (0..365), the same for every year, so a model trained on one season
    maps another. "reference": days since `reference_date` (the dataset's first date), the
    papers' choice for a single season; falls back to "doy" when the data has no reference date.
    "season": days since the last `season_start` (MM-DD), 0..365: like "doy" the same for every
    year, but the agronomic year stays in one piece (a winter crop's autumn and spring are not
    at the two ends of the axis).
    """
    if mode not in POSITIONS:
        raise ConfigError(f"unknown positions {mode!r}: choose one of {', '.join(POSITIONS)}")
    if mode == "reference" and reference_date is not None:
        return (dates - reference_date).float()
    if mode == "season":
        return season_days(dates, season_start)
    return (day_of_year(dates) - 1).float()


def season_start_day(season_start: str) -> int:
    """'MM-DD' -> its day of year in a common year (1..365); a one-line ConfigError otherwise."""
    try:
        month, day = (int(part) for part in season_start.split("-"))
        return int((np.datetime64(f"2001-{month:02d}-{day:02d}") - np.datetime64("2001-01-01")).astype(int)) + 1
    except ValueError:
        raise ConfigError(f"season_start {season_start!r} is not a month-day such as 10-01 (1 October)") from None


def season_days(dates: Tensor, season_start: str) -> Tensor:
    """Days since the last season start: dates (...) days since 1970-01-01 -> (...) float in 0..365."""
    start = season_start_day(season_start)

    def start_in_year_of(days: Tensor) -> Tensor:
        """The season start (days since 1970-01-01) in the calendar year of `days`."""
        jan1 = days - (day_of_year(days) - 1)
        leap = day_of_year(jan1 + 365) == 366
        return jan1 + (start - 1) + (leap & (start > 59)).long()   # a leap day before it moves it on a day

    this_year = start_in_year_of(dates.long())
    jan1 = dates.long() - (day_of_year(dates) - 1)
    last = torch.where(dates.long() >= this_year, this_year, start_in_year_of(jan1 - 1))
    return (dates.long() - last).float()


def real_observations(dates: Tensor, valid: Tensor) -> Tensor:
    """(B, T) True on acquisitions, False on batch padding, for batches that keep cloudy dates.

    `collate` pads with valid=False and repeats the last date: padding is the trailing run of
    invalid entries whose date equals the previous one. (A cloudy duplicate of the last date at the
    very end of a series is dropped with it, which loses nothing.)
    """
    repeated = torch.zeros_like(valid)
    repeated[:, 1:] = dates[:, 1:] == dates[:, :-1]
    invalid_to_end = (~valid).flip(1).cumprod(1).flip(1).bool()             # all invalid from here on
    return ~(repeated & invalid_to_end)


def sinusoid(days: Tensor, dim: int, period: float) -> Tensor:
    """Sinusoidal encoding (Vaswani et al. 2017, Eq. 5 with base `period`): days (...) -> (..., dim).

    Feature 2i is sin(days / period^(2i/dim)), feature 2i+1 the cosine of the same angle.
    """
    inv_freq = period ** (-torch.arange(0, dim, 2, device=days.device, dtype=torch.float32) / dim)  # (dim/2,)
    angle = days.float().unsqueeze(-1) * inv_freq                        # (..., dim/2)
    return torch.stack((angle.sin(), angle.cos()), -1).flatten(-2)[..., :dim]


def require_classes(model: str, info: DataInfo) -> None:
    """The baselines are supervised classifiers with no pre-training: refuse data without classes."""
    if info.num_classes == 0:
        raise ConfigError(f"{model} is a supervised classifier with no pre-training: it needs a dataset with classes")


def regular_grid(length: int, step: float, start: float = 0.0) -> Tensor:
    """(length,) days start, start + step, ...; checked so a bad option fails with one clear line."""
    if length < 2 or step <= 0:
        raise ConfigError(f"the regular time grid needs grid_len >= 2 and grid_step > 0 days, got {length} and {step}")
    return start + step * torch.arange(length, dtype=torch.float32)


def resample_to_grid(values: Tensor, days: Tensor, keep: Tensor, grid: Tensor) -> Tensor:
    """Linear interpolation of each series' kept observations onto the grid days.

    Args:
        values (B, T, C), days (B, T) float positions (any order), keep (B, T) bool (False = cloud or
        padding, ignored), grid (G,) increasing days.
    Returns:
        (B, G, C). Per pixel and band the same as `numpy.interp(grid, days[keep], values[keep])`:
        before the first / after the last kept observation the nearest one is repeated; several
        observations on one day (two years folded onto day of year) keep the latest in input order
        as the left neighbour. A series with no kept observation gives zeros (the band mean once
        the input is standardised).
    """
    b, _, c = values.shape
    count = keep.sum(1, keepdim=True)                                   # (B, 1)
    sorted_days, order = torch.where(keep, days.float(), torch.inf).sort(dim=1, stable=True)  # (B, T), kept first
    sorted_values = values.gather(1, order.unsqueeze(-1).expand(-1, -1, c))          # (B, T, C)
    query = grid.to(days.device).expand(b, -1).contiguous()            # (B, G)
    after = torch.searchsorted(sorted_days, query, right=True)         # (B, G): kept days <= grid day
    last = (count - 1).clamp_min(0)
    left = (after - 1).clamp(min=0).minimum(last)                       # (B, G)
    right = after.minimum(last)
    day_left, day_right = sorted_days.gather(1, left), sorted_days.gather(1, right)
    span = day_right - day_left
    weight = torch.where(span > 0, (query - day_left) / span.clamp_min(1e-9), torch.zeros_like(span)).clamp(0, 1)
    at_left, at_right = (sorted_values.gather(1, i.unsqueeze(-1).expand(-1, -1, c)) for i in (left, right))  # (B, G, C)
    out = at_left + weight.unsqueeze(-1) * (at_right - at_left)
    return out * (count > 0).unsqueeze(-1)


class RegularGridInput(nn.Module):
    """Raw batch -> standardised series on the regular grid: (B, grid_len, C).

    values (B, T, C) reflectance 0-1, dates (B, T), valid (B, T): clear observations are placed at
    their `positions` (day of year by default) and interpolated linearly onto days
    0, step, 2 step, ... (`resample_to_grid`); clouds and padding are ignored, so the same model
    takes compact and full batches alike. Observations outside the grid's span (a series longer
    than a year with `positions: reference`) only matter as neighbours of its ends.
    """

    def __init__(self, info: DataInfo, grid_len: int, grid_step: float, mode: str):
        super().__init__()
        positions(torch.zeros(1, 1, dtype=torch.long), mode, None)      # refuses an unknown mode now
        self.mode, self.reference_date = mode, info.reference_date
        self.norm = BandNorm(info.band_mean, info.band_std)
        self.register_buffer("grid", regular_grid(grid_len, grid_step), persistent=False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        days = positions(batch["dates"], self.mode, self.reference_date)                  # (B, T)
        return resample_to_grid(self.norm(batch["values"]), days, batch["valid"], self.grid)   # (B, G, C)
