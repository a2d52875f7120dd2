"""The lazily read image time series every reader returns and every mapping command consumes.

A `Cube` is one tile (one CRS, one 10 m grid) seen at T dates: reflectance (time, band, y, x) on
the 0-1 scale plus a per-date, per-pixel validity mask. Nothing is read until `read()` is called
with a window, so memory follows the window, never the tile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError


@dataclass(frozen=True)
class Grid:
    """A raster grid: what a map written from a cube must carry."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)

    def same_as(self, other: "Grid") -> bool:
        return (self.crs == other.crs and self.height == other.height and self.width == other.width
                and self.transform.almost_equals(other.transform))


class Cube(ABC):
    """A (time, band, y, x) reflectance cube on one grid, read by windows.

    Subclasses set `dates` (T,) int32 days since 1970-01-01, oldest first, `band_names` (C names
    such as "B02"), `grid`, `layout` (e.g. "safe") and `tile` (or None), and implement `_read`.
    Those that know the clouds also set `cloud_source` (e.g. "MSK_CLDPRB", "SCL") and implement
    `_read_cloud`; `keep_cloudy` says whether `read` keeps reflectance under clouds.
    """

    dates: np.ndarray
    band_names: list[str]
    grid: Grid
    layout: str
    tile: str | None = None
    cloud_source: str | None = None
    keep_cloudy: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.dates), len(self.band_names), self.grid.height, self.grid.width

    def read(self, window: Window | None = None, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read reflectance and validity.

        Args:
            window: pixel window of the cube's grid (None = the whole cube; avoid on big tiles).
            times: indices into `dates` to read (None = all).
        Returns:
            values (t, C, h, w) float32 reflectance 0-1 (0 where invalid), valid (t, h, w) bool.
        """
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        times = np.arange(len(self.dates)) if times is None else np.asarray(times)
        return self._read(window, times)

    def read_valid(self, window: Window | None = None, times: np.ndarray | None = None) -> np.ndarray:
        """Validity only (t, h, w) bool; readers override it when the mask is cheaper than the bands."""
        return self.read(window, times)[1]

    def read_cloud(self, window: Window | None = None, times: np.ndarray | None = None) -> np.ndarray:
        """Cloud level (t, h, w) uint8, 0 (clear) to 31 (surely cloudy), of the observation `read` keeps
        (the first clear one of the day, else the first with data, else the day's first acquisition).

        Raises ConfigError on a cube without cloud information (`cloud_source` None).
        """
        self.require_clouds("cloud levels need")
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        times = np.arange(len(self.dates)) if times is None else np.asarray(times)
        return self._read_cloud(window, times)

    def require_clouds(self, what: str) -> None:
        """Raise a one-line ConfigError, starting with `what`, when the cube knows nothing of clouds."""
        if self.cloud_source is None:
            raise ConfigError(f"{what} cloud information: {getattr(self, 'source', self.layout)} ({self.layout} "
                              "layout) has no cloud mask, SCL or cloud probability; use products that have one")

    def read_with_cloud(self, window: Window | None = None,
                        times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """values (t, C, h, w), valid (t, h, w) and cloud level (t, h, w) uint8 of the same observations."""
        return (*self.read(window, times), self.read_cloud(window, times))

    def _read_cloud(self, window: Window, times: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @abstractmethod
    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...

    def windows(self, block: int = 512) -> Iterator[Window]:
        """Row-major blocks of at most block x block pixels covering the grid."""
        for row in range(0, self.grid.height, block):
            for col in range(0, self.grid.width, block):
                yield Window(col, row, min(block, self.grid.width - col), min(block, self.grid.height - row))

    def cloud_fractions(self, max_pixels: int = 512 * 512) -> np.ndarray:
        """(T,) fraction of invalid pixels per date, from the mask read on a subsample of rows."""
        step = max(1, int(np.ceil(self.grid.height * self.grid.width / max_pixels)))
        rows = range(0, self.grid.height, step)
        invalid = np.zeros(len(self.dates))
        for row in rows:
            valid = self.read_valid(Window(0, row, self.grid.width, 1))
            invalid += (~valid).reshape(len(self.dates), -1).mean(axis=1)
        return invalid / max(1, len(rows))

    def describe(self) -> dict:
        """A plain summary for `sits info` and logs."""
        return {
            "layout": self.layout,
            "tile": self.tile,
            "crs": self.grid.crs.to_string() if self.grid.crs else None,
            "width": self.grid.width,
            "height": self.grid.height,
            "resolution": abs(self.grid.transform.a),
            "bounds": list(self.grid.bounds),
            "bands": list(self.band_names),
            "dates": [iso(d) for d in self.dates],
        }
