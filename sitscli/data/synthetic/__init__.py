"""Synthetic demo data: a Sentinel-2 L2A image time series of a small farmed area with its parcels,
and on request the same area seen by Sentinel-1, PlanetScope and a very-high-resolution ortho.

    scene = write_synthetic("demo/", size=256, seed=0)      # demo/l2a/*.SAFE, demo/parcels.gpkg, demo/changes.csv
    sits prepare s2 demo/l2a --labels demo/parcels.gpkg --class-field class_y1 --out demo.sits
    write_synthetic("mm/", size=64, sensors=("s2", "s1", "planetscope", "vhr"))   # + mm/s1, mm/planetscope, mm/vhr

The area is a corner of tile 31TCJ (UTM 31N) near Toulouse, seen every 5 days (S2A and S2B of
relative orbit 51) over whole agronomic years from October 2021; scenes more than 90% cloudy are
not delivered, the others carry their clouds, shadows and a matching SCL/cloud mask and cloud
probability. Parcels change crop between years by rotation (`changes.csv` lists them), so the
same data serves crop classification and change detection. Same arguments, same bytes.

Other sensors (`sensors`) see the same parcels with the same cover curves, each from its own
seeded draws, so adding one never changes another's bytes (the Sentinel-2 folder included):
`s1/` (sentinel1.py: gamma0 backscatter, both orbits), `planetscope/` (planetscope.py: 3 m
near-daily 4-band scenes with their UDM2), `vhr/` (vhr.py: one 1 m RGB+NIR ortho).

Class pairs that the Sentinel-2 series alone separates poorly (their calendars differ by one or
two weeks, less than the parcel-to-parcel spread) but another sensor separates, so a multimodal
model has something to learn (bench/synthetic_separability.py measures it):
- winter_wheat vs winter_barley: Sentinel-1 VV from stem elongation on (upright wheat stems
  attenuate VV ~3 dB more than barley's drooping awned ears); VHR row pattern 3 m vs 5 m;
- maize vs soybean: Sentinel-1 VH (tall maize stems: ~4 dB more volume scattering than the
  short broad-leaved soybean at the same cover); VHR row pattern 2.5 m vs 4 m.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError
from sitscli.core.io import atomic_output
from sitscli.core.progress import Progress, log
from sitscli.data.synthetic import writers
from sitscli.data.synthetic.planetscope import PlanetScopeModel, PSWriter
from sitscli.data.synthetic.parcels import class_field, parcel_table, write_changes, write_parcels
from sitscli.data.synthetic.phenology import CLASSES
from sitscli.data.synthetic.scene import (
    CRS, MAX_CLOUD, TILE, Acquisition, SceneModel, agronomic_years, make_sky, scene_classification,
)
from sitscli.data.synthetic.sentinel1 import S1_LAYOUTS, UNITS, S1Writer, Sentinel1Model
from sitscli.data.synthetic.vhr import ORTHO_FILE, RESOLUTIONS, write_vhr

__all__ = ["SyntheticScene", "write_synthetic", "write_s1", "write_planetscope", "LAYOUTS", "SENSORS"]

LAYOUTS = ("safe", "cog", "theia")
SENSORS = ("s2", "s1", "planetscope", "vhr")
L2A_FOLDER = "l2a"
S1_FOLDER, PS_FOLDER, VHR_FOLDER = "s1", "planetscope", "vhr"
PARCELS_FILE = "parcels.gpkg"
CHANGES_FILE = "changes.csv"
MIN_SIZE = 32  # px: below this the Voronoi pattern holds too few parcels for every class
MAX_YEARS = 4
# A delivered scene must keep this share of clear SCL pixels (4-7); fewer are dropped like a
# catalogue's 95% cloud-cover filter does (MAX_CLOUD only bounds the thick clouds, not shadows).
MIN_CLEAR = 0.05
CLEAR_SCL = (4, 5, 6, 7)


@dataclass(frozen=True)
class SyntheticScene:
    """What `write_synthetic` wrote. `dates` (T,) int32 days since 1970-01-01 of the delivered scenes."""

    root: Path
    l2a: Path
    parcels: Path
    class_field: str       # the parcels' class column of the first agronomic year
    changes: Path
    layout: str
    tile: str
    crs: str
    dates: np.ndarray
    class_names: tuple[str, ...]
    years: tuple[tuple[str, str], ...]  # (first, last) ISO day of each agronomic year
    sensors: tuple[str, ...] = ("s2",)
    s1: Path | None = None           # s1/ (ascending/ and descending/ inside)
    planetscope: Path | None = None  # planetscope/
    vhr: Path | None = None          # vhr/ortho.tif, or the vhr/ folder of 2 x 2 tiles


def write_synthetic(out, *, size: int = 256, seed: int = 0, layout: str = "safe", years: int = 2,
                    difficulty: float = 0.3, zipped: bool = False, baseline: str | None = None,
                    overwrite: bool = False, workers: int = 1, sensors: Sequence[str] = ("s2",),
                    s1_units: str = "linear", s1_layout: str = "asf", ps_every: int = 3,
                    vhr_resolution: float = 1.0, vhr_tiles: bool = False) -> SyntheticScene:
    """Write a synthetic L2A time series of size x size 10 m pixels, its parcels and changed parcels.

    Args:
        out: folder to create (written in a temporary sibling, renamed when complete).
        size: pixels per side (10 m each).
        seed: every random draw derives from it.
        layout: "safe" (ESA products), "cog" (a folder of band COGs + STAC item per date) or "theia".
        years: agronomic years (1 October - 30 September) from 2021-10-01.
        difficulty: 0-1, spread of crop calendars, noise and class overlap.
        zipped: SAFE only: write `.SAFE.zip` archives.
        baseline: force the processing baseline of every product (e.g. "02.14", "04.00"); by default
            each product carries the baseline of its date (04.00 and its BOA offset from 25 Jan 2022).
        overwrite: replace an existing `out`.
        workers: processes rendering dates in parallel (each date draws from its own seeded
            generator, so the bytes do not depend on it; ~1-2 GB each at size 2048).
        sensors: any of "s2" (always), "s1", "planetscope", "vhr".
        s1_units: Sentinel-1 values in "linear" power (nodata 0) or "db" (nodata NaN).
        s1_layout: "asf" (a file per polarisation, ASF RTC names) or "multiband" (a file per pass, bands VV, VH).
        ps_every: days between PlanetScope acquisition days (1 = daily).
        vhr_resolution: metres per pixel of the ortho (0.2-1.5).
        vhr_tiles: write the ortho as a 2 x 2 folder of tiles.
    """
    _check(size, layout, years, difficulty, zipped, baseline)
    sensors = _sensor_names(sensors)
    _check_sensors(s1_units, s1_layout, ps_every, vhr_resolution)
    out = Path(out).expanduser()
    scene = SceneModel(size, size, years, seed, difficulty)
    with atomic_output(out, overwrite=overwrite) as tmp:
        l2a = tmp / L2A_FOLDER
        l2a.mkdir(parents=True)
        job = _DateWriter(scene, l2a, layout, baseline, zipped)
        with Progress(len(scene.calendar), f"synthetic {layout} {size}x{size}") as bar:
            dates = [d for d in _map(job, scene.calendar, workers, bar) if d is not None]
        if "s1" in sensors:
            write_s1(scene, tmp / S1_FOLDER, s1_units, s1_layout, workers)
        if "planetscope" in sensors:
            write_planetscope(scene, tmp / PS_FOLDER, ps_every, workers)
        if "vhr" in sensors:
            vhr = write_vhr(scene, tmp / VHR_FOLDER, vhr_resolution, vhr_tiles)
            log(f"synthetic: VHR ortho at {vhr_resolution:g} m ({vhr.name})")
        parcels = parcel_table(scene.land, scene.transform, CRS)
        write_parcels(parcels, tmp / PARCELS_FILE)
        changed = write_changes(parcels, tmp / CHANGES_FILE)
    log(f"synthetic: {len(dates)} {layout} acquisitions, {len(parcels)} parcels "
        f"({len(changed)} change crop after year 1) in {out}")
    written = {"s1": out / S1_FOLDER, "planetscope": out / PS_FOLDER,
               "vhr": out / VHR_FOLDER / ("" if vhr_tiles else ORTHO_FILE)}
    return SyntheticScene(
        root=out, l2a=out / L2A_FOLDER, parcels=out / PARCELS_FILE, class_field=class_field(0), changes=out / CHANGES_FILE,
        layout=layout, tile=TILE, crs=CRS, dates=to_days(dates), class_names=tuple(c.name for c in CLASSES),
        years=tuple(agronomic_years(years)), sensors=sensors,
        **{name: path if name in sensors else None for name, path in written.items()},
    )


def write_s1(scene: SceneModel, folder: Path, units: str = "linear", layout: str = "asf", workers: int = 1) -> int:
    """Sentinel-1 passes of the scene under `folder` (ascending/, descending/); returns their number."""
    model = Sentinel1Model(scene)
    passes = range(len(model.passes))
    with Progress(len(passes), f"synthetic s1 {scene.shape[0]}x{scene.shape[1]}") as bar:
        _map(S1Writer(model, folder, units, layout), passes, workers, bar)
    log(f"synthetic: {len(passes)} Sentinel-1 passes (both orbits)")
    return len(passes)


def write_planetscope(scene: SceneModel, folder: Path, every: int = 3, workers: int = 1) -> int:
    """PlanetScope scenes of the scene under `folder`; returns their number."""
    model = PlanetScopeModel(scene, every)
    folder.mkdir(parents=True, exist_ok=True)
    days = range(len(model.days))
    with Progress(len(days), f"synthetic planetscope {model.shape[0]}x{model.shape[1]}") as bar:
        scenes = sum(_map(PSWriter(model, folder), days, workers, bar))
    log(f"synthetic: {scenes} PlanetScope scenes on {len(days)} days")
    return scenes


class _DateWriter:
    """Render and write one acquisition; None when it is not delivered (overcast, out of swath)."""

    def __init__(self, scene: SceneModel, l2a: Path, layout: str, baseline: str | None, zipped: bool):
        self.scene, self.l2a, self.layout, self.baseline, self.zipped = scene, l2a, layout, baseline, zipped
        self.water = scene.water_fraction()

    def __call__(self, acq: Acquisition):
        scene = self.scene
        sky = make_sky(acq, scene.shape, scene.seed)
        if sky.cloudy_fraction > MAX_CLOUD or sky.nodata.all():
            return None  # not delivered, as a catalogue's cloud filter drops it
        refl = scene.render(acq, sky)
        scl = scene_classification(refl, sky, self.water)
        if np.isin(scl, CLEAR_SCL).mean() < MIN_CLEAR:
            return None
        if self.layout == "safe":
            writers.write_safe(self.l2a, acq, refl, sky, scl, scene.transform, self.baseline, self.zipped)
        elif self.layout == "cog":
            writers.write_cog(self.l2a, acq, refl, sky, scl, scene.transform, self.baseline)
        else:
            writers.write_theia(self.l2a, acq, refl, sky, scene.transform)
        return acq.date


_job: Callable | None = None  # the writer of a worker process, inherited through fork


def _run_job(item):
    return _job(item)


def _map(job: Callable, items: Sequence, workers: int, bar: Progress) -> list:
    """job(item) for every item (a date), in order; in `workers` forked processes when > 1.

    Skies and renderings are made one date at a time (a 2048 px date is ~1 GB of intermediates).
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = []
        for item in items:
            results.append(job(item))
            bar.advance()
        return results
    global _job
    _job = job  # forked workers see it without pickling the scene
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_run_job, item) for item in items]
            for future in as_completed(futures):
                future.result()
                bar.advance()
            return [f.result() for f in futures]
    finally:
        _job = None


def _check(size: int, layout: str, years: int, difficulty: float, zipped: bool, baseline: str | None) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"synthetic layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if size < MIN_SIZE:
        raise ConfigError(f"--size {size}: give at least {MIN_SIZE} pixels per side")
    if not 1 <= years <= MAX_YEARS:
        raise ConfigError(f"--years {years}: give 1 to {MAX_YEARS} agronomic years")
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"--difficulty {difficulty}: give a value between 0 (easy) and 1 (hard)")
    if zipped and layout != "safe":
        raise ConfigError("--zipped applies to the safe layout only")
    if baseline is not None and not re.fullmatch(r"\d\d\.\d\d", str(baseline)):
        raise ConfigError(f"--baseline {baseline!r}: write a processing baseline as NN.NN, e.g. 02.14 or 04.00")
    if baseline is not None and layout == "theia":
        raise ConfigError("--baseline applies to the safe and cog layouts (Theia products carry no BOA offset)")


def _sensor_names(sensors: Sequence[str] | str) -> tuple[str, ...]:
    """("s1", "s2") or "s2,s1" -> ("s2", "s1"): known names in canonical order, s2 required."""
    names = [s.strip() for s in (sensors.split(",") if isinstance(sensors, str) else sensors) if s.strip()]
    unknown = [s for s in names if s not in SENSORS]
    if unknown or "s2" not in names:
        problem = f"unknown {', '.join(unknown)}" if unknown else "s2 (the reference grid) is missing"
        raise ConfigError(f"--sensors {','.join(names) or '(none)'}: {problem}; give s2 and any of "
                          f"{', '.join(SENSORS[1:])}, e.g. s2,s1,planetscope,vhr")
    return tuple(s for s in SENSORS if s in names)


def _check_sensors(s1_units: str, s1_layout: str, ps_every: int, vhr_resolution: float) -> None:
    if s1_units not in UNITS:
        raise ConfigError(f"Sentinel-1 units {s1_units!r}: choose one of {', '.join(UNITS)}")
    if s1_layout not in S1_LAYOUTS:
        raise ConfigError(f"Sentinel-1 layout {s1_layout!r}: choose one of {', '.join(S1_LAYOUTS)}")
    if int(ps_every) != ps_every or ps_every < 1:
        raise ConfigError(f"PlanetScope interval {ps_every!r}: give a whole number of days, 1 or more")
    if not RESOLUTIONS[0] <= vhr_resolution <= RESOLUTIONS[1]:
        raise ConfigError(f"VHR resolution {vhr_resolution} m: give {RESOLUTIONS[0]} to {RESOLUTIONS[1]} m")
