"""Linear gap filling of pixel series onto a regular grid of days, vectorised over pixels.

The GF baseline of Dumeur, Valero, Inglada 2024 (Section V, change detection): each pixel's valid
acquisitions are linearly interpolated onto a 5-day grid over one year; two years are compared on
the interpolated reflectance. Other baselines (the random forest) use the same filling.

Conventions: before a pixel's first valid date and after its last one the nearest valid value is
repeated (flat extrapolation); a pixel with no valid date is NaN everywhere.
"""

from __future__ import annotations

import numpy as np

from sitscli.core.dates import to_datetime64

GF_STEP = 5          # days between grid points (the paper's GF baseline)
GF_YEAR = 365        # one year of grid: 0, 5, ..., 360 -> 73 points


def linear_gapfill(values: np.ndarray, days: np.ndarray, valid: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Interpolate each pixel's valid observations linearly onto `grid`.

    Args:
        values: (N, T, C) reflectance.
        days: (T,) shared or (N, T) per-pixel acquisition days (any integer or float day count),
            in any order.
        valid: (N, T) bool, the observations to interpolate between.
        grid: (G,) days to fill, in the same unit as `days`.
    Returns:
        (N, G, C) float32: linear between the valid observations around each grid day, flat
        beyond the first and last valid ones, NaN for a pixel with no valid observation.
    """
    values = np.asarray(values, dtype=np.float32)
    n, t, c = values.shape
    days = np.broadcast_to(np.asarray(days, dtype=np.float64), (n, t))
    grid = np.asarray(grid, dtype=np.float64)
    order = np.argsort(days, axis=1, kind="stable")                        # (N, T) date order per pixel
    days = np.take_along_axis(days, order, axis=1)
    valid = np.take_along_axis(np.asarray(valid, dtype=bool), order, axis=1)
    values = np.take_along_axis(values, order[..., None], axis=1)
    steps = np.arange(t)
    # For each position, the last valid index at or before it, and the first valid one at or after it.
    last_valid = np.maximum.accumulate(np.where(valid, steps, -1), axis=1)                    # (N, T), -1 none
    first_valid = np.minimum.accumulate(np.where(valid, steps, t)[:, ::-1], axis=1)[:, ::-1]  # (N, T), T none
    before = _searchsorted_rows(days, grid, side="right") - 1               # (N, G) last date <= grid day
    after = _searchsorted_rows(days, grid, side="left")                     # (N, G) first date >= grid day
    rows = np.arange(n)[:, None]
    prev = np.where(before >= 0, last_valid[rows, np.maximum(before, 0)], -1)            # (N, G)
    nxt = np.where(after < t, first_valid[rows, np.minimum(after, t - 1)], t)            # (N, G)
    has_prev, has_next = prev >= 0, nxt < t
    # Flat extrapolation: a missing side takes the other side's index.
    prev_c = np.where(has_prev, prev, np.where(has_next, nxt, 0))
    next_c = np.where(has_next, nxt, prev_c)
    d0, d1 = days[rows, prev_c], days[rows, next_c]                          # (N, G)
    span = d1 - d0
    weight = np.where(span > 0, (grid[None] - d0) / np.where(span > 0, span, 1), 0.0).astype(np.float32)
    v0, v1 = values[rows, prev_c], values[rows, next_c]                      # (N, G, C)
    filled = v0 + weight[..., None] * (v1 - v0)
    filled[~(has_prev | has_next)] = np.nan
    return filled.astype(np.float32, copy=False)


def _searchsorted_rows(sorted_rows: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted of `queries` (G,) in each row of `sorted_rows` (N, T) at once -> (N, G).

    Rows are shifted apart by more than their span so that one search over the flattened rows
    never crosses from a row into the next.
    """
    n, t = sorted_rows.shape
    low = min(sorted_rows.min(initial=0.0), queries.min(initial=0.0))
    high = max(sorted_rows.max(initial=0.0), queries.max(initial=0.0))
    shift = (high - low + 1.0) * np.arange(n)[:, None]
    flat = (sorted_rows - low + shift).ravel()
    found = np.searchsorted(flat, (queries[None, :] - low + shift).ravel(), side=side).reshape(n, -1)
    return found - t * np.arange(n)[:, None]


def annual_grid(dates: np.ndarray, anchor_doy: int, step: int = GF_STEP, length: int = GF_YEAR) -> np.ndarray:
    """The 5-day grid over one year of a series, anchored on a day of year shared by the series compared.

    Args:
        dates: (T,) days since 1970-01-01 of the series (sorted).
        anchor_doy: 0-based day of year every compared series' year starts on (e.g. the day of
            year of the first series' first date), so that grid point k falls on the same day of
            year in each series, whatever year (calendar or agronomic) it covers.
    Returns:
        (length // step + 1,) days since 1970-01-01: start, start + step, ..., start + length - length % step,
        where start is the anchor day of year nearest to the series' first date.
    """
    first = int(dates[0])
    year = int(to_datetime64(np.array([first])).astype("datetime64[Y]").astype(int)[0]) + 1970
    starts = [_day_of(y, anchor_doy) for y in (year - 1, year, year + 1)]
    start = min(starts, key=lambda s: abs(s - first))
    return start + np.arange(0, length, step, dtype=np.int64)


def _day_of(year: int, doy: int) -> int:
    return int(np.datetime64(f"{year}-01-01", "D").astype(np.int64)) + doy
