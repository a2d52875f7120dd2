"""Readers of Sentinel-2 L2A time series: a folder (or file) in, a lazily read `Cube` out.

    cube = open_source("S2_31TCJ/", bands=["B04", "B08"], aoi="field.gpkg", date_range=(18262, 18627))
    values, valid = cube.read(Window(0, 0, 512, 512))   # (T, C, 512, 512) float32, (T, 512, 512) bool

Layouts, detected in this order: ESA SAFE (`.SAFE` folders or zips), Theia/MAJA products, per-band
COG folders (one folder per date), a multiband GeoTIFF stack (a file), and the generic one GeoTIFF
per date per variable (see each module's docstring).

Other sensors are read on the Sentinel-2 grid of such a cube (`cube.grid`), as extra modalities:

    s1 = open_s1("S1/", cube.grid, orbit="both")            # dB VV, VH, VV/VH on the 10 m grid
    ps = open_planetscope("PSScene/", cube.grid, factor=3)  # reflectance on the 10/3 m fine grid
    vhr = open_vhr("ortho/", cube.grid)                     # one image on a fine grid (e.g. 0.5 m)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from rasterio.enums import Resampling

from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import is_remote, require_exists, require_input
from sitscli.core.progress import log
from sitscli.data.cube import Cube, Grid
from sitscli.data.readers import bandfiles, cogs, safe, stac, stack, theia
from sitscli.data.readers.planetscope import open_planetscope
from sitscli.data.readers.s1 import open_s1
from sitscli.data.readers.vhr import open_vhr
from sitscli.data.readers.common import (
    DEFAULT_S2_BANDS, DEFAULT_VALID_SCL, Acquisition, AcquisitionCube, canonical_band, check_not_empty, in_date_range,
    normalise_tile, range_text, require_bands,
)

# Readers visit each block of a file once, so GDAL's block cache (5 % of RAM by default) only holds
# dead data and grows memory with the raster: jobs that stream rasters cap it.
GDAL_CACHE_MB = 64


# Remote rasters (URLs, /vsicurl/, /vsis3/): a failed HTTP request (timeouts, 429, 5xx) is retried
# with a growing delay before the read fails; GDAL does not list the remote "folder" on open (one
# request saved per file, and object stores forbid listing); byte ranges of neighbouring blocks are
# merged into one request.
REMOTE_ENV = {"GDAL_HTTP_MAX_RETRY": 4, "GDAL_HTTP_RETRY_DELAY": 1, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
              "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_HTTP_TIMEOUT": 60,
              "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2"}


def streaming_env() -> rasterio.Env:
    """GDAL settings for a job that reads every block once (prepare, predict-map, smooth...), local or remote."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, **REMOTE_ENV)


__all__ = ["streaming_env", "open_source", "detect_layout", "LAYOUTS", "open_s1", "open_planetscope", "open_vhr"]

LAYOUTS = {
    "safe": "ESA SAFE products (.SAFE folders or .SAFE.zip)",
    "theia": "Theia/MAJA products (SENTINEL2*_L2A_T*/ with *_FRE_B2.tif)",
    "cog": "one folder of band COGs per date (B02.tif or blue.tif ..., SCL.tif)",
    "stack": "a multiband GeoTIFF stack (T x C bands, date-major)",
    "bandfiles": "one GeoTIFF per date per variable (e.g. ndvi/20150711T100008_NDVI.tif, cloud_mask/..._CLM.tif)",
    "stac": "a STAC ItemCollection, catalog or item (JSON file or URL) of Sentinel-2 L2A items with band COG assets",
}


def detect_layout(path: Path | str) -> str:
    """The layout name of `path` (a key of LAYOUTS), or a one-line error listing those understood.

    A remote path (URL, GDAL virtual path) is a STAC document when it ends in .json, else a stack:
    remote folders cannot be listed.
    """
    path = require_input(path, "Sentinel-2 source")
    if stac.is_stac(path):
        return "stac"
    if is_remote(path):
        return "stack"
    if stack.is_stack(path):
        return "stack"
    if safe.find_products(path):
        return "safe"
    if theia.find_products(path):
        return "theia"
    if cogs.find_acquisitions(path):
        return "cog"
    if bandfiles.matches(path):
        return "bandfiles"
    raise DataFormatError(f"{path}: not a layout this tool reads; it understands: " + "; ".join(LAYOUTS.values()))


def open_source(path, *, bands: Sequence[str] | None = None, aoi=None, date_range: tuple[int, int] | None = None,
                dates_file: Path | None = None, mask: str | None = None, valid_scl: Sequence[int] = DEFAULT_VALID_SCL,
                tile: str | None = None, theia_product: str = "FRE", resampling: str = "nearest",
                max_open: int = 128, keep_cloudy: bool = False, max_cloud: float | None = None,
                keep_cloudy_for: str = "--keep-cloudy") -> Cube:
    """Open a Sentinel-2 L2A folder or stack as a lazily read cube on its 10 m grid.

    Args:
        path: a folder of products (or one product, zip or folder), a GeoTIFF stack (local, a URL or a
            GDAL virtual path such as /vsis3/...), or a STAC ItemCollection / catalog / item (file or URL).
        bands: band names to read, in this order ('B02', 'B2' and 'blue' are the same band); default:
            the 10 bands B02-B08, B8A, B11, B12 for Sentinel-2 layouts, every variable otherwise.
        aoi: (left, bottom, right, top) in the raster CRS, or a vector file whose bounds (reprojected
            to the raster CRS) are used; the cube then covers only the pixels touching that box.
        date_range: (first, last) inclusive, int days since 1970-01-01.
        dates_file: one ISO date a line, for a stack whose band descriptions hold no dates.
        mask: generic and stack layouts: the name of the mask variable (default: CLM / MASK / SCL
            when present); 'none' disables the cloud mask (no-data is still invalid).
        valid_scl: SCL classes counted as clear (default 4 vegetation, 5 bare, 6 water, 7 unclassified).
        tile: the MGRS tile to read when the folder holds several ('31TCJ' or 'T31TCJ').
        theia_product: FRE (default) or SRE reflectance of Theia products.
        resampling: how coarser bands reach the 10 m grid (rasterio name; nearest by default).
        max_open: most files held open at once.
        keep_cloudy: `read` returns the reflectance under clouds too (`valid` stays False there, only
            no-data stays 0), for models that learn from cloudy observations; needs cloud information.
        keep_cloudy_for: who asks for keep_cloudy, named in the error when the source has no cloud information.
        max_cloud: STAC sources: keep the items whose `eo:cloud_cover` is at most this percentage.
    Returns:
        a `Cube` whose dates are unique: acquisitions of one day are merged, first clear one first.
        Its `cloud_source` names where `read_cloud` (levels 0-31) comes from, None without clouds.
    """
    path = require_input(path, "Sentinel-2 source")
    layout = detect_layout(path)
    if max_cloud is not None and layout != "stac":
        raise ConfigError(f"--max-cloud filters the items of a STAC catalog; {path} is a {layout} source "
                          "(use --dates to choose its acquisitions)")
    valid_scl = tuple(int(c) for c in valid_scl)
    try:
        resample = Resampling[resampling]
    except KeyError:
        raise ConfigError(f"unknown resampling {resampling!r}: use nearest, bilinear, cubic or average") from None
    if layout == "stack":
        cube = stack.open_stack(path, bands=list(bands) if bands else None, dates_file=dates_file, valid_scl=valid_scl,
                                mask=mask, keep_cloudy=keep_cloudy)
        cube = _stack_in_range(cube, date_range)
    else:
        if layout == "safe":
            acquisitions = safe.scan(path, valid_scl)
        elif layout == "theia":
            acquisitions = theia.scan(path, theia_product)
        elif layout == "cog":
            acquisitions = cogs.scan(path, valid_scl)
        elif layout == "stac":
            acquisitions = stac.scan(path, valid_scl, max_cloud=max_cloud)
        else:
            acquisitions = bandfiles.scan(path, mask, valid_scl)
        acquisitions = _one_tile(in_date_range(acquisitions, date_range, path), tile, path)
        if bands:
            names = [canonical_band(b) for b in bands]
        elif layout == "bandfiles":
            names = sorted(acquisitions[0].bands)
        else:
            names = list(DEFAULT_S2_BANDS)
        require_bands(acquisitions, names)
        cube = AcquisitionCube(acquisitions, names, layout=layout, source=path, resampling=resample, max_open=max_open,
                               keep_cloudy=keep_cloudy)
    if keep_cloudy:
        cube.require_clouds(f"{keep_cloudy_for} needs")
    if aoi is not None:
        cube.grid = _crop(cube.grid, _aoi_bounds(aoi, cube.grid), path)
    check_not_empty(cube)
    return cube


def _one_tile(acquisitions: list[Acquisition], tile: str | None, path: Path) -> list[Acquisition]:
    tiles = sorted({a.tile for a in acquisitions if a.tile})
    if tile is not None:
        wanted = normalise_tile(tile)
        kept = [a for a in acquisitions if a.tile == wanted]
        if not kept:
            raise ConfigError(f"no acquisition of tile {wanted} in {path} (tiles there: {', '.join(tiles) or 'none named'})")
        return kept
    if len(tiles) > 1:
        raise DataFormatError(f"{path} holds several tiles ({', '.join(tiles)}): pick one with --tile or put each "
                              "tile in its own folder")
    return acquisitions


def _stack_in_range(cube: stack.StackCube, date_range) -> stack.StackCube:
    if date_range is None:
        return cube
    keep = (cube.dates >= date_range[0]) & (cube.dates <= date_range[1])
    if not keep.any():
        raise DataContentError(f"no date of {cube.source} in the date range {range_text(*date_range)} (it holds "
                               f"{iso(cube.dates[0])} to {iso(cube.dates[-1])}): change the date range")
    cube._slots = [slot for slot, k in zip(cube._slots, keep) if k]
    cube.dates = cube.dates[keep]
    return cube


def _aoi_bounds(aoi, grid: Grid) -> tuple[float, float, float, float]:
    """A bbox as given, or a vector file's total bounds in the raster CRS."""
    if isinstance(aoi, (str, Path)):
        import geopandas as gpd  # only needed for vector areas of interest

        path = require_exists(aoi, "area-of-interest file")
        try:
            frame = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise DataFormatError(f"cannot read area of interest {path}: {exc} (use a GeoPackage, shapefile or GeoJSON)") from exc
        if frame.empty:
            raise DataContentError(f"area of interest {path} has no feature")
        if frame.crs is None:
            raise DataFormatError(f"area of interest {path} has no CRS (set one, e.g. with ogr2ogr -a_srs)")
        if frame.crs != grid.crs:
            log(f"area of interest {path.name}: reprojected from {frame.crs.to_string()} to {grid.crs.to_string()}")
            frame = frame.to_crs(grid.crs)
        return tuple(float(v) for v in frame.total_bounds)
    try:
        left, bottom, right, top = (float(v) for v in aoi)
    except (TypeError, ValueError):
        raise ConfigError(f"area of interest {aoi!r}: give left,bottom,right,top in the raster CRS or a vector file") from None
    if left >= right or bottom >= top:
        raise ConfigError(f"area of interest {aoi!r}: left must be < right and bottom < top")
    return left, bottom, right, top


def _crop(grid: Grid, bounds: tuple[float, float, float, float], path: Path) -> Grid:
    """The sub-grid of whole pixels touching `bounds`."""
    window = rasterio.windows.from_bounds(*bounds, transform=grid.transform)
    col0, row0 = max(0, int(np.floor(window.col_off + 1e-6))), max(0, int(np.floor(window.row_off + 1e-6)))
    col1 = min(grid.width, int(np.ceil(window.col_off + window.width - 1e-6)))
    row1 = min(grid.height, int(np.ceil(window.row_off + window.height - 1e-6)))
    if col1 <= col0 or row1 <= row0:
        raise DataContentError(f"the area of interest {tuple(round(b, 2) for b in bounds)} does not overlap {path} "
                               f"{tuple(round(b, 2) for b in grid.bounds)} ({grid.crs.to_string()}): check its CRS and extent")
    crop = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
    return Grid(grid.crs, rasterio.windows.transform(crop, grid.transform), row1 - row0, col1 - col0)
