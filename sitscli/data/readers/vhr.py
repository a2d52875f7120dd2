"""One very-high-resolution image (aerial or satellite ortho) on a fine grid aligned with Sentinel-2.

Input: one ortho GeoTIFF (or JPEG2000), or a folder of ortho tiles (IGN BD ORTHO 0.2 m RGB+NIR,
SPOT 6/7 1.5 m pansharpened, any aerial ortho), searched recursively. Tiles are read window by
window: only the tiles under a window are touched and only their part under it is read; the mosaic
never exists in memory. Where tiles overlap, the first tile (by path) with data wins.

Values: uint8 / 255; uint16 / 10000 when a sample looks like reflectance x 10000 (99.9th percentile
<= 10000), else / 65535 (the choice is logged); int16 / 10000; floats as stored. No-data: the file's
no-data value or mask, its alpha band included (the alpha band is no feature).
Band names: the band descriptions, else `bands` (`--vhr-bands`), else by count: PAN; R, G, B;
R, G, B, NIR. With descriptions, `bands` selects and orders bands by name.

Grid: factor = round(grid_res / (resolution or native resolution)) (10 m / 0.5 m = 20), at least 1;
the image is resampled onto the fine grid aligned with the Sentinel-2 grid of resolution
grid_res / factor, so each Sentinel-2 pixel holds exactly factor x factor fine pixels: averaging
when that is coarser than the image, bilinear when finer, as stored when the image is on it.
Windows are given in Sentinel-2 pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from sitscli.core.dates import iso, parse_date
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import log
from sitscli.data.cube import Grid
from sitscli.data.readers.common import DatasetPool, corrupt, date_in_name, open_raster, window_bounds
from sitscli.data.readers.warp import fine_window, footprint, intersects, no_overlap, read_onto, refine

SUFFIXES = (".tif", ".tiff", ".jp2")
DEFAULT_NAMES = {1: ["PAN"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "NIR"]}
DATE_TAGS = ("ACQUISITION_DATE", "ACQUISITION_DATETIME", "DATE_ACQUISITION")
REFLECTANCE_MAX = 10000  # uint16 values at most this are read as reflectance x 10000


@dataclass(frozen=True)
class VhrTile:
    """One ortho file and its footprint (bounds in the Sentinel-2 grid's CRS)."""

    path: str
    footprint: tuple[float, float, float, float]


class VhrImage:
    """A very-high-resolution image read by Sentinel-2 windows onto the fine grid.

    `band_names`, `factor`, `grid` (the Sentinel-2 grid), `fine_grid` (grid_res / factor), `date`
    (int days since 1970-01-01, or None), `scale` (value = stored * scale). `read(window)`, window in
    Sentinel-2 pixels -> values (C, factor*h, factor*w) float32 0-1 (0 where invalid), valid
    (factor*h, factor*w) bool.
    """

    layout = "vhr"

    def __init__(self, tiles: list[VhrTile], indexes: list[int], band_names: list[str], grid: Grid, factor: int, *,
                 scale: float, resampling: Resampling, date: int | None, source: Path, max_open: int = 64):
        self.source = source
        self.grid = grid
        self.factor = factor
        self.fine_grid = refine(grid, factor)
        self.band_names = list(band_names)
        self.date = date
        self.scale = scale
        self.resampling = resampling
        self._tiles = tiles
        self._indexes = list(indexes)
        self._pool = DatasetPool(max_open)

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """values (C, factor*h, factor*w) float32 0-1, 0 where invalid; valid (factor*h, factor*w) bool."""
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        bounds = window_bounds(window, self.grid)
        fine = fine_window(window, self.factor)
        h, w = int(fine.height), int(fine.width)
        values = np.zeros((len(self.band_names), h, w), np.float32)
        valid = np.zeros((h, w), bool)
        for tile in self._tiles:
            if not intersects(tile.footprint, bounds):
                continue
            data = read_onto(self._pool.get(tile.path), self._indexes, self.fine_grid, fine, self.resampling)
            take = np.isfinite(data).all(axis=0) & ~valid
            values[:, take] = (data[:, take] * self.scale).astype(np.float32)
            valid |= take
            if valid.all():
                break
        return values, valid

    def describe(self) -> dict:
        return {"layout": self.layout, "tiles": len(self._tiles), "bands": list(self.band_names), "factor": self.factor,
                "fine_resolution": abs(self.fine_grid.transform.a), "scale": self.scale,
                "date": iso(self.date) if self.date is not None else None}


def open_vhr(path, grid: Grid, *, bands=None, resolution: float | None = None, max_open: int = 64) -> VhrImage:
    """Open an ortho image or a folder of ortho tiles as a lazily read image on a fine grid of `grid`.

    Args:
        path: one image file, or a folder of tiles (searched recursively); see the module docstring.
        grid: the Sentinel-2 10 m grid; the image is read by its windows.
        bands: band names: the file's bands in order when it has no descriptions, else those to read.
        resolution: the fine grid's target pixel size in grid units (default: the image's own).
        max_open: most tiles held open at once.
    """
    path = require_exists(path, "very-high-resolution image")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise DataFormatError(f"no image in {path}: give an ortho GeoTIFF or a folder of them (.tif, .tiff, .jp2)")
    if resolution is not None and not resolution > 0:
        raise ConfigError(f"VHR resolution {resolution!r}: give a pixel size > 0 in the grid's units (e.g. 0.5)")
    tiles, dates, first = [], [], None
    for file in files:
        with open_raster(str(file)) as ds:
            first = first or _header(ds)
            _same_as_first(ds, first)
            tiles.append(VhrTile(str(file), footprint(ds, grid)))
            dates.append(_date_of(file, path, ds.tags()))
    kept = [t for t in tiles if intersects(t.footprint, grid.bounds)]
    if not kept:
        with open_raster(tiles[0].path) as ds:
            raise no_overlap("very-high-resolution image", ds, grid)
    indexes, names = _bands(first, bands, files[0])
    native = (kept[0].footprint[2] - kept[0].footprint[0]) / first["width"]  # pixel size in grid units
    grid_res = abs(grid.transform.a)
    factor = max(1, round(grid_res / (resolution or native)))
    # Coarser fine pixels average the image's pixels under them; finer ones interpolate.
    resampling = Resampling.average if grid_res / factor > native * 1.001 else Resampling.bilinear
    with open_raster(kept[0].path) as ds:
        scale = _scale(ds, indexes)
    return VhrImage(kept, indexes, names, grid, factor, scale=scale, resampling=resampling,
                    date=_one_date(dates, path), source=path, max_open=max_open)


def _header(ds) -> dict:
    # A 4-band uint8 GeoTIFF written without PHOTOMETRIC is read by GDAL as RGBA: a band that has a
    # name of its own (an ortho's NIR) is data all the same; only an unnamed alpha band is a mask.
    data = [i for i, kind in enumerate(ds.colorinterp, start=1)
            if kind != ColorInterp.alpha or (ds.descriptions[i - 1] or "alpha").lower() != "alpha"]
    return {"name": ds.name, "crs": ds.crs, "dtype": ds.dtypes[0], "width": ds.width, "data": data,
            "descriptions": [ds.descriptions[i - 1] for i in data]}


def _same_as_first(ds, first: dict) -> None:
    if ds.crs != first["crs"] or ds.dtypes[0] != first["dtype"] or len(_header(ds)["data"]) != len(first["data"]):
        raise DataFormatError(f"tile {ds.name} differs from {first['name']} (CRS, data type or band count): "
                              "put tiles of one image only in the folder")


def _bands(first: dict, bands, file: Path) -> tuple[list[int], list[str]]:
    """(band indexes, band names) to read."""
    data, described = first["data"], first["descriptions"]
    wanted = [b.strip() for b in (bands.split(",") if isinstance(bands, str) else bands or []) if b.strip()]
    if all(described):
        if not wanted:
            return data, list(described)
        lookup = {d.lower(): i for d, i in zip(described, data)}
        missing = [b for b in wanted if b.lower() not in lookup]
        if missing:
            raise ConfigError(f"{file} has no band {', '.join(missing)} (bands there: {', '.join(described)}): "
                              "choose --vhr-bands among them")
        return [lookup[b.lower()] for b in wanted], wanted
    if wanted:
        if len(wanted) > len(data):
            raise DataFormatError(f"{len(wanted)} VHR bands asked ({', '.join(wanted)}) but {file} has {len(data)}: "
                                  "name only the bands it holds, in file order")
        return data[:len(wanted)], wanted
    if len(data) not in DEFAULT_NAMES:
        raise ConfigError(f"{file} has {len(data)} bands without descriptions: name them in file order with "
                          "--vhr-bands")
    return data, DEFAULT_NAMES[len(data)]


def _scale(ds, indexes: list[int]) -> float:
    """Multiplier to reflectance-like 0-1 values for the image's data type (uint16: from a sample)."""
    dtype = np.dtype(ds.dtypes[0])
    if dtype == np.uint8:
        return 1 / 255
    if dtype == np.int16:
        return 1e-4
    if dtype.kind == "f":
        return 1.0
    if dtype == np.uint16:
        try:
            side = 256  # a central window: a decimated read would touch every block of the tile
            window = Window(max(0, (ds.width - side) // 2), max(0, (ds.height - side) // 2), min(side, ds.width),
                            min(side, ds.height))
            sample = ds.read(indexes, window=window, masked=True)
        except RasterioError as exc:
            raise corrupt(ds.name, exc) from exc
        values = np.ma.compressed(sample)
        if values.size and np.percentile(values, 99.9) <= REFLECTANCE_MAX:
            log(f"{ds.name}: uint16 values up to {int(values.max())}: read as reflectance x 10000")
            return 1e-4
        log(f"{ds.name}: uint16 values beyond {REFLECTANCE_MAX}: read as 0-65535 digital numbers (/ 65535)")
        return 1 / 65535
    log(f"{ds.name}: {dtype} values divided by {np.iinfo(dtype).max}")
    return 1 / np.iinfo(dtype).max


def _date_of(file: Path, root: Path, tags: dict) -> int | None:
    folders = [p.name for p in file.relative_to(root).parents if p.name] if root.is_dir() else []
    named = date_in_name(file.name, *folders)
    if named:
        return named[0]
    for tag in DATE_TAGS:
        text = str(tags.get(tag, "")).strip()
        if re.match(r"\d{4}-\d{2}-\d{2}", text):
            return parse_date(text[:10], f"{tag} of {file}")
    return None


def _one_date(dates: list[int | None], path: Path) -> int | None:
    known = sorted({d for d in dates if d is not None})
    if len(known) > 1:
        log(f"{path}: tiles of {len(known)} dates ({iso(known[0])} to {iso(known[-1])}): the image is dated "
            f"{iso(known[0])}")
    return known[0] if known else None
