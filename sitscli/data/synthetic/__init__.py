"""Synthetic Sentinel-2 L2A demo data: an image time series of a small farmed area with its parcels.

    scene = write_synthetic("demo/", size=256, seed=0)      # demo/l2a/*.SAFE, demo/parcels.gpkg, demo/changes.csv
    sits prepare s2 demo/l2a --labels demo/parcels.gpkg --class-field class_y1 --out demo.sits

The area is a corner of tile 31TCJ (UTM 31N) near Toulouse, seen every 5 days (S2A and S2B of
relative orbit 51) over whole agronomic years from October 2021; scenes more than 90% cloudy are
not delivered, the others carry their clouds, shadows and a matching SCL/cloud mask. Parcels
change crop between years by rotation (`changes.csv` lists them), so the same data serves crop
classification and change detection. Same arguments, same bytes.
"""

from __future__ import annotations

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError
from sitscli.core.io import atomic_output
from sitscli.core.progress import Progress, log
from sitscli.data.synthetic import writers
from sitscli.data.synthetic.parcels import class_field, parcel_table, write_changes, write_parcels
from sitscli.data.synthetic.phenology import CLASSES
from sitscli.data.synthetic.scene import (
    CRS, MAX_CLOUD, TILE, Acquisition, SceneModel, agronomic_years, make_sky, scene_classification,
)

__all__ = ["SyntheticScene", "write_synthetic", "LAYOUTS"]

LAYOUTS = ("safe", "cog", "theia")
L2A_FOLDER = "l2a"
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


def write_synthetic(out, *, size: int = 256, seed: int = 0, layout: str = "safe", years: int = 2,
                    difficulty: float = 0.3, zipped: bool = False, baseline: str | None = None,
                    overwrite: bool = False, workers: int = 1) -> SyntheticScene:
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
    """
    _check(size, layout, years, difficulty, zipped, baseline)
    out = Path(out).expanduser()
    scene = SceneModel(size, size, years, seed, difficulty)
    with atomic_output(out, overwrite=overwrite) as tmp:
        l2a = tmp / L2A_FOLDER
        l2a.mkdir(parents=True)
        job = _DateWriter(scene, l2a, layout, baseline, zipped)
        with Progress(len(scene.calendar), f"synthetic {layout} {size}x{size}") as bar:
            dates = [d for d in _map(job, scene.calendar, workers, bar) if d is not None]
        parcels = parcel_table(scene.land, scene.transform, CRS)
        write_parcels(parcels, tmp / PARCELS_FILE)
        changed = write_changes(parcels, tmp / CHANGES_FILE)
    log(f"synthetic: {len(dates)} {layout} acquisitions, {len(parcels)} parcels "
        f"({len(changed)} change crop after year 1) in {out}")
    return SyntheticScene(
        root=out, l2a=out / L2A_FOLDER, parcels=out / PARCELS_FILE, class_field=class_field(0), changes=out / CHANGES_FILE,
        layout=layout, tile=TILE, crs=CRS, dates=to_days(dates), class_names=tuple(c.name for c in CLASSES),
        years=tuple(agronomic_years(years)),
    )


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


_job: _DateWriter | None = None  # the writer of a worker process, inherited through fork


def _run_job(acq: Acquisition):
    return _job(acq)


def _map(job: _DateWriter, calendar: list[Acquisition], workers: int, bar: Progress) -> list:
    """job(acq) for every date, in calendar order; in `workers` forked processes when > 1.

    Skies and renderings are made one date at a time (a 2048 px date is ~1 GB of intermediates).
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = []
        for acq in calendar:
            results.append(job(acq))
            bar.advance()
        return results
    global _job
    _job = job  # forked workers see it without pickling the scene
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_run_job, acq) for acq in calendar]
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
