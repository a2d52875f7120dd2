"""Vector labels (shp, gpkg, geojson) on a raster grid: read, clean, rasterise, sample.

`read_labels` turns a vector file and a class field into polygons in the raster CRS with stable
class ids; `rasterize_window` burns them onto any window of a `Grid`; `sample_pixels` draws
pixels per polygon (with a cap) and an unlabelled pool from outside the polygons, one window at
a time, so memory follows the number of samples and never the area of the tile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio import features, windows
from rasterio.crs import CRS
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import log
from sitscli.data.cube import Grid
from sitscli.core.legend import class_codes, default_colors, order_by_code

NO_POLYGON = -1  # polygon index of pixels covered by no polygon
UNLABELED = -1   # class id of unlabelled pixels (as `y` in the prepared format)

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_COLOR_FIELDS = ("color", "colour")


@dataclass
class Labels:
    """Labelled polygons in the raster CRS.

    `polygons` has one row per usable polygon with columns `polygon_id` (the feature's 0-based
    position in the vector file, so a sample can be traced back to its feature), `class_id`
    (index into `class_names`) and `geometry` (shrunk by the inward buffer when one was asked).
    `footprint` holds the unbuffered geometries: pixels under it are never drawn as unlabelled.
    `class_codes` holds each class's code from the code field (classes then ordered by code), or is
    empty when no code field was given.
    """

    polygons: gpd.GeoDataFrame
    footprint: gpd.GeoSeries
    class_names: list[str]
    class_colors: list[str]
    class_field: str
    source: Path
    class_codes: list[int] = field(default_factory=list)

    @property
    def class_of_polygon(self) -> dict[int, int]:
        return dict(zip(self.polygons["polygon_id"].tolist(), self.polygons["class_id"].tolist()))


# ----------------------------------------------------------------------------------- reading

def read_labels(path: str | Path, class_field: str, *, crs: CRS, bounds: tuple[float, float, float, float] | None = None,
                buffer: float = 0.0, color_field: str | None = None, code_field: str | None = None,
                layer: str | None = None, field_option: str = "--class-field") -> Labels:
    """Read a vector file of labelled polygons and bring it onto the raster CRS.

    Args:
        path: shp, gpkg, geojson (anything OGR reads).
        class_field: the attribute holding the class of each polygon.
        crs: the raster CRS; labels in another CRS are reprojected (and the user told).
        bounds: (left, bottom, right, top) of the raster in `crs`; labels outside them are an error.
        buffer: inward buffer in metres (CRS units) that drops mixed pixels along polygon borders.
        color_field: attribute holding "#rrggbb" class colours; by default a field named
            color/colour is used when there is one, else land-cover aware defaults (from the names).
        code_field: attribute holding each class's code in the source nomenclature (e.g. LULC_ID
            beside LULC_NAME): kept so that maps store the codes; one code per class.
        layer: layer of a multi-layer file (default: the first).
        field_option: the command's option naming the class field (said in errors).
    """
    path = require_exists(path, "labels file")
    frame = _read_vector(path, layer)
    _check_field(frame, class_field, path, field_option)
    if code_field is not None:
        _check_field(frame, code_field, path, "--code-field")
    frame = frame.reset_index(drop=True)
    frame["polygon_id"] = np.arange(len(frame), dtype=np.int64)
    frame = _drop_unusable(frame, class_field, path)
    frame = _to_crs(frame, crs, path)
    if bounds is not None:
        _check_overlap(frame, bounds, path)
    names, ids = _class_ids(frame[class_field])
    codes: list[int] = []
    if code_field is not None:
        codes = class_codes(ids, frame[code_field].tolist(), names, field=code_field, where=f"labels {path.name}")
        names, codes, ids = order_by_code(names, codes, ids)
    frame["class_id"] = ids
    colors = _class_colors(frame, names, color_field)
    footprint = frame.geometry.copy()
    frame = _shrink(frame, buffer, crs)
    polygons = gpd.GeoDataFrame(frame[["polygon_id", "class_id"]], geometry=frame.geometry.values, crs=frame.crs)
    return Labels(polygons, footprint, names, colors, class_field, path, codes)


def read_points(path: str | Path, class_field: str, *, crs: CRS, layer: str | None = None,
                field_option: str = "--class-field") -> tuple[np.ndarray, list[str], np.ndarray]:
    """Labelled points of a vector file, in `crs`: xy (n, 2) float64, the sorted class names (numbers
    written as integers, as `read_labels` does) and each point's index into them, (n,) int64.
    Points without a class, and empty geometries, are dropped (saying how many); multipoints count
    each of their points."""
    path = require_exists(path, "labels file")
    frame = _read_vector(path, layer)
    _check_field(frame, class_field, path, field_option)
    classes = frame[class_field]
    keep = (classes.notna() & (classes.astype(str).str.strip() != "")).to_numpy() & ~frame.geometry.is_empty.to_numpy()
    keep &= frame.geometry.notna().to_numpy()
    if not keep.any():
        raise DataContentError(f"labels {path.name}: no point has a {class_field!r}: choose another {field_option}")
    if not keep.all():
        log(f"labels: dropped {int((~keep).sum())} of {len(frame)} points without a geometry or a {class_field!r}")
    frame = _to_crs(frame[keep], crs, path).explode(index_parts=False)
    if not frame.geom_type.eq("Point").all():
        raise DataFormatError(f"labels {path.name} mix points with other geometries: give points only, or polygons only")
    names, ids = _class_ids(frame[class_field])
    return np.column_stack([frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()]), names, ids


def _check_field(frame: gpd.GeoDataFrame, class_field: str, path: Path, field_option: str) -> None:
    if class_field not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != frame.geometry.name) or "none"
        what = field_option.strip("-").replace("-", " ")
        raise ConfigError(f"{what} {class_field!r} is not in {path.name}: the fields are {fields} (pass one with {field_option})")


def _read_vector(path: Path, layer: str | None) -> gpd.GeoDataFrame:
    try:
        frame = gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, ... for files OGR cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(f"cannot read labels {path}: {first} (give a shapefile, GeoPackage or GeoJSON)") from None
    if frame.geometry is None or len(frame) == 0:
        raise DataContentError(f"labels file {path} holds no features: give a file with labelled polygons")
    return frame


def _drop_unusable(frame: gpd.GeoDataFrame, class_field: str, path: Path) -> gpd.GeoDataFrame:
    """Repair invalid polygons, drop empty, non-polygonal and class-less features (saying how many)."""
    geometry = frame.geometry.values
    invalid = ~shapely.is_valid(geometry) & ~shapely.is_missing(geometry)
    if invalid.any():
        # 'structure' keeps only polygonal parts: a bow-tie becomes two triangles, not a line soup.
        geometry = geometry.copy()
        geometry[invalid] = shapely.make_valid(geometry[invalid], method="structure", keep_collapsed=False)
        log(f"labels: repaired {int(invalid.sum())} invalid geometr{'y' if invalid.sum() == 1 else 'ies'} with make_valid")
    frame = frame.set_geometry(gpd.GeoSeries(geometry, index=frame.index, crs=frame.crs))
    polygonal = frame.geom_type.isin(["Polygon", "MultiPolygon"]).to_numpy()
    empty = shapely.is_missing(geometry) | shapely.is_empty(geometry)
    keep_geometry = polygonal & ~empty & (shapely.area(geometry) > 0)
    classes = frame[class_field]
    has_class = (classes.notna() & (classes.astype(str).str.strip() != "")).to_numpy()
    if not keep_geometry.any():
        raise DataContentError(f"labels {path.name}: no usable polygon ({len(frame)} features, all empty, invalid or not polygons)")
    if not (keep_geometry & has_class).any():
        raise DataContentError(f"labels {path.name}: every polygon has an empty {class_field!r}: choose another --class-field")
    dropped_geometry, dropped_class = int((~keep_geometry).sum()), int((keep_geometry & ~has_class).sum())
    if dropped_geometry:
        log(f"labels: dropped {dropped_geometry} of {len(frame)} features with an empty, invalid or non-polygon geometry")
    if dropped_class:
        log(f"labels: dropped {dropped_class} polygons with an empty {class_field!r}")
    return frame[keep_geometry & has_class]


def _to_crs(frame: gpd.GeoDataFrame, crs: CRS, path: Path) -> gpd.GeoDataFrame:
    target = crs.to_wkt()
    if frame.crs is None:
        log(f"labels: {path.name} has no CRS; assuming the raster CRS {crs.to_string()}")
        return frame.set_crs(target)
    if frame.crs.equals(target):
        return frame
    log(f"labels: reprojected {path.name} from {frame.crs.to_string()} to the raster CRS {crs.to_string()}")
    return frame.to_crs(target)


def _check_overlap(frame: gpd.GeoDataFrame, bounds: tuple[float, float, float, float], path: Path) -> None:
    left, bottom, right, top = bounds
    if not frame.intersects(shapely.box(left, bottom, right, top)).any():
        lb = ", ".join(f"{v:.0f}" for v in frame.total_bounds)
        rb = ", ".join(f"{v:.0f}" for v in bounds)
        raise DataContentError(f"labels {path.name} do not overlap the raster (labels {lb}, raster {rb} in the raster CRS): "
                               "check that both cover the same area")


def _class_ids(values: pd.Series) -> tuple[list[str], np.ndarray]:
    """Sorted class names (numerically when the field is numeric) and each polygon's class id."""
    if pd.api.types.is_numeric_dtype(values):
        uniques = np.unique(values.to_numpy())
        names = [str(int(v)) if float(v).is_integer() else str(v) for v in uniques]
        return names, np.searchsorted(uniques, values.to_numpy()).astype(np.int64)
    text = values.astype(str).str.strip()
    names = sorted(text.unique())
    return names, np.searchsorted(np.array(names), text.to_numpy()).astype(np.int64)


def _class_colors(frame: gpd.GeoDataFrame, names: list[str], color_field: str | None) -> list[str]:
    """One "#rrggbb" per class: the first valid colour of the class in the colour field, else the default palette."""
    fallback = default_colors(names)
    if color_field is None:
        color_field = next((c for c in frame.columns if str(c).lower() in _COLOR_FIELDS), None)
    elif color_field not in frame.columns:
        raise ConfigError(f"colour field {color_field!r} is not in the labels: remove --color-field or name an existing field")
    if color_field is None:
        return fallback
    colors = []
    for class_id, default in enumerate(fallback):
        seen = frame.loc[frame["class_id"] == class_id, color_field].astype(str).str.strip()
        valid = seen[seen.str.match(_HEX_COLOR)]
        colors.append(valid.iloc[0].lower() if len(valid) else default)
    return colors


def _shrink(frame: gpd.GeoDataFrame, buffer: float, crs: CRS) -> gpd.GeoDataFrame:
    """Inward buffer of `buffer` metres; polygons that vanish are dropped (and counted)."""
    if buffer < 0:
        raise ConfigError(f"--buffer {buffer}: give an inward distance in metres >= 0")
    if buffer == 0:
        return frame
    if crs.is_geographic:
        raise ConfigError("--buffer needs a projected raster CRS in metres; this raster is in degrees")
    shrunk = frame.geometry.buffer(-buffer)
    alive = ~(shrunk.is_empty | shrunk.isna()).to_numpy()
    if not alive.any():
        raise DataContentError(f"--buffer {buffer} m removes every polygon: use a smaller buffer")
    if not alive.all():
        log(f"labels: {int((~alive).sum())} polygons narrower than twice the {buffer} m buffer dropped")
    return frame.set_geometry(shrunk)[alive]


# ------------------------------------------------------------------------------- rasterising

def rasterize_window(labels: Labels, grid: Grid, window: Window) -> np.ndarray:
    """Polygon index of every pixel of `window` (NO_POLYGON where none), (h, w) int64.

    A pixel belongs to a polygon when its centre lies inside it (GDAL's default rule), so border
    pixels are assigned to at most one field. Where polygons overlap, the later feature wins.
    """
    return _burn(labels.polygons.geometry, labels.polygons["polygon_id"].to_numpy(), grid, window)


def footprint_window(labels: Labels, grid: Grid, window: Window) -> np.ndarray:
    """True where a pixel touches any (unbuffered) polygon, (h, w) bool: never 'unlabelled'."""
    ones = np.ones(len(labels.footprint), dtype=np.int64)
    return _burn(labels.footprint, ones, grid, window, all_touched=True) >= 0


def _burn(geometry: gpd.GeoSeries, values: np.ndarray, grid: Grid, window: Window, all_touched: bool = False) -> np.ndarray:
    shape = (int(window.height), int(window.width))
    transform = windows.transform(window, grid.transform)
    left, bottom, right, top = windows.bounds(window, grid.transform)
    hits = geometry.sindex.query(shapely.box(left, bottom, right, top))  # only polygons near the window
    if hits.size == 0:
        return np.full(shape, NO_POLYGON, dtype=np.int64)
    # int32 ids: rasterio burns int64 only on recent GDALs, and 2**31 polygons is beyond any file.
    shapes = zip(geometry.values[hits], values[hits].astype(np.int32))
    burnt = features.rasterize(shapes, out_shape=shape, transform=transform, fill=NO_POLYGON,
                               all_touched=all_touched, dtype=np.int32)
    return burnt.astype(np.int64)


def rasterize_classes(labels: Labels, grid: Grid, window: Window) -> np.ndarray:
    """Class id of every pixel of `window`, UNLABELED where no polygon, (h, w) int16."""
    return class_lookup(labels)(rasterize_window(labels, grid, window))


def class_lookup(labels: Labels):
    """A vectorised polygon index -> class id function (NO_POLYGON -> UNLABELED), int16 out."""
    ids = labels.polygons["polygon_id"].to_numpy()
    table = np.full(int(ids.max()) + 2, UNLABELED, dtype=np.int16)  # last slot serves NO_POLYGON (-1)
    table[ids] = labels.polygons["class_id"].to_numpy()
    return lambda polygon: table[polygon]


# --------------------------------------------------------------------------------- sampling

@dataclass
class PixelSample:
    """Sampled pixels, (n,) each: grid row and column, class id (UNLABELED for the pool), polygon (NO_POLYGON)."""

    row: np.ndarray
    col: np.ndarray
    y: np.ndarray
    polygon: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def sample_pixels(labels: Labels, grid: Grid, *, max_per_polygon: int | None, unlabeled: int = 0, seed: int = 0,
                  block: int = 1024) -> PixelSample:
    """Draw up to `max_per_polygon` pixels in each polygon and `unlabeled` pixels outside all polygons.

    Both draws are uniform without replacement, done in one pass over block x block windows: each
    candidate pixel gets a random key and only the `cap` smallest keys per polygon (and overall for
    the pool) survive each window, so memory is bounded by the number of samples, not the area.
    Same seed and block, same sample. Labelled pixels come out sorted by (row, col).
    """
    if max_per_polygon is not None and max_per_polygon < 1:
        raise ConfigError(f"--max-per-polygon {max_per_polygon}: give at least 1 (or leave it out for every pixel)")
    if unlabeled < 0:
        raise ConfigError(f"--unlabeled {unlabeled}: give a number of pixels >= 0")
    rng = np.random.default_rng(seed)
    labelled = _Reservoir(max_per_polygon)
    pool = _Reservoir(unlabeled)
    for window in grid_windows(grid, block):
        polygon = rasterize_window(labels, grid, window)
        rows, cols = np.indices(polygon.shape)
        rows, cols = rows.ravel() + int(window.row_off), cols.ravel() + int(window.col_off)
        polygon = polygon.ravel()
        keys = rng.random(polygon.size)
        inside = polygon != NO_POLYGON
        labelled.offer(polygon[inside], keys[inside], rows[inside], cols[inside])
        if unlabeled:
            outside = ~footprint_window(labels, grid, window).ravel()
            pool.offer(np.zeros(int(outside.sum()), dtype=np.int64), keys[outside], rows[outside], cols[outside])
    if len(labelled) == 0:
        raise DataContentError(f"labels {labels.source.name}: no polygon covers the centre of a raster pixel "
                               "(polygons too small, buffer too wide, or outside the area)")
    group, row, col = labelled.result()
    _, pool_row, pool_col = pool.result()
    if unlabeled and len(pool_row) < unlabeled:
        log(f"labels: only {len(pool_row)} pixels lie outside the polygons; the unlabelled pool has {len(pool_row)}, not {unlabeled}")
    y = class_lookup(labels)(group)
    return PixelSample(
        row=np.concatenate([row, pool_row]), col=np.concatenate([col, pool_col]),
        y=np.concatenate([y, np.full(len(pool_row), UNLABELED, dtype=np.int16)]),
        polygon=np.concatenate([group, np.full(len(pool_row), NO_POLYGON, dtype=np.int64)]),
    )


def grid_windows(grid: Grid, block: int):
    """The block x block windows covering `grid`, row by row (the last ones cut at the edges)."""
    for row in range(0, grid.height, block):
        for col in range(0, grid.width, block):
            yield Window(col, row, min(block, grid.width - col), min(block, grid.height - row))


class _Reservoir:
    """Keeps, per group, the `cap` candidates with the smallest random keys (cap None: keep all)."""

    def __init__(self, cap: int | None):
        self.cap = cap
        self.group = np.zeros(0, dtype=np.int64)
        self.key = np.zeros(0)
        self.row = np.zeros(0, dtype=np.int64)
        self.col = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.group)

    def offer(self, group: np.ndarray, key: np.ndarray, row: np.ndarray, col: np.ndarray) -> None:
        if self.cap == 0 or group.size == 0:
            return
        self.group = np.concatenate([self.group, group])
        self.key = np.concatenate([self.key, key])
        self.row = np.concatenate([self.row, row])
        self.col = np.concatenate([self.col, col])
        if self.cap is not None:
            self._prune()

    def _prune(self) -> None:
        order = np.lexsort((self.key, self.group))  # by group, then key
        group = self.group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank = np.arange(group.size) - np.repeat(starts, np.diff(np.r_[starts, group.size]))
        keep = order[rank < self.cap]
        self.group, self.key, self.row, self.col = self.group[keep], self.key[keep], self.row[keep], self.col[keep]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group, row, col) sorted by (row, col), so windows are later read in raster order."""
        order = np.lexsort((self.col, self.row))
        return self.group[order], self.row[order], self.col[order]
