"""`sits accuracy MAP --reference REF --out DIR`: accuracy of a class map and area estimates.

The map is read block by block, once: every block adds its pixels to the mapped-area count of
each class (the strata weights of Olofsson et al. 2014) and its reference samples to the
confusion counts, so a whole tile never sits in memory.

References:
- points (GeoPackage, shapefile, GeoJSON) with a class field: each point is one sample, on the
  map pixel that contains it;
- polygons with a class field: rasterised onto the map grid, every pixel whose centre a polygon
  covers is one sample; `per_polygon` makes each polygon one sample instead, of the map class
  most of its pixels carry (ties go to the smallest class id);
- a raster of class ids: read on the map grid (nearest-neighbour resampling when on another grid),
  every pixel with a reference value is one sample;
- a prepared dataset NAME.sits: its labelled TEST samples at their `xy` (patch mode: each
  labelled pixel of a test patch, placed with the map's pixel size).
The reference's classes are matched to the map's by name, or by id when the reference holds
integers that are not the map's names; which of the two was used is reported.

Figures: `sitscli.mapping.accuracy`. Outputs in DIR (a temporary directory renamed when complete):
accuracy.md (the report for people), accuracy.json (every figure; NaN as null), confusion.png.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import atomic_output, check_output, require_exists
from sitscli.core.progress import Progress, log
from sitscli.data.cube import Grid
from sitscli.data.labels import Labels, grid_windows, rasterize_classes, rasterize_window, read_labels, read_points
from sitscli.data.prepared import dataset_path, open_prepared
from sitscli.engine.metrics import plot_confusion
from sitscli.mapping.accuracy import AreaAdjusted, SampleAccuracy, area_adjusted, confusion_counts, sample_accuracy
from sitscli.mapping.change import overlaps
from sitscli.mapping.geotiff import read_class_values

DEFAULTS = {"field": None, "classes": None, "per_polygon": False, "block": 1024, "overwrite": False}
REPORT_MD, REPORT_JSON, CONFUSION_PNG = "accuracy.md", "accuracy.json", "confusion.png"
_LISTED = 12  # class names listed in an error before "... (n more)"


def accuracy(map_path: str | Path, *, reference: str | Path, out: str | Path, field: str | None = None,
             classes: str | Path | None = None, per_polygon: bool = False, block: int = 1024,
             overwrite: bool = False) -> dict:
    """Assess the class map `map_path` against `reference`; write the report into the directory `out`.

    Args:
        reference: points or polygons (vector file), a raster of class ids, or a prepared dataset.
        field: the class field of a vector reference: class names of the map, or integer ids.
        classes: a text file naming the map's class ids, one "id,name" a line (or one name a line
            for ids 0, 1, ...); needed when the map does not name its classes and the reference
            gives names. It replaces the names the map carries.
        per_polygon: polygons count once each (the majority map class) instead of once per pixel.
        block: side of the map blocks read at a time (memory follows block^2).
    Returns:
        the report (as in accuracy.json) plus "outputs": {"markdown", "json", "confusion"}.
    """
    map_path = require_exists(map_path, "map")
    out = check_output(out, overwrite)
    if block < 1:
        raise ConfigError(f"--block {block}: give a block side in pixels >= 1 (e.g. 1024)")
    class_map = open_class_map(map_path, classes)
    pixel_ha = pixel_area_hectares(class_map.grid, map_path)
    ref = open_reference(reference, class_map.grid, field=field, per_polygon=per_polygon, block=block)
    if ref.labels is not None:  # unknown names fail here, before the map is read
        match_reference(ref.labels, class_map.names, ref.description)
    mapped, pairs = tally(class_map, ref, block)
    labels = ref.labels if ref.labels is not None else ref.observed_labels(pairs[1])
    value_kind, class_of_code = match_reference(labels, class_map.names, ref.description)
    table = class_table(class_map, mapped, class_of_code)
    counts, mapped_pixels = table.counts(pairs, mapped, class_of_code)
    table, counts, mapped_pixels = table.pruned(counts, mapped_pixels)
    options = {"field": field, "classes": str(classes) if classes else None, "per_polygon": per_polygon, "block": block}
    report = build_report(class_map, ref, value_kind, table.names, table.ids, counts, mapped_pixels, pixel_ha,
                          reference_path=Path(reference), options=options)
    write_outputs(out, report, counts, overwrite=overwrite)
    log(f"accuracy: {report['samples']:,} samples, OA {fmt(report['overall_accuracy'])}, "
        f"area-adjusted OA {fmt(report['area_adjusted_overall_accuracy'])}")
    return {**report, "outputs": {"markdown": str(out / REPORT_MD), "json": str(out / REPORT_JSON),
                                  "confusion": str(out / CONFUSION_PNG)}}


# ------------------------------------------------------------------------------------- the map

@dataclass
class ClassMap:
    """A single-band raster of integer class ids; `names` (id -> name) when its classes are named."""

    path: Path
    grid: Grid
    nodata: int | None
    names: dict[int, str] | None
    names_from: str  # "map" (its tags or PAM categories), "--classes", or "" (unnamed)


def open_class_map(path: Path, classes: str | Path | None) -> ClassMap:
    try:
        with rasterio.open(path) as ds:
            count, dtype, crs, nodata = ds.count, np.dtype(ds.dtypes[0]), ds.crs, ds.nodata
            grid = Grid(ds.crs, ds.transform, ds.height, ds.width)
    except rasterio.errors.RasterioIOError as exc:
        raise DataFormatError(f"cannot read the map {path}: {str(exc).splitlines()[0]} "
                              "(give a GeoTIFF class map, e.g. from sits predict-map)") from None
    if count != 1:
        raise DataFormatError(f"the map {path.name} has {count} bands: give a class map, one band of class ids "
                              "(sits predict-map writes it as the main output)")
    if dtype.kind not in "iu":
        raise DataFormatError(f"the map {path.name} holds {dtype} values, not class ids: give a raster of integer "
                              "class ids (e.g. the class map of sits predict-map, not its probabilities)")
    if crs is None:
        raise DataFormatError(f"the map {path.name} has no CRS: set it (e.g. gdal_edit.py -a_srs EPSG:32631 MAP.tif)")
    if nodata is not None and not float(nodata).is_integer():
        nodata = None  # a NaN nodata cannot mark an integer pixel
    if classes is not None:
        names, source = read_class_file(Path(classes)), "--classes"
    else:
        names = read_class_values(path)
        names, source = (names, "map") if names else (None, "")
    if names is not None and nodata is not None and int(nodata) in names:
        log(f"class {int(nodata)} ({names[int(nodata)]}) is the map's nodata value: its pixels are not counted")
    return ClassMap(path, grid, None if nodata is None else int(nodata), names, source)


def read_class_file(path: Path) -> dict[int, str]:
    """Class names of a `--classes` file: lines "id,name" (or id;name, id<TAB>name, id=name, id: name;
    a header line is skipped), or one name a line for ids 0, 1, ...; blank lines and # comments skipped."""
    require_exists(path, "--classes file")
    lines = [(i + 1, line.strip()) for i, line in enumerate(path.read_text().splitlines())]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ConfigError(f"--classes {path} holds no class: write one 'id,name' line per class")
    split = [(n, re.split(r"\s*[,;\t=:]\s*", line, maxsplit=1)) for n, line in lines]
    if all(len(parts) == 1 for _, parts in split):
        pairs = [(str(i), line) for i, (_, line) in enumerate(lines)]
    else:
        if _as_int(split[0][1][0]) is None:
            split = split[1:]  # a header such as "id,name"
        pairs = []
        for n, parts in split:
            if len(parts) != 2 or _as_int(parts[0]) is None or not parts[1].strip():
                raise ConfigError(f"--classes {path} line {n}: write 'id,name' with an integer id, e.g. '3,forest'")
            pairs.append((parts[0], parts[1].strip().strip('"')))
    names: dict[int, str] = {}
    for key, name in pairs:
        class_id = _as_int(key)
        if class_id in names or name in names.values():
            raise ConfigError(f"--classes {path}: class {key} or name {name!r} is given twice: name each id once")
        names[class_id] = name
    return names


def pixel_area_hectares(grid: Grid, path: Path) -> float:
    """Area of one map pixel in hectares, from the transform and the CRS's linear unit."""
    if grid.crs.is_geographic:
        raise DataContentError(f"the map {path.name} is in a geographic CRS ({grid.crs.to_string()}, degrees): pixel "
                               "areas vary over it; reproject it to a projected CRS in metres (e.g. its UTM zone, "
                               "gdalwarp -t_srs EPSG:326xx -r near)")
    t = grid.transform
    try:
        _, metres = grid.crs.linear_units_factor
    except rasterio.errors.CRSError:
        raise DataContentError(f"the map {path.name}: its CRS has no linear unit; reproject it to a projected CRS "
                               "in metres") from None
    return abs(t.a * t.e - t.b * t.d) * metres**2 / 10_000


# ------------------------------------------------------------------------------- references
# Each reference turns a block of the map (values (h, w), valid (h, w) bool) into samples:
# `pairs(window, values, valid) -> (map values (m,), reference codes (m,))`, plus `finish()` for
# those that decide once the map is read. A code stands for a reference class; `labels` maps
# codes to the class as the reference writes it (None when learnt from the data: rasters).

_NONE = (np.zeros(0, np.int64), np.zeros(0, np.int64))


class _Reference:
    description: str
    kind: str
    labels: dict[int, str] | None
    notes: tuple[str, ...] = ()

    def pairs(self, window: Window, values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _NONE

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        return _NONE


class PointReference(_Reference):
    """Samples at grid pixels (rows, cols) (n,) with codes (n,); points off the grid are left out."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, labels: dict[int, str], *,
                 grid: Grid, block: int, kind: str, description: str):
        self.kind, self.description, self.labels, self.block = kind, description, labels, block
        inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
        if not inside.any():
            raise DataContentError(f"the reference {description} does not overlap the map: no sample lies inside it "
                                   "(check that both cover the same area and their CRS)")
        if not inside.all():
            log(f"accuracy: {int((~inside).sum()):,} of {inside.size:,} reference samples lie outside the map: left out")
        self.rows, self.cols, self.codes = rows[inside], cols[inside], codes[inside]
        # samples grouped by map block, so that each block finds its own at once
        blocks_across = math.ceil(grid.width / block)
        keys = (self.rows // block) * blocks_across + self.cols // block
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
        self._of_block = dict(zip(keys[order][starts].tolist(), np.split(order, starts[1:])))
        self._blocks_across = blocks_across

    def pairs(self, window, values, valid):
        key = (int(window.row_off) // self.block) * self._blocks_across + int(window.col_off) // self.block
        index = self._of_block.get(key)
        if index is None:
            return _NONE
        r, c = self.rows[index] - int(window.row_off), self.cols[index] - int(window.col_off)
        keep = valid[r, c]
        return values[r, c][keep], self.codes[index][keep]


class PixelPolygons(_Reference):
    """Polygons rasterised onto the map grid: each pixel centre they cover is one sample."""

    def __init__(self, labels: Labels, grid: Grid, description: str):
        self.polygons, self.grid, self.description, self.kind = labels, grid, description, "polygons (per pixel)"
        self.labels = dict(enumerate(labels.class_names))
        self.notes = ("reference pixels come from polygons: pixels of one polygon are not independent samples, so "
                      "the intervals are narrower than they should be (cluster sampling); --per-polygon counts "
                      "one sample per polygon",)

    def pairs(self, window, values, valid):
        code = rasterize_classes(self.polygons, self.grid, window)
        keep = valid & (code >= 0)
        return values[keep], code[keep].astype(np.int64)


class PolygonMajority(_Reference):
    """Polygons counted once each: the map class of most of the pixel centres they cover."""

    def __init__(self, labels: Labels, grid: Grid, description: str):
        self.polygons, self.grid, self.description, self.kind = labels, grid, description, "polygons (majority)"
        self.labels = dict(enumerate(labels.class_names))
        self._pixels = _Tally()

    def pairs(self, window, values, valid):
        polygon = rasterize_window(self.polygons, self.grid, window)
        keep = valid & (polygon >= 0)
        self._pixels.add(polygon[keep], values[keep])
        return _NONE

    def finish(self):
        polygon, value, pixels = self._pixels.result()
        if not polygon.size:
            return _NONE
        order = np.lexsort((value, -pixels, polygon))       # per polygon: most pixels first, then smallest id
        first = order[np.r_[True, polygon[order][1:] != polygon[order][:-1]]]
        class_of = self.polygons.class_of_polygon
        return value[first], np.array([class_of[p] for p in polygon[first].tolist()], dtype=np.int64)


class RasterReference(_Reference):
    """A raster of reference class ids read on the map grid (nearest neighbour when on another grid)."""

    def __init__(self, path: Path, grid: Grid):
        self.path, self.grid, self.kind = path, grid, "raster"
        self.description, self.labels = f"raster {path.name}", None
        with rasterio.open(path) as ds:
            own = Grid(ds.crs, ds.transform, ds.height, ds.width)
            dtype = np.dtype(ds.dtypes[0])
        if dtype.kind not in "iu":
            raise DataFormatError(f"the reference {self.description} holds {dtype} values: give a raster of integer class ids")
        if own.crs is None:
            raise DataFormatError(f"the reference {self.description} has no CRS: set it (e.g. gdal_edit.py -a_srs EPSG:32631 REF.tif)")
        self.same_grid = own.same_as(grid)
        if not self.same_grid:
            if not overlaps(grid, own):
                raise DataContentError(f"the reference {self.description} does not overlap the map: check that both cover the same area")
            log(f"accuracy: {path.name} is on another grid than the map: read onto the map grid (nearest neighbour)")
        self.names = read_class_values(path)

    def pairs(self, window, values, valid):
        with rasterio.open(self.path) as ds:
            if self.same_grid:
                ref = ds.read(1, window=window, masked=True)
            else:
                with WarpedVRT(ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                               height=self.grid.height, resampling=Resampling.nearest) as vrt:
                    ref = vrt.read(1, window=window, masked=True)
        keep = valid & ~np.ma.getmaskarray(ref)
        return values[keep], np.asarray(ref.data[keep], dtype=np.int64)

    def observed_labels(self, codes: np.ndarray) -> dict[int, str]:
        """The raster's class names (its tags or PAM categories) for the ids it holds, else the ids."""
        return {int(c): self.names.get(int(c), str(int(c))) for c in np.unique(codes)}


def open_reference(reference: str | Path, grid: Grid, *, field: str | None, per_polygon: bool, block: int) -> _Reference:
    """The reference found at `reference`: a prepared dataset, a raster, or a vector file."""
    path = Path(reference)
    if not path.exists() and dataset_path(path).is_dir():
        path = dataset_path(path)
    require_exists(path, "reference")
    if path.is_dir():
        kind = "prepared"
    else:
        try:
            with rasterio.open(path):
                kind = "raster"
        except rasterio.errors.RasterioIOError:
            kind = "vector"
    if per_polygon and kind != "vector":
        raise ConfigError("--per-polygon needs a reference of polygons: leave it out for points, rasters and datasets")
    if field is not None and kind != "vector":
        log(f"accuracy: --field is ignored for a {'prepared dataset' if kind == 'prepared' else 'raster'} reference")
    if kind == "prepared":
        return prepared_reference(path, grid, block)
    if kind == "raster":
        return RasterReference(path, grid)
    return vector_reference(path, grid, field=field, per_polygon=per_polygon, block=block)


def vector_reference(path: Path, grid: Grid, *, field: str | None, per_polygon: bool, block: int) -> _Reference:
    import pyogrio

    try:
        info = pyogrio.read_info(path)
    except Exception as exc:  # pyogrio raises DataSourceError and others for what OGR cannot open
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(f"cannot read the reference {path}: {first} (give points or polygons in a GeoPackage, "
                              "shapefile or GeoJSON, a raster of class ids, or a prepared dataset NAME.sits)") from None
    if field is None:
        fields = ", ".join(map(str, info["fields"])) or "none"
        raise ConfigError(f"--field: name the class field of {path.name} (its fields: {fields})")
    description = f"{path.name} (field {field!r})"
    if "point" in str(info.get("geometry_type") or "").lower():
        if per_polygon:
            raise ConfigError(f"--per-polygon needs polygons; {path.name} holds points: leave it out")
        xy, names, ids = read_points(path, field, crs=grid.crs, field_option="--field")
        rows, cols = grid_pixels(grid, xy)
        return PointReference(rows, cols, ids, dict(enumerate(names)), grid=grid, block=block, kind="points",
                              description=description)
    labels = read_labels(path, field, crs=grid.crs, bounds=grid.bounds, field_option="--field")
    return PolygonMajority(labels, grid, description) if per_polygon else PixelPolygons(labels, grid, description)


def prepared_reference(path: Path, grid: Grid, block: int) -> PointReference:
    """The labelled TEST samples of a prepared dataset as reference points on the map grid."""
    prepared = open_prepared(path)
    index = prepared.indices("test", labeled_only=True)
    description = f"test split of {path.name}"
    if not index.size:
        raise DataContentError(f"{path.name} has no labelled test sample: prepare it with a test share "
                               "(sits prepare --fractions 0.7,0.15,0.15) or give another reference")
    xy = prepared.ds["xy"].values[index]
    if prepared.tiles and not prepared.crs:  # tiles in several CRSs: each sample's xy is in its own tile's CRS
        if prepared.mode == "patch":
            raise DataContentError(f"{path.name} holds patches of tiles in several CRSs: score each tile's map against "
                                   "a dataset of that tile")
        xy, crs = _tiles_xy_in(prepared, index, xy, grid.crs), grid.crs
    else:
        crs = CRS.from_user_input(prepared.crs) if prepared.crs else None
        if crs is None:
            log(f"accuracy: {path.name} records no CRS: its coordinates are taken in the map's CRS")
    if prepared.mode == "pixel":
        codes = prepared.ds["y"].values[index].astype(np.int64)
    else:
        if crs is not None and crs != grid.crs:
            raise DataContentError(f"{path.name} (patches) is in {crs.to_string()}, the map in {grid.crs.to_string()}: "
                                   "give a map on the dataset's grid")
        xy, codes = _patch_pixels(prepared, index, xy, grid)
    known = np.isfinite(xy).all(axis=1)
    if not known.any():
        raise DataContentError(f"{path.name} holds no map coordinates (xy) for its test samples: they cannot be placed "
                               "on the map (was it prepared from a table without coordinates?)")
    if not known.all():
        log(f"accuracy: {int((~known).sum()):,} test samples of {path.name} have no coordinates: left out")
    xy, codes = xy[known], codes[known]
    if crs is not None and crs != grid.crs:
        xs, ys = transform_points(crs, grid.crs, xy[:, 0], xy[:, 1])
        xy = np.column_stack([xs, ys])
    rows, cols = grid_pixels(grid, xy)
    # only the classes the test split holds: a class the map lacks but no test sample has is no error
    labels = {int(c): prepared.class_names[c] for c in np.unique(codes)}
    return PointReference(rows, cols, codes, labels, grid=grid, block=block, kind="prepared dataset (test split)",
                          description=description)


def _tiles_xy_in(prepared, index: np.ndarray, xy: np.ndarray, crs: CRS) -> np.ndarray:
    """xy (n, 2) of samples of several tiles, each in its tile's CRS, brought into `crs`."""
    tile = prepared.ds["tile"].values[index]
    out = xy.copy()
    for k, about in enumerate(prepared.tiles):
        mine = tile == k
        if mine.any() and CRS.from_user_input(about["crs"]) != crs:
            out[mine] = np.column_stack(transform_points(CRS.from_user_input(about["crs"]), crs, xy[mine, 0], xy[mine, 1]))
    return out


def _patch_pixels(prepared, index: np.ndarray, centres: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (m, 2) and classes (m,) of the labelled pixels of test patches, whose `xy` is the
    patch centre (sits prepare); pixel steps are the map's, as datasets and maps share the S2 grid."""
    size = prepared.patch_size
    offsets = np.arange(size) + 0.5 - size / 2                     # pixel centres from the patch centre
    dx, dy = grid.transform.a, grid.transform.e
    xy_parts, code_parts = [], []
    step = prepared.chunk_samples
    for start in range(0, index.size, step):
        chunk = index[start:start + step]
        y = prepared.ds["y"].isel(sample=chunk).values              # (n, P, P)
        n, r, c = np.nonzero(y >= 0)
        centre = centres[start:start + step][n]
        xy_parts.append(np.column_stack([centre[:, 0] + offsets[c] * dx, centre[:, 1] + offsets[r] * dy]))
        code_parts.append(y[n, r, c].astype(np.int64))
    return np.concatenate(xy_parts), np.concatenate(code_parts)


def grid_pixels(grid: Grid, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (n,) int64 of the pixels containing map coordinates xy (n, 2)."""
    cols, rows = ~grid.transform * (xy[:, 0], xy[:, 1])
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


# ------------------------------------------------------------------------------ the one pass

class _Tally:
    """Counts of (a, b) integer pairs, merged as blocks add them (memory: the distinct pairs)."""

    def __init__(self):
        self._keys: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.size:
            # one int64 key per pair (a in the high 32 bits) sorts far faster than rows of pairs
            keys, counts = np.unique((a.astype(np.int64) << 32) | (b.astype(np.int64) & 0xFFFFFFFF), return_counts=True)
            self._keys.append(keys)
            self._counts.append(counts)
            if len(self._keys) > 64:
                self._merge()

    def _merge(self) -> None:
        keys, inverse = np.unique(np.concatenate(self._keys), return_inverse=True)
        self._keys, self._counts = [keys], [np.bincount(inverse, weights=np.concatenate(self._counts)).astype(np.int64)]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """a (m,), b (m,), count (m,) of the distinct pairs."""
        if not self._keys:
            return _NONE + (np.zeros(0, np.int64),)
        self._merge()
        keys = self._keys[0]
        low = (keys & 0xFFFFFFFF) ^ 0x80000000  # back to signed 32-bit
        return keys >> 32, low - 0x80000000, self._counts[0]


def tally(class_map: ClassMap, ref: _Reference, block: int) -> tuple[dict[int, int], tuple[np.ndarray, ...]]:
    """Read the map once: pixels per map value {value: pixels}, and the samples as distinct
    (map value (m,), reference code (m,), count (m,)) triples."""
    grid, nodata = class_map.grid, class_map.nodata
    mapped, samples = _Tally(), _Tally()
    windows = list(grid_windows(grid, block))
    with rasterio.open(class_map.path) as ds, Progress(len(windows), "accuracy") as bar:
        for window in windows:
            values = ds.read(1, window=window).astype(np.int64)
            if values.size and (values.max() >= 2**31 or values.min() < -(2**31)):
                raise DataContentError(f"the map {class_map.path.name} holds class ids beyond 32 bits: renumber its classes")
            valid = values != nodata if nodata is not None else np.ones(values.shape, bool)
            mapped.add(values[valid], np.zeros(int(valid.sum()), np.int64))
            samples.add(*ref.pairs(window, values, valid))
            bar.advance()
    samples.add(*ref.finish())
    value, _, pixels = mapped.result()
    if not value.size:
        raise DataContentError(f"the map {class_map.path.name} has no classified pixel (all nodata): check the map")
    triples = samples.result()
    if not triples[0].size:
        raise DataContentError(f"no sample of the reference {ref.description} falls on a classified pixel of the map: check that it "
                               "covers the mapped area (and not only its nodata)")
    return dict(zip(value.tolist(), pixels.tolist())), triples


# ---------------------------------------------------------------------------------- classes

def _as_int(text: str) -> int | None:
    text = str(text).strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _listed(items) -> str:
    items = [str(i) for i in items]
    more = f" ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def match_reference(labels: dict[int, str], map_names: dict[int, str] | None, description: str) -> tuple[str, dict[int, int]]:
    """How the reference writes classes ("names" or "ids") and the map class id of each reference code.

    Names are tried first: labels that are all names of the map's classes are names; otherwise
    labels that are all integers are ids. Anything else is one error listing what did not match.
    """
    texts = {code: str(text).strip() for code, text in labels.items()}
    by_name = {name: class_id for class_id, name in (map_names or {}).items()}
    if map_names is not None and all(t in by_name for t in texts.values()):
        return "names", {code: by_name[t] for code, t in texts.items()}
    ids = {code: _as_int(t) for code, t in texts.items()}
    if all(v is not None for v in ids.values()):
        unknown = sorted(set(ids.values()) - set(map_names)) if map_names is not None else []
        if unknown:
            raise DataContentError(f"the reference {description} holds class ids {_listed(unknown)} that the map does not have "
                                   f"(its classes: {_legend(map_names)}): fix the reference (a raster's background needs a nodata "
                                   "value) or give --classes FILE")
        return "ids", ids
    if map_names is None:
        raise ConfigError(f"the reference {description} names its classes ({_listed(sorted(set(texts.values())))}) but the map does "
                          "not: give --classes FILE with one 'id,name' line per class id of the map")
    unknown = sorted({t for t in texts.values() if t not in by_name})
    raise DataContentError(f"the reference {description} has classes the map does not know: {_listed(unknown)} (the map's classes: "
                           f"{_legend(map_names)}): fix the names, or give --classes FILE")


def _legend(names: dict[int, str]) -> str:
    return _listed(f"{i} {n}" for i, n in sorted(names.items()))


@dataclass
class ClassTable:
    """The classes of the report: map ids (K,) and names, in id order."""

    ids: list[int]
    names: list[str]
    named: bool  # the classes are a fixed legend (named map or --classes), not the ids found

    def counts(self, triples, mapped: dict[int, int], class_of_code: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Confusion counts (K, K) (rows map, columns reference) and mapped pixels (K,)."""
        position = {class_id: k for k, class_id in enumerate(self.ids)}
        value, code, count = triples
        rows = np.array([position[v] for v in value.tolist()], dtype=np.int64)
        cols = np.array([position[class_of_code[c]] for c in code.tolist()], dtype=np.int64)
        counts = confusion_counts(rows, cols, len(self.ids), weights=count)
        return counts, np.array([mapped.get(i, 0) for i in self.ids], dtype=np.int64)

    def pruned(self, counts: np.ndarray, mapped: np.ndarray) -> tuple["ClassTable", np.ndarray, np.ndarray]:
        """Without the ids found only in the reference, off the map's classified pixels (unnamed maps)."""
        if self.named:
            return self, counts, mapped
        keep = (mapped > 0) | (counts.sum(0) > 0) | (counts.sum(1) > 0)
        table = ClassTable([i for i, k in zip(self.ids, keep) if k], [n for n, k in zip(self.names, keep) if k], False)
        return table, counts[np.ix_(keep, keep)], mapped[keep]


def class_table(class_map: ClassMap, mapped: dict[int, int], class_of_code: dict[int, int]) -> ClassTable:
    if class_map.names is not None:
        stray = sorted(set(mapped) - set(class_map.names))
        if stray:
            where = "--classes" if class_map.names_from == "--classes" else "its class names"
            raise DataContentError(f"the map {class_map.path.name} holds class ids {_listed(stray)} that {where} do not "
                                   f"name: give --classes FILE naming every id of the map")
        ids = sorted(class_map.names)
        return ClassTable(ids, [class_map.names[i] for i in ids], True)
    ids = sorted(set(mapped) | set(class_of_code.values()))
    return ClassTable(ids, [str(i) for i in ids], False)


# ---------------------------------------------------------------------------------- report

def build_report(class_map: ClassMap, ref: _Reference, value_kind: str, names: list[str], ids: list[int],
                 counts: np.ndarray, mapped_pixels: np.ndarray, pixel_ha: float, *, reference_path: Path,
                 options: dict) -> dict:
    """Every figure, as plain Python (NaN where undefined); see `sitscli.mapping.accuracy`."""
    sample = sample_accuracy(counts)
    adjusted = area_adjusted(counts, mapped_pixels, pixel_area=pixel_ha)
    notes = list(ref.notes) + _estimator_notes(names, counts, adjusted)
    for note in notes:
        log(f"accuracy: {note}")
    return {
        "map": str(class_map.path), "reference": str(reference_path), "reference_description": ref.description,
        "reference_kind": ref.kind,
        "reference_values": value_kind, "class_names_from": class_map.names_from or "ids",
        "options": options,
        "pixel_area_ha": pixel_ha, "mapped_pixels": int(mapped_pixels.sum()),
        "mapped_area_ha": float(mapped_pixels.sum() * pixel_ha), "samples": sample.samples,
        "overall_accuracy": sample.overall, "overall_accuracy_ci95": sample.overall_ci, "kappa": sample.kappa,
        "area_adjusted_overall_accuracy": adjusted.overall, "area_adjusted_overall_accuracy_ci95": adjusted.overall_ci,
        "population_share": adjusted.population_share,
        "per_class": _per_class(names, ids, counts, mapped_pixels, pixel_ha, sample, adjusted),
        "confusion": {"rows": "map", "columns": "reference", "classes": names, "counts": counts.tolist()},
        "area_adjusted_proportions": adjusted.proportions.tolist(),
        "notes": notes,
    }


def _per_class(names, ids, counts, mapped_pixels, pixel_ha, sample: SampleAccuracy, adjusted: AreaAdjusted) -> list[dict]:
    rows = []
    for k, (name, class_id) in enumerate(zip(names, ids)):
        rows.append({
            "id": int(class_id), "name": name,
            "mapped_pixels": int(mapped_pixels[k]), "mapped_area_ha": float(mapped_pixels[k] * pixel_ha),
            "weight": float(adjusted.weights[k]),
            "map_samples": int(counts[k].sum()), "reference_samples": int(counts[:, k].sum()),
            "users_accuracy": float(sample.users[k]), "users_accuracy_ci95": float(adjusted.users_ci[k]),
            "producers_accuracy": float(sample.producers[k]), "f1": float(sample.f1[k]),
            "area_adjusted_producers_accuracy": float(adjusted.producers[k]),
            "area_adjusted_producers_accuracy_ci95": float(adjusted.producers_ci[k]),
            "estimated_area_share": float(adjusted.area_share[k]),
            "estimated_area_share_ci95": float(adjusted.area_share_ci[k]),
            "estimated_area_ha": float(adjusted.area[k]), "estimated_area_ha_ci95": float(adjusted.area_ci[k]),
        })
    return rows


def _estimator_notes(names: list[str], counts: np.ndarray, adjusted: AreaAdjusted) -> list[str]:
    notes = []
    if adjusted.unsampled.any():
        left = [n for n, u in zip(names, adjusted.unsampled) if u]
        notes.append(f"map classes without any reference sample: {_listed(left)}; their mapped area is left out of "
                     f"the area-adjusted estimates, which cover {100 * adjusted.population_share:.1f} % of the mapped area")
    single = [n for n, n_i in zip(names, counts.sum(1)) if n_i == 1]
    if single:
        notes.append(f"map classes with a single reference sample: {_listed(single)}; variances need two per map "
                     "class, so the area-adjusted intervals that involve them are n/a")
    return notes


def json_ready(value):
    """NaN -> None (JSON null), recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_outputs(out: Path, report: dict, counts: np.ndarray, *, overwrite: bool) -> None:
    """accuracy.json, accuracy.md and confusion.png into `out`, all or nothing."""
    per_class = report["per_class"]
    names = [c["name"] for c in per_class]
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        (tmp / REPORT_JSON).write_text(json.dumps(json_ready(report), indent=1, allow_nan=False))
        (tmp / REPORT_MD).write_text(markdown(report))
        title = (f"OA {fmt(report['overall_accuracy'])} (area-adjusted {fmt(report['area_adjusted_overall_accuracy'])}), "
                 f"kappa {fmt(report['kappa'])}, {report['samples']:,} samples")
        plot_confusion(counts, names, tmp / CONFUSION_PNG, title=title, rows="map", columns="reference",
                       row_margin=("user's", np.array([c["users_accuracy"] for c in per_class])),
                       column_margins=[("producer's", np.array([c["producers_accuracy"] for c in per_class])),
                                       ("producer's, area-adj.",
                                        np.array([c["area_adjusted_producers_accuracy"] for c in per_class]))])


# -------------------------------------------------------------------------------- markdown

def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def plus_minus(value: float, half: float, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f} ± {fmt(half, digits)}"


def _ha(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.2f}"


def markdown(report: dict) -> str:
    """The report for people: inputs, overall figures, confusion matrix, per-class table, method."""
    per_class = report["per_class"]
    names = [c["name"] for c in per_class]
    counts = report["confusion"]["counts"]
    lines = [
        "# Accuracy assessment", "",
        f"- map: `{report['map']}` (classes named from: {report['class_names_from']})",
        f"- reference: `{report['reference']}`: {report['reference_description']}, {report['reference_kind']}; "
        "its classes matched to the map's by "
        f"{'name' if report['reference_values'] == 'names' else 'id'}",
        f"- samples: {report['samples']:,}; mapped area: {report['mapped_pixels']:,} px = "
        f"{report['mapped_area_ha']:,.2f} ha ({report['pixel_area_ha']:.4g} ha per pixel)", "",
        "## Overall", "",
        "| figure | value |", "|---|---|",
        f"| overall accuracy (samples) | {plus_minus(report['overall_accuracy'], report['overall_accuracy_ci95'])} |",
        f"| Cohen's kappa | {fmt(report['kappa'])} |",
        f"| overall accuracy, area-adjusted | {plus_minus(report['area_adjusted_overall_accuracy'], report['area_adjusted_overall_accuracy_ci95'])} |",
        "", "± gives the half-width of the 95 % confidence interval; n/a marks a figure that is undefined.", "",
        "## Confusion matrix (sample counts; rows = map, columns = reference)", "",
        "| map \\ reference | " + " | ".join(names) + " | total | user's accuracy |",
        "|---" * (len(names) + 3) + "|",
    ]
    for c, row in zip(per_class, counts):
        lines.append(f"| **{c['name']}** | " + " | ".join(str(v) for v in row) +
                     f" | {sum(row)} | {fmt(c['users_accuracy'])} |")
    lines.append("| total | " + " | ".join(str(c["reference_samples"]) for c in per_class) +
                 f" | {report['samples']} | |")
    lines.append("| producer's accuracy | " + " | ".join(fmt(c["producers_accuracy"]) for c in per_class) + " | | |")
    lines += [
        "", "## Per class", "",
        "| class | mapped area (ha) | W_i | user's accuracy | producer's accuracy | producer's accuracy, area-adjusted "
        "| F1 | estimated area (ha) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in per_class:
        lines.append(
            f"| {c['name']} | {c['mapped_area_ha']:,.2f} | {fmt(c['weight'], 4)} | "
            f"{plus_minus(c['users_accuracy'], c['users_accuracy_ci95'])} | {fmt(c['producers_accuracy'])} | "
            f"{plus_minus(c['area_adjusted_producers_accuracy'], c['area_adjusted_producers_accuracy_ci95'])} | "
            f"{fmt(c['f1'])} | {_ha(c['estimated_area_ha'])} ± {_ha(c['estimated_area_ha_ci95'])} |")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "## Method", "", _METHOD, ""]
    return "\n".join(lines)


_METHOD = """\
Rows i are map classes, columns j reference classes; n_ij are sample counts, N_i the map's pixels of
class i (counted over the whole map), W_i = N_i / sum N its share of the mapped area.

- Sample figures: overall accuracy OA = sum n_ii / n with the 95 % interval OA ± 1.96 sqrt(OA (1 - OA) / n)
  (normal approximation of the binomial); Cohen's kappa; user's accuracy n_ii / n_i.; producer's accuracy
  n_jj / n_.j; F1 = 2 n_kk / (n_k. + n_.k).
- Area-adjusted figures (Olofsson et al. 2014, Remote Sensing of Environment 148:42-57, stratified by map
  class): p_ij = W_i n_ij / n_i. (eq. 4); OA = sum p_jj, user's accuracy p_ii / p_i., producer's accuracy
  p_jj / p_.j (eq. 1-3); variances V(O), V(U_i), V(P_j) of eq. 5-7; the area of class k is
  A p_.k = A sum_i W_i n_ik / n_i. (eq. 9) with standard error A S(p_.k) (eq. 10), A the mapped area.
  Intervals are ± 1.96 standard errors.
- These estimators assume the reference is a probability sample of the map's pixels: simple random,
  systematic, or stratified random by map class. For other references (e.g. training-style polygons)
  they remain descriptive, not unbiased estimates.
- Undefined figures (no sample of a class, a single sample in a map class for a variance, 0/0) are n/a
  here and null in accuracy.json."""
