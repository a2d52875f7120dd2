"""Render the synthetic scene: the acquisition calendar, surface reflectance, clouds, shadows, SCL.

Everything random is drawn from generators seeded by (seed, purpose, date index), so one date
renders the same whatever the layout, the processing baseline or the other dates: a SAFE and a
COG folder of the same seed hold the same reflectance.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from sitscli.data.synthetic.parcels import Landscape, make_landscape
from sitscli.data.synthetic.phenology import (
    BANDS, CLASS_INDEX, CLASSES, SPECTRA, ParcelTiming, annual_cover, sample_timing,
)

# The area: a corner of tile 31TCJ (UTM 31N; tile origin 300000 E, 4900020 N, 109.8 km wide),
# 60 km east and 40 km south of the tile origin, near Toulouse. The origin sits on the 60 m grid
# so the 10, 20 and 60 m rasters share their top-left corner, as in a real tile.
CRS = "EPSG:32631"
TILE = "31TCJ"
ORIGIN = (360000.0, 4860000.0)
LATITUDE = 43.9  # degrees north, for the sun elevation of cloud shadows
RELATIVE_ORBIT = 51  # R051 (descending, ~10:50 UTC) covers 31TCJ
FIRST_DATE = dt.date(2021, 10, 3)  # an S2B pass of R051; S2A and S2B alternate every 5 days
FIRST_YEAR = 2021  # agronomic years run 1 October - 30 September
MAX_CLOUD = 0.9  # scenes more cloudy than this are not delivered (as catalogue filters do)
SHADOW_PAD = 96  # px of cloud field beyond the area, south and east, that can cast shadows into it

# SCL classes (Sen2Cor).
SCL_NODATA, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10


@dataclass(frozen=True)
class Acquisition:
    """One pass over the area (only the delivered ones are kept)."""

    index: int  # position in the full 5-day calendar: seeds this date's random draws
    date: dt.date
    satellite: str  # "S2A" | "S2B"
    cloud_cover: float  # target cloudy fraction drawn for the date


def agronomic_years(years: int) -> list[tuple[str, str]]:
    return [(f"{FIRST_YEAR + y}-10-01", f"{FIRST_YEAR + y + 1}-09-30") for y in range(years)]


def season_cloudiness(date: dt.date) -> float:
    """Mean cloud cover by day of year: ~0.7 in mid-winter, ~0.35 in mid-summer (south-west France)."""
    doy = date.timetuple().tm_yday
    return 0.525 + 0.175 * np.cos(2 * np.pi * (doy - 15) / 365.25)


def calendar(years: int, seed: int) -> list[Acquisition]:
    """Every 5-day pass of the agronomic years with its drawn cloud cover (cloudy ones included).

    Cloud cover is U-shaped (most scenes nearly clear or nearly overcast): Beta(1.2 m, 1.2 (1 - m))
    with m the seasonal mean.
    """
    rng = np.random.default_rng([seed, 1])
    end = dt.date(FIRST_YEAR + years, 9, 30)
    out = []
    date, i = FIRST_DATE, 0
    while date <= end:
        m = season_cloudiness(date)
        cover = float(rng.beta(1.2 * m, 1.2 * (1 - m)))
        out.append(Acquisition(i, date, "S2B" if i % 2 == 0 else "S2A", cover))
        date, i = date + dt.timedelta(days=5), i + 1
    return out


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially correlated Gaussian noise, correlation length ~`scale` px, zero mean, unit std.

    Filtered on a grid ~4x coarser than `scale` and upsampled, so the cost does not grow with it.
    """
    step = max(1, int(scale // 4))
    coarse = rng.standard_normal((shape[0] // step + 3, shape[1] // step + 3))
    coarse = ndimage.gaussian_filter(coarse, scale / step, mode="wrap")
    field = ndimage.zoom(coarse, step, order=1)[: shape[0], : shape[1]]
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)


def sun_zenith(date: dt.date) -> float:
    """Solar zenith angle (degrees) at local noon: latitude minus solar declination."""
    declination = 23.44 * np.sin(2 * np.pi * (date.timetuple().tm_yday - 81) / 365.25)
    return LATITUDE - declination


@dataclass
class Sky:
    """Atmosphere of one date over the area, each (H, W) float32.

    opacity: thick-cloud fraction 0-1; cirrus: reflectance added by thin cirrus; shadow: 0-1
    darkening by cloud shadow; nodata: bool, outside the swath.
    """

    opacity: np.ndarray
    cirrus: np.ndarray
    shadow: np.ndarray
    nodata: np.ndarray

    @property
    def cloudy_fraction(self) -> float:
        return float(((self.opacity >= 0.25) | (self.cirrus >= 0.015)).mean())


def make_sky(acq: Acquisition, shape: tuple[int, int], seed: int, purpose: int = 2) -> Sky:
    """Cloud blobs (smooth noise thresholded), their shadows, thin cirrus and the swath edge.

    `purpose` seeds the draws with the date index; another sensor passes its own so its skies are
    independent of Sentinel-2's.

    The cloud field covers the area plus SHADOW_PAD px to the south and east; a shadow is the
    cloud field shifted toward the sun: the sun stands in the south-south-east at 10:50 UTC
    (azimuth ~165 deg), so shadows fall north-north-west of their cloud by h tan(zenith), h the
    cloud height (0.5-1.5 km), capped at SHADOW_PAD.
    """
    rng = np.random.default_rng([seed, purpose, acq.index])
    height, width = shape
    canvas = (height + SHADOW_PAD, width + SHADOW_PAD)
    field = 0.75 * smooth_noise(canvas, 30.0, rng) + 0.25 * smooth_noise(canvas, 6.0, rng)
    threshold = np.quantile(field, 1 - acq.cloud_cover)
    opacity = np.clip((field - threshold) / 0.6, 0, 1)  # soft edges over ~0.6 std
    length = min(rng.uniform(500, 1500) * np.tan(np.radians(sun_zenith(acq.date))) / 10.0, SHADOW_PAD)
    azimuth = np.radians(165.0)
    dy, dx = int(round(-length * np.cos(azimuth))), int(round(length * np.sin(azimuth)))
    shadow = np.clip(opacity[dy: dy + height, dx: dx + width] * 1.5, 0, 1)
    opacity = opacity[:height, :width]
    shadow = shadow * (1 - opacity)  # no shadow visible under the cloud itself
    cirrus = np.zeros(shape, np.float32)
    if rng.random() < 0.25:  # thin cirrus on about one date in four
        cirrus = rng.uniform(0.01, 0.04) / (1 + np.exp(-2 * smooth_noise(shape, 60.0, rng)))
    nodata = np.zeros(shape, bool)
    if rng.random() < 0.08:  # the swath edge crosses the area on a few dates
        rows, cols = np.mgrid[0:height, 0:width]
        nodata = (cols - 0.25 * rows) < rng.uniform(0.1, 0.4) * width
    return Sky(opacity.astype(np.float32), cirrus.astype(np.float32), shadow.astype(np.float32), nodata)


class SceneModel:
    """Static part of the scene (parcels, per-parcel phenology and soil) and per-date rendering."""

    def __init__(self, height: int, width: int, years: int, seed: int, difficulty: float):
        self.shape, self.years, self.seed, self.difficulty = (height, width), years, seed, difficulty
        rng = np.random.default_rng([seed, 0])
        self.land: Landscape = make_landscape(height, width, years, rng)
        self.transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
        self.calendar = calendar(years, seed)
        days = np.array([(a.date - dt.date(FIRST_YEAR, 10, 1)).days for a in self.calendar], np.float32)
        self.timings = [self._timings(year, rng) for year in range(years)]
        self.cover = self.cover_at(days)  # (n, 3, T_all) on the Sentinel-2 calendar
        n = self.land.n_parcels
        self.soil = SPECTRA["soil"][None, :] * rng.uniform(0.8, 1.2, (n, 1)).astype(np.float32)  # (n, 12)
        # Within-field heterogeneity (soil depth, density): a fine static texture scaling the cover.
        self.texture = 1 + (0.04 + 0.1 * difficulty) * smooth_noise(self.shape, 3.0, rng)

    def _timings(self, year: int, rng: np.random.Generator) -> dict[int, ParcelTiming]:
        classes = self.land.classes[:, year]
        return {int(c): sample_timing(int((classes == c).sum()), CLASSES[c], self.difficulty, rng)
                for c in np.unique(classes)}

    def cover_at(self, days: np.ndarray) -> np.ndarray:
        """(n_parcels, 3, len(days)) green/dry/flower cover at `days` since 1 October of the first year.

        Other sensors evaluate the same per-parcel curves on their own dates.
        """
        return annual_cover(self.land.classes, self.timings, np.asarray(days, np.float32), self.difficulty)

    def year_of(self, acq: Acquisition) -> int:
        return self.year_of_date(acq.date)

    def year_of_date(self, date: dt.date) -> int:
        """0-based agronomic year of a date (the last year keeps the days past its end)."""
        return min(self.years - 1, (date - dt.date(FIRST_YEAR, 10, 1)).days // 365)

    def classes_on(self, date: dt.date) -> np.ndarray:
        """(n_parcels,) class index of every parcel in the agronomic year of `date`."""
        return self.land.classes[:, self.year_of_date(date)]

    def surface(self, acq: Acquisition, rows: slice = slice(None)) -> np.ndarray:
        """Cloud-free surface reflectance (12, h, W) float32 of the date, bands in BANDS order.

        `rows` renders a strip only (bounded memory for big stacks; the strip draws its own noise).
        """
        rng = np.random.default_rng([self.seed, 3, acq.index, rows.start or 0])
        classes = self.land.classes[:, self.year_of(acq)]
        ids = self.land.ids[rows]
        fractions = self.cover[:, :, acq.index][ids]  # (h, W, 3)
        fractions = np.clip(fractions * self.texture[rows][..., None], 0, 1)
        fractions /= np.maximum(fractions.sum(-1, keepdims=True), 1.0)
        green, dry, flower = (fractions[..., k: k + 1] for k in range(3))  # each (H, W, 1)
        canopy = np.array([c.canopy for c in CLASSES], np.float32)[classes]
        straw = np.array([c.dry_brightness for c in CLASSES], np.float32)[classes]
        background = self.soil * rng.uniform(0.75, 1.0)  # wet soil after rain is darker
        background[classes == CLASS_INDEX["water"]] = SPECTRA["water"] * rng.uniform(0.9, 1.3)  # turbidity
        background[classes == CLASS_INDEX["artificial"]] = SPECTRA["urban"]
        refl = (green * SPECTRA["green"] * canopy[ids][..., None]
                + dry * SPECTRA["dry"] * straw[ids][..., None]
                + flower * SPECTRA["flower"]
                + (1 - green - dry - flower) * background[ids])  # (H, W, 12)
        noise = 0.003 + 0.01 * self.difficulty
        refl = refl * (1 + rng.normal(0, noise * 3, refl.shape)) + rng.normal(0, noise, refl.shape)
        # Sensor blur (MTF ~0.3 at Nyquist, ~0.6 px Gaussian): pixels on field borders mix both fields.
        refl = ndimage.gaussian_filter(refl.transpose(2, 0, 1), (0, 0.6, 0.6))
        # Residual atmospheric-correction error: a per-date gain per band and a little haze in blue.
        gain = 1 + rng.normal(0, 0.01 + 0.02 * self.difficulty, (len(BANDS), 1, 1))
        haze = rng.exponential(0.004) * np.array([1.0, 0.8, 0.5, 0.3] + [0.0] * 8)[:, None, None]
        return (refl * gain + haze).astype(np.float32)

    def render(self, acq: Acquisition, sky: Sky) -> np.ndarray:
        """Top-of-canopy reflectance as L2A delivers it (12, H, W): surface under shadows and clouds."""
        refl = self.surface(acq) * (1 - 0.65 * sky.shadow)  # shadows keep only the diffuse light
        refl = refl + sky.cirrus
        rng = np.random.default_rng([self.seed, 4, acq.index])
        cloud = SPECTRA["cloud"][:, None, None] * rng.uniform(0.8, 1.1)
        refl = (1 - sky.opacity) * refl + sky.opacity * cloud
        return np.clip(refl, 0.0001, 1.6).astype(np.float32)

    def delivered(self) -> list[tuple[Acquisition, Sky]]:
        """The acquisitions with their sky, the overcast ones (> MAX_CLOUD) dropped."""
        skies = ((a, make_sky(a, self.shape, self.seed)) for a in self.calendar)
        return [(a, s) for a, s in skies if s.cloudy_fraction <= MAX_CLOUD and not s.nodata.all()]

    def water_fraction(self) -> np.ndarray:
        """(H, W) 1.0 where the pixel belongs to a water parcel (same all years)."""
        return (self.land.classes[self.land.ids, 0] == CLASS_INDEX["water"]).astype(np.float32)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks of the last two axes (edge-padded to a multiple): 10 m -> 20/60 m."""
    if factor == 1:
        return image
    h, w = image.shape[-2:]
    ph, pw = -h % factor, -w % factor
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    image = np.pad(image, pad, mode="edge")
    shape = image.shape[:-2] + (image.shape[-2] // factor, factor, image.shape[-1] // factor, factor)
    return image.reshape(shape).mean(axis=(-3, -1))


def scene_classification(refl: np.ndarray, sky: Sky, water: np.ndarray) -> np.ndarray:
    """SCL at 20 m (uint8), classified from the 20 m aggregates like Sen2Cor works at 20 m.

    Thresholds: clouds of opacity >= 0.6 high probability, >= 0.25 medium (thinner edges are left
    unflagged, as Sen2Cor leaks some cloud borders); cirrus adding >= 0.015; shadow darkening
    >= 0.35; then water, vegetation (NDVI from B04/B8A >= 0.3) or not-vegetated.
    """
    def agg(a):
        return block_mean(a.astype(np.float32), 2)
    red, nir = agg(refl[BANDS.index("B04")]), agg(refl[BANDS.index("B8A")])
    ndvi = (nir - red) / (nir + red + 1e-6)
    opacity, cirrus, shadow = agg(sky.opacity), agg(sky.cirrus), agg(sky.shadow)
    scl = np.where(ndvi >= 0.3, SCL_VEGETATION, SCL_NOT_VEGETATED)
    scl = np.where(agg(water) >= 0.5, SCL_WATER, scl)
    scl = np.where(shadow >= 0.35, SCL_SHADOW, scl)
    scl = np.where(cirrus >= 0.015, SCL_CIRRUS, scl)
    scl = np.where(opacity >= 0.25, SCL_CLOUD_MEDIUM, scl)
    scl = np.where(opacity >= 0.6, SCL_CLOUD_HIGH, scl)
    scl = np.where(agg(sky.nodata) >= 0.5, SCL_NODATA, scl)
    return scl.astype(np.uint8)


def fine_size(pixels: int, resolution: float) -> int:
    """Pixels of `resolution` metres that cover `pixels` 10 m pixels (the last one may reach beyond)."""
    return int(np.ceil(pixels * 10.0 / resolution - 1e-6))


def fine_coordinates(start: int, stop: int, resolution: float, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Where fine pixels start..stop-1 (of `resolution` m, from the 10 m grid's origin) fall on the 10 m grid.

    Returns (position, index), each (stop - start,): the fine pixel centre in 10 m pixel units with
    10 m pixel centres at integers (for bilinear sampling), and the 10 m pixel holding the centre
    (clipped to `pixels` - 1), so that parcel borders stay sharp at the fine resolution.
    """
    centre = (np.arange(start, stop) + 0.5) * resolution / 10.0
    return (centre - 0.5).astype(np.float32), np.minimum(centre.astype(np.int64), pixels - 1)


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(h, w) samples of a 2-D `image` at the outer product of fractional `rows` (h,) and `cols` (w,)."""
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, [r, c], order=1, mode="nearest").astype(np.float32)
