"""Samples and batches: the one format every model, pretext task and mapping command exchanges.

A pixel sample (dict of numpy arrays):
    values (T, C) float32 reflectance 0-1, dates (T,) int32 days since 1970-01-01,
    valid (T,) bool, y () int64 (-1 = unlabeled), xy (2,) float64 map coordinates.
A patch sample: values (T, C, H, W), valid (T, H, W), y (H, W); dates and xy as above
(xy = the patch centre).

`collate` pads every sample to the batch's longest series with valid=False and returns torch
tensors with a leading batch dimension B. With `compact=True` (pixel samples only) invalid
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
    out["values"], out["dates"], out["valid"] = sample["values"][keep], sample["dates"][keep], sample["valid"][keep]
    return out


def collate(samples: Sequence[Sample], compact: bool = False, max_len: int | None = None) -> Batch:
    """Stack samples into a batch padded to the longest series.

    Returns values (B, T, C[, H, W]) float32, dates (B, T) int64, valid (B, T[, H, W]) bool,
    y (B[, H, W]) int64, xy (B, 2) float64.
    """
    if compact:
        samples = [compact_sample(s, max_len) for s in samples]
    length = max(1, max(len(s["dates"]) for s in samples))
    first = samples[0]
    b = len(samples)
    values = np.zeros((b, length) + first["values"].shape[1:], dtype=np.float32)
    valid = np.zeros((b, length) + first["valid"].shape[1:], dtype=bool)
    dates = np.zeros((b, length), dtype=np.int64)
    for i, s in enumerate(samples):
        t = len(s["dates"])
        values[i, :t] = s["values"]
        valid[i, :t] = s["valid"]
        dates[i, :t] = s["dates"]
        if t:  # padding repeats the last date so date encodings of padding stay in range
            dates[i, t:] = s["dates"][-1]
    return {
        "values": torch.from_numpy(values),
        "dates": torch.from_numpy(dates),
        "valid": torch.from_numpy(valid),
        "y": torch.from_numpy(np.stack([np.asarray(s["y"], dtype=np.int64) for s in samples])),
        "xy": torch.from_numpy(np.stack([np.asarray(s.get("xy", (np.nan, np.nan)), dtype=np.float64) for s in samples])),
    }
