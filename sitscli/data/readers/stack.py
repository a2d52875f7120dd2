"""One multiband GeoTIFF holding T x C bands, date-major (date1.B02, date1.B03, ..., date2.B02, ...).

Dates and band names come from the band descriptions ('2021-10-03 B02', GEE's
'20211003T105029_20211003T105543_T31TCJ_B2': a date and, last, a band), else from a dates file (one
ISO date a line: `dates_file`, or a sidecar `STACK.dates.txt` / `STACK_dates.txt` / `dates.txt`) and
`bands`. A per-date band named SCL, CLM or MASK is a mask, not a feature. Values: the GeoTIFF's
scale/offset when it declares them, else integer stacks are reflectance x 10000 and float stacks
are used as stored; the file's no-data and NaN are invalid. The mask band also gives the cloud
level: SCL classes as in `common.cloud_level`, CLM/MASK 31 where non-zero; a stack without mask band
has no cloud information.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from sitscli.core.dates import iso, parse_date
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.core.io import is_remote
from sitscli.data.cube import Cube, Grid
from sitscli.data.readers.common import DatasetPool, canonical_band, cloud_level, read_on_grid, window_bounds

SUFFIXES = (".tif", ".tiff", ".vrt")
DESCRIPTION_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2}|\d{8})(?:T\d{6})?(?!\d)")
MASK_BANDS = {"SCL", "CLM", "MASK"}


def is_stack(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _parse_description(text: str | None) -> tuple[int, str] | None:
    """'2021-10-03 B02' -> (days, 'B02'); None when the description names no date and band."""
    if not text:
        return None
    date = DESCRIPTION_DATE.search(text)
    rest = [t for t in re.split(r"[\s_:|/]+", text[:date.start()] + " " + text[date.end():]) if t] if date else []
    if not date or not rest:
        return None
    return parse_date(date[1].replace("-", "")), canonical_band(rest[-1])


def _sidecar(path: Path) -> Path | None:
    for candidate in (path.with_name(path.name + ".dates.txt"), path.with_suffix(".dates.txt"),
                      path.with_name(path.stem + "_dates.txt"), path.with_name("dates.txt")):
        if candidate.is_file():
            return candidate
    return None


def read_dates_file(path: Path) -> list[int]:
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [parse_date(line[:10].replace("-", ""), f"date in {path}") for line in lines]


class StackCube(Cube):
    """A cube over one multiband GeoTIFF; `layers[t]` holds the 1-based band indexes of each feature
    band at date t (C,) and `mask_layers[t]` the index of its mask band (or 0)."""

    layout = "stack"

    def __init__(self, path: Path, *, dates: list[int], band_names: list[str], layers: np.ndarray,
                 mask_layers: np.ndarray, valid_scl: tuple[int, ...], mask_kind: str | None, max_open: int = 8,
                 keep_cloudy: bool = False):
        self.source = path
        self.keep_cloudy = keep_cloudy
        self.cloud_source = None if mask_kind is None else ("SCL" if mask_kind == "SCL" else "mask")
        self._pool = DatasetPool(max_open)
        ds = self._pool.get(str(path))
        if ds.crs is None:
            raise DataFormatError(f"{path} has no coordinate reference system (georeference the stack)")
        self.grid = Grid(ds.crs, ds.transform, ds.height, ds.width)
        self.band_names = band_names
        self.valid_scl = tuple(valid_scl)
        self.mask_kind = mask_kind
        self.tile = None
        self._nodata = ds.nodata
        self._scale, self._offset = self._scaling(ds)
        # Same-day layers merge like the file-per-band layouts: first valid layer (file order) wins.
        order = np.argsort(np.asarray(dates), kind="stable")
        self.dates = np.array(sorted(set(dates)), dtype=np.int32)
        self._slots = [[(layers[i], mask_layers[i]) for i in order if dates[i] == d] for d in self.dates]

    @staticmethod
    def _scaling(ds) -> tuple[np.ndarray, np.ndarray]:
        scales, offsets = np.asarray(ds.scales, np.float64), np.asarray(ds.offsets, np.float64)
        if np.any(scales != 1) or np.any(offsets != 0):
            return scales, offsets
        integer = np.issubdtype(np.dtype(ds.dtypes[0]), np.integer)
        return np.full(ds.count, 1e-4 if integer else 1.0), np.zeros(ds.count)

    def _read_layers(self, layers, mask_layer, bounds, shape, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """values (C, h, w), valid (h, w) and data (h, w) (no-data in no band) of one date's layers; values
        are 0 where not valid, or only where without data when the cube keeps cloudy observations."""
        data_ok = np.ones(shape, bool)
        values = np.empty((len(layers), *shape), np.float32)
        for c, index in enumerate(layers):
            data = read_on_grid(ds, int(index), bounds, shape, Resampling.nearest)
            data_ok &= ~np.ma.getmaskarray(data)
            data = np.ma.getdata(data).astype(np.float64)
            data_ok &= np.isfinite(data)
            if self._nodata is not None and not math.isnan(self._nodata):
                data_ok &= data != self._nodata
            values[c] = data * self._scale[index - 1] + self._offset[index - 1]
        valid = data_ok.copy()
        if mask_layer:
            mask = np.ma.getdata(read_on_grid(ds, int(mask_layer), bounds, shape, Resampling.nearest))
            valid &= np.isin(mask, self.valid_scl) if self.mask_kind == "SCL" else mask == 0
        values[:, ~(data_ok if self.keep_cloudy else valid)] = 0
        return values, valid, data_ok

    def _read(self, window, times):
        ds = self._pool.get(str(self.source))
        bounds = window_bounds(window, self.grid)
        shape = (int(window.height), int(window.width))
        values = np.zeros((len(times), len(self.band_names), *shape), np.float32)
        valid = np.zeros((len(times), *shape), bool)
        for i, t in enumerate(times):
            filled = np.zeros(shape, bool)
            for layers, mask_layer in self._slots[t]:
                layer_values, layer_valid, layer_data = self._read_layers(layers, mask_layer, bounds, shape, ds)
                take = layer_valid & ~valid[i]  # first valid layer, else (keep_cloudy) first with data
                if self.keep_cloudy:
                    take |= layer_data & ~filled
                values[i][:, take] = layer_values[:, take]
                valid[i] |= take & layer_valid
                filled |= take
        return values, valid

    def _read_cloud(self, window, times) -> np.ndarray:
        """Cloud level of the layer `read` keeps: the first valid one, else the first with data, else the first."""
        ds = self._pool.get(str(self.source))
        bounds = window_bounds(window, self.grid)
        shape = (int(window.height), int(window.width))
        levels = np.zeros((len(times), *shape), np.uint8)
        kind = "scl" if self.mask_kind == "SCL" else "binary"
        for i, t in enumerate(times):
            slot = self._slots[t]
            valid, filled = np.zeros(shape, bool), np.zeros(shape, bool)
            for k, (layers, mask_layer) in enumerate(slot):
                level = cloud_level(np.ma.getdata(read_on_grid(ds, int(mask_layer), bounds, shape, Resampling.nearest)),
                                    kind)
                if k == 0:  # everywhere: later layers overwrite the pixels they take
                    levels[i] = level
                if len(slot) == 1:  # nothing to choose between: no need to read the bands
                    break
                _, layer_valid, layer_data = self._read_layers(layers, mask_layer, bounds, shape, ds)
                take = (layer_valid & ~valid) | (layer_data & ~filled)
                levels[i][take] = level[take]
                valid |= take & layer_valid
                filled |= take
        return levels

    def coarse_valid(self, max_size: int = 512) -> np.ndarray:
        """(T, h, w) bool validity on a decimated view (the mask band, else the first band's no-data)."""
        step = max(1, math.ceil(max(self.grid.height, self.grid.width) / max_size))
        shape = (max(1, self.grid.height // step), max(1, self.grid.width // step))
        ds = self._pool.get(str(self.source))
        out = np.zeros((len(self.dates), *shape), bool)
        for t, slot in enumerate(self._slots):
            for layers, mask_layer in slot:
                out[t] |= self._read_layers(layers[:1], mask_layer, self.grid.bounds, shape, ds)[1]
        return out

    def cloud_fractions(self, max_pixels: int = 512 * 512) -> np.ndarray:
        return 1.0 - self.coarse_valid(int(math.sqrt(max_pixels))).reshape(len(self.dates), -1).mean(axis=1)


def open_stack(path: Path | str, *, bands: list[str] | None, dates_file: Path | None, valid_scl: tuple[int, ...],
               mask: str | None = None, keep_cloudy: bool = False) -> StackCube:
    """Work out the (date, band) of every layer of `path` and return its cube."""
    pool = DatasetPool(1)
    ds = pool.get(str(path))
    count, descriptions = ds.count, list(ds.descriptions)
    pool.close()
    parsed = [_parse_description(d) for d in descriptions]
    dates_path = dates_file or (None if is_remote(path) else _sidecar(path))  # a remote folder is not listed
    if dates_file is None and all(parsed):
        layer_dates = [d for d, _ in parsed]
        layer_bands = [b for _, b in parsed]
    elif dates_path is not None:
        layer_dates, layer_bands = _layers_from_lists(path, count, read_dates_file(dates_path), bands, dates_path)
    else:
        raise DataFormatError(f"{path}: its band descriptions do not give dates and bands (e.g. '2021-10-03 B02'): "
                              "pass a dates file (one ISO date a line) and the band names")
    return _build(path, layer_dates, layer_bands, bands, valid_scl, mask, keep_cloudy)


def _layers_from_lists(path, count, dates, bands, dates_path) -> tuple[list[int], list[str]]:
    if bands is None:
        if count % len(dates):
            raise DataFormatError(f"{path} has {count} bands, not a multiple of the {len(dates)} dates in {dates_path}")
        raise ConfigError(f"{path} has {count} bands for {len(dates)} dates: pass the {count // len(dates)} band names "
                          "in file order (e.g. --bands B02,B03,...)")
    names = [canonical_band(b) for b in bands]
    if count % len(names):
        raise DataFormatError(f"{path} has {count} bands, not a multiple of the {len(names)} bands given "
                              f"({', '.join(names)}): check --bands")
    if count // len(names) != len(dates):
        raise DataFormatError(f"{path} has {count} bands = {count // len(names)} dates x {len(names)} bands, but "
                              f"{dates_path} lists {len(dates)} dates: fix the dates file or --bands")
    return [d for d in dates for _ in names], names * len(dates)


def _build(path, layer_dates, layer_bands, bands, valid_scl, mask, keep_cloudy) -> StackCube:
    """Group layers date-major into (T, C) indexes; the requested bands select and order C."""
    dates, per_date = [], []
    for i, (date, band) in enumerate(zip(layer_dates, layer_bands), start=1):
        if not dates or dates[-1] != date or band in per_date[-1]:
            dates.append(date)
            per_date.append({})
        per_date[-1][band] = i
    masks_here = {b for group in per_date for b in group if b in MASK_BANDS}
    mask_kind = None if (mask or "").lower() == "none" else (mask.upper() if mask else next(iter(sorted(masks_here)), None))
    features = [b for b in per_date[0] if b not in MASK_BANDS]
    wanted = [canonical_band(b) for b in bands] if bands else features
    for date, group in zip(dates, per_date):
        missing = [b for b in wanted if b not in group]
        if missing:
            raise DataFormatError(f"{path}: date {iso(date)} has no band {', '.join(missing)} (bands there: "
                                  f"{', '.join(group)}); every date must hold the same bands")
    layers = np.array([[group[b] for b in wanted] for group in per_date], dtype=np.int64)
    mask_layers = np.array([group.get(mask_kind, 0) if mask_kind else 0 for group in per_date], dtype=np.int64)
    return StackCube(path, dates=dates, band_names=wanted, layers=layers, mask_layers=mask_layers,
                     valid_scl=valid_scl, mask_kind=mask_kind, keep_cloudy=keep_cloudy)
