"""Samples and batches: the one format every model, pretext task and mapping command exchanges.

A pixel sample (dict of numpy arrays):
    values (T, C) float32 reflectance 0-1, dates (T,) int32 days since 1970-01-01,
    valid (T,) bool, y () int64 (-1 = unlabeled), xy (2,) float64 map coordinates.
A patch sample: values (T, C, H, W), valid (T, H, W), y (H, W); dates and xy as above
(xy = the patch centre).
Optional keys: `cloud` (T[, H, W]) uint8 Sentinel-2 cloud level 0-31 (datasets kept cloudy),
`y_tile` (K,) bool classes present in a patch, and per extra sensor (see
`sitscli.data.modalities`) `<prefix>_values`, `<prefix>_valid` and, for time series,
`<prefix>_dates`: e.g. s1_values (T1, 3[, H, W]) dB, ps_values (T2, 4, 3, 3) reflectance,
vhr_values (C, k, k). Each sensor keeps its own time axis.

`collate` pads every sample to the batch's longest series with valid=False (each sensor on its
own time axis) and returns torch tensors with a leading batch dimension B. With `compact=True` (pixel samples only) invalid
observations are dropped first, so `valid` then marks padding alone: the form SITS-BERT-style
models want (they see only clear observations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Sample = dict[str, np.ndarray]
Batch = dict[str, torch.Tensor]


def compact_sample(sample: Sample, max_len: int | None = None, rng: np.random.Generator | None = None) -> Sample:
    """Keep only the valid observations of a pixel sample (and at most `max_len` of them).

    When a series has more than `max_len` clear observations, a random subset (rng given, for
    training) or an evenly spaced one (no rng, for evaluation) is kept, in date order.
    """
    keep = np.flatnonzero(sample["valid"])
    if max_len is not None and keep.size > max_len:
        if rng is not None:
            keep = np.sort(rng.choice(keep, size=max_len, replace=False))
        else:
            keep = keep[np.linspace(0, keep.size - 1, max_len).round().astype(int)]
    out = dict(sample)
    for key in ("values", "dates", "valid", "cloud"):
        if key in sample:
            out[key] = sample[key][keep]
    return out


def collate(samples: Sequence[Sample], compact: bool = False, max_len: int | None = None) -> Batch:
    """Stack samples into a batch padded to the longest series.

    Returns values (B, T, C[, H, W]) float32, dates (B, T) int64, valid (B, T[, H, W]) bool,
    y (B[, H, W]) int64, xy (B, 2) float64; and the optional keys of the samples (cloud (B, T[, H, W])
    uint8, y_tile (B, K) bool, <prefix>_values / _valid / _dates of other sensors, padded to the
    batch's longest series of that sensor).
    """
    if compact:
        samples = [compact_sample(s, max_len) for s in samples]
    first = samples[0]
    batch = _pad_series(samples, "")
    if "cloud" in first:
        batch["cloud"] = _pad_stack([s["cloud"] for s in samples], batch["dates"].shape[1], np.uint8)
    series = _series_prefixes(first)
    for prefix in series:
        batch.update(_pad_series(samples, prefix + "_"))
    images = sorted(k[:-7] for k in first if k.endswith("_values") and k[:-7] not in series)  # one date, one shape
    stacked = [key for p in images for key in (p + "_values", p + "_valid")] + (["y_tile"] if "y_tile" in first else [])
    for key in stacked:
        batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    batch["y"] = torch.from_numpy(np.stack([np.asarray(s["y"], dtype=np.int64) for s in samples]))
    batch["xy"] = torch.from_numpy(np.stack([np.asarray(s.get("xy", (np.nan, np.nan)), dtype=np.float64) for s in samples]))
    return batch


def _series_prefixes(sample: Sample) -> list[str]:
    """Prefixes of the other sensors' time series in a sample ("s1", "ps"...)."""
    return sorted(k[:-6] for k in sample if k.endswith("_dates") and k != "dates")


def _pad_series(samples: Sequence[Sample], key: str) -> Batch:
    """values, dates, valid of one sensor (key "" for Sentinel-2, "s1_" ...) padded to the longest."""
    length = max(1, max(len(s[key + "dates"]) for s in samples))
    dates = np.zeros((len(samples), length), dtype=np.int64)
    for i, s in enumerate(samples):
        t = len(s[key + "dates"])
        dates[i, :t] = s[key + "dates"]
        if t:  # padding repeats the last date so date encodings of padding stay in range
            dates[i, t:] = s[key + "dates"][-1]
    return {
        key + "values": _pad_stack([s[key + "values"] for s in samples], length, np.float32),
        key + "dates": torch.from_numpy(dates),
        key + "valid": _pad_stack([s[key + "valid"] for s in samples], length, bool),
    }


def _pad_stack(arrays: Sequence[np.ndarray], length: int, dtype) -> torch.Tensor:
    """(B, length, ...) from arrays of shape (t_i, ...), zero (False) past each t_i."""
    out = np.zeros((len(arrays), length) + arrays[0].shape[1:], dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return torch.from_numpy(out)
