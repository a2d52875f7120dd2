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
so memory follows the number of blocks, not of pixels: first only the most uncertain pixel of each
square cell of side min_distance / sqrt(2) (two pixels of one cell are closer than min_distance, so
the greedy choice keeps at most one of them anyway), then the `per_block` most uncertain of those.
This is the greedy choice over every pixel except where a cell's best pixel is turned down for a
neighbour in another cell while another pixel of its cell, farther from that neighbour, would not be:
that pixel is then not offered (a difference of less than min_distance in where a sample goes).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from affine import Affine

KINDS = ("entropy", "margin", "least")


def normalised(probs: np.ndarray) -> np.ndarray:
    """probs (K, ...) -> float32 probabilities divided by their sum (NaN stays NaN)."""
    p = np.maximum(probs.astype(np.float32), np.float32(0))
    total = p.sum(axis=0, keepdims=True)
    return p / np.where(total > 0, total, np.float32(1))


def uncertainty(probs: np.ndarray, kind: str) -> np.ndarray:
    """Class probabilities (K, ...) 0-1, NaN = no data -> uncertainty (...) float32 0-1, NaN = no data."""
    if kind not in KINDS:
        raise ValueError(f"unknown uncertainty {kind!r}: one of {', '.join(KINDS)}")
    p = normalised(probs)
    if kind == "entropy":
        plogp = p * np.log(np.where(p > 0, p, np.float32(1)))                 # 0 log 0 = 0
        value = -plogp.sum(axis=0) / np.float32(math.log(p.shape[0]))
    elif kind == "margin":
        lowest_first = np.partition(-p, 1, axis=0)                             # -p(1), -p(2), then the rest
        value = 1 - (lowest_first[1] - lowest_first[0])
    else:
        value = 1 - p.max(axis=0)
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

    FIELDS = ("uncertainty", "x", "y", "row", "col", "class_1", "prob_1", "class_2", "prob_2")

    def __init__(self, n: int, min_distance: float, transform: Affine, per_block: int | None = None):
        self.n, self.min_distance, self.transform = n, float(min_distance), transform
        self.per_block = max(n, per_block if per_block is not None else max(8 * n, 256))
        self.blocks: list[dict[str, np.ndarray]] = []   # per block: field -> (m,) array (~72 bytes a candidate)

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
        values = (flat[idx], x, y, np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64), c1, p1, c2, p2)
        self.blocks.append(dict(zip(self.FIELDS, values)))

    def select(self) -> list[Candidate]:
        """Greedy choice: most uncertain first (ties: top row, then left column), skipping any
        candidate closer than `min_distance` to one already chosen; at most n."""
        if not self.blocks:
            return []
        pool = {f: np.concatenate([b[f] for b in self.blocks]) for f in self.FIELDS}
        order = np.lexsort((pool["col"], pool["row"], -pool["uncertainty"]))
        chosen: list[int] = []
        cell = self.min_distance
        taken: dict[tuple[int, int], list[int]] = defaultdict(list)  # chosen candidates by cell of side d
        x, y = pool["x"], pool["y"]
        for i in order:
            if self.min_distance > 0:
                key = (math.floor(x[i] / cell), math.floor(y[i] / cell))
                near = (j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in taken.get((key[0] + dx, key[1] + dy), ()))
                if any(math.hypot(x[j] - x[i], y[j] - y[i]) < self.min_distance for j in near):
                    continue
                taken[key].append(i)
            chosen.append(i)
            if len(chosen) == self.n:
                break
        return [Candidate(**{f: pool[f][i].item() for f in self.FIELDS}) for i in chosen]


def _most_uncertain_per_cell(idx: np.ndarray, flat: np.ndarray, xy: np.ndarray, side: float) -> np.ndarray:
    """Of the pixels `idx`, the most uncertain one in each square cell of `side` (first in raster order on ties)."""
    cells = np.floor(xy[idx] / side).astype(np.int64)                          # (n, 2)
    order = np.lexsort((idx, -flat[idx], cells[:, 1], cells[:, 0]))            # by cell, then most uncertain
    sorted_cells = cells[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (sorted_cells[1:] != sorted_cells[:-1]).any(axis=1)
    return idx[order[first]]
