"""`sits prepare s2`: a folder of Sentinel-2 L2A acquisitions + vector labels -> prepared dataset.

Pixel mode samples pixels per polygon (and an unlabelled pool outside them) and stores each one's
series; patch mode cuts the whole area into P x P patches with per-pixel labels, for spatial
models (e.g. ALISE's U-BARN, trained on 64 x 64 patches). Both read the cube by windows, only
where something is sampled, so peak memory follows the window and the sample, not the tile.
Other sensors (Sentinel-1, PlanetScope, a VHR image) join as extra modalities of the same samples
(see `sensors.py`); `keep_cloudy` keeps Sentinel-2 values under clouds with a cloud level 0-31.

Several tiles (several sources; every MGRS tile of a STAC document; the tiles `--tile` names in a
source holding several) make one dataset: each tile is read on its own grid, CRS and dates, with the labels reprojected to it, and
its samples are appended to the same store with a per-sample `tile` index (see `prepared.py`).
A polygon lying on an overlap of tiles is sampled from one of them only: the first (in the order
given) that holds its representative point, else the first it touches. The train/val/test split is
drawn once over the polygons of all tiles, the band statistics come from the whole train split and
the class table is the label file's. Series keep their own tile's dates (every sample has its own
dates in the store; shorter series are padded), so tiles need no common calendar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import shapely
from rasterio.transform import xy as pixel_xy
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.io import require_input
from sitscli.core.legend import apply_color_file
from sitscli.core.progress import Progress, log
from sitscli.data.cube import Cube
from sitscli.data.labels import NO_POLYGON, UNLABELED, Labels, class_lookup, rasterize_window, read_labels, sample_pixels
from sitscli.data.prepared import SPLITS, PreparedWriter
from sitscli.data.readers import open_source, stac
from sitscli.data.readers.common import normalise_tile
from sitscli.data.recipes.sensors import READ_BUDGET, OtherSensors, SensorInputs, pad_end, time_chunks
from sitscli.data.splits import UNLABELED as UNLABELED_SPLIT
from sitscli.data.splits import split_codes, split_groups

# Neighbouring pixels of one field are nearly copies of each other: a cap keeps large fields from
# swamping small ones and classes with few big parcels from dominating. 200 is a working choice
# (no paper fixes it); set --max-per-polygon 0 to keep every pixel.
DEFAULT_MAX_PER_POLYGON = 200
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
READ_BLOCK = 256               # pixels: windows read in pixel mode


def prepare_s2(folder: str | Path | Sequence[str | Path], out: str | Path, *, labels: str | Path, class_field: str,
               bands: Sequence[str] | None = None, aoi=None, date_range: tuple[int, int] | None = None,
               tile: str | Sequence[str] | None = None, max_cloud: float | None = None, valid_scl: Sequence[int] = (4, 5, 6, 7), buffer: float = 0.0,
               color_field: str | None = None, code_field: str | None = None, colors: str | Path | None = None,
               max_per_polygon: int | None = DEFAULT_MAX_PER_POLYGON, unlabeled: int = 0,
               patch_size: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
               seed: int = 0, overwrite: bool = False, config: dict | None = None,
               sensors: SensorInputs | None = None, keep_cloudy: bool = False) -> Path:
    """Prepare a dataset from L2A folders (any layout `open_source` reads) and a label file.

    Args:
        folder: L2A acquisitions (SAFE, Theia, per-band COGs, stack, per-date GeoTIFFs), or a STAC
            document (file or URL); a stack may be a URL or GDAL virtual path. Several sources, or a
            STAC document of several MGRS tiles, make one dataset of all their tiles.
        out: the `NAME.sits` directory to write.
        labels, class_field, buffer, color_field, code_field: the vector labels (see `sitscli.data.labels`).
        colors: a colour file (`sitscli.core.legend.read_color_file`) overriding the class colours.
        bands, aoi, date_range, max_cloud, valid_scl: passed to the reader (`open_source`).
        tile: the MGRS tile(s) to read: one is looked for in every source; several (a list, or
            "T31TCJ,T31TDJ") are tiles of a single source.
        max_per_polygon: pixel mode, pixels drawn per polygon (None or 0: all of them).
        unlabeled: pixel mode, pixels drawn outside every polygon for self-supervised pretraining
            (in each tile: where tiles overlap, the pool may see a place twice; it is never labelled).
        patch_size: P for patch mode (None: pixel mode).
        fractions: train/val/test shares of the polygons, stratified by class.
        sensors: other sensors to add as modalities of the same samples (Sentinel-1, PlanetScope, VHR);
            one tile only.
        keep_cloudy: store Sentinel-2 values under clouds too, with a cloud level 0-31 per observation.
    Returns:
        The path of the written dataset.
    """
    jobs = tile_jobs([folder] if isinstance(folder, (str, Path)) else list(folder), tile)
    cubes = [open_source(source, bands=list(bands) if bands else None, aoi=aoi, date_range=date_range,
                         valid_scl=tuple(valid_scl), tile=name, keep_cloudy=keep_cloudy, max_cloud=max_cloud)
             for source, name in jobs]
    sources = list(dict.fromkeys(str(source) for source, _ in jobs))
    return prepare_cube(cubes if len(cubes) > 1 else cubes[0], out, labels=labels, class_field=class_field,
                        buffer=buffer, color_field=color_field, code_field=code_field, colors=colors,
                        max_per_polygon=max_per_polygon, unlabeled=unlabeled, patch_size=patch_size,
                        fractions=fractions, seed=seed, overwrite=overwrite, config=config, sensors=sensors,
                        source=f"s2 {'+'.join(dict.fromkeys(c.layout for c in cubes))}: {', '.join(sources)}",
                        keep_cloudy=keep_cloudy)


def tile_jobs(folders: Sequence[str | Path], tile: str | Sequence[str] | None) -> list[tuple[str | Path, str | None]]:
    """(source, tile or None) of every cube to read: several tiles named with one source, else the
    named tile (or None) in each source, a STAC document of several tiles standing for all of them."""
    sources = [require_input(f, "L2A folder") for f in folders]
    wanted = [normalise_tile(t) for t in ((tile.split(",") if isinstance(tile, str) else tile) or []) if str(t).strip()]
    if len(wanted) > 1:
        if len(sources) != 1:
            raise ConfigError(f"--tile {','.join(wanted)} picks several tiles of one source: give a single folder or "
                              "catalog with it, or one tile (looked for in every source)")
        return [(sources[0], name) for name in dict.fromkeys(wanted)]
    jobs: list[tuple[str | Path, str | None]] = []
    for source in sources:
        held = stac.tiles(source) if not wanted and stac.is_stac(source) else []
        jobs += [(source, name) for name in held] if len(held) > 1 else [(source, wanted[0] if wanted else None)]
    return jobs


def prepare_cube(cube: Cube | Sequence[Cube], out: str | Path, *, labels: str | Path, class_field: str, buffer: float = 0.0,
                 color_field: str | None = None, code_field: str | None = None, colors: str | Path | None = None,
                 max_per_polygon: int | None = DEFAULT_MAX_PER_POLYGON,
                 unlabeled: int = 0, patch_size: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 seed: int = 0, source: str = "", overwrite: bool = False, config: dict | None = None,
                 sensors: SensorInputs | None = None, keep_cloudy: bool = False) -> Path:
    """`prepare_s2` on already opened cubes, one per tile (any `Cube`; opened with keep_cloudy when
    asked); same arguments, `source` recorded as is."""
    cubes = [cube] if isinstance(cube, Cube) else list(cube)
    for one in cubes:
        _check_patch_size(patch_size, one)
    _check_same_bands(cubes)
    if len(cubes) > 1 and sensors is not None and sensors.any:
        raise ConfigError("--s1, --planetscope and --vhr join a single tile: prepare each tile on its own with them")
    found = [read_labels(labels, class_field, crs=c.grid.crs, bounds=c.grid.bounds if len(cubes) == 1 else None,
                         buffer=buffer, color_field=color_field, code_field=code_field) for c in cubes]
    if colors is not None:
        for one in found:
            one.class_colors = apply_color_file(colors, one.class_names, one.class_codes, one.class_colors)
    tiles = _owned_polygons(cubes, found) if len(cubes) > 1 else [(cubes[0], found[0])]
    others = OtherSensors(cubes[0], sensors) if sensors is not None and sensors.any else None
    first = found[0]
    for one, own in tiles:
        log(f"prepare s2: {_tile_name(one) + ' ' if len(tiles) > 1 else ''}{one.layout} cube, {len(one.dates)} dates, {len(one.band_names)} bands, "
            f"{one.grid.width} x {one.grid.height} px; {len(own.polygons)} polygons, {len(own.class_names)} classes")
    crs = {c.grid.crs.to_wkt() for c, _ in tiles}
    with PreparedWriter(out, n_time=max(len(c.dates) for c, _ in tiles), band_names=list(cubes[0].band_names),
                        class_names=first.class_names, class_colors=first.class_colors, class_codes=first.class_codes,
                        sensor="sentinel-2", source=source or cubes[0].layout,
                        mode="pixel" if patch_size is None else "patch", patch_size=patch_size,
                        crs=crs.pop() if len(crs) == 1 else "", config=config, overwrite=overwrite,
                        modalities=others.modalities(patch_size) if others else (), keep_cloudy=keep_cloudy,
                        cloud_source=",".join(dict.fromkeys(c.cloud_source or "" for c, _ in tiles)) if keep_cloudy else "",
                        tiles=[_tile_attrs(c) for c, _ in tiles] if len(cubes) > 1 else ()) as writer:
        readers = [(_SampleReader(c, others, keep_cloudy), own) for c, own in tiles]
        if patch_size is None:
            _write_pixels(readers, writer, max_per_polygon=max_per_polygon or None, unlabeled=unlabeled,
                          fractions=fractions, seed=seed)
        else:
            _write_patches(readers, first, writer, patch_size, fractions=fractions, seed=seed)
    return writer.path


def _check_patch_size(patch_size: int | None, cube: Cube) -> None:
    if patch_size is not None and patch_size < 1:
        raise ConfigError(f"--patch-size {patch_size}: give a patch side in pixels >= 1, e.g. 64")
    if patch_size is not None and patch_size > min(cube.grid.height, cube.grid.width):
        # checked before anything is allocated: a patch is padded to its full size in memory
        raise ConfigError(f"--patch-size {patch_size} is larger than the raster ({cube.grid.width} x "
                          f"{cube.grid.height} px): give a patch side that fits, e.g. 64")


def _check_same_bands(cubes: list[Cube]) -> None:
    """One dataset has one band list: every tile must read the same bands, in the same order."""
    for cube in cubes[1:]:
        if list(cube.band_names) != list(cubes[0].band_names):
            raise DataContentError(f"tile {_tile_name(cube)} has bands {','.join(cube.band_names)} but "
                                   f"tile {_tile_name(cubes[0])} has {','.join(cubes[0].band_names)}: "
                                   "give --bands that every tile holds")


def _tile_name(cube: Cube) -> str:
    """'T31TCJ' for a cube that knows its tile, else its source's file or folder name."""
    return f"T{cube.tile}" if cube.tile else str(getattr(cube, "source", cube.layout)).rstrip("/").rsplit("/", 1)[-1]


def _tile_attrs(cube: Cube) -> dict:
    """What the store records of one tile: enough to put its samples' xy back on its grid."""
    return {"id": _tile_name(cube), "crs": cube.grid.crs.to_string(),
            "transform": [float(v) for v in tuple(cube.grid.transform)[:6]], "width": int(cube.grid.width),
            "height": int(cube.grid.height), "source": str(getattr(cube, "source", ""))}


def _owned_polygons(cubes: list[Cube], found: list[Labels]) -> list[tuple[Cube, Labels]]:
    """Each tile with the polygons it samples, so that a polygon on an overlap of tiles is sampled once:
    from the first tile holding its representative point (a point always inside it), else the first
    it touches. Tiles left without a polygon are skipped (said); none at all is an error."""
    owner: dict[int, int] = {}
    for rule in ("point", "touch"):
        for k, (cube, labels) in enumerate(zip(cubes, found)):
            box = shapely.box(*cube.grid.bounds)
            shapes = labels.polygons.geometry
            hit = shapes.representative_point().within(box) if rule == "point" else shapes.intersects(box)
            for polygon in labels.polygons["polygon_id"].to_numpy()[hit.to_numpy()]:
                owner.setdefault(int(polygon), k)
    if not owner:
        raise DataContentError(f"labels {found[0].source.name} overlap none of the {len(cubes)} tiles: check that they "
                               "cover the same area")
    tiles = []
    for k, (cube, labels) in enumerate(zip(cubes, found)):
        mine = labels.polygons["polygon_id"].map(lambda p: owner.get(int(p)) == k).to_numpy(dtype=bool)
        if not mine.any():
            log(f"prepare s2: tile {_tile_name(cube)} holds no polygon of its own (none, or all on tiles "
                "listed before it): skipped")
            continue
        # the footprint stays whole: the unlabelled pool never draws a pixel under any polygon
        tiles.append((cube, dataclasses.replace(labels, polygons=labels.polygons[mine])))
    return tiles


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

def _write_pixels(readers: list[tuple[_SampleReader, Labels]], writer: PreparedWriter, *,
                  max_per_polygon: int | None, unlabeled: int, fractions: Sequence[float], seed: int) -> None:
    """Sample every tile, split the polygons of all of them at once, then read and append tile by tile."""
    samples = [sample_pixels(labels, reader.cube.grid, max_per_polygon=max_per_polygon, unlabeled=unlabeled, seed=seed)
               for reader, labels in readers]
    # the unlabelled pool is group NO_POLYGON with class -1: split_groups gives it code 3
    of_polygon = split_groups(np.concatenate([s.polygon for s in samples]), np.concatenate([s.y for s in samples]),
                              fractions=tuple(fractions), seed=seed)
    kept, total = 0, np.zeros(4, dtype=np.int64)
    for k, ((reader, _), sample) in enumerate(zip(readers, samples)):
        split = split_codes(sample.polygon, of_polygon)
        cube = reader.cube
        x, y = pixel_xy(cube.grid.transform, sample.row, sample.col, offset="center")
        xy = np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)], axis=1)
        for index, s2, others in _read_pixels(reader, sample.row, sample.col):
            clear = s2["valid"].any(axis=1)  # a series with no clear date teaches nothing
            index = index[clear]
            if index.size:
                writer.append(x=s2["values"][clear], valid=s2["valid"][clear],
                              cloud=s2["cloud"][clear] if "cloud" in s2 else None, date=cube.dates, y=sample.y[index],
                              split=split[index], group=sample.polygon[index], xy=xy[index],
                              others=_select(others, clear), tile=k if writer.tiles else None)
            kept += index.size
        total += np.bincount(split, minlength=4)
    drawn = sum(len(s) for s in samples)
    if kept == 0:
        raise DataContentError("every sampled pixel is cloudy or nodata on every date: check the masks, --valid-scl or --dates")
    if kept < drawn:
        log(f"prepare s2: dropped {drawn - kept} of {drawn} sampled pixels with no clear date")
    log(f"prepare s2: {kept} pixel series " + ", ".join(f"{n} {name}" for name, n in zip(SPLITS, total) if n))


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

def _write_patches(readers: list[tuple[_SampleReader, Labels]], every: Labels, writer: PreparedWriter, size: int, *,
                   fractions: Sequence[float], seed: int) -> None:
    """Cut every tile into patches, split the polygons of all of them at once (`every`: the labels with
    all polygons), then read and append tile by tile."""
    windows = [list(_patch_windows(r.cube.grid.height, r.cube.grid.width, size)) for r, _ in readers]
    majorities = [_patch_majorities(r.cube, labels, w) for (r, labels), w in zip(readers, windows)]
    present = np.unique(np.concatenate([p for _, p in majorities]))
    if not present.size:
        raise DataContentError(f"labels {every.source.name}: no polygon covers the centre of a raster pixel "
                               "(polygons too small, buffer too wide, or outside the area)")
    to_class = class_lookup(every)
    of_polygon = split_groups(present, to_class(present), fractions=tuple(fractions), seed=seed)
    split_table = np.full(int(every.polygons["polygon_id"].max()) + 2, UNLABELED_SPLIT, dtype=np.int8)  # [-1] = no polygon
    split_table[present] = split_codes(present, of_polygon)
    kept, total, counts = 0, sum(len(w) for w in windows), np.zeros(4, dtype=np.int64)
    for k, ((reader, labels), tile_windows, (majority, _)) in enumerate(zip(readers, windows, majorities)):
        cube = reader.cube
        patch_split = np.where(majority == NO_POLYGON, UNLABELED_SPLIT, split_table[majority]).astype(np.int8)
        batch = _PatchBatch(writer, cube.dates, tile=k if writer.tiles else None)
        with Progress(len(tile_windows), "reading patches") as bar:
            for i, window, s2 in _read_patches(reader, tile_windows, size):
                bar.advance()
                if not s2["valid"].any():
                    continue  # outside the swath or cloudy on every date
                polygon = pad_end(rasterize_window(labels, cube.grid, window), size, NO_POLYGON)
                y = np.where(split_table[polygon] == patch_split[i], to_class(polygon), UNLABELED).astype(np.int16)
                centre = pixel_xy(cube.grid.transform, window.row_off + size / 2, window.col_off + size / 2, offset="ul")
                others = reader.others.at_patch(window, size) if reader.others else {}
                batch.add(s2, others, y=y, split=patch_split[i], group=majority[i], xy=np.asarray(centre, dtype=np.float64))
                kept += 1
                counts[patch_split[i]] += 1
        batch.flush()
    if not kept:
        raise DataContentError("every patch is cloudy or nodata on every date: check the masks, --valid-scl or --dates")
    if kept < total:
        log(f"prepare s2: dropped {total - kept} of {total} patches with no clear pixel")
    log(f"prepare s2: {kept} patches of {size} x {size} px " +
        ", ".join(f"{n} {name}" for name, n in zip(SPLITS, counts) if n))


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

    def __init__(self, writer: PreparedWriter, dates: np.ndarray, tile: int | None = None):
        self.writer, self.dates, self.tile = writer, dates, tile
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
                           xy=labels["xy"], others=others, tile=self.tile)
        self.items, self.bytes = [], 0

    @staticmethod
    def _stack(dicts: list[dict]) -> dict:
        """Stack a list of (nested) dicts of arrays along a new first axis."""
        first = dicts[0]
        return {k: _PatchBatch._stack([d[k] for d in dicts]) if isinstance(first[k], dict) else np.stack([d[k] for d in dicts])
                for k in first}
