"""PlanetScope (PSScene) surface reflectance time series on a fine grid aligned with Sentinel-2.

Input: one folder (searched recursively) of PSScene products as Planet delivers them:
`20200815_101512_1035_3B_AnalyticMS_SR_clip.tif` (4 bands: blue, green, red, nir) or
`..._AnalyticMS_SR_8b_clip.tif` (8 bands: coastal_blue, blue, green_i, green, yellow, red, rededge,
nir), also `_harmonized` and unclipped, each with its usable-data mask `..._3B_udm2_clip.tif` beside
it (8 bands; clear where band 1 == 1). Reflectance is uint16 x 10000; no-data is the file's no-data
value, 0 when it declares none (Planet's fill). Date and time lead the name.

Grid: PlanetScope (~3 m, its own UTM grid) is resampled onto a FINE grid aligned with the
Sentinel-2 grid, of resolution grid_res / factor (10/3 m for the default factor 3), so each
Sentinel-2 pixel holds exactly factor x factor PlanetScope pixels and fine pixel (r, c) lies in
Sentinel-2 pixel (r // factor, c // factor). Reflectance is interpolated bilinearly, the UDM2
nearest (classes are not blended). Windows are given in Sentinel-2 pixels.

Scenes of one day (the scenes of a strip) are mosaicked into one date: earliest scene first, per
pixel the day's first clear observation wins. A folder mixing 4-band and 8-band scenes gives the
four bands both have (blue, green, red, nir). PlanetScope bands are not Sentinel-2 bands even where
the names agree: they keep their own names and never stand for B02...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import log
from sitscli.data.cube import Cube, Grid
from sitscli.data.readers.common import DatasetPool, date_in_name, in_date_range, open_raster, window_bounds
from sitscli.data.readers.warp import fine_window, footprint, intersects, no_overlap, read_onto, refine

SCENE_FILE = re.compile(r"^(?P<scene>\d{8}_\d{6}(?:_[0-9A-Za-z]+)*?)_3B_AnalyticMS_SR(?P<eight>_8b)?"
                        r"(?:_harmonized)?(?P<clip>_clip)?\.tiff?$", re.IGNORECASE)
BANDS_4 = ("blue", "green", "red", "nir")
BANDS_8 = ("coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir")
SCALE = 1e-4  # surface reflectance x 10000
PLANET_FILL = 0  # no-data of Planet's analytic files when the file declares none


@dataclass(frozen=True, eq=False)
class PsScene:
    """One PSScene: reflectance file, UDM2 file, acquisition date (days) and time stamp, its band
    names in file order, and its footprint (bounds in the Sentinel-2 grid's CRS)."""

    scene: str
    date: int
    stamp: str
    path: str
    udm2: str
    bands: tuple[str, ...]
    footprint: tuple[float, float, float, float]


class PlanetScopeCube(Cube):
    """PlanetScope reflectance read by Sentinel-2 windows onto the fine grid.

    `dates` (T,) int32 unique, `band_names`, `factor`, `grid` (the Sentinel-2 grid), `fine_grid`
    (grid_res / factor). `read(window, times)`, window in Sentinel-2 pixels -> values (t, C,
    factor*h, factor*w) float32 reflectance 0-1 (0 where not clear), valid (t, factor*h, factor*w).
    """

    layout = "planetscope"

    def __init__(self, scenes: list[PsScene], band_names: list[str], grid: Grid, factor: int, *, source: Path,
                 max_open: int = 128):
        self.source = source
        self.grid = grid
        self.factor = factor
        self.fine_grid = refine(grid, factor)
        self.tile = None
        self.band_names = list(band_names)
        self._pool = DatasetPool(max_open)
        by_day: dict[int, list[PsScene]] = {}
        for scene in sorted(scenes, key=lambda s: (s.date, s.stamp, s.scene)):
            by_day.setdefault(scene.date, []).append(scene)
        self.dates = np.array(sorted(by_day), dtype=np.int32)
        self._slots = [by_day[d] for d in self.dates]

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bounds = window_bounds(window, self.grid)
        fine = fine_window(window, self.factor)
        h, w = int(fine.height), int(fine.width)
        values = np.zeros((len(times), len(self.band_names), h, w), np.float32)
        valid = np.zeros((len(times), h, w), bool)
        for i, t in enumerate(times):
            for scene in self._slots[t]:
                if not intersects(scene.footprint, bounds):
                    continue
                clear = read_onto(self._pool.get(scene.udm2), [1], self.fine_grid, fine, Resampling.nearest)[0] == 1
                todo = clear & ~valid[i]  # pixels this scene may fill first
                if not todo.any():
                    continue
                ds = self._pool.get(scene.path)
                indexes = [scene.bands.index(b) + 1 for b in self.band_names]
                fill = PLANET_FILL if ds.nodata is None else None
                reflectance = read_onto(ds, indexes, self.fine_grid, fine, Resampling.bilinear,
                                        prepare=partial(_without_fill, fill=fill))
                take = todo & np.isfinite(reflectance).all(axis=0)
                values[i][:, take] = (reflectance[:, take] * SCALE).astype(np.float32)
                valid[i] |= take
        return values, valid

    def describe(self) -> dict:
        summary = super().describe()
        summary.update(factor=self.factor, fine_resolution=abs(self.fine_grid.transform.a),
                       scenes={iso(d): [s.scene for s in slot] for d, slot in zip(self.dates, self._slots)})
        return summary


def _without_fill(data: np.ndarray, fill: float | None) -> np.ndarray:
    """Mark Planet's fill value (undeclared no-data) as NaN so that interpolation skips it."""
    if fill is not None:
        data[data == fill] = np.nan
    return data


def open_planetscope(path, grid: Grid, *, date_range: tuple[int, int] | None = None, factor: int = 3,
                     max_open: int = 128) -> PlanetScopeCube:
    """Open a folder of PSScene products as a lazily read cube on the fine grid of `grid` / `factor`.

    Args:
        path: a folder of PSScene products (searched recursively); see the module docstring.
        grid: the Sentinel-2 10 m grid; the cube is read by its windows.
        date_range: (first, last) inclusive, int days since 1970-01-01.
        factor: PlanetScope pixels per Sentinel-2 pixel along each axis (3: 10/3 m pixels).
        max_open: most files held open at once.
    """
    path = require_exists(path, "PlanetScope folder")
    if int(factor) != factor or factor < 1:
        raise ConfigError(f"PlanetScope factor {factor!r}: give a whole number >= 1 (3 makes 10/3 m pixels on a "
                          "10 m grid)")
    scenes = in_date_range(scan(path, grid), date_range, path, "PlanetScope scene")
    kept = [s for s in scenes if intersects(s.footprint, grid.bounds)]
    if not kept:
        with open_raster(scenes[0].path) as ds:
            raise no_overlap("PlanetScope scene", ds, grid)
    if len(kept) < len(scenes):
        log(f"{path}: {len(scenes) - len(kept)} PlanetScope scene(s) outside the Sentinel-2 grid left out")
    return PlanetScopeCube(kept, _common_bands(kept, path), grid, int(factor), source=path, max_open=max_open)


def scan(root: Path, grid: Grid) -> list[PsScene]:
    """Every PSScene under `root` with its UDM2, band names and footprint."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if SCENE_FILE.match(p.name))
    scenes = []
    for file in files:
        match = SCENE_FILE.match(file.name)
        if match is None:
            raise DataFormatError(f"{file} is not a PlanetScope analytic file (e.g. "
                                  "20200815_101512_1035_3B_AnalyticMS_SR_clip.tif)")
        udm2 = _udm2_of(file, match["scene"], match["clip"] or "")
        when = date_in_name(match["scene"].replace("_", "T", 1))  # '20200815_101512' -> '20200815T101512'
        if when is None:
            raise DataFormatError(f"PlanetScope scene {file.name} does not start with a valid date: keep Planet's "
                                  "file names")
        date, stamp = when
        with open_raster(str(file)) as ds:
            bands = {4: BANDS_4, 8: BANDS_8}.get(ds.count)
            if bands is None:
                raise DataFormatError(f"PlanetScope scene {file} has {ds.count} bands, not 4 (blue, green, red, nir) "
                                      "or 8 "
                                      "(SR_8b): use the AnalyticMS_SR files")
            bounds = footprint(ds, grid)
        scenes.append(PsScene(match["scene"], date, stamp, str(file), str(udm2), bands, bounds))
    if not scenes:
        raise DataFormatError(f"no PlanetScope scene in {root}: it needs PSScene files like "
                              "20200815_101512_1035_3B_AnalyticMS_SR_clip.tif with their _3B_udm2_clip.tif")
    return scenes


def _udm2_of(file: Path, scene: str, clip: str) -> Path:
    for name in dict.fromkeys((f"{scene}_3B_udm2{clip}.tif", f"{scene}_3B_udm2_clip.tif", f"{scene}_3B_udm2.tif")):
        if (file.parent / name).is_file():
            return file.parent / name
    raise DataFormatError(f"PlanetScope scene {file.name} has no usable-data mask {scene}_3B_udm2{clip}.tif beside it: "
                          "download the scene's udm2 asset too")


def _common_bands(scenes: list[PsScene], root: Path) -> list[str]:
    kinds = {s.bands for s in scenes}
    if len(kinds) == 1:
        return list(kinds.pop())
    log(f"{root} mixes 4-band and 8-band PlanetScope scenes: reading the 4 bands both have ({', '.join(BANDS_4)})")
    return list(BANDS_4)
