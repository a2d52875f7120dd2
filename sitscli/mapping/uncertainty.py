"""Per-pixel uncertainty of class probabilities, and where to collect new samples (active learning).

Measures, for probabilities p_1..p_K of a pixel, first divided by their sum (so that rounded
percentages adding to 99 or 101 give the value of their exact counterparts), sorted so that
p(1) >= p(2) >= ...; every measure is 0 for a certain pixel and grows with the confusion, up to 1:
- entropy: -sum_k p_k log p_k / log K (0 log 0 = 0): 1 when every class is equally likely;
- margin: 1 - (p(1) - p(2)): 1 when the two best classes tie;
- least (least confidence): 1 - p(1): at most 1 - 1/K.
R sits `sits_uncertainty` offers the same three types (entropy by default).

Sample suggestion (as R sits `sits_uncertainty_sampling`): the N most uncertain pixels, taken
greedily from the most uncertain down, each at least `min_distance` from those already taken.
`SampleSuggester` sees the raster block by block and keeps a bounded set of candidates per block,
so memory does not grow with the raster: first only the most uncertain pixel of each square cell of
side min_distance / sqrt(2) (two pixels of one cell are closer than min_distance, so the greedy
choice keeps at most one of them anyway), then the `per_block` most uncertain of those.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from affine import Affine

KINDS = ("entropy", "margin", "least")


def normalised(probs: np.ndarray) -> np.ndarray:
    """probs (K, ...) -> float64 probabilities divided by their sum (NaN stays NaN)."""
    p = np.clip(probs.astype(np.float64), 0.0, None)
    total = p.sum(axis=0, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


def uncertainty(probs: np.ndarray, kind: str) -> np.ndarray:
    """Class probabilities (K, ...) 0-1, NaN = no data -> uncertainty (...) float32 0-1, NaN = no data."""
    if kind not in KINDS:
        raise ValueError(f"unknown uncertainty {kind!r}: one of {', '.join(KINDS)}")
    p = normalised(probs)
    if kind == "entropy":
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        value = -plogp.sum(axis=0) / math.log(p.shape[0])
    else:
        first, second = top_two(p)[1::2]
        value = 1.0 - (first - second) if kind == "margin" else 1.0 - first
    value[np.isnan(probs).any(axis=0)] = np.nan
    return value.astype(np.float32)


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """probs (K, ...) -> (best class, its probability, second class, its probability), each (...).

    Ties go to the lower class index (as argmax). NaN pixels give class 0 and probability NaN.
    """
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=0, kind="stable")[:2]     # (2, ...)
    best = np.take_along_axis(probs, order, axis=0)
    return order[0], best[0], order[1], best[1]


@dataclass
class Candidate:
    """A pixel that may become a suggested sample."""

    uncertainty: float
    x: float
    y: float
    row: int
    col: int
    class_1: int
    prob_1: float
    class_2: int
    prob_2: float


class SampleSuggester:
    """Keeps the candidates of the blocks it is shown, then picks N of them at least `min_distance` apart.

    Args:
        n: samples wanted.
        min_distance: in the raster's CRS units (metres on a projected grid); 0 = distinct pixels only.
        transform: the raster's affine transform (pixel -> map coordinates), for the pixels' rows and columns.
        per_block: candidates kept per block (at least n, so one block alone can provide all).
    """

    def __init__(self, n: int, min_distance: float, transform: Affine, per_block: int | None = None):
        self.n, self.min_distance, self.transform = n, float(min_distance), transform
        self.per_block = max(n, per_block if per_block is not None else max(8 * n, 256))
        self.candidates: list[Candidate] = []

    def add(self, unc: np.ndarray, probs: np.ndarray, xy: np.ndarray) -> None:
        """One block: unc (h, w) NaN = no data, probs (K, h, w), xy (h * w, 2) pixel centres, row-major."""
        flat = unc.ravel()
        idx = np.flatnonzero(np.isfinite(flat))
        if idx.size == 0:
            return
        if self.min_distance > 0:
            idx = _most_uncertain_per_cell(idx, flat, xy, self.min_distance / math.sqrt(2))
        if idx.size > self.per_block:
            idx = idx[np.argpartition(-flat[idx], self.per_block - 1)[:self.per_block]]
        c1, p1, c2, p2 = top_two(probs.reshape(probs.shape[0], -1)[:, idx])
        x, y = xy[idx, 0], xy[idx, 1]
        cols, rows = ~self.transform * (x, y)                                  # pixel centres: whole + 0.5
        for i in range(idx.size):
            self.candidates.append(Candidate(float(flat[idx[i]]), float(x[i]), float(y[i]),
                                             int(np.floor(rows[i])), int(np.floor(cols[i])),
                                             int(c1[i]), float(p1[i]), int(c2[i]), float(p2[i])))

    def select(self) -> list[Candidate]:
        """Greedy choice: most uncertain first (ties: top row, then left column), skipping any
        candidate closer than `min_distance` to one already chosen; at most n."""
        ordered = sorted(self.candidates, key=lambda c: (-c.uncertainty, c.row, c.col))
        if self.min_distance <= 0:
            return ordered[:self.n]
        chosen: list[Candidate] = []
        cell = self.min_distance
        grid: dict[tuple[int, int], list[Candidate]] = defaultdict(list)  # chosen points by cell of side d
        for cand in ordered:
            key = (math.floor(cand.x / cell), math.floor(cand.y / cell))
            near = (p for dx in (-1, 0, 1) for dy in (-1, 0, 1) for p in grid.get((key[0] + dx, key[1] + dy), ()))
            if any(math.hypot(p.x - cand.x, p.y - cand.y) < self.min_distance for p in near):
                continue
            chosen.append(cand)
            grid[key].append(cand)
            if len(chosen) == self.n:
                break
        return chosen


def _most_uncertain_per_cell(idx: np.ndarray, flat: np.ndarray, xy: np.ndarray, side: float) -> np.ndarray:
    """Of the pixels `idx`, the most uncertain one in each square cell of `side` (first in raster order on ties)."""
    cells = np.floor(xy[idx] / side).astype(np.int64)                          # (n, 2)
    order = np.lexsort((idx, -flat[idx], cells[:, 1], cells[:, 0]))            # by cell, then most uncertain
    sorted_cells = cells[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (sorted_cells[1:] != sorted_cells[:-1]).any(axis=1)
    return idx[order[first]]
