"""Synthetic PlanetScope (PSScene) surface reflectance of the synthetic scene, near-daily at 3 m.

    planetscope/20211004_101512_1035_3B_AnalyticMS_SR_clip.tif   4 x uint16, reflectance x 10000, nodata 0
    planetscope/20211004_101512_1035_3B_udm2_clip.tif            8 x uint8 usable data mask

Both on a 3 m grid in the scene's UTM CRS whose origin is the Sentinel-2 grid's origin and which
covers the Sentinel-2 area (ceil(size x 10 / 3) pixels a side). SR bands blue, green, red, nir
(band descriptions); UDM2 bands clear, snow, shadow, light_haze, heavy_haze, cloud (0/1 each,
one of them set inside the footprint), confidence (0-100) and udm1 (legacy bits: 1 outside the
footprint, 2 cloud). Tags: ACQUIRED (ISO UTC time), SATELLITE_ID, STRIP_ID.

What differs from Sentinel-2 on purpose, so that a model must not take one for the other:
- the pixels are rendered from the same parcels and cover curves at 3 m: a parcel border falls
  between two 3 m pixels (sharp), and a static 3 m detail texture adds what 10 m pixels average out;
- band responses differ: a per-band gain and offset relative to the Sentinel-2 equivalent bands
  (B02, B03, B04, B08) plus a per-scene calibration gain (~3 %), the order of the
  PlanetScope/Sentinel-2 differences and Dove-to-Dove inconsistencies reported by Houborg and
  McCabe (2018, Remote Sens. Environ. 209:211);
- its own skies (`make_sky` with another seed purpose) and acquisition calendar: a scene every
  `every` days (~90 % of the days imaged, cloudy scenes delivered with their UDM2 as Planet does,
  only overcast ones > 97 % dropped: ~75-80 % of the days), morning overpasses between 09:50 and 10:40 UTC;
- strips: on ~10 % of the delivered days (at least one) the area falls across two consecutive
  scenes of one strip, one second apart, which overlap over 10-50 % of the rows; each has its
  own calibration gain, so a reader's mosaic order ("first clear pixel wins") shows.

Random draws: [seed, 20] calendar, [seed, 21, day] skies, [seed, 22, day] per-day rendering,
[seed, 23] static detail; the day index is the day since 1 October of the first year, so a scene
of a day is the same whatever `every`. Memory is ~40 bytes per 3 m pixel per scene (sizes up to
~1024 Sentinel-2 pixels).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from sitscli.data.synthetic.phenology import BANDS, CLASS_INDEX, CLASSES, SPECTRA
from sitscli.data.synthetic.scene import (
    FIRST_YEAR, Acquisition, SceneModel, Sky, bilinear, fine_coordinates, fine_size, make_sky, season_cloudiness,
    smooth_noise,
)
from sitscli.data.synthetic.writers import TIFF_OPTIONS, write_raster

SEED_CALENDAR, SEED_SKY, SEED_DAY, SEED_DETAIL = 20, 21, 22, 23
RESOLUTION = 3.0  # m
PS_BANDS = ("blue", "green", "red", "nir")
S2_EQUIVALENT = ("B02", "B03", "B04", "B08")
# PlanetScope reflectance = GAIN x Sentinel-2-equivalent + OFFSET: brighter blue (residual
# atmosphere), weaker NIR (broader Dove NIR filter), slightly brighter red.
GAIN = np.array([0.93, 0.97, 1.05, 0.90], np.float32)
OFFSET = np.array([0.010, 0.006, 0.002, 0.012], np.float32)
UDM2_BANDS = ("clear", "snow", "shadow", "light_haze", "heavy_haze", "cloud", "confidence", "udm1")
UDM1_BLACKFILL, UDM1_CLOUD = 1, 2
FLEET = ("1035", "2262", "241c", "2439", "106e", "2403")  # Dove satellite ids
IMAGED = 0.9  # share of days with a scene over the area
MAX_COVER = 0.97  # overcast scenes dropped
STRIP_SHARE = 0.10
FIRST_DAY = dt.date(FIRST_YEAR, 10, 1)


@dataclass(frozen=True)
class PSDay:
    """One day with PlanetScope imagery; `index` (days since 1 October of the first year) seeds its draws."""

    index: int
    date: dt.date
    time: dt.time  # of the first scene
    satellite: str
    cloud_cover: float
    strip: bool  # two scenes of one strip cover the area

    @property
    def acquisition(self) -> Acquisition:
        return Acquisition(self.index, self.date, self.satellite, self.cloud_cover)

    def scene_ids(self) -> list[str]:
        """`20211004_101512_1035` per scene of the day (the second of a strip one second later)."""
        first = dt.datetime.combine(self.date, self.time)
        times = [first, first + dt.timedelta(seconds=1)] if self.strip else [first]
        return [f"{t:%Y%m%d_%H%M%S}_{self.satellite}" for t in times]


def ps_calendar(years: int, seed: int, every: int) -> list[PSDay]:
    """The delivered days, every `every` days from 1 October of the first year.

    Every day's draws are made whatever `every`, so a day keeps its sky and scenes when `every` changes.
    """
    rng = np.random.default_rng([seed, SEED_CALENDAR])
    days = (dt.date(FIRST_YEAR + years, 9, 30) - FIRST_DAY).days + 1
    out = []
    for index in range(days):
        date = FIRST_DAY + dt.timedelta(days=index)
        m = season_cloudiness(date)
        cover = float(rng.beta(1.2 * m, 1.2 * (1 - m)))
        imaged, strip = rng.random() < IMAGED, rng.random() < STRIP_SHARE
        seconds = int(rng.integers(9 * 3600 + 50 * 60, 10 * 3600 + 40 * 60))
        satellite = FLEET[int(rng.integers(len(FLEET)))]
        if index % every == 0 and imaged and cover <= MAX_COVER:
            time = dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)
            out.append(PSDay(index, date, time, satellite, cover, strip))
    if out and not any(day.strip for day in out):  # the mosaic rule must have something to act on
        out[0] = PSDay(out[0].index, out[0].date, out[0].time, out[0].satellite, out[0].cloud_cover, True)
    return out


class PlanetScopeModel:
    """The 3 m view of a scene: parcel ids, textures and cover on the PlanetScope days."""

    def __init__(self, scene: SceneModel, every: int):
        self.scene = scene
        self.days = ps_calendar(scene.years, scene.seed, every)
        height, width = scene.shape
        self.shape = (fine_size(height, RESOLUTION), fine_size(width, RESOLUTION))
        self.transform = scene.transform * Affine.scale(RESOLUTION / 10.0)
        (rows, row_index), (cols, col_index) = (fine_coordinates(0, n, RESOLUTION, m)
                                                for n, m in zip(self.shape, scene.shape))
        self.rows, self.cols, self.nearest = rows, cols, np.ix_(row_index, col_index)
        self.ids = scene.land.ids[self.nearest]  # (Hp, Wp): sharp parcel borders
        detail = smooth_noise(self.shape, 1.5, np.random.default_rng([scene.seed, SEED_DETAIL]))
        self.texture = bilinear(scene.texture, rows, cols) * (1 + 0.015 * detail)
        self.cover = scene.cover_at(np.array([d.index for d in self.days], np.float32))  # (n, 3, T_ps)
        self.band_index = [BANDS.index(b) for b in S2_EQUIVALENT]

    def sky(self, day: PSDay) -> Sky:
        """The day's own sky, drawn on the 10 m grid and sampled at 3 m (clouds are smooth)."""
        sky = make_sky(day.acquisition, self.scene.shape, self.scene.seed, purpose=SEED_SKY)
        fields = [bilinear(f, self.rows, self.cols) for f in (sky.opacity, sky.cirrus, sky.shadow)]
        return Sky(*fields, nodata=sky.nodata[self.nearest])

    def surface(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """(Hp, Wp, 4) Sentinel-2-equivalent surface reflectance of day `k` (B02, B03, B04, B08)."""
        day, scene, ids = self.days[k], self.scene, self.ids
        classes = scene.classes_on(day.date)
        fractions = np.clip(self.cover[:, :, k][ids] * self.texture[..., None], 0, 1)
        fractions /= np.maximum(fractions.sum(-1, keepdims=True), 1.0)
        green, dry, flower = (fractions[..., j: j + 1] for j in range(3))
        spectra = {name: SPECTRA[name][self.band_index] for name in ("green", "dry", "flower", "water", "urban")}
        canopy = np.array([c.canopy for c in CLASSES], np.float32)[classes]
        straw = np.array([c.dry_brightness for c in CLASSES], np.float32)[classes]
        background = scene.soil[:, self.band_index] * rng.uniform(0.75, 1.0)  # wet soil after rain is darker
        background[classes == CLASS_INDEX["water"]] = spectra["water"] * rng.uniform(0.9, 1.3)
        background[classes == CLASS_INDEX["artificial"]] = spectra["urban"]
        refl = (green * spectra["green"] * canopy[ids][..., None] + dry * spectra["dry"] * straw[ids][..., None]
                + flower * spectra["flower"] + (1 - green - dry - flower) * background[ids])
        return ndimage.gaussian_filter(refl, (0.5, 0.5, 0))  # Dove optics: ~0.5 px blur

    def render(self, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The scenes of day `k`: per scene (4, Hp, Wp) uint16 SR and (8, Hp, Wp) uint8 UDM2."""
        day = self.days[k]
        rng = np.random.default_rng([self.scene.seed, SEED_DAY, day.index])
        sky = self.sky(day)
        refl = self.surface(k, rng) * GAIN + OFFSET
        refl = refl * (1 - 0.65 * sky.shadow[..., None]) + sky.cirrus[..., None] * np.array([1.0, 0.9, 0.7, 0.5])
        cloud = SPECTRA["cloud"][self.band_index] * rng.uniform(0.8, 1.1)
        refl = (1 - sky.opacity[..., None]) * refl + sky.opacity[..., None] * cloud
        footprints = _footprints(self.shape[0], day.strip, rng)
        sr, udm2 = [], []
        for rows in footprints:
            gain = rng.normal(1.0, 0.03, 4)  # this scene's calibration
            inside = np.zeros(self.shape, bool)
            inside[rows] = True
            inside &= ~sky.nodata
            dn = np.clip(np.rint(refl * gain * 10000), 1, 65535).astype(np.uint16)
            dn[~inside] = 0
            sr.append(np.moveaxis(dn, -1, 0))
            udm2.append(usable_data_mask(sky, inside))
        return sr, udm2


def _footprints(height: int, strip: bool, rng: np.random.Generator) -> list[slice]:
    """Rows of the area each scene of the day covers: all, or two overlapping frames of a strip."""
    if not strip:
        return [slice(0, height)]
    first_end = int(rng.uniform(0.55, 0.75) * height)
    second_start = int(rng.uniform(0.25, 0.45) * height)
    return [slice(0, first_end), slice(second_start, height)]


def usable_data_mask(sky: Sky, inside: np.ndarray) -> np.ndarray:
    """(8, H, W) uint8 UDM2 from the sky on the 3 m grid, `inside` the scene footprint.

    One class per pixel, the worst first: cloud (opacity >= 0.6), heavy haze (>= 0.25), shadow
    (darkening >= 0.35), light haze (opacity >= 0.08 or cirrus >= 0.015), else clear. Confidence
    falls where the opacity is neither clearly 0 nor 1 (cloud edges).
    """
    cloud = sky.opacity >= 0.6
    heavy = (sky.opacity >= 0.25) & ~cloud
    shadow = (sky.shadow >= 0.35) & ~cloud & ~heavy
    light = ((sky.opacity >= 0.08) | (sky.cirrus >= 0.015)) & ~cloud & ~heavy & ~shadow
    clear = ~(cloud | heavy | shadow | light)
    confidence = np.rint(100 - 240 * sky.opacity * (1 - sky.opacity))  # 40 at opacity 0.5
    udm1 = np.where(inside, np.where(cloud | heavy, UDM1_CLOUD, 0), UDM1_BLACKFILL)
    snow = np.zeros_like(clear)
    layers = [clear, snow, shadow, light, heavy, cloud]
    out = np.stack([layer & inside for layer in layers] + [np.where(inside, confidence, 0), udm1]).astype(np.uint8)
    return out


class PSWriter:
    """Render and write the scenes of day `k` (a job for `_map`); returns the number of scenes."""

    def __init__(self, model: PlanetScopeModel, folder: Path):
        self.model, self.folder = model, folder

    def __call__(self, k: int) -> int:
        day = self.model.days[k]
        srs, udm2s = self.model.render(k)
        for scene_id, sr, udm2 in zip(day.scene_ids(), srs, udm2s):
            when = dt.datetime.strptime(scene_id[:15], "%Y%m%d_%H%M%S")
            tags = dict(ACQUIRED=f"{when:%Y-%m-%dT%H:%M:%S}Z", SATELLITE_ID=day.satellite,
                        STRIP_ID=f"{day.index * 7919 % 10 ** 7:07d}")
            write_raster(self.folder / f"{scene_id}_3B_AnalyticMS_SR_clip.tif", sr, self.model.transform,
                          TIFF_OPTIONS, nodata=0, descriptions=PS_BANDS, **tags)
            write_raster(self.folder / f"{scene_id}_3B_udm2_clip.tif", udm2, self.model.transform,
                          TIFF_OPTIONS, descriptions=UDM2_BANDS, **tags)
        return len(srs)
