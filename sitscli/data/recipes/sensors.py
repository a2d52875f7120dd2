"""The other sensors of `sits prepare s2 ... --s1 DIR --planetscope DIR --vhr PATH`, read under the
Sentinel-2 samples.

Sentinel-2 decides what a sample is (a 10 m pixel or a P x P patch of its grid); each other
sensor contributes the block of its own pixels under that footprint, on its own dates:

    sensor       pixel sample              patch sample (P x P)      reader grid
    s1           (T1, 3)                   (T1, 3, P, P)             the Sentinel-2 grid (warped)
    planetscope  (T2, C, f, f), f = 3      (T2, C, fP, fP)           10/f m, aligned to Sentinel-2
    vhr          (C, k, k), k = 10/res     (C, kP, kP)               10/k m, aligned to Sentinel-2

Because the finer grids are aligned to the Sentinel-2 grid, a Sentinel-2 pixel (row r, col c)
holds exactly the fine pixels [f r, f r + f) x [f c, f c + f): no per-pixel geometry at prepare time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from sitscli.core.dates import iso
from sitscli.core.progress import log
from sitscli.data.cube import Cube
from sitscli.data.modalities import Modality

READ_BUDGET = 64 * 2**20  # bytes of float32 read at once from one sensor


@dataclass(frozen=True)
class SensorInputs:
    """What the user gave for the sensors beside Sentinel-2 (None: not used)."""

    s1: Path | None = None
    s1_orbit: str = "both"
    s1_units: str = "auto"
    planetscope: Path | None = None
    vhr: Path | None = None
    vhr_bands: tuple[str, ...] | None = None
    vhr_resolution: float | None = None

    @property
    def any(self) -> bool:
        return any(p is not None for p in (self.s1, self.planetscope, self.vhr))


class OtherSensors:
    """The readers of the other sensors, opened on the Sentinel-2 cube's grid and period."""

    def __init__(self, cube: Cube, inputs: SensorInputs):
        from sitscli.data.readers import open_planetscope, open_s1, open_vhr

        period = (int(cube.dates.min()), int(cube.dates.max()))
        self.series: dict[str, Cube] = {}
        if inputs.s1 is not None:
            self.series["s1"] = open_s1(inputs.s1, cube.grid, orbit=inputs.s1_orbit, units=inputs.s1_units,
                                        date_range=period)
        if inputs.planetscope is not None:
            self.series["planetscope"] = open_planetscope(inputs.planetscope, cube.grid, date_range=period)
        self.vhr = None
        if inputs.vhr is not None:
            self.vhr = open_vhr(inputs.vhr, cube.grid, bands=list(inputs.vhr_bands) if inputs.vhr_bands else None,
                                resolution=inputs.vhr_resolution)
        self.sources = {"s1": inputs.s1, "planetscope": inputs.planetscope, "vhr": inputs.vhr}
        for name, reader in self.series.items():
            log(f"prepare s2: {name} {len(reader.dates)} dates {iso(reader.dates[0])} to {iso(reader.dates[-1])}, "
                f"bands {', '.join(reader.band_names)}")
        if self.vhr is not None:
            log(f"prepare s2: vhr {len(self.vhr.band_names)} bands at {10.0 / self.vhr.factor:g} m "
                f"({self.vhr.factor} x {self.vhr.factor} pixels per Sentinel-2 pixel)")

    def modalities(self, patch_size: int | None) -> list[Modality]:
        """How each sensor is stored for samples of `patch_size` (None: pixels)."""
        side = patch_size or 1
        out = []
        for name, reader in self.series.items():
            f = _factor(reader)
            footprint = () if f == 1 and patch_size is None else (f * side, f * side)
            out.append(Modality(name, tuple(reader.band_names), len(reader.dates), footprint,
                                _resolution(reader), str(self.sources[name])))
        if self.vhr is not None:
            k = self.vhr.factor
            out.append(Modality("vhr", tuple(self.vhr.band_names), 0, (k * side, k * side), _resolution(self.vhr),
                                str(self.sources["vhr"])))
        return out

    # ------------------------------------------------------------------------------ pixels
    def at_pixels(self, window: Window, r: np.ndarray, c: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Each sensor's block under the Sentinel-2 pixels (r, c) (relative to `window`).

        Returns {name: {"x": (n, T, C[, f, f]) or (n, C, k, k), "valid": ..., "date": (T,)}}.
        """
        out = {}
        for name, reader in self.series.items():
            f = _factor(reader)
            x = np.empty((r.size, len(reader.dates), len(reader.band_names)) + ((f, f) if f > 1 else ()), np.float32)
            valid = np.empty((r.size, len(reader.dates)) + ((f, f) if f > 1 else ()), bool)
            per_date = len(reader.band_names) * int(window.height) * int(window.width) * f * f * 4
            for times in time_chunks(len(reader.dates), per_date):
                v, m = reader.read(window, times)                    # (t, C, f h, f w), (t, f h, f w)
                x[:, times], valid[:, times] = _blocks(v, m, r, c, f, time_axis=True)
            out[name] = {"x": x, "valid": valid, "date": reader.dates}
        if self.vhr is not None:
            out["vhr"] = self._vhr_at_pixels(window, r, c)
        return out

    def _vhr_at_pixels(self, window: Window, r: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
        """The k x k VHR chip under each pixel, read in row strips that keep one read under budget."""
        k, bands = self.vhr.factor, len(self.vhr.band_names)
        x = np.empty((r.size, bands, k, k), np.float32)
        valid = np.empty((r.size, k, k), bool)
        rows = max(1, READ_BUDGET // max(1, bands * k * k * int(window.width) * 4))
        for top in range(0, int(window.height), rows):
            inside = np.flatnonzero((r >= top) & (r < top + rows))
            if inside.size == 0:
                continue
            strip = Window(window.col_off, window.row_off + top, window.width, min(rows, int(window.height) - top))
            v, m = self.vhr.read(strip)                               # (C, k h, k w), (k h, k w)
            x[inside], valid[inside] = _blocks(v, m, r[inside] - top, c[inside], k, time_axis=False)
        return {"x": x, "valid": valid}

    # ------------------------------------------------------------------------------ patches
    def at_patch(self, window: Window, size: int) -> dict[str, dict[str, np.ndarray]]:
        """Each sensor's block under one patch window, padded past the grid edge to size x size."""
        out = {}
        for name, reader in self.series.items():
            f = _factor(reader)
            v, m = reader.read(window)                                # (T, C, f h, f w), (T, f h, f w)
            out[name] = {"x": pad_end(v, f * size, 0.0), "valid": pad_end(m, f * size, False), "date": reader.dates}
        if self.vhr is not None:
            k = self.vhr.factor
            v, m = self.vhr.read(window)
            out["vhr"] = {"x": pad_end(v, k * size, 0.0), "valid": pad_end(m, k * size, False)}
        return out


def _factor(reader) -> int:
    """Fine pixels per Sentinel-2 pixel side (1 for a reader on the Sentinel-2 grid itself)."""
    return int(getattr(reader, "factor", 1))


def _resolution(reader) -> float:
    grid = getattr(reader, "fine_grid", None) or reader.grid
    return round(abs(float(grid.transform.a)), 4)


def _blocks(values: np.ndarray, valid: np.ndarray, r: np.ndarray, c: np.ndarray, f: int, *,
            time_axis: bool) -> tuple[np.ndarray, np.ndarray]:
    """The f x f blocks under Sentinel-2 pixels (r, c) of a fine read.

    values (t, C, f h, f w) and valid (t, f h, f w) (time_axis), or (C, f h, f w) and (f h, f w).
    Returns (n, t, C[, f, f]) and (n, t[, f, f]) (or without t); f = 1 gives single pixels (n, t, C).
    """
    if f == 1:
        x, m = values[..., r, c], valid[..., r, c]                  # (t, C, n), (t, n)
        return (np.moveaxis(x, -1, 0), np.moveaxis(m, -1, 0))
    rows = (f * r)[:, None] + np.arange(f)                          # (n, f)
    cols = (f * c)[:, None] + np.arange(f)
    x = values[..., rows[:, :, None], cols[:, None, :]]             # ([t,] C, n, f, f)
    m = valid[..., rows[:, :, None], cols[:, None, :]]              # ([t,] n, f, f)
    lead = 2 if time_axis else 1
    return np.moveaxis(x, lead, 0), np.moveaxis(m, lead - 1, 0)


def time_chunks(n_time: int, bytes_per_date: int) -> Iterator[np.ndarray]:
    """Indices 0..n_time-1 in runs whose reads stay under READ_BUDGET bytes (at least one date)."""
    step = max(1, READ_BUDGET // max(1, bytes_per_date))
    for start in range(0, n_time, step):
        yield np.arange(start, min(n_time, start + step))


def pad_end(array: np.ndarray, size: int, fill) -> np.ndarray:
    """Pad the last two axes of `array` at their end up to size x size with `fill`."""
    h, w = array.shape[-2:]
    if (h, w) == (size, size):
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, size - h), (0, size - w)]
    return np.pad(array, pad, constant_values=fill)
