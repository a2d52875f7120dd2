"""Sentinel-1 backscatter time series (analysis-ready GeoTIFFs) on the Sentinel-2 10 m grid.

Input: a folder, searched recursively, of terrain-corrected sigma0 or gamma0 GeoTIFFs:
- one file per polarisation per acquisition: ASF RTC
  `S1A_IW_20200815T055130_DVP_RTC10_G_gpuned_1A2B_VV.tif`, SNAP or CARD4L NRB exports, or any name
  with a YYYYMMDD date and a VV / VH / HH / HV token; the files of one acquisition have the same
  name but for the polarisation;
- or one multiband file per acquisition whose band descriptions name the polarisations (GEE and
  openEO exports: `VV`, `VH`; SNAP: `Sigma0_VV_db`); other bands (`angle`) are left out.
Files with no polarisation in their name or band descriptions (ASF's `_ls_map`, `_inc_map`,
`_rgb` ...) are left out and listed in the log.

Date: the first YYYYMMDD of the file name, else of its folders. Orbit direction: an `ASC`, `DESC`,
`ascending` or `descending` token in the name or folders, else an `ORBIT_DIRECTION`,
`orbit_direction` or `orbitProperties_pass` (GEE) tag, else "unknown". Ascending and descending
passes see the ground from opposite sides; `orbit` keeps one or both.

Units, per file: ASF's scale letter (`_RTC10_G_gpuned_`: p power, d dB, a amplitude), a `db`
token in the name or band description, or the band's unit, says dB; `linear` says linear power;
otherwise a small sample decides: dB when most valid values are negative (linear power never is).
Amplitude (ASF only) is squared to power. The cube is in dB: VV, VH and VV/VH = VV_dB - VH_dB, the three
Sentinel-1 channels of OmniSat (Astruc et al., ECCV 2024). With HH/HV data the bands are HH, HV and
HH/HV.

Files on the Sentinel-2 grid (same CRS, pixel size and alignment) are read as stored; others are
warped by windows, bilinear in linear power (interpolating dB would average logarithms), then
converted to dB. Invalid: no-data, NaN, linear power <= 0 and GRD border noise below 1e-5 (-50 dB);
an observation is valid where both polarisations are. Acquisitions of one day merge into one date:
per pixel the first valid one wins, ascending passes before descending ones, then by time.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import log
from sitscli.data.cube import Cube, Grid
from sitscli.data.readers.common import DatasetPool, corrupt, date_in_name, in_date_range, open_raster, window_bounds
from sitscli.data.readers.warp import footprint, intersects, no_overlap, read_onto

SUFFIXES = (".tif", ".tiff")
POLARISATION = re.compile(r"(?<![A-Za-z0-9])(VV|VH|HH|HV)(?![A-Za-z0-9])", re.IGNORECASE)
DB_TOKEN = re.compile(r"(?<![A-Za-z0-9])(db|decibels?)(?![A-Za-z0-9])", re.IGNORECASE)
LINEAR_TOKEN = re.compile(r"(?<![A-Za-z0-9])(linear|lin|power)(?![A-Za-z0-9])", re.IGNORECASE)
# ASF RTC product options after the RTC resolution: radiometry (g/s), then scale (p power, d dB, a amplitude).
ASF_SCALE = re.compile(r"_RTC\d+_[A-Z]_[gs](?P<scale>[pda])[a-z]{4}(?![A-Za-z0-9])")
ASF_SCALES = {"p": "linear", "d": "db", "a": "amplitude"}
ORBIT_TOKEN = re.compile(r"(?<![A-Za-z0-9])(asc|ascending|desc|descending)(?![A-Za-z0-9])", re.IGNORECASE)
ORBIT_TAGS = ("ORBIT_DIRECTION", "orbit_direction", "orbitProperties_pass")
ORBITS = ("both", "ascending", "descending")
UNITS = ("auto", "linear", "db")
PAIRS = (("VV", "VH"), ("HH", "HV"))
ORBIT_ORDER = {"ascending": 0, "descending": 1, "unknown": 2}  # same-day merge order
BORDER_NOISE = 1e-5  # linear power below -50 dB: GRD border noise, no backscatter
SAMPLE = 64  # side of the window sampled to tell dB from linear power
NAMING = "name files like S1A_20200815_VV.tif (a YYYYMMDD date and a VV/VH/HH/HV token) or set band descriptions VV, VH"


@dataclass(frozen=True)
class S1Layer:
    """One polarisation of one acquisition: band `index` of `path` in `scale` units: 'db', 'linear'
    (power) or 'amplitude' (None: not yet known)."""

    path: str
    index: int
    scale: str | None = None


@dataclass(frozen=True, eq=False)
class S1Acquisition:
    """One acquisition: its date (days), `stamp` (YYYYMMDD[THHMMSS]) and orbit direction, its layers
    by polarisation and its footprint (bounds in the Sentinel-2 grid's CRS)."""

    date: int
    stamp: str
    orbit: str
    product: str
    layers: dict[str, S1Layer]
    footprint: tuple[float, float, float, float]


class S1Cube(Cube):
    """Sentinel-1 backscatter in dB on the Sentinel-2 grid, read by windows.

    `dates` (T,) int32 unique, `orbits` (T,) the orbit direction of each date ('ascending',
    'descending', 'unknown', or 'both' for a day with passes of each), `band_names` [VV, VH, VV/VH]
    (or HH, HV, HH/HV), `units` 'db'. `read(window, times)` -> values (t, 3, h, w) float32 dB, 0
    where invalid; valid (t, h, w) bool.
    """

    layout = "s1"
    units = "db"

    def __init__(self, acquisitions: list[S1Acquisition], polarisations: tuple[str, str], grid: Grid, *,
                 source: Path, max_open: int = 128):
        self.source = source
        self.grid = grid
        self.tile = None
        self.polarisations = polarisations
        self.band_names = [*polarisations, "/".join(polarisations)]
        self._pool = DatasetPool(max_open)
        by_day: dict[int, list[S1Acquisition]] = {}
        for acq in sorted(acquisitions, key=lambda a: (a.date, ORBIT_ORDER[a.orbit], a.stamp, a.product)):
            by_day.setdefault(acq.date, []).append(acq)
        self.dates = np.array(sorted(by_day), dtype=np.int32)
        self._slots = [by_day[d] for d in self.dates]
        self.orbits = [_day_orbit({a.orbit for a in slot}) for slot in self._slots]

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bounds = window_bounds(window, self.grid)
        h, w = int(window.height), int(window.width)
        values = np.zeros((len(times), len(self.band_names), h, w), np.float32)
        valid = np.zeros((len(times), h, w), bool)
        for i, t in enumerate(times):
            for acq in self._slots[t]:
                if not intersects(acq.footprint, bounds):
                    continue
                acq_values, acq_valid = self._read_acquisition(acq, window)
                take = acq_valid & ~valid[i]  # (h, w): pixels this acquisition fills first
                values[i][:, take] = acq_values[:, take]
                valid[i] |= take
        return values, valid

    def _read_acquisition(self, acq: S1Acquisition, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """values (3, h, w) float32 dB (0 where invalid), valid (h, w) of one acquisition."""
        power = np.stack([
            read_onto(self._pool.get(layer.path), [layer.index], self.grid, window, Resampling.bilinear,
                      prepare=partial(to_linear, scale=layer.scale))[0]
            for layer in (acq.layers[p] for p in self.polarisations)
        ])  # (2, h, w) linear power, NaN where invalid
        valid = np.all(power >= BORDER_NOISE, axis=0)  # NaN compares False
        decibels = 10 * np.log10(np.where(valid, power, 1.0))
        values = np.stack([decibels[0], decibels[1], decibels[0] - decibels[1]]).astype(np.float32)
        values[:, ~valid] = 0
        return values, valid

    def describe(self) -> dict:
        summary = super().describe()
        summary.update(units=self.units, orbits=list(self.orbits),
                       products={iso(d): [a.product for a in slot] for d, slot in zip(self.dates, self._slots)})
        return summary


def to_linear(data: np.ndarray, *, scale: str) -> np.ndarray:
    """Linear power (same shape, float64) of dB, linear power or amplitude values; NaN where not a
    backscatter: non-positive power and border noise below `BORDER_NOISE`."""
    if scale == "db":
        power = np.power(10.0, data / 10)
    elif scale == "amplitude":
        power = np.where(data > 0, np.square(data), np.nan)
    else:
        power = data.astype(np.float64, copy=True)
    power[~(power >= BORDER_NOISE)] = np.nan
    return power


def _day_orbit(orbits: set[str]) -> str:
    if len(orbits) == 1:
        return next(iter(orbits))
    return "both" if orbits == {"ascending", "descending"} else "unknown"


def open_s1(path, grid: Grid, *, orbit: str = "both", units: str = "auto",
            date_range: tuple[int, int] | None = None, max_open: int = 128) -> S1Cube:
    """Open a folder of Sentinel-1 backscatter GeoTIFFs as a lazily read dB cube on `grid`.

    Args:
        path: a folder (searched recursively) or one multiband file; see the module docstring.
        grid: the Sentinel-2 10 m grid the cube is read on.
        orbit: both, ascending or descending.
        units: auto (per file: name, description or band unit, else a sample: mostly negative = dB),
            linear (power) or db.
        date_range: (first, last) inclusive, int days since 1970-01-01.
        max_open: most files held open at once.
    """
    path = require_exists(path, "Sentinel-1 folder")
    orbit, units = _choice(orbit, ORBITS, "orbit"), _choice(units, UNITS, "Sentinel-1 units")
    acquisitions = _overlapping(scan(path, grid), grid, path)
    acquisitions = in_date_range(acquisitions, date_range, path, "Sentinel-1 acquisition")
    acquisitions = _select_orbit(acquisitions, orbit, path)
    polarisations = _polarisation_pair(acquisitions, path)
    acquisitions = [_with_units(acq, units, grid) for acq in acquisitions]
    return S1Cube(acquisitions, polarisations, grid, source=path, max_open=max_open)


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"{what} {value!r}: choose {', '.join(allowed)}")
    return text


def _rasters(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def scan(root: Path, grid: Grid) -> list[S1Acquisition]:
    """Every acquisition under `root` (layers without units yet), from file names and headers."""
    grouped: dict[tuple, dict] = {}
    left_out = []
    for file in _rasters(root):
        with open_raster(str(file)) as ds:
            bands = _polarisations(file, ds)
            if not bands:
                left_out.append(file.name)
                continue
            folders = [p.name for p in file.relative_to(root).parents if p.name] if root.is_dir() else []
            when = date_in_name(file.name, *folders)
            if when is None:
                raise DataFormatError(f"cannot tell the date of Sentinel-1 file {file}: {NAMING} (the date may be in "
                                      "a folder name)")
            bounds = footprint(ds, grid)
            orbit = _orbit(file.name, folders, ds.tags())
        # The single-polarisation files of one acquisition differ only by their polarisation token.
        key = (str(file.parent), POLARISATION.sub("", file.stem)) if len(bands) == 1 else (str(file),)
        entry = grouped.setdefault(key, {"when": when, "orbit": orbit, "layers": {}, "bounds": [], "files": []})
        for pol, index in bands.items():
            if pol in entry["layers"]:
                raise DataFormatError(f"{file} and {entry['files'][0]} both hold {pol} of one acquisition: "
                                      "remove the duplicate")
            entry["layers"][pol] = S1Layer(str(file), index)
        entry["bounds"].append(bounds)
        entry["files"].append(file.name)
        if entry["orbit"] == "unknown":
            entry["orbit"] = orbit
    if left_out:
        log(f"{root}: {len(left_out)} file(s) without a polarisation (VV/VH/HH/HV) in the name or band descriptions "
            "left out: " + ", ".join(left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
    if not grouped:
        raise DataFormatError(f"no Sentinel-1 backscatter file in {root}: {NAMING}")
    return [S1Acquisition(date=e["when"][0], stamp=e["when"][1], orbit=e["orbit"], product=e["files"][0],
                          layers=e["layers"], footprint=_union(e["bounds"])) for e in grouped.values()]


def _polarisations(file: Path, ds) -> dict[str, int]:
    """{polarisation: band index} of one file, from its band descriptions, else its name."""
    described = {}
    for index, text in enumerate(ds.descriptions, start=1):
        found = POLARISATION.findall(text or "")
        if len(found) == 1:
            described.setdefault(found[0].upper(), index)
    if described:
        return described
    named = [p.upper() for p in POLARISATION.findall(file.stem)]
    if not named or len(named) > ds.count:
        return {}
    return {pol: index for index, pol in enumerate(named, start=1)}


def _orbit(name: str, folders: list[str], tags: dict) -> str:
    for text in (name, *folders):
        match = ORBIT_TOKEN.search(text)
        if match:
            return "ascending" if match[1].lower().startswith("asc") else "descending"
    for tag in ORBIT_TAGS:
        value = str(tags.get(tag, "")).strip().lower()
        if value.startswith("asc"):
            return "ascending"
        if value.startswith("desc"):
            return "descending"
    return "unknown"


def _union(boxes: list[tuple]) -> tuple[float, float, float, float]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _overlapping(acquisitions: list[S1Acquisition], grid: Grid, root: Path) -> list[S1Acquisition]:
    kept = [a for a in acquisitions if intersects(a.footprint, grid.bounds)]
    if not kept:
        first = next(iter(acquisitions[0].layers.values())).path
        with open_raster(first) as ds:
            raise no_overlap("Sentinel-1 file", ds, grid)
    if len(kept) < len(acquisitions):
        log(f"{root}: {len(acquisitions) - len(kept)} Sentinel-1 acquisition(s) outside the Sentinel-2 grid left out")
    return kept


def _select_orbit(acquisitions: list[S1Acquisition], orbit: str, root: Path) -> list[S1Acquisition]:
    if orbit == "both":
        return acquisitions
    unknown = [a.product for a in acquisitions if a.orbit == "unknown"]
    if unknown:
        raise ConfigError(f"cannot tell the orbit direction of {len(unknown)} Sentinel-1 file(s) in {root} (e.g. "
                          f"{unknown[0]}): put ASC or DESC in their names or an ORBIT_DIRECTION tag in them, "
                          "or read both orbits")
    kept = [a for a in acquisitions if a.orbit == orbit]
    if not kept:
        counts = Counter(a.orbit for a in acquisitions)
        raise DataContentError(f"no {orbit} Sentinel-1 acquisition in {root} (it holds "
                               + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) + "): choose another orbit")
    return kept


def _polarisation_pair(acquisitions: list[S1Acquisition], root: Path) -> tuple[str, str]:
    """(VV, VH) or (HH, HV): the pair every acquisition must hold."""
    present = {p for a in acquisitions for p in a.layers}
    pairs = [pair for pair in PAIRS if present & set(pair)]
    if len(pairs) != 1:
        raise DataFormatError(f"{root} mixes VV/VH and HH/HV acquisitions: put each pair of polarisations in its "
                              "own folder")
    pair = pairs[0]
    for acq in acquisitions:
        missing = [p for p in pair if p not in acq.layers]
        if missing:
            raise DataFormatError(f"Sentinel-1 acquisition {acq.product} has {', '.join(sorted(acq.layers))} but no "
                                  f"{', '.join(missing)}: add its {missing[0]} file (or band) or remove it")
    return pair


def _with_units(acq: S1Acquisition, units: str, grid: Grid) -> S1Acquisition:
    layers = {pol: replace(layer, scale=_scale_of(layer, units, grid)) for pol, layer in acq.layers.items()}
    return replace(acq, layers=layers)


def _scale_of(layer: S1Layer, units: str, grid: Grid) -> str:
    """'db', 'linear' or 'amplitude': as told, else from the name, band description or unit, else a sample."""
    if units != "auto":
        return units
    asf = ASF_SCALE.search(Path(layer.path).name)
    if asf:
        return ASF_SCALES[asf["scale"]]
    with open_raster(layer.path) as ds:
        hints = (Path(layer.path).stem, ds.descriptions[layer.index - 1] or "", ds.units[layer.index - 1] or "")
        if any(DB_TOKEN.search(text) for text in hints):
            return "db"
        if any(LINEAR_TOKEN.search(text) for text in hints):
            return "linear"
        sample = _sample(ds, layer.index, grid)
    if sample.size == 0:
        log(f"{layer.path}: no valid value to tell dB from linear power; read as linear power")
        return "linear"
    return "db" if np.mean(sample < 0) > 0.5 else "linear"


def _sample(ds, index: int, grid: Grid) -> np.ndarray:
    """Valid values (1-D) of a SAMPLE x SAMPLE window at the centre of the file's part on the grid,
    else of a decimated view of the whole file when that window holds none."""
    try:
        window = _centre_window(ds, grid)
        data = ds.read(index, window=window, masked=True)
        values = _valid_sample(data)
        if values.size == 0:
            shape = (min(SAMPLE, ds.height), min(SAMPLE, ds.width))
            values = _valid_sample(ds.read(index, out_shape=shape, masked=True, resampling=Resampling.nearest))
    except RasterioError as exc:
        raise corrupt(ds.name, exc) from exc
    return values


def _valid_sample(data: np.ma.MaskedArray) -> np.ndarray:
    values = np.ma.getdata(data)[~np.ma.getmaskarray(data)].astype(np.float64)
    return values[np.isfinite(values) & (values != 0)]  # 0 is the usual fill of both units


def _centre_window(ds, grid: Grid) -> Window:
    """A SAMPLE x SAMPLE window of `ds` around the centre of its overlap with the grid."""
    mine, theirs = footprint(ds, grid), grid.bounds
    x = (max(mine[0], theirs[0]) + min(mine[2], theirs[2])) / 2
    y = (max(mine[1], theirs[1]) + min(mine[3], theirs[3])) / 2
    xs, ys = transform_points(grid.crs, ds.crs, [x], [y])
    row, col = ds.index(xs[0], ys[0])
    row = min(max(0, row - SAMPLE // 2), max(0, ds.height - SAMPLE))
    col = min(max(0, col - SAMPLE // 2), max(0, ds.width - SAMPLE))
    return Window(col, row, min(SAMPLE, ds.width), min(SAMPLE, ds.height))
