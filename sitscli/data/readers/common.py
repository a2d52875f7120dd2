"""What every file-per-band layout shares: band names, the acquisition record, the open-file pool,
cloud levels and the cube that reads acquisitions by windows onto one 10 m grid.

A layout module (safe, theia, cogs, bandfiles) only scans its folder into `Acquisition`s; reading,
resampling, masking, same-day merging and checks live here once.

Cloud levels run from 0 (clear) to 31 (surely cloudy), one per observation beside `valid`, for
models that learn from cloudy observations. Sen2Cor's cloud probability (MSK_CLDPRB, 0-100 %) maps
to round(p * 31 / 100). Where a product has no probability the level is a documented fallback
from its classes, on the same scale (see `SCL_CLOUD_LEVEL`, `CLM_CLOUD_LEVEL`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window, from_bounds

from sitscli.core.dates import iso
from sitscli.core.errors import DataContentError, DataFormatError, InputNotFoundError
from sitscli.core.io import is_remote
from sitscli.data.cube import Cube, Grid

# The 10 bands used by default: the 60 m atmospheric bands B01 and B09 are left out, as in
# SITS-BERT (Yuan & Lin 2021) and TimeSen2Crop (B2 B3 B4 B5 B6 B7 B8(A) B11 B12).
DEFAULT_S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

# STAC common names (eo extension) and Earth Search v1 asset keys of the Sentinel-2 MSI bands.
COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12", "scl": "SCL",
}

# Scene classification classes (Sen2Cor): 4 vegetation, 5 not vegetated, 6 water, 7 unclassified.
DEFAULT_VALID_SCL = (4, 5, 6, 7)

CLOUD_LEVELS = 31  # the most cloudy level: levels fit in 5 bits


def _scl_cloud_levels() -> np.ndarray:
    """SCL class -> cloud level. Sen2Cor's medium-probability class (8) covers probabilities of about
    35-65 % and the high one (9) above, hence 20 (~65 %) and 31; thin cirrus (10) is half-way, 16;
    cloud shadow (3) is no cloud but a degraded observation, 10. Clear, snow, water, dark and
    defective pixels are 0: they are not clouds (the valid mask still drops them by default)."""
    table = np.zeros(256, np.uint8)
    table[3], table[8], table[9], table[10] = 10, 20, CLOUD_LEVELS, 16
    return table


def _clm_cloud_levels() -> np.ndarray:
    """MAJA CLM byte -> cloud level, on the SCL fallback's scale. Bits (Theia L2A format): 0 clouds or
    shadows (summary), 1 clouds except the thinnest, 2 mono-temporal clouds, 3 multi-temporal clouds,
    4 thinnest clouds, 5 shadows of detected clouds, 6 shadows of clouds outside the image, 7 high
    clouds (1.38 um). Clouds (1-3) -> 31, else thin or high clouds only (4, 7) -> 16 like SCL cirrus,
    else shadows only (5, 6) -> 10; any other set bit -> 31."""
    values = np.arange(256)
    levels = np.where(values & 0b1110, CLOUD_LEVELS,
                      np.where(values & 0b10010000, 16, np.where(values & 0b1100000, 10,
                                                                  np.where(values, CLOUD_LEVELS, 0))))
    return levels.astype(np.uint8)


SCL_CLOUD_LEVEL = _scl_cloud_levels()
CLM_CLOUD_LEVEL = _clm_cloud_levels()
# What `cloud_source` calls each kind of cloud raster.
CLOUD_SOURCE_NAMES = {"probability": "MSK_CLDPRB", "scl": "SCL", "clm_bits": "CLM", "binary": "mask"}


def cloud_level(data: np.ndarray, kind: str) -> np.ndarray:
    """Cloud level 0-31 (uint8, same shape) of a cloud raster's values.

    kind: 'probability' (0-100 %), 'scl' (Sen2Cor classes), 'clm_bits' (MAJA CLM) or 'binary'
    (any non-zero value is a cloud: 31).
    """
    if kind == "probability":
        return np.rint(np.clip(data.astype(np.float64), 0, 100) * CLOUD_LEVELS / 100).astype(np.uint8)
    if kind == "binary":
        return np.where(data != 0, CLOUD_LEVELS, 0).astype(np.uint8)
    table = SCL_CLOUD_LEVEL if kind == "scl" else CLM_CLOUD_LEVEL
    return table[np.clip(data, 0, 255).astype(np.intp)]


MGRS_TILE = re.compile(r"(?<![0-9A-Z])T?(\d{2}[C-X][A-Z]{2})(?![0-9A-Z])")

NAME_TIMESTAMP = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?:T?(\d{6}))?(?!\d)")

_BAND_CODE = re.compile(r"B0*(\d{1,2})(A?)", re.IGNORECASE)


def canonical_band(name: str) -> str:
    """ESA band code for any common spelling: 'B2', 'b02', 'blue' -> 'B02'; 'B8a', 'nir08' -> 'B8A'.

    Names that are not Sentinel-2 bands (e.g. 'ndvi') come back upper-cased.
    """
    text = name.strip()
    if text.lower() in COMMON_NAMES:
        return COMMON_NAMES[text.lower()]
    code = _BAND_CODE.fullmatch(text)
    if code:
        number, narrow = int(code[1]), code[2].upper()
        return f"B{number}A" if narrow else f"B{number:02d}"
    return text.upper()


def date_in_name(*texts: str) -> tuple[int, str] | None:
    """(days since 1970-01-01, 'YYYYMMDDTHHMMSS' or 'YYYYMMDD') of the first calendar date written
    YYYYMMDD (optionally followed by [T]HHMMSS) in the first of `texts` that holds one, else None.
    Eight digits that are no date ('12345678') are skipped."""
    for text in texts:
        for match in NAME_TIMESTAMP.finditer(text):
            year, month, day, time = match.groups()
            try:
                when = dt.date(int(year), int(month), int(day))
            except ValueError:
                continue
            if 1950 <= when.year <= 2100:
                return (when - dt.date(1970, 1, 1)).days, f"{year}{month}{day}" + (f"T{time}" if time else "")
    return None


def normalise_tile(tile: str | None) -> str | None:
    """'T31TCJ' or '31tcj' -> '31TCJ' (MGRS tiles are kept without the ESA 'T' prefix)."""
    if tile is None:
        return None
    tile = tile.strip().upper()
    return tile[1:] if len(tile) == 6 and tile[0] == "T" else tile


@dataclass(frozen=True)
class BandFile:
    """One band of one acquisition: value = (DN + offset) * scale; `nodata` DN is no data (NaN always is)."""

    path: str
    scale: float = 1e-4
    offset: float = 0.0
    nodata: float | None = None
    index: int = 1


@dataclass(frozen=True)
class MaskFile:
    """A per-acquisition mask raster: valid where its value is in `valid_values`, or where it is 0 if None."""

    path: str
    valid_values: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CloudFile:
    """A per-acquisition raster that grades clouds; `kind` is one of `cloud_level`'s kinds."""

    path: str
    kind: str


@dataclass(frozen=True, eq=False)
class Acquisition:
    """One product (or granule) of one tile at one time.

    `stamp` orders acquisitions of the same day (acquisition time, then product name); `reference`
    is a file on the product's 10 m grid, opened once at open time for its CRS and grid; `cloud`
    grades its clouds (None when the product says nothing about clouds).
    """

    date: int
    stamp: str
    product: str
    tile: str | None
    bands: dict[str, BandFile]
    reference: str
    masks: tuple[MaskFile, ...] = field(default=())
    cloud: CloudFile | None = None


def open_raster(path: str) -> rasterio.DatasetReader:
    """Open a raster, turning GDAL failures into one line that names the file."""
    if not path.startswith("/vsi") and not os.path.exists(path):
        raise InputNotFoundError(f"raster not found: {path} (was the product moved or partly deleted?)")
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise corrupt(path, exc) from exc


def corrupt(path: str, exc: Exception) -> DataFormatError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_remote(path):
        return DataFormatError(f"cannot read remote raster {path}: {reason} (check the URL, the network and the "
                               "credentials, e.g. AWS_* variables for /vsis3/; failed requests were retried "
                               "GDAL_HTTP_MAX_RETRY times)")
    return DataFormatError(f"cannot read raster {path}: {reason} (corrupt or truncated file: download it again)")


class DatasetPool:
    """Open datasets kept for re-use, at most `max_open` at once (least recently used closed first).

    Opening and parsing headers once per file, not once per window, is what keeps windowed reading of
    many dates cheap; the bound keeps the number of file handles below the system limit. The pool is
    per process: after a fork (DataLoader workers) or unpickling it starts empty.
    """

    def __init__(self, max_open: int = 128):
        self.max_open = max_open
        self._open: OrderedDict[str, rasterio.DatasetReader] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str) -> rasterio.DatasetReader:
        if self._pid != os.getpid():  # handles inherited through fork are not ours to share
            self._open = OrderedDict()
            self._pid = os.getpid()
        dataset = self._open.pop(path, None)
        if dataset is None:
            dataset = open_raster(path)
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[path] = dataset
        return dataset

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])


def read_on_grid(dataset, index: int, bounds: tuple[float, float, float, float], shape: tuple[int, int],
                 resampling: Resampling) -> np.ma.MaskedArray | np.ndarray:
    """Band `index` of `dataset` over `bounds` (same CRS), resampled to `shape` (h, w).

    The window on the file may be fractional (a 10 m window on a 20 m band); GDAL resamples it
    exactly. Parts outside the file come back masked.
    """
    window = from_bounds(*bounds, transform=dataset.transform)
    # from_bounds carries float noise (0.49999999997); snap to a micro-pixel so aligned grids read exactly.
    window = Window(*(round(float(v), 6) for v in (window.col_off, window.row_off, window.width, window.height)))
    inside = (window.col_off >= 0 and window.row_off >= 0 and window.col_off + window.width <= dataset.width
              and window.row_off + window.height <= dataset.height)
    try:
        if inside:
            return dataset.read(index, window=window, out_shape=shape, resampling=resampling)
        return dataset.read(index, window=window, out_shape=shape, resampling=resampling, boundless=True,
                            masked=True)
    except RasterioError as exc:
        raise corrupt(dataset.name, exc) from exc


def window_bounds(window: Window, grid: Grid) -> tuple[float, float, float, float]:
    return rasterio.windows.bounds(window, grid.transform)


class AcquisitionCube(Cube):
    """A cube over acquisitions stored as one file per band (SAFE, Theia, COG folders, per-date files).

    Acquisitions of the same day (two granules of one orbit, or two passes) are merged into one date:
    per pixel the first valid observation in `stamp` order is kept, else (for `keep_cloudy` and the
    cloud level) the first one with data, so the result does not depend on the order of files on disk.
    With `keep_cloudy`, `read` returns the reflectance under clouds too (`valid` stays False there);
    only no-data stays 0.
    """

    def __init__(self, acquisitions: Sequence[Acquisition], band_names: Sequence[str], *, layout: str,
                 source: Path, resampling: Resampling = Resampling.nearest, max_open: int = 128,
                 keep_cloudy: bool = False):
        self.layout = layout
        self.source = source
        self.band_names = list(band_names)
        self.keep_cloudy = keep_cloudy
        kinds = {a.cloud.kind for a in acquisitions if a.cloud is not None}
        graded = all(a.cloud is not None for a in acquisitions)
        self.cloud_source = "+".join(sorted(CLOUD_SOURCE_NAMES[k] for k in kinds)) if graded and kinds else None
        # Nearest by default: a 20 m pixel becomes 2 x 2 identical 10 m pixels, exactly the measured
        # values, and a window reads the same as the same pixels of a whole-tile read (no seams).
        self.resampling = resampling
        self._pool = DatasetPool(max_open)
        by_day: dict[int, list[Acquisition]] = {}
        for acq in sorted(acquisitions, key=lambda a: (a.date, a.stamp, a.product)):
            by_day.setdefault(acq.date, []).append(acq)
        self.dates = np.array(sorted(by_day), dtype=np.int32)
        self._slots = [by_day[d] for d in self.dates]
        tiles = {a.tile for a in acquisitions}
        self.tile = tiles.pop() if len(tiles) == 1 else None
        self.grid = self._reference_grid()

    def _reference_grid(self) -> Grid:
        """The 10 m grid of the first acquisition; every other one must share its CRS."""
        grids = {}
        for slot in self._slots:
            for acq in slot:
                ds = self._pool.get(acq.reference)
                grids.setdefault(ds.crs.to_string() if ds.crs else "no CRS", (acq, ds))
        if len(grids) > 1:
            listing = "; ".join(f"{crs} ({acq.product})" for crs, (acq, _) in grids.items())
            raise DataFormatError(f"{self.source} mixes coordinate systems: {listing} "
                                  "(put each CRS in a separate folder, or pick one tile with --tile)")
        crs, (_, ds) = grids.popitem()
        if ds.crs is None:
            raise DataFormatError(f"{ds.name} has no coordinate reference system (georeference the file)")
        return Grid(ds.crs, ds.transform, ds.height, ds.width)

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, valid, _ = self._merge(window, times, cloud=False)
        return values, valid

    def _read_cloud(self, window: Window, times: np.ndarray) -> np.ndarray:
        return self._merge(window, times, values=False)[2]

    def read_with_cloud(self, window: Window | None = None,
                        times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """values, valid and cloud level in one pass over the files (see `Cube.read_with_cloud`)."""
        self.require_clouds("cloud levels need")
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        times = np.arange(len(self.dates)) if times is None else np.asarray(times)
        return self._merge(window, times)

    def _merge(self, window: Window, times: np.ndarray, *, values: bool = True,
               cloud: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Merge each date's acquisitions: values (t, C, h, w), valid (t, h, w), cloud (t, h, w) uint8.

        A pixel takes the first valid acquisition, else (keep_cloudy and cloud level) the first with
        data; a pixel without data anywhere takes the cloud level of the day's first acquisition.
        Without `values`, a date of one acquisition reads its cloud raster only.
        """
        bounds = window_bounds(window, self.grid)
        h, w = int(window.height), int(window.width)
        out = np.zeros((len(times), len(self.band_names), h, w), np.float32) if values else None
        valid = np.zeros((len(times), h, w), bool)
        levels = np.zeros((len(times), h, w), np.uint8) if cloud else None
        for i, t in enumerate(times):
            slot = self._slots[t]
            if not values and len(slot) == 1:
                levels[i] = self._read_cloud_level(slot[0], bounds, (h, w))
                continue
            filled = np.zeros((h, w), bool)  # pixels holding an observation (valid or, so far, cloudy)
            for acq in slot:
                acq_values, acq_valid, acq_data = self._read_acquisition(acq, bounds, (h, w))
                take = acq_valid & ~valid[i]  # (h, w): pixels this acquisition fills first
                if self.keep_cloudy or cloud:
                    take |= acq_data & ~filled
                if values:
                    keep = take if self.keep_cloudy else take & acq_valid
                    out[i][:, keep] = acq_values[:, keep]
                if cloud and acq is slot[0]:  # everywhere: later acquisitions overwrite the pixels they take
                    levels[i] = self._read_cloud_level(acq, bounds, (h, w))
                elif cloud and take.any():
                    levels[i][take] = self._read_cloud_level(acq, bounds, (h, w))[take]
                valid[i] |= take & acq_valid
                filled |= take
        return out, valid, levels

    def _read_cloud_level(self, acq: Acquisition, bounds, shape) -> np.ndarray:
        """(h, w) uint8 cloud level of one acquisition (0 outside its raster)."""
        ds = self._pool.get(acq.cloud.path)
        data = read_on_grid(ds, 1, bounds, shape, Resampling.nearest)  # 20 m probability -> 10 m, unblended
        return np.where(np.ma.getmaskarray(data), 0, cloud_level(np.ma.getdata(data), acq.cloud.kind)).astype(np.uint8)

    def _read_masks(self, acq: Acquisition, bounds, shape) -> np.ndarray:
        """(h, w) bool: clear according to the acquisition's mask files (all True without masks)."""
        clear = np.ones(shape, bool)
        for mask in acq.masks:
            ds = self._pool.get(mask.path)
            data = read_on_grid(ds, 1, bounds, shape, Resampling.nearest)  # classes: never interpolate
            outside = np.ma.getmaskarray(data)
            data = np.ma.getdata(data)
            clear &= ~outside & (data == 0 if mask.valid_values is None else np.isin(data, mask.valid_values))
        return clear

    def _read_acquisition(self, acq: Acquisition, bounds, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """values (C, h, w) float32, valid (h, w) bool (clear and with data), data (h, w) bool (with
        data in every band) for one acquisition; values are 0 where not valid, or where without data
        when the cube keeps cloudy observations."""
        data_ok = np.ones(shape, bool)
        values = np.empty((len(self.band_names), *shape), np.float32)
        for c, name in enumerate(self.band_names):
            band = acq.bands[name]
            ds = self._pool.get(band.path)
            data = read_on_grid(ds, band.index, bounds, shape, self.resampling)
            nodata = band.nodata if band.nodata is not None else ds.nodata
            data_ok &= ~np.ma.getmaskarray(data)
            data = np.ma.getdata(data).astype(np.float32)
            data_ok &= np.isfinite(data)
            if nodata is not None and not math.isnan(nodata):
                data_ok &= data != nodata
            values[c] = (data + band.offset) * band.scale
        valid = self._read_masks(acq, bounds, shape) & data_ok
        values[:, ~(data_ok if self.keep_cloudy else valid)] = 0
        return values, valid, data_ok

    def coarse_valid(self, max_size: int = 512) -> np.ndarray:
        """(T, h, w) bool validity on a decimated view of the whole grid (h, w <= max_size).

        Reads only the mask files (or, without masks, the first band's no-data), decimated by GDAL
        (JPEG2000 resolution levels, GeoTIFF overviews), so a whole tile is summarised in seconds.
        """
        step = max(1, math.ceil(max(self.grid.height, self.grid.width) / max_size))
        shape = (max(1, self.grid.height // step), max(1, self.grid.width // step))
        bounds = self.grid.bounds
        out = np.zeros((len(self.dates), *shape), bool)
        for t, slot in enumerate(self._slots):
            for acq in slot:
                if acq.masks:
                    out[t] |= self._read_masks(acq, bounds, shape)
                else:
                    band = acq.bands[self.band_names[0]]
                    ds = self._pool.get(band.path)
                    data = read_on_grid(ds, band.index, bounds, shape, Resampling.nearest)
                    nodata = band.nodata if band.nodata is not None else ds.nodata
                    ok = ~np.ma.getmaskarray(data) & np.isfinite(np.ma.getdata(data).astype(np.float32))
                    if nodata is not None and not math.isnan(nodata):
                        ok &= np.ma.getdata(data) != nodata
                    out[t] |= ok
        return out

    def cloud_fractions(self, max_pixels: int = 512 * 512) -> np.ndarray:
        """(T,) fraction of masked (cloudy or no-data) pixels per date, from the decimated masks."""
        return 1.0 - self.coarse_valid(int(math.sqrt(max_pixels))).reshape(len(self.dates), -1).mean(axis=1)

    def describe(self) -> dict:
        summary = super().describe()
        summary["products"] = {iso(d): [a.product for a in slot] for d, slot in zip(self.dates, self._slots)}
        return summary


def require_bands(acquisitions: Sequence[Acquisition], bands: Sequence[str]) -> None:
    """Every acquisition must hold every requested band; name the first product that does not."""
    for acq in acquisitions:
        missing = [b for b in bands if b not in acq.bands]
        if missing:
            present = ", ".join(sorted(acq.bands)) or "none"
            raise DataFormatError(f"product {acq.product} has no band {', '.join(missing)} (bands there: {present}); "
                                  "remove the product or choose --bands it has")


def check_not_empty(cube: AcquisitionCube | Cube) -> None:
    """Raise when no date has a single clear pixel (checked on the decimated masks)."""
    if not cube.coarse_valid().any():
        raise DataContentError(f"every date of {cube.source} is cloudy or without data ({len(cube.dates)} dates "
                               f"{iso(cube.dates[0])} to {iso(cube.dates[-1])}): widen the date range or the area, "
                               "or relax the mask (--valid-scl)")


def range_text(first: int, last: int) -> str:
    """'2020-01-01 to 2020-12-31' for a date range whose open ends are the int32 extremes ('...')."""
    bound = np.iinfo(np.int32)
    return f"{iso(first) if first > bound.min else '...'} to {iso(last) if last < bound.max else '...'}"


def in_date_range(items: list, date_range: tuple[int, int] | None, path: Path, what: str = "acquisition") -> list:
    """The items (anything with an int `date`) inside `date_range` (inclusive); a one-line error naming
    both periods when none is."""
    if not items:
        raise DataContentError(f"{path} holds no {what}")
    if date_range is None:
        return items
    first, last = date_range
    kept = [a for a in items if first <= a.date <= last]
    if not kept:
        dates = sorted(a.date for a in items)
        raise DataContentError(f"no {what} of {path} in the date range {range_text(first, last)} "
                               f"(it holds {iso(dates[0])} to {iso(dates[-1])}): change the date range")
    return kept
