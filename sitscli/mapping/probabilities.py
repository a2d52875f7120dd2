"""Class-probability rasters (as `sits predict-map --probabilities` writes them) read back by windows.

Such a raster has one band per class, named "probability CLASS", holding the class probability
either as float32 (nodata NaN) or as integers with a GDAL scale (predict-map's default: uint8
percent, scale 0.01, nodata 255). `ProbabilityCube` opens one, checks that it is one, and serves it
as a one-date `Cube` whose bands are the classes, so that `sitscli.mapping.predict.write_map` can
turn it into new rasters block by block (resumable, atomic) with `Passthrough` as the classifier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from sitscli.core.errors import DataFormatError
from sitscli.data.cube import Cube, Grid

DESCRIPTION_PREFIX = "probability "


class ProbabilityCube(Cube):
    """A class-probability GeoTIFF as a cube of one date and K bands (one per class).

    Attributes:
        path: the raster.
        class_names: K names, from the band descriptions "probability NAME".
        dtype, nodata, scale: how the raster stores probabilities (scale None for floats).
        tags: the raster's dataset tags (provenance written by predict-map).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError:
            raise DataFormatError(f"{self.path} is not a raster GDAL can read: give the probability GeoTIFF "
                                  "written by sits predict-map --probabilities") from None
        with ds:
            self.class_names = _class_names(self.path, ds)
            self.dtype, self.nodata = ds.dtypes[0], ds.nodata
            self.scale = _scale(self.path, ds)
            self.tags = ds.tags()
            self.grid = Grid(ds.crs, ds.transform, ds.height, ds.width)
        self.dates = np.zeros(1, dtype=np.int32)   # one "date": the probabilities hold no time axis
        self.band_names = list(self.class_names)
        self.layout, self.tile = "probabilities", None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_probabilities(self, window: Window) -> np.ndarray:
        """Probabilities of `window` -> (K, h, w) float32 0-1, NaN at nodata pixels.

        Parts of the window outside the raster are NaN too, so a window grown by a halo around a
        block at the raster's edge reads like the same window of a bigger raster with no data there.
        """
        full = Window(0, 0, self.grid.width, self.grid.height)
        out = np.full((self.num_classes, int(window.height), int(window.width)), np.nan, dtype=np.float32)
        try:
            inside = window.intersection(full)
        except rasterio.errors.WindowError:  # no overlap at all
            return out
        with rasterio.open(self.path) as ds:
            raw = ds.read(window=inside)                                      # (K, h', w')
        values = raw.astype(np.float32) * np.float32(self.scale or 1.0)
        missing = ~np.isfinite(values).all(axis=0)
        if self.nodata is not None and not np.isnan(self.nodata):
            missing |= (raw == self.nodata).any(axis=0)
        values[:, missing] = np.nan
        row, col = int(inside.row_off - window.row_off), int(inside.col_off - window.col_off)
        out[:, row:row + values.shape[1], col:col + values.shape[2]] = values
        return out

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = self.read_probabilities(window)
        valid = ~np.isnan(probs[0])
        return np.nan_to_num(probs)[None], valid[None]

    def count_valid(self, block: int = 512) -> int:
        """Pixels that hold probabilities (read from the first band only, block by block)."""
        total = 0
        with rasterio.open(self.path) as ds:
            for window in self.windows(block):
                band = ds.read(1, window=window)
                ok = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
                if self.nodata is not None and not np.isnan(self.nodata):
                    ok &= band != self.nodata
                total += int(ok.sum())
        return total

    def class_colors(self) -> list[str] | None:
        """Class colours carried by the raster's tags (CLASS_COLORS), when it carries them."""
        colors = json.loads(self.tags.get("CLASS_COLORS", "null"))
        return colors if isinstance(colors, list) and len(colors) == self.num_classes else None

    def class_codes(self) -> list[int] | None:
        """The source class codes a class map of these classes stores (CLASS_CODES tag), when carried."""
        codes = json.loads(self.tags.get("CLASS_CODES", "null"))
        return codes if isinstance(codes, list) and len(codes) == self.num_classes else None

    def identity(self) -> dict:
        """What identifies the input for a resumed job: its path, size and modification time."""
        stat = os.stat(self.path)
        return {"input": str(self.path.resolve()), "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}


class Passthrough:
    """The classifier of `write_map` for a `ProbabilityCube`: the cube's bands are the probabilities."""

    def predict_window(self, values: np.ndarray, valid: np.ndarray, dates: np.ndarray, xy: np.ndarray,
                       window=None) -> np.ndarray:
        """values (1, K, h, w), valid (1, h, w) -> probabilities (K, h, w) float32, NaN where not valid."""
        return np.where(valid[0], values[0], np.nan).astype(np.float32)


def _class_names(path: Path, ds) -> list[str]:
    descriptions = list(ds.descriptions)
    if ds.count < 2 or not all(d and d.startswith(DESCRIPTION_PREFIX) for d in descriptions):
        raise DataFormatError(f"{path} is not a class-probability raster (one band per class named "
                              "'probability CLASS'): give the file written by sits predict-map --probabilities")
    return [d.removeprefix(DESCRIPTION_PREFIX) for d in descriptions]


def _scale(path: Path, ds) -> float | None:
    """GDAL scale of integer probabilities (e.g. 0.01 for percent); None for floats."""
    if np.dtype(ds.dtypes[0]).kind == "f":
        return None
    scale = ds.scales[0]
    if not scale or scale >= 1 or len(set(ds.scales)) > 1:
        raise DataFormatError(f"{path} stores integer probabilities without a scale below 1 (e.g. 0.01 for percent): "
                              "write it with sits predict-map --probabilities, or as float32 0-1")
    return float(scale)
