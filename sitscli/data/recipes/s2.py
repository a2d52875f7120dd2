"""`sits prepare s2`: a folder of Sentinel-2 L2A acquisitions + vector labels -> prepared dataset.

Pixel mode samples pixels per polygon (and an unlabelled pool outside them) and stores each one's
series; patch mode cuts the whole area into P x P patches with per-pixel labels, for spatial
models (e.g. ALISE's U-BARN, trained on 64 x 64 patches). Both read the cube by windows, only
where something is sampled, so peak memory follows the window and the sample, not the tile.
Other sensors (Sentinel-1, PlanetScope, a VHR image) join as extra modalities of the same samples
(see `sensors.py`); `keep_cloudy` keeps Sentinel-2 values under clouds with a cloud level 0-31.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rasterio.transform import xy as pixel_xy
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.io import require_input
from sitscli.core.legend import apply_color_file
from sitscli.core.progress import Progress, log
from sitscli.data.cube import Cube
from sitscli.data.labels import NO_POLYGON, UNLABELED, Labels, class_lookup, rasterize_window, read_labels, sample_pixels
from sitscli.data.prepared import PreparedWriter
from sitscli.data.readers import open_source
from sitscli.data.recipes.sensors import READ_BUDGET, OtherSensors, SensorInputs, pad_end, time_chunks
from sitscli.data.splits import UNLABELED as UNLABELED_SPLIT
from sitscli.data.splits import split_codes, split_groups

# Neighbouring pixels of one field are nearly copies of each other: a cap keeps large fields from
# swamping small ones and classes with few big parcels from dominating. 200 is a working choice
# (no paper fixes it); set --max-per-polygon 0 to keep every pixel.
DEFAULT_MAX_PER_POLYGON = 200
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
READ_BLOCK = 256               # pixels: windows read in pixel mode


def prepare_s2(folder: str | Path, out: str | Path, *, labels: str | Path, class_field: str,
               bands: Sequence[str] | None = None, aoi=None, date_range: tuple[int, int] | None = None,
               tile: str | None = None, max_cloud: float | None = None, valid_scl: Sequence[int] = (4, 5, 6, 7), buffer: float = 0.0,
               color_field: str | None = None, code_field: str | None = None, colors: str | Path | None = None,
               max_per_polygon: int | None = DEFAULT_MAX_PER_POLYGON, unlabeled: int = 0,
               patch_size: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
               seed: int = 0, overwrite: bool = False, config: dict | None = None,
               sensors: SensorInputs | None = None, keep_cloudy: bool = False) -> Path:
    """Prepare a dataset from an L2A folder (any layout `open_source` reads) and a label file.

    Args:
        folder: L2A acquisitions of one tile (SAFE, Theia, per-band COGs, stack, per-date GeoTIFFs), or
            a STAC document (file or URL); a stack may be a URL or GDAL virtual path.
        out: the `NAME.sits` directory to write.
        labels, class_field, buffer, color_field, code_field: the vector labels (see `sitscli.data.labels`).
        colors: a colour file (`sitscli.core.legend.read_color_file`) overriding the class colours.
        bands, aoi, date_range, tile, max_cloud, valid_scl: passed to the reader (`open_source`).
        max_per_polygon: pixel mode, pixels drawn per polygon (None or 0: all of them).
        unlabeled: pixel mode, pixels drawn outside every polygon for self-supervised pretraining.
        patch_size: P for patch mode (None: pixel mode).
        fractions: train/val/test shares of the polygons, stratified by class.
        sensors: other sensors to add as modalities of the same samples (Sentinel-1, PlanetScope, VHR).
        keep_cloudy: store Sentinel-2 values under clouds too, with a cloud level 0-31 per observation.
    Returns:
        The path of the written dataset.
    """
    folder = require_input(folder, "L2A folder")
    cube = open_source(folder, bands=list(bands) if bands else None, aoi=aoi, date_range=date_range,
                       valid_scl=tuple(valid_scl), tile=tile, keep_cloudy=keep_cloudy, max_cloud=max_cloud)
    return prepare_cube(cube, out, labels=labels, class_field=class_field, buffer=buffer, color_field=color_field,
                        code_field=code_field, colors=colors, max_per_polygon=max_per_polygon, unlabeled=unlabeled,
                        patch_size=patch_size, fractions=fractions, seed=seed, source=f"s2 {cube.layout}: {folder}", overwrite=overwrite,
                        config=config, sensors=sensors, keep_cloudy=keep_cloudy)


def prepare_cube(cube: Cube, out: str | Path, *, labels: str | Path, class_field: str, buffer: float = 0.0,
                 color_field: str | None = None, code_field: str | None = None, colors: str | Path | None = None,
                 max_per_polygon: int | None = DEFAULT_MAX_PER_POLYGON,
                 unlabeled: int = 0, patch_size: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 seed: int = 0, source: str = "", overwrite: bool = False, config: dict | None = None,
                 sensors: SensorInputs | None = None, keep_cloudy: bool = False) -> Path:
    """`prepare_s2` on an already opened cube (any `Cube`; opened with keep_cloudy when asked);
    same arguments, `source` recorded as is."""
    if patch_size is not None and patch_size < 1:
        raise ConfigError(f"--patch-size {patch_size}: give a patch side in pixels >= 1, e.g. 64")
    if patch_size is not None and patch_size > min(cube.grid.height, cube.grid.width):
        # checked before anything is allocated: a patch is padded to its full size in memory
        raise ConfigError(f"--patch-size {patch_size} is larger than the raster ({cube.grid.width} x "
                          f"{cube.grid.height} px): give a patch side that fits, e.g. 64")
    found = read_labels(labels, class_field, crs=cube.grid.crs, bounds=cube.grid.bounds, buffer=buffer,
                        color_field=color_field, code_field=code_field)
    if colors is not None:
        found.class_colors = apply_color_file(colors, found.class_names, found.class_codes, found.class_colors)
    others = OtherSensors(cube, sensors) if sensors is not None and sensors.any else None
    log(f"prepare s2: {cube.layout} cube, {len(cube.dates)} dates, {len(cube.band_names)} bands, "
        f"{cube.grid.width} x {cube.grid.height} px; {len(found.polygons)} polygons, {len(found.class_names)} classes")
    with PreparedWriter(out, n_time=len(cube.dates), band_names=list(cube.band_names), class_names=found.class_names,
                        class_colors=found.class_colors, class_codes=found.class_codes, sensor="sentinel-2",
                        source=source or cube.layout,
                        mode="pixel" if patch_size is None else "patch", patch_size=patch_size,
                        crs=cube.grid.crs.to_wkt(), config=config, overwrite=overwrite,
                        modalities=others.modalities(patch_size) if others else (), keep_cloudy=keep_cloudy,
                        cloud_source=(getattr(cube, "cloud_source", None) or "") if keep_cloudy else "") as writer:
        reader = _SampleReader(cube, others, keep_cloudy)
        if patch_size is None:
            _write_pixels(reader, found, writer, max_per_polygon=max_per_polygon or None, unlabeled=unlabeled,
                          fractions=fractions, seed=seed)
        else:
            _write_patches(reader, found, writer, patch_size, fractions=fractions, seed=seed)
    return writer.path


class _SampleReader:
    """Reads what one sample holds: the Sentinel-2 series (and cloud levels), and the other sensors."""

    def __init__(self, cube: Cube, others: OtherSensors | None, keep_cloudy: bool):
        self.cube, self.others, self.keep_cloudy = cube, others, keep_cloudy

    def read(self, window: Window, times: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sentinel-2 `values` (t, C, h, w), `valid` (t, h, w) and, kept cloudy, `cloud` (t, h, w) uint8."""
        if not self.keep_cloudy:
            values, valid = self.cube.read(window, times)
            return {"values": values, "valid": valid}
        values, valid, cloud = self.cube.read_with_cloud(window, times)  # one pass over the files
        return {"values": values, "valid": valid, "cloud": cloud}


# ------------------------------------------------------------------------------- pixel mode

def _write_pixels(reader: _SampleReader, labels: Labels, writer: PreparedWriter, *, max_per_polygon: int | None,
                  unlabeled: int, fractions: Sequence[float], seed: int) -> None:
    cube = reader.cube
    sample = sample_pixels(labels, cube.grid, max_per_polygon=max_per_polygon, unlabeled=unlabeled, seed=seed)
    # the unlabelled pool is group NO_POLYGON with class -1: split_groups gives it code 3
    split = split_codes(sample.polygon, split_groups(sample.polygon, sample.y, fractions=tuple(fractions), seed=seed))
    x, y = pixel_xy(cube.grid.transform, sample.row, sample.col, offset="center")
    xy = np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)], axis=1)
    kept = 0
    for index, s2, others in _read_pixels(reader, sample.row, sample.col):
        clear = s2["valid"].any(axis=1)  # a series with no clear date teaches nothing
        index = index[clear]
        if index.size:
            writer.append(x=s2["values"][clear], valid=s2["valid"][clear], cloud=s2["cloud"][clear] if "cloud" in s2 else None,
                          date=cube.dates, y=sample.y[index], split=split[index],
                          group=sample.polygon[index], xy=xy[index], others=_select(others, clear))
        kept += index.size
    if kept == 0:
        raise DataContentError("every sampled pixel is cloudy or nodata on every date: check the masks, --valid-scl or --dates")
    if kept < len(sample):
        log(f"prepare s2: dropped {len(sample) - kept} of {len(sample)} sampled pixels with no clear date")
    log(f"prepare s2: {kept} pixel series " + ", ".join(f"{n} {name}" for name, n in _split_counts(split).items() if n))


def _select(others: dict[str, dict[str, np.ndarray]], keep: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The samples `keep` of every other sensor's arrays (dates are shared, kept whole)."""
    return {name: {k: (v if k == "date" else v[keep]) for k, v in part.items()} for name, part in others.items()}


def _read_pixels(reader: _SampleReader, row: np.ndarray, col: np.ndarray, block: int = READ_BLOCK
                 ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]]:
    """Series of the given pixels, block by block: (index (n,), Sentinel-2 {values (n, T, C) float32,
    valid (n, T) bool[, cloud (n, T) uint8]}, the other sensors' blocks (see OtherSensors.at_pixels)).

    Only blocks holding a sampled pixel are read, each over the bounding box of its pixels, and
    along time in chunks that keep one read under READ_BUDGET bytes.
    """
    cube = reader.cube
    n_time, n_band = len(cube.dates), len(cube.band_names)
    block_id = (row // block) * (cube.grid.width // block + 1) + col // block
    order = np.argsort(block_id, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(block_id[order]) != 0, True])
    with Progress(len(bounds) - 1, "reading pixels") as bar:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            index = order[start:stop]
            r0, c0 = int(row[index].min()), int(col[index].min())
            window = Window(c0, r0, int(col[index].max()) - c0 + 1, int(row[index].max()) - r0 + 1)
            r, c = row[index] - r0, col[index] - c0
            s2 = {"values": np.empty((index.size, n_time, n_band), dtype=np.float32),
                  "valid": np.empty((index.size, n_time), dtype=bool)}
            if reader.keep_cloudy:
                s2["cloud"] = np.empty((index.size, n_time), dtype=np.uint8)
            for times in time_chunks(n_time, n_band * int(window.height) * int(window.width) * 4):
                read = reader.read(window, times)          # values (t, C, h, w), valid and cloud (t, h, w)
                s2["values"][:, times] = read["values"][:, :, r, c].transpose(2, 0, 1)  # (n, t, C)
                for key in ("valid", "cloud"):
                    if key in s2:
                        s2[key][:, times] = read[key][:, r, c].T
            others = reader.others.at_pixels(window, r, c) if reader.others else {}
            bar.advance()
            yield index, s2, others


def _split_counts(split: np.ndarray) -> dict[str, int]:
    return {name: int((split == code).sum()) for code, name in enumerate(("train", "val", "test", "unlabeled"))}


# ------------------------------------------------------------------------------- patch mode
#
# Splitting patches: a polygon often straddles patch borders, so splitting patches at random
# would put one field's pixels in two splits. Instead each polygon gets a split (stratified by
# class, as in pixel mode) and each patch takes the split of the polygon covering most of its
# pixels; pixels of polygons from another split are set unlabelled (-1) in that patch. No
# polygon's labels then appear in two splits, and no labelled pixel is thrown away needlessly.
# The imagery around a test field may still be seen, unlabelled, in a training patch; labels
# never are. Patches without any labelled pixel are kept with split "unlabeled" for pretraining.
# Edge patches that pass the grid border are padded with valid=False and y=-1, so the whole
# area is kept.

def _write_patches(reader: _SampleReader, labels: Labels, writer: PreparedWriter, size: int, *,
                   fractions: Sequence[float], seed: int) -> None:
    cube = reader.cube
    windows = list(_patch_windows(cube.grid.height, cube.grid.width, size))
    majority, present = _patch_majorities(cube, labels, windows)
    if not present.size:
        raise DataContentError(f"labels {labels.source.name}: no polygon covers the centre of a raster pixel "
                               "(polygons too small, buffer too wide, or outside the area)")
    of_polygon = split_groups(present, class_lookup(labels)(present), fractions=tuple(fractions), seed=seed)
    split_table = np.full(int(labels.polygons["polygon_id"].max()) + 2, UNLABELED_SPLIT, dtype=np.int8)  # [-1] = no polygon
    split_table[present] = split_codes(present, of_polygon)
    patch_split = np.where(majority == NO_POLYGON, UNLABELED_SPLIT, split_table[majority]).astype(np.int8)
    to_class = class_lookup(labels)
    kept, batch = [], _PatchBatch(writer, cube.dates)
    with Progress(len(windows), "reading patches") as bar:
        for i, window, s2 in _read_patches(reader, windows, size):
            bar.advance()
            if not s2["valid"].any():
                continue  # outside the swath or cloudy on every date
            polygon = pad_end(rasterize_window(labels, cube.grid, window), size, NO_POLYGON)
            y = np.where(split_table[polygon] == patch_split[i], to_class(polygon), UNLABELED).astype(np.int16)
            centre = pixel_xy(cube.grid.transform, window.row_off + size / 2, window.col_off + size / 2, offset="ul")
            others = reader.others.at_patch(window, size) if reader.others else {}
            batch.add(s2, others, y=y, split=patch_split[i], group=majority[i], xy=np.asarray(centre, dtype=np.float64))
            kept.append(i)
    batch.flush()
    if not kept:
        raise DataContentError("every patch is cloudy or nodata on every date: check the masks, --valid-scl or --dates")
    if len(kept) < len(windows):
        log(f"prepare s2: dropped {len(windows) - len(kept)} of {len(windows)} patches with no clear pixel")
    log(f"prepare s2: {len(kept)} patches of {size} x {size} px " +
        ", ".join(f"{n} {name}" for name, n in _split_counts(patch_split[kept]).items() if n))


def _patch_windows(height: int, width: int, size: int) -> Iterator[Window]:
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def _patch_majorities(cube: Cube, labels: Labels, windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """Per patch, the polygon covering most of its pixels (NO_POLYGON if none); and every polygon seen."""
    majority = np.full(len(windows), NO_POLYGON, dtype=np.int64)
    present: set[int] = set()
    for i, window in enumerate(windows):
        polygon = rasterize_window(labels, cube.grid, window)
        ids, counts = np.unique(polygon[polygon != NO_POLYGON], return_counts=True)
        if ids.size:
            majority[i] = ids[np.argmax(counts)]  # ties: the lowest polygon id, deterministic
            present.update(ids.tolist())
    return majority, np.array(sorted(present), dtype=np.int64)


def _read_patches(reader: _SampleReader, windows: list[Window], size: int
                  ) -> Iterator[tuple[int, Window, dict[str, np.ndarray]]]:
    """(index, window, Sentinel-2 {values (T, C, P, P) float32, valid (T, P, P)[, cloud (T, P, P)]}) of
    each patch, padded past the grid edge.

    Neighbouring patches of one row are read as one window of up to READ_BUDGET bytes: every read
    decodes each date's files again (JP2 above all), so fewer, wider reads are much faster.
    """
    cube = reader.cube
    per_patch = len(cube.dates) * len(cube.band_names) * size * size * 4
    run = max(1, READ_BUDGET // per_patch)
    start = 0
    while start < len(windows):
        row_off = windows[start].row_off
        stop = start + 1
        while stop < len(windows) and stop - start < run and windows[stop].row_off == row_off:
            stop += 1
        first, last = windows[start], windows[stop - 1]
        span = Window(first.col_off, row_off, last.col_off + last.width - first.col_off, first.height)
        read = reader.read(span)                     # values (T, C, h, span), valid and cloud (T, h, span)
        for i in range(start, stop):
            cols = slice(windows[i].col_off - first.col_off, windows[i].col_off - first.col_off + windows[i].width)
            yield i, windows[i], {key: pad_end(a[..., cols], size, False if a.dtype == bool else 0)
                                  for key, a in read.items()}
        start = stop


class _PatchBatch:
    """Collects patches and appends them to the writer in batches of about READ_BUDGET bytes."""

    def __init__(self, writer: PreparedWriter, dates: np.ndarray):
        self.writer, self.dates = writer, dates
        self.items: list[tuple[dict, dict, dict]] = []
        self.bytes = 0

    def add(self, s2: dict[str, np.ndarray], others: dict[str, dict[str, np.ndarray]], **labels) -> None:
        """One patch: its Sentinel-2 arrays, the other sensors' arrays, and y, split, group, xy."""
        self.items.append((s2, others, labels))
        self.bytes += s2["values"].nbytes + sum(part["x"].nbytes for part in others.values())
        if self.bytes >= READ_BUDGET:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        s2, others, labels = (self._stack([item[k] for item in self.items]) for k in range(3))
        others = {name: {**part, "date": self.items[0][1][name]["date"]} if "date" in part else part
                  for name, part in others.items()}
        self.writer.append(x=s2["values"], valid=s2["valid"], cloud=s2.get("cloud"), date=self.dates,
                           y=labels["y"], split=labels["split"].astype(np.int8), group=labels["group"].astype(np.int64),
                           xy=labels["xy"], others=others)
        self.items, self.bytes = [], 0

    @staticmethod
    def _stack(dicts: list[dict]) -> dict:
        """Stack a list of (nested) dicts of arrays along a new first axis."""
        first = dicts[0]
        return {k: _PatchBatch._stack([d[k] for d in dicts]) if isinstance(first[k], dict) else np.stack([d[k] for d in dicts])
                for k in first}
