"""Land-cover classes of the synthetic scene: their seasonal cover curves and their spectra.

Each class gives, for every parcel and date, three cover fractions (green vegetation, dry
vegetation/straw, yellow flowers); the rest of the pixel is bare soil. Reflectance is the linear
mix of the four endmember spectra weighted by those fractions (a linear spectral mixture, the
usual first-order model of a 10-20 m pixel).

Time is `t`, days since 1 October of the agronomic year (t = 92 is 1 January, 182 is 1 April,
273 is 1 July). Green cover follows double-logistic curves (Zhang et al. 2003, Remote Sens.
Environ. 84:471 — a rise at green-up and a fall at senescence); winter crops add an autumn
emergence and a winter plateau, meadows add regrowth after each mowing cut. Key dates are typical
of south-west France (tile 31TCJ, Toulouse area): values are agronomic calendar knowledge, not
fitted to data, which is enough for a test bed where only the relative timing between classes
matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

# The 12 L2A surface-reflectance bands (B10 is cirrus, an L1C-only band).
BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

# Endmember spectra, reflectance 0-1 per band of BANDS. Typical library values: green leaves are
# dark in the red (chlorophyll), bright in the NIR plateau and darkened in SWIR by leaf water;
# straw is bright in SWIR (no water); soil rises slowly from blue to SWIR; water is dark everywhere.
SPECTRA: dict[str, np.ndarray] = {
    name: np.array(values, dtype=np.float32)
    for name, values in {
        #          B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
        "green": (0.030, 0.035, 0.075, 0.035, 0.120, 0.320, 0.400, 0.430, 0.440, 0.430, 0.210, 0.095),
        "dry":   (0.070, 0.090, 0.130, 0.180, 0.220, 0.260, 0.290, 0.310, 0.330, 0.320, 0.420, 0.330),
        "flower": (0.040, 0.045, 0.150, 0.140, 0.200, 0.330, 0.380, 0.400, 0.410, 0.400, 0.250, 0.130),
        "soil":  (0.075, 0.085, 0.115, 0.155, 0.185, 0.205, 0.220, 0.230, 0.240, 0.240, 0.330, 0.280),
        "water": (0.055, 0.050, 0.045, 0.030, 0.025, 0.015, 0.013, 0.012, 0.011, 0.010, 0.005, 0.004),
        "urban": (0.120, 0.130, 0.150, 0.170, 0.190, 0.200, 0.210, 0.220, 0.220, 0.220, 0.250, 0.230),
        # Thick cloud: bright and nearly white, darker in SWIR where water and ice absorb.
        "cloud": (0.600, 0.620, 0.620, 0.630, 0.630, 0.640, 0.640, 0.650, 0.650, 0.600, 0.450, 0.300),
    }.items()
}


@dataclass(frozen=True)
class LandClass:
    """One class: its name, map colour and what drives its cover curve.

    `dates` are the class-mean key days (since 1 October) read by `cover()`; `kind` picks the curve.
    `canopy` scales the green spectrum (a forest canopy is darker than a crop through its own
    shadows); `dry_brightness` scales straw (sunflower heads turn dark brown, cereals golden).
    """

    name: str
    color: str
    kind: str  # winter | summer | meadow | forest | water | urban
    dates: dict[str, float] = field(default_factory=dict)
    peak: float = 0.9
    canopy: float = 1.0
    dry_brightness: float = 1.0
    permanent: bool = False


CLASSES: tuple[LandClass, ...] = (
    # Winter cereals: emergence in November, winter plateau, spring green-up, golden ripening, harvest.
    LandClass("winter_wheat", "#e6c229", "winter",
              dict(emerge=45, greenup=165, senesce=250, harvest=285), peak=0.92),
    LandClass("winter_barley", "#b8860b", "winter",
              dict(emerge=40, greenup=150, senesce=232, harvest=268), peak=0.88),
    # Rapeseed is sown late August (t < 0: the previous agronomic year), flowers yellow in April.
    LandClass("winter_rapeseed", "#f5f10a", "winter",
              dict(emerge=-25, greenup=150, flower=200, senesce=245, harvest=278), peak=0.93),
    # Summer crops: sown April-May, peak in July-August, maize and soybean harvested in October.
    LandClass("maize", "#f28e2b", "summer",
              dict(greenup=255, senesce=345, harvest=380), peak=0.95),
    LandClass("sunflower", "#c9497a", "summer",
              dict(greenup=240, senesce=300, harvest=345), peak=0.85, dry_brightness=0.55),
    LandClass("soybean", "#8c6d31", "summer",
              dict(greenup=262, senesce=335, harvest=372), peak=0.9),
    # Permanent meadow: green all year, spring flush, two or three mowing cuts, summer drought.
    LandClass("meadow", "#7fc97f", "meadow",
              dict(greenup=175, cut1=228, cut2=278, cut3=330), peak=0.9, permanent=True),
    LandClass("deciduous_forest", "#1b7837", "forest",
              dict(greenup=200, senesce=40), peak=0.92, canopy=0.75, permanent=True),
    LandClass("water", "#2b8cbe", "water", permanent=True),
    LandClass("artificial", "#9e9e9e", "urban", permanent=True),
)

CROPS = tuple(i for i, c in enumerate(CLASSES) if not c.permanent)
CLASS_INDEX = {c.name: i for i, c in enumerate(CLASSES)}


def _rise(t: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    """Logistic step from 0 to 1 centred on `centre` (days), ~4.4 x width days from 10% to 90%."""
    return expit((t - centre) / width)


@dataclass
class ParcelTiming:
    """Per-parcel draws of one class for one agronomic year (arrays of shape (n,))."""

    shift: np.ndarray  # days added to every key date
    peak: np.ndarray  # maximum green cover
    cuts: np.ndarray  # meadows: number of mowing cuts (2 or 3)


def sample_timing(n: int, land: LandClass, difficulty: float, rng: np.random.Generator) -> ParcelTiming:
    """Draw per-parcel variation: sowing/weather shifts of the calendar and peak cover.

    The spread grows with `difficulty` (5 to 20 days of timing, 0.04 to 0.16 of cover) so that
    the classes overlap more; 0.3 keeps a ~10-day spread, the order of sowing-date variation
    between neighbouring farms.
    """
    shift = rng.normal(0.0, 5.0 + 15.0 * difficulty, n)
    peak = np.clip(rng.normal(land.peak, 0.04 + 0.12 * difficulty, n), 0.35, 0.98)
    cuts = rng.integers(2, 4, n)
    return ParcelTiming(shift=shift.astype(np.float32), peak=peak.astype(np.float32), cuts=cuts)


def key_dates(land: LandClass, difficulty: float) -> dict[str, float]:
    """Class key dates pulled toward the mean crop calendar as difficulty grows (curves more alike)."""
    if land.kind not in ("winter", "summer"):
        return dict(land.dates)
    group = [c for c in CLASSES if c.kind == land.kind]
    pull = 0.5 * difficulty
    return {k: (1 - pull) * v + pull * float(np.mean([c.dates[k] for c in group if k in c.dates]))
            for k, v in land.dates.items()}


def cover(land: LandClass, t: np.ndarray, timing: ParcelTiming, difficulty: float) -> np.ndarray:
    """Cover fractions of `n` parcels of one class at days `t` (T,) since 1 October.

    Returns (n, 3, T) float32: green, dry and flower fractions, each in 0-1, summing to <= 1.
    Curves are defined on t in about [-60, 425] so that an autumn-sown crop of the next year or a
    late harvest of the previous one can be evaluated on the neighbouring year's dates.
    """
    d = key_dates(land, difficulty)
    t = t[None, :] - timing.shift[:, None]  # (n, T): each parcel on its own calendar
    peak = timing.peak[:, None]
    green = np.zeros_like(t)
    dry = np.zeros_like(t)
    flower = np.zeros_like(t)
    if land.kind == "winter":
        autumn = 0.3 * _rise(t, d["emerge"] + 20.0, 8.0)  # emergence and tillering, then winter rest
        spring = _rise(t, d["greenup"], 10.0)
        ripening = _rise(t, d["senesce"], 7.0)
        harvested = _rise(t, d["harvest"], 2.0)
        green = (autumn + (peak - 0.3) * spring) * (1 - ripening)
        dry = peak * ripening * (1 - harvested)
        if "flower" in d:  # rapeseed flowering: ~3 weeks of yellow petals over the canopy
            flower = 0.5 * np.exp(-0.5 * ((t - d["flower"]) / 8.0) ** 2) * spring
    elif land.kind == "summer":
        spring = _rise(t, d["greenup"], 9.0)
        ripening = _rise(t, d["senesce"], 8.0)
        harvested = _rise(t, d["harvest"], 2.0)
        green = peak * spring * (1 - ripening)
        dry = peak * spring * ripening * (1 - harvested)
    elif land.kind == "meadow":
        green = 0.5 + (peak - 0.5) * _rise(t, d["greenup"], 12.0)
        for i, key in enumerate(("cut1", "cut2", "cut3")):
            mown = _rise(t, d[key], 1.0) * (1 - _rise(t, d[key] + 25.0, 6.0))  # cut, then regrowth
            active = (timing.cuts[:, None] > i).astype(np.float32)
            green = green * (1 - 0.7 * mown * active)
        drought = 0.35 * np.exp(-0.5 * ((t - 320.0) / 25.0) ** 2)  # late-summer browning
        dry = green * drought
        green = green - dry
    elif land.kind == "forest":
        leaf_on = _rise(t, d["greenup"], 8.0) * (1 - _rise(t, d["senesce"] + 365.0, 10.0))
        leaf_on = np.maximum(leaf_on, 1 - _rise(t, d["senesce"], 10.0))  # last autumn's leaves
        green = 0.25 + (peak - 0.25) * leaf_on
        dry = 0.7 * (1 - green)  # bare branches and litter under the canopy
    elif land.kind == "urban":
        green = 0.12 + 0.08 * _rise(t, 180.0, 15.0) * (1 - _rise(t, 300.0, 15.0))  # gardens
    return np.stack([green, dry, flower], axis=1).astype(np.float32)


def annual_cover(classes: np.ndarray, timings: list[dict[int, ParcelTiming]], t: np.ndarray,
                 difficulty: float) -> np.ndarray:
    """Cover of every parcel over several agronomic years.

    Args:
        classes: (n_parcels, n_years) class index per parcel and year.
        timings: per year, per class index, the `ParcelTiming` of the parcels of that class
            (in parcel order).
        t: (T,) days since 1 October of the first year.
    Returns:
        (n_parcels, 3, T) green/dry/flower fractions. At each date a parcel shows the maximum of
        the curves of the year in progress and its neighbours, so that a crop harvested after
        30 September (maize) or sown before 1 October (rapeseed) appears on the right dates.
    """
    n, years = classes.shape
    out = np.zeros((n, 3, len(t)), dtype=np.float32)
    for year in range(years):
        local = t - 365.25 * year
        near = (local > -70) & (local < 430)
        for cls, timing in timings[year].items():
            cells = np.ix_(np.flatnonzero(classes[:, year] == cls), range(3), np.flatnonzero(near))
            out[cells] = np.maximum(out[cells], cover(CLASSES[cls], local[near], timing, difficulty))
    total = out.sum(axis=1, keepdims=True)
    return out / np.maximum(total, 1.0)
