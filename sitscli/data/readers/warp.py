"""Reading rasters of other sensors (Sentinel-1, PlanetScope, VHR) onto a grid aligned with the
Sentinel-2 grid, one window at a time.

A window of the target grid is computed from the part of the file under it (plus a margin for the
resampling kernel), never from the whole file, so memory follows the window and a window reads the
same pixels as a bigger read (no seams). Files already on the target grid (same CRS, pixel size and
alignment) are read as stored; others are warped with GDAL's warper (`rasterio.warp.reproject`) on
the source window held in memory, which lets a reader change the values before they are
interpolated (Sentinel-1 dB must become linear power first), what a `WarpedVRT` over the file
cannot do.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio.windows
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from sitscli.core.errors import DataContentError, DataFormatError
from sitscli.data.cube import Grid
from sitscli.data.readers.common import corrupt

Bounds = tuple[float, float, float, float]


def refine(grid: Grid, factor: int) -> Grid:
    """The grid of `grid`'s extent with pixels `factor` times smaller: each coarse pixel holds exactly
    factor x factor fine pixels, so fine pixel (r, c) lies in coarse pixel (r // factor, c // factor)."""
    return Grid(grid.crs, grid.transform * Affine.scale(1 / factor), grid.height * factor, grid.width * factor)


def fine_window(window: Window, factor: int) -> Window:
    """The window of `refine(grid, factor)` covering `window` of `grid`."""
    return Window(window.col_off * factor, window.row_off * factor, window.width * factor, window.height * factor)


def footprint(ds, grid: Grid) -> Bounds:
    """The bounds of dataset `ds` in the grid's CRS; a one-line error when they cannot be computed."""
    if ds.crs is None:
        raise DataFormatError(f"{ds.name} has no coordinate reference system (georeference it, e.g. "
                              "gdal_edit.py -a_srs)")
    if ds.crs == grid.crs:
        return tuple(ds.bounds)
    try:
        bounds = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
    except Exception as exc:  # PROJ failures come as CRSError or GDAL's CPLE_* errors, which share no public base
        raise _untransformable(ds, grid) from exc
    if not all(math.isfinite(v) for v in bounds):
        raise _untransformable(ds, grid)
    return tuple(bounds)


def _untransformable(ds, grid: Grid) -> DataFormatError:
    return DataFormatError(f"cannot transform {ds.name} from {crs_text(ds.crs)} to the Sentinel-2 grid's "
                           f"{crs_text(grid.crs)}: PROJ knows no way between them (reproject the file, e.g. with "
                           "gdalwarp -t_srs)")


def crs_text(crs) -> str:
    """'EPSG:32631', or the start of the WKT of a CRS without EPSG code."""
    if crs is None:
        return "no CRS"
    text = crs.to_string()
    return text if len(text) <= 80 else text[:77] + "..."


def bounds_text(bounds: Bounds, crs) -> str:
    digits = 6 if crs is not None and crs.is_geographic else 1
    return "(" + ", ".join(f"{v:.{digits}f}" for v in bounds) + f") in {crs_text(crs)}"


def intersects(a: Bounds, b: Bounds) -> bool:
    """Whether two (left, bottom, right, top) boxes share some area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def no_overlap(what: str, ds, grid: Grid) -> DataContentError:
    """The one-line error for a file outside the Sentinel-2 grid, with both extents and CRSs."""
    return DataContentError(f"{what} {ds.name} {bounds_text(tuple(ds.bounds), ds.crs)} does not overlap the "
                            f"Sentinel-2 grid {bounds_text(grid.bounds, grid.crs)}: use files of the same area")


def is_aligned(ds, grid: Grid) -> bool:
    """Whether `ds` lies on `grid` pixel for pixel: same CRS, pixel size and pixel corners."""
    src, dst = ds.transform, grid.transform
    if ds.crs != grid.crs or src.b or src.d or dst.b or dst.d:
        return False
    if not (math.isclose(src.a, dst.a, rel_tol=1e-9) and math.isclose(src.e, dst.e, rel_tol=1e-9)):
        return False
    col, row = (src.c - dst.c) / dst.a, (src.f - dst.f) / dst.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def read_source(ds, indexes: list[int], window: Window) -> np.ndarray:
    """Bands `indexes` of `ds` in an integer `window` as float64 (C, h, w), NaN where the file has no
    data: outside the file, its no-data value or mask (an alpha band included), NaN itself."""
    inside = (window.col_off >= 0 and window.row_off >= 0 and window.col_off + window.width <= ds.width
              and window.row_off + window.height <= ds.height)
    try:
        data = ds.read(indexes, window=window, masked=True, boundless=not inside)
    except RasterioError as exc:
        raise corrupt(ds.name, exc) from exc
    values = np.ma.getdata(data).astype(np.float64)
    values[np.ma.getmaskarray(data) | ~np.isfinite(values)] = np.nan
    return values


def read_onto(ds, indexes: list[int], grid: Grid, window: Window, resampling, prepare=None) -> np.ndarray:
    """Bands `indexes` of `ds` on `window` of `grid`: float64 (C, h, w), NaN where there is no data.

    `prepare` (float64 (C, h', w') -> same shape, NaN = no data) changes the file's values before
    they are interpolated; it is applied to files on the grid too, so both paths give the same.
    """
    shape = (len(indexes), int(window.height), int(window.width))
    bounds = rasterio.windows.bounds(window, grid.transform)
    if is_aligned(ds, grid):
        exact = from_bounds(*bounds, transform=ds.transform)
        source = read_source(ds, indexes, Window(round(exact.col_off), round(exact.row_off), shape[2], shape[1]))
        return prepare(source) if prepare else source
    out = np.full(shape, np.nan)
    # footprint() has checked at open time that the two CRSs transform.
    src_bounds = bounds if ds.crs == grid.crs else transform_bounds(grid.crs, ds.crs, *bounds, densify_pts=21)
    covering = from_bounds(*src_bounds, transform=ds.transform)
    # The kernel reaches past the window's footprint: one source pixel for bilinear, one target pixel
    # (in source pixels) when downsampling; two more guard against rounding.
    margin = 2 + math.ceil(max(covering.width / shape[2], covering.height / shape[1], 1))
    col0 = max(0, math.floor(covering.col_off) - margin)
    row0 = max(0, math.floor(covering.row_off) - margin)
    col1 = min(ds.width, math.ceil(covering.col_off + covering.width) + margin)
    row1 = min(ds.height, math.ceil(covering.row_off + covering.height) + margin)
    if col1 <= col0 or row1 <= row0:
        return out
    read = Window(col0, row0, col1 - col0, row1 - row0)
    source = read_source(ds, indexes, read)
    if prepare:
        source = prepare(source)
    reproject(source, out, src_transform=ds.window_transform(read), src_crs=ds.crs, src_nodata=np.nan,
              dst_transform=rasterio.windows.transform(window, grid.transform), dst_crs=grid.crs,
              dst_nodata=np.nan, resampling=resampling)
    return out
