"""Synthetic Sentinel-1 backscatter of the synthetic scene: analysis-ready gamma0 as ASF RTC delivers it.

    s1/descending/S1A_IW_20211004T055130_DVP_RTC10_G_gpuned_1A2B_VV.tif   (and _VH.tif)
    s1/ascending/S1B_IW_20211008T174012_DVP_RTC10_G_gpuned_....._VV.tif

One float32 GeoTIFF per polarisation and pass on the Sentinel-2 10 m grid (same CRS and
transform), linear power (gamma0; nodata 0) or dB (nodata NaN, `_gduned_` in the name), tagged
ORBIT_DIRECTION, RELATIVE_ORBIT, PLATFORM, ACQUISITION_START, POLARISATION, RADIOMETRY, UNITS,
INCIDENCE_ANGLE. The "multiband" layout writes one file per pass with bands VV and VH (band
descriptions), as GEE/openEO exports do. ASF names carry no orbit direction: the folder and the
ORBIT_DIRECTION tag give it.

Calendar: one relative orbit per direction (descending ~05:51 UTC, ascending ~17:40 UTC),
S1A every 12 days and S1B six days after it until S1B's last acquisition on 23 December 2021
(power failure), so each direction is seen every 6 days, then every 12 days.

Backscatter, per pixel and pass (C band, gamma0):
- vegetation (crops, meadow, forest): the Water Cloud Model (Attema & Ulaby 1978, Radio Sci.
  13:357) with V1 = 1: sigma = A cos(theta) (1 - tau2) + tau2 sigma_soil, tau2 =
  exp(-2 B V / cos(theta)), V = biomass x (green + flower + 0.5 dry cover) of the same cover
  curves as Sentinel-2. A, B and the biomass factor are per class and polarisation (STRUCTURE):
  they carry what the optical series cannot see (stem height, leaf shape, ear posture);
- bare soil: sigma_soil [dB] = C + D mv + roughness + slope (theta - 40 deg), mv the top-soil
  moisture of the day (a rain-driven bucket model, rainier in winter), a per-parcel offset
  (soil type) and a smooth rain-cell field; roughness a per-parcel draw per year (ploughing);
- water: specular, ~ -22 dB VV (~ -29 dB VH), brighter on windy passes;
- artificial: double bounce, ~0 to +5 dB VV per parcel, its orientation seen differently from
  each orbit, bright point scatterers per pixel; VH ~9 dB below VV;
- speckle: multiplicative Gamma(L, 1/L) with L = 4.5 (the ENL of IW GRDH 5 x 1 looks);
- the two orbits see the ground at different incidence angles (36 deg descending, 42 deg
  ascending here): a dB offset on soil and a different vegetation path length;
- no clouds (radar sees through them); a few passes cut by a frame edge (nodata).
Values are chosen in the ranges reported for C-band over these covers (Veloso et al. 2017,
Remote Sens. Environ. 199:415), not fitted to data.

Random draws: [seed, 10] static (parcel soil and roughness, urban orientation), [seed, 11]
weather (daily rain), [seed, 12, pass index] per pass (rain cells, wind, speckle); Sentinel-2
bytes never depend on them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sitscli.data.synthetic.phenology import CLASS_INDEX, CLASSES
from sitscli.data.synthetic.scene import FIRST_YEAR, SceneModel, smooth_noise
from sitscli.data.synthetic.writers import TIFF_OPTIONS, write_raster

SEED_STATIC, SEED_WEATHER, SEED_PASS = 10, 11, 12
UNITS = ("linear", "db")
S1_LAYOUTS = ("asf", "multiband")
POLARISATIONS = ("VV", "VH")
REPEAT_DAYS = 12  # one Sentinel-1 satellite's repeat cycle
S1B_LAG_DAYS = 6  # S1B flew half a cycle behind S1A
S1B_LAST = dt.date(2021, 12, 23)  # S1B's last acquisition (power supply anomaly)
ENL = 4.5  # equivalent number of looks of IW GRDH
FLOAT_OPTIONS = dict(TIFF_OPTIONS, predictor=3)  # floating-point predictor
FIRST_YEAR_START = dt.date(FIRST_YEAR, 10, 1)


@dataclass(frozen=True)
class Orbit:
    """One relative orbit over the area: direction, first S1A pass, local incidence angle (deg)."""

    direction: str  # ASCENDING | DESCENDING
    relative_orbit: int
    first_pass: dt.datetime
    incidence: float

    @property
    def folder(self) -> str:
        return self.direction.lower()

    @property
    def short(self) -> str:
        return "ASC" if self.direction == "ASCENDING" else "DESC"


ORBITS = (
    Orbit("DESCENDING", 8, dt.datetime(2021, 10, 4, 5, 51, 30), 36.0),
    Orbit("ASCENDING", 132, dt.datetime(2021, 10, 2, 17, 40, 12), 42.0),
)


@dataclass(frozen=True)
class Pass:
    """One Sentinel-1 acquisition over the area; `index` (position in time) seeds its draws."""

    index: int
    start: dt.datetime
    platform: str  # S1A | S1B
    orbit: Orbit

    @property
    def date(self) -> dt.date:
        return self.start.date()

    @property
    def product_id(self) -> str:
        return f"{(0x1A2B + 40503 * self.index) % 65536:04X}"

    def file_name(self, units: str, polarisation: str | None) -> str:
        """ASF RTC name (u = GAMMA, gamma0 g, power p / decibel d, unmasked, not filtered, entire area,
        dead reckoning) with the polarisation; the multiband layout names the orbit instead."""
        stamp = f"{self.platform}_IW_{self.start:%Y%m%dT%H%M%S}"
        if polarisation is None:
            return f"{stamp}_{self.orbit.short}_gamma0_{units}.tif"
        scale = "p" if units == "linear" else "d"
        return f"{stamp}_DVP_RTC10_G_g{scale}uned_{self.product_id}_{polarisation}.tif"


def s1_calendar(years: int) -> list[Pass]:
    """Every pass of both orbits over the agronomic years, in time order."""
    end = dt.date(FIRST_YEAR + years, 9, 30)
    starts = []
    for orbit in ORBITS:
        for platform, lag in (("S1A", 0), ("S1B", S1B_LAG_DAYS)):
            cycle = 0
            while True:
                # the same orbit passes over at the same time of day, to a few seconds
                when = orbit.first_pass + dt.timedelta(days=lag + REPEAT_DAYS * cycle, seconds=(cycle * 7 + lag) % 11)
                if when.date() > end or (platform == "S1B" and when.date() > S1B_LAST):
                    break
                starts.append((when, platform, orbit))
                cycle += 1
    starts.sort(key=lambda s: s[0])
    return [Pass(i, when, platform, orbit) for i, (when, platform, orbit) in enumerate(starts)]


# ------------------------------------------------------------------------------- soil moisture
def _seasonal(doy: np.ndarray) -> np.ndarray:
    """+1 in mid-January, -1 in mid-July."""
    return np.cos(2 * np.pi * (doy - 15) / 365.25)


def soil_moisture_series(first: dt.date, days: int, rng: np.random.Generator) -> np.ndarray:
    """(days,) top-soil volumetric moisture (m3/m3) from `first` on: a bucket filled by rain.

    Rain falls on ~40 % of winter days and ~20 % of summer days (exponential amounts, mean 7 mm);
    each mm adds 1/60 m3/m3 to a ~6 cm layer (what C band sees), which drains toward a seasonal
    residual (0.22 in winter, 0.06 in summer) with a time constant of 10 days in winter, 3 in summer.
    """
    doy = np.array([(first + dt.timedelta(days=d)).timetuple().tm_yday for d in range(days)], np.float64)
    season = _seasonal(doy)
    rain = (rng.random(days) < 0.3 + 0.1 * season) * rng.exponential(7.0, days)
    residual, tau = 0.14 + 0.08 * season, 6.5 + 3.5 * season
    moisture = np.empty(days, np.float32)
    m = residual[0]
    for d in range(days):
        m = min(0.45, residual[d] + (m - residual[d]) * np.exp(-1 / tau[d]) + rain[d] / 60.0)
        moisture[d] = m
    return moisture


# ------------------------------------------------------------------------------- scattering
@dataclass(frozen=True)
class Structure:
    """Water Cloud Model parameters of one vegetation class: V per unit cover, A and B per polarisation."""

    biomass: float
    a_vv: float
    a_vh: float
    b_vv: float
    b_vh: float


# What the optical series does not see. Maize: tall stems and big leaves, the strongest VH volume
# of the crops; soybean: short, broad horizontal leaves, bright in VV but weak in VH (~4 dB below
# maize at the same cover). Winter wheat: upright stems and ears attenuate VV strongly from stem
# elongation (VV dips ~3 dB below barley); winter barley: drooping awned ears scatter VV back.
STRUCTURE = {
    "winter_wheat": Structure(1.5, 0.04, 0.030, 0.45, 0.15),
    "winter_barley": Structure(1.4, 0.16, 0.032, 0.12, 0.15),
    "winter_rapeseed": Structure(2.2, 0.20, 0.060, 0.15, 0.12),
    "maize": Structure(3.0, 0.12, 0.075, 0.20, 0.10),
    "sunflower": Structure(2.4, 0.22, 0.055, 0.15, 0.12),
    "soybean": Structure(1.2, 0.18, 0.030, 0.15, 0.15),
    "meadow": Structure(0.8, 0.14, 0.030, 0.25, 0.20),
    "deciduous_forest": Structure(6.0, 0.20, 0.065, 0.20, 0.15),  # branches: saturated, stable volume
}
# Bare soil sigma0 [dB] = C + D mv (Dubois-like linear moisture sensitivity), per polarisation.
SOIL = {"VV": (-18.0, 25.0), "VH": (-27.0, 22.0)}
SOIL_ANGLE_SLOPE = -0.15  # dB per degree of incidence above 40 deg
WATER_VV, WATER_VH = -22.0, -29.0  # dB, calm water
URBAN_VH_BELOW_VV = 9.0  # dB


def _table(field: str) -> np.ndarray:
    """(n_classes,) float32 `field` of STRUCTURE per class index (NaN for water and artificial)."""
    return np.array([getattr(STRUCTURE[c.name], field) if c.name in STRUCTURE else np.nan for c in CLASSES], np.float32)


def db(linear: np.ndarray) -> np.ndarray:
    return (10 * np.log10(linear)).astype(np.float32)


def linear(decibels) -> np.ndarray:
    return np.power(10.0, np.asarray(decibels, np.float32) / 10).astype(np.float32)


def water_cloud(biomass: np.ndarray, soil: np.ndarray, a: np.ndarray, b: np.ndarray, theta: float) -> np.ndarray:
    """Water Cloud Model backscatter (linear), every argument broadcast per pixel."""
    cos = np.cos(np.radians(theta))
    tau2 = np.exp(-2 * b * biomass / cos)
    return a * cos * (1 - tau2) + tau2 * soil


class Sentinel1Model:
    """Static S1 state of a scene (parcel soil, roughness, urban orientation, weather) and per-pass rendering."""

    def __init__(self, scene: SceneModel):
        self.scene = scene
        self.passes = s1_calendar(scene.years)
        days = np.array([(p.date - FIRST_YEAR_START).days for p in self.passes], np.float32)
        self.cover = scene.cover_at(days)  # (n, 3, T_s1)
        n, years = scene.land.classes.shape
        rng = np.random.default_rng([scene.seed, SEED_STATIC])
        self.moisture_offset = rng.normal(0.0, 0.03, n).astype(np.float32)  # soil type, drainage
        self.roughness = rng.normal(0.0, 1.5, (n, years)).astype(np.float32)  # dB, tillage state
        self.urban_level = rng.uniform(-0.5, 3.5, n).astype(np.float32)  # dB VV, building density
        self.urban_aspect = rng.normal(0.0, 1.5, (n, len(ORBITS))).astype(np.float32)  # dB, per orbit
        self.scatterers = rng.normal(0.0, 2.5, scene.shape).astype(np.float32)  # dB, point targets in towns
        days_covered = (self.passes[-1].date - FIRST_YEAR_START).days + 1
        weather = np.random.default_rng([scene.seed, SEED_WEATHER])
        self.moisture = soil_moisture_series(FIRST_YEAR_START, days_covered, weather)
        self.tables = {field: _table(field) for field in ("biomass", "a_vv", "a_vh", "b_vv", "b_vh")}

    def backscatter(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """gamma0 of pass `k`: ((2, H, W) float32 linear VV, VH; (H, W) bool nodata)."""
        s1, scene = self.passes[k], self.scene
        rng = np.random.default_rng([scene.seed, SEED_PASS, s1.index])
        ids = scene.land.ids
        classes = scene.classes_on(s1.date)[ids]  # (H, W)
        fractions = np.clip(self.cover[:, :, k][ids] * scene.texture[..., None], 0, 1)  # (H, W, 3)
        fractions /= np.maximum(fractions.sum(-1, keepdims=True), 1.0)
        cover = fractions[..., 0] + fractions[..., 2] + 0.5 * fractions[..., 1]
        biomass = self.tables["biomass"][classes] * cover
        moisture = (self.moisture[(s1.date - FIRST_YEAR_START).days] + self.moisture_offset[ids]
                    + 0.03 * smooth_noise(scene.shape, 40.0, rng))
        moisture = np.clip(moisture, 0.03, 0.5)
        year = scene.year_of_date(s1.date)
        theta = s1.orbit.incidence
        windy = rng.random() < 0.25
        out = []
        for pol in POLARISATIONS:
            c, d = SOIL[pol]
            soil = linear(c + d * moisture + self.roughness[ids, year] + SOIL_ANGLE_SLOPE * (theta - 40.0))
            a, b = self.tables[f"a_{pol.lower()}"][classes], self.tables[f"b_{pol.lower()}"][classes]
            sigma = np.where(np.isnan(a), soil, water_cloud(biomass, soil, np.nan_to_num(a), np.nan_to_num(b), theta))
            out.append(sigma)
        vv, vh = out
        water = classes == CLASS_INDEX["water"]
        wind = rng.uniform(4.0, 8.0) if windy else rng.uniform(-1.5, 1.5)  # dB: wind-roughened surface
        vv = np.where(water, linear(WATER_VV + wind), vv)
        vh = np.where(water, linear(WATER_VH + wind), vh)
        urban = classes == CLASS_INDEX["artificial"]
        orbit = ORBITS.index(s1.orbit)
        urban_vv = self.urban_level[ids] + self.urban_aspect[ids, orbit] + self.scatterers
        vv = np.where(urban, linear(urban_vv), vv)
        vh = np.where(urban, linear(urban_vv - URBAN_VH_BELOW_VV), vh)
        gamma0 = np.stack([vv, vh]).astype(np.float32)
        gamma0 *= rng.gamma(ENL, 1 / ENL, gamma0.shape).astype(np.float32)  # speckle
        return gamma0, _frame_edge(scene.shape, rng)


def _frame_edge(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: on ~5 % of passes the edge of the RTC frame crosses the area (nodata beyond it)."""
    nodata = np.zeros(shape, bool)
    if rng.random() < 0.05:
        rows, cols = np.mgrid[0: shape[0], 0: shape[1]]
        nodata = (rows + 0.3 * cols) < rng.uniform(0.1, 0.4) * shape[0]
    return nodata


class S1Writer:
    """Render and write pass `k` (a job for `_map`); returns the pass date."""

    def __init__(self, model: Sentinel1Model, folder: Path, units: str, layout: str):
        self.model, self.folder, self.units, self.layout = model, folder, units, layout

    def __call__(self, k: int) -> dt.date:
        s1 = self.model.passes[k]
        gamma0, nodata = self.model.backscatter(k)
        if self.units == "db":
            values, fill = db(gamma0), np.float32(np.nan)
        else:
            values, fill = gamma0, np.float32(0.0)
        values[:, nodata] = fill
        folder = self.folder / s1.orbit.folder
        tags = dict(ORBIT_DIRECTION=s1.orbit.direction, RELATIVE_ORBIT=str(s1.orbit.relative_orbit),
                    PLATFORM=f"SENTINEL-1{s1.platform[-1]}", ACQUISITION_START=f"{s1.start:%Y-%m-%dT%H:%M:%S}Z",
                    RADIOMETRY="gamma0", UNITS="dB" if self.units == "db" else "linear",
                    INCIDENCE_ANGLE=f"{s1.orbit.incidence:.1f}")
        transform = self.model.scene.transform
        if self.layout == "multiband":
            write_raster(folder / s1.file_name(self.units, None), values, transform, FLOAT_OPTIONS, nodata=fill,
                          descriptions=POLARISATIONS, POLARISATION=",".join(POLARISATIONS), **tags)
        else:
            for pol, band in zip(POLARISATIONS, values):
                write_raster(folder / s1.file_name(self.units, pol), band, transform, FLOAT_OPTIONS, nodata=fill,
                              POLARISATION=pol, **tags)
        return s1.date
