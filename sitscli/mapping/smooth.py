"""Bayesian smoothing of class probabilities (Camara, Simoes et al. 2024; R sits `sits_smooth`).

Each class is smoothed on its own, in logit space. For a pixel i and a class k:
- x = logit p_k = log(p_k / (sum_j p_j - p_k)), the probabilities first clipped to [EPS, 1 - EPS];
- the neighbourhood: the `window` x `window` pixels centred on i (i included) that hold
  probabilities; with `neigh_fraction` f < 1, only the ceil(f * n) highest logits of those n pixels
  (the neighbours most confident in class k, so that a pixel at a parcel border is pulled towards
  its own parcel rather than towards the average of both);
- m, s^2: the mean and the sample variance (denominator n - 1) of those logits: the prior of the
  pixel's true logit is N(m, s^2);
- sigma^2: the `smoothness` of class k, the variance of the pixel's own logit as a measure of the
  truth (larger = more smoothing);
- the posterior mean (s^2 * x + sigma^2 * m) / (s^2 + sigma^2), back to a probability with the
  logistic function, and the K class probabilities divided by their sum.
Where a neighbourhood is uniform (s^2 near 0) the pixel takes its neighbours' value: isolated
misclassified pixels disappear. Where it is mixed (s^2 large, at parcel borders) the pixel keeps its
own value: borders stay in place.

Pixels without probabilities (NaN), and pixels outside the array, are no neighbours: smoothing a
block grown by a halo of window // 2 pixels and keeping its centre gives exactly the values of the
whole image. (R sits mirrors the image at its edges instead; a mirrored pixel counts twice.)
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sitscli.core.errors import ConfigError

# Defaults of R sits >= 1.5 `sits_smooth` (window_size = 9, neigh_fraction = 0.5, smoothness = 20).
DEFAULT_WINDOW = 9
DEFAULT_NEIGH_FRACTION = 0.5
DEFAULT_SMOOTHNESS = 20.0
# sits clips probabilities of exactly 0 or 1 to 1e-6 / 1 - 1e-6 before taking logits.
EPS = 1e-6
# Size of the (pixels, window^2) float32 neighbourhood array computed at a time (its sorted copy
# and temporaries take about four times as much).
STRIP_BYTES = 16 * 2**20


def halo(window: int) -> int:
    """Pixels a block must be grown by on each side for its smoothed centre to be exact."""
    return window // 2


def logits(probs: np.ndarray) -> np.ndarray:
    """probs (K, ...) 0-1 (NaN = no data) -> logits (K, ...) float32, log(p_k / (sum p - p_k))."""
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    return np.log(p / (p.sum(axis=0, keepdims=True) - p)).astype(np.float32)


def bayes_smooth(probs: np.ndarray, *, window: int = DEFAULT_WINDOW, neigh_fraction: float = DEFAULT_NEIGH_FRACTION,
                 smoothness: float | np.ndarray = DEFAULT_SMOOTHNESS) -> np.ndarray:
    """Smooth class probabilities over their spatial neighbourhoods.

    Args:
        probs: (K, H, W) class probabilities 0-1; a pixel with NaN in any class has no data.
        window: odd side (>= 3) of the square neighbourhood.
        neigh_fraction: in (0, 1], the fraction of the neighbours, those of highest logit for the
            class, that estimate the prior.
        smoothness: sigma^2, one value for every class or (K,) values.
    Returns:
        (K, H, W) float32 smoothed probabilities summing to 1 per pixel, NaN where `probs` has no data.
    """
    k = probs.shape[0]
    sigma2 = np.broadcast_to(np.asarray(smoothness, dtype=np.float64), (k,))
    missing = np.isnan(probs).any(axis=0)                                   # (H, W)
    x = logits(probs)                                                        # (K, H, W)
    x[:, missing] = np.nan
    posterior = np.empty(x.shape, dtype=np.float64)
    for c in range(k):
        m, s2 = neighbourhood_moments(x[c], window, neigh_fraction)         # (H, W) each
        posterior[c] = (s2 * x[c] + sigma2[c] * m) / (s2 + sigma2[c])
    p = 1.0 / (1.0 + np.exp(-posterior))
    p /= p.sum(axis=0, keepdims=True)
    return p.astype(np.float32)


def neighbourhood_moments(x: np.ndarray, window: int, neigh_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance of the highest logits around each pixel.

    Args:
        x: (H, W) logits of one class, NaN = no data (no neighbour).
        window: odd side of the neighbourhood; neigh_fraction: kept fraction, ceil(f * n) of n.
    Returns:
        m, s2: (H, W) float64 each; NaN where the pixel itself has no data; s2 = 0 where a single
        value is kept.
    """
    h, w = x.shape
    r = halo(window)
    padded = np.pad(x, r, constant_values=np.nan)                              # (H + 2r, W + 2r)
    m = np.full((h, w), np.nan)
    s2 = np.full((h, w), np.nan)
    rows_per_strip = max(1, STRIP_BYTES // (4 * window * window * max(w, 1)))
    for top in range(0, h, rows_per_strip):
        bottom = min(h, top + rows_per_strip)
        views = sliding_window_view(padded[top:bottom + 2 * r], (window, window))  # (h', W, win, win)
        hood = views.reshape(-1, window * window)                                 # (h' * W, win^2)
        m[top:bottom], s2[top:bottom] = (a.reshape(bottom - top, w) for a in _top_moments(hood, neigh_fraction))
    m[np.isnan(x)] = np.nan
    s2[np.isnan(x)] = np.nan
    return m, s2


def _top_moments(hood: np.ndarray, neigh_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """hood (N, n) logits with NaN gaps -> mean and sample variance (N,) of each row's top ceil(f * valid)."""
    n = hood.shape[1]
    if neigh_fraction < 1:
        hood = np.sort(hood, axis=1)                                           # ascending, NaN last
    n_valid = n - np.isnan(hood).sum(axis=1)                                   # (N,)
    if neigh_fraction < 1:
        # ceil(f * n), with a tolerance so that e.g. 0.1 * 30 = 3.0000000000000004 keeps 3
        kept = np.maximum(np.ceil(neigh_fraction * n_valid - 1e-9).astype(np.int64), np.minimum(n_valid, 1))
    else:
        kept = n_valid
    mean, variance = np.empty(len(hood)), np.zeros(len(hood))
    # Pixels whose whole window holds data (all but those near edges and gaps) keep the same
    # number of values, the last ones of their sorted rows: one slice, no masks.
    full = n_valid == n
    k = _kept_of_full(n, neigh_fraction)
    top = hood[full, n - k:]
    mean[full] = top.mean(axis=1)
    if k > 1:
        variance[full] = top.var(axis=1, ddof=1)
    partial = ~full
    if partial.any():
        mean[partial], variance[partial] = _masked_moments(hood[partial], n_valid[partial], kept[partial],
                                                           sorted_rows=neigh_fraction < 1)
    return mean, variance


def _kept_of_full(n: int, neigh_fraction: float) -> int:
    return n if neigh_fraction >= 1 else max(1, math.ceil(neigh_fraction * n - 1e-9))


def _masked_moments(hood: np.ndarray, n_valid: np.ndarray, kept: np.ndarray, *,
                    sorted_rows: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows with NaN gaps: the kept values are the last `kept` before the NaNs of a sorted row, or
    every finite value of an unsorted one."""
    position = np.arange(hood.shape[1])
    if sorted_rows:
        selected = (position >= (n_valid - kept)[:, None]) & (position < n_valid[:, None])
    else:
        selected = np.isfinite(hood)
    values = np.where(selected, hood, np.float32(0))
    mean = values.sum(axis=1, dtype=np.float64) / np.maximum(kept, 1)
    squares = np.where(selected, np.square(values - mean[:, None].astype(np.float32)), np.float32(0))
    variance = np.where(kept > 1, squares.sum(axis=1, dtype=np.float64) / np.maximum(kept - 1, 1), 0.0)
    return mean, variance


def parse_smoothness(value: float | str | list | tuple, num_classes: int) -> np.ndarray:
    """A number, "10" or "10,20,..." (one per class, in band order) -> (K,) float64 sigma^2."""
    try:
        if isinstance(value, str):
            items = [float(v) for v in value.split(",")]
        elif isinstance(value, (list, tuple)):
            items = [float(v) for v in value]
        else:
            items = [float(value)]
    except (TypeError, ValueError):
        items = []
    if len(items) not in (1, num_classes) or not all(math.isfinite(v) and v > 0 for v in items):
        raise ConfigError(f"--smoothness {value}: give one number > 0, or {num_classes} comma-separated numbers > 0 "
                          "(one per class, in band order)")
    return np.broadcast_to(np.asarray(items, dtype=np.float64), (num_classes,)).copy()
