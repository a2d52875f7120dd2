"""The sensors a prepared dataset may hold beside Sentinel-2, and how each is stored.

Sentinel-2 is the reference modality: its 10 m grid is the grid of every dataset and map, and its
variables keep their plain names (`x`, `valid`, `date`). Every other sensor is an extra modality
of the same samples with its own dates, bands, resolution and validity, never resampled in time
onto another sensor's dates (DESIGN.md, "Several sensors"):

    name         prefix  time  per-sample footprint (pixel mode | patch mode of P x P)   stored as
    s1           s1      yes   one 10 m pixel             | P x P                         int16 dB x 100
    planetscope  ps      yes   f x f pixels at 10/f m     | fP x fP  (f = 3: 3.33 m)       int16 reflectance x 10000
    vhr          vhr     no    k x k pixels at 10/k m     | kP x kP  (k = 10 at 1 m)      int16 reflectance x 10000

In the zarr store a modality's variables carry its prefix and its own dimensions, e.g.
`s1_x (sample, s1_time, s1_band[, py, px])`, `ps_x (sample, ps_time, ps_band, ps_row, ps_col)`,
`vhr_x (sample, vhr_band, vhr_row, vhr_col)`, with `*_valid` and (temporal ones) `*_date`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sitscli.core.errors import ConfigError

S2 = "s2"

# prefix, temporal, stored scale, unit; one row per sensor the toolkit reads.
_KNOWN: dict[str, tuple[str, bool, float, str]] = {
    "s1": ("s1", True, 100.0, "dB"),                 # 0.01 dB steps; int16 holds +-327 dB
    "planetscope": ("ps", True, 10000.0, "reflectance"),
    "vhr": ("vhr", False, 10000.0, "reflectance"),
}
ALL = (S2, *_KNOWN)


@dataclass(frozen=True)
class Modality:
    """One extra sensor of a prepared dataset.

    Attributes:
        name: "s1", "planetscope" or "vhr".
        band_names: its channels in stored order (e.g. VV, VH, VV/VH; blue, green, red, nir).
        n_time: dates on its own time axis (0 for a single image).
        footprint: spatial shape of one sample's block: () for one pixel, (h, w) otherwise.
        resolution: metres per pixel of the stored block.
        source: where it was read from (for people).
    """

    name: str
    band_names: tuple[str, ...]
    n_time: int
    footprint: tuple[int, ...]
    resolution: float
    source: str = ""

    def __post_init__(self):
        if self.name not in _KNOWN:
            raise ValueError(f"unknown modality {self.name!r}: one of {', '.join(_KNOWN)}")

    @property
    def prefix(self) -> str:
        return _KNOWN[self.name][0]

    @property
    def temporal(self) -> bool:
        return _KNOWN[self.name][1]

    @property
    def scale(self) -> float:
        return _KNOWN[self.name][2]

    @property
    def unit(self) -> str:
        return _KNOWN[self.name][3]

    def dims(self, patch: bool) -> dict[str, tuple[str, ...]]:
        """Dimension names of the modality's variables x, valid (and date when temporal)."""
        p = self.prefix
        if not self.footprint:
            spatial: tuple[str, ...] = ()
        elif self.name == "s1":
            spatial = ("py", "px") if patch else ()  # same 10 m grid as Sentinel-2's patches
        else:
            spatial = (f"{p}_row", f"{p}_col")
        time = (f"{p}_time",) if self.temporal else ()
        dims = {"x": ("sample", *time, f"{p}_band", *spatial), "valid": ("sample", *time, *spatial)}
        if self.temporal:
            dims["date"] = ("sample", f"{p}_time")
        return dims

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample's x: (T, C, *footprint) or (C, *footprint)."""
        time = (self.n_time,) if self.temporal else ()
        return (*time, len(self.band_names), *self.footprint)


def prefix_of(name: str) -> str:
    """Variable prefix of a modality name ("" for Sentinel-2)."""
    return "" if name == S2 else _KNOWN[name][0]


def parse_modalities(text: str | None, *, where: str = "--modalities") -> tuple[str, ...] | None:
    """'s2,s1' -> ("s2", "s1"), checked; None stays None. Sentinel-2 may not be left out."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(n.strip().lower() for n in str(text).split(",") if n.strip()))
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ConfigError(f"{where} {text!r}: unknown modality {', '.join(unknown)}; choose from {', '.join(ALL)}")
    if S2 not in names:
        raise ConfigError(f"{where} {text!r}: Sentinel-2 (s2) is the reference modality and cannot be left out")
    return names
