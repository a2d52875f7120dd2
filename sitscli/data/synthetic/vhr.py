"""Synthetic very-high-resolution ortho image of the synthetic scene (an aerial RGB+NIR ortho, 1 m).

    vhr/ortho.tif                    one image, or with tiles=True a 2 x 2 folder of tiles:
    vhr/ortho_r0_c0.tif ... ortho_r1_c1.tif

uint8, 4 bands R, G, B, NIR (band descriptions), no nodata, in the scene's UTM CRS on a grid of
`resolution` m (default 1, 0.2-1.5) whose origin is the Sentinel-2 grid's origin and which covers
the Sentinel-2 area (ceil(size x 10 / resolution) pixels a side). DN = 255 x reflectance /
REFLECTANCE_MAX (0.35 visible, 0.6 NIR, clipped), as an ortho is stretched for display. Tags:
ACQUISITION_DATE (one summer flight, 20 June of the first agronomic year) and REFLECTANCE_MAX.

The colours come from the same parcels and cover curves as the Sentinel-2 series on that date
(the Sentinel-2 B04, B03, B02, B08 endmembers); on top, the texture that only a sub-metre view
shows, per class:
- crops: a row pattern (seed-drill passes, beds, tramlines as seen from the air) with a per-parcel
  orientation and phase and a class-specific period (+-10 % per parcel) and contrast (ROWS), on
  the plants and, fainter, on the soil (seedbed ridges, visible before emergence):
  wheat 3 m vs barley 5 m, maize 2.5 m vs soybean 4 m (not true row spacings, which a 1 m
  pixel cannot resolve, but a pattern a texture model can learn);
- deciduous forest: tree crowns, sunlit domes of 2.5-4.5 m radius on a jittered 7 m lattice,
  shaded gaps between them;
- artificial: streets on a per-parcel rotated 45 m grid and rectangular roofs (terracotta tiles,
  grey or light flat roofs) in the blocks, gardens between;
- water: flat, with a slight ripple and sparse sun glint;
- meadow: fine grass texture (per-pixel variation and mowing patches).
Everything is a function of the map position (hashes of integer coordinates and per-parcel draws
from [seed, 30]), so the image renders block by block with bounded memory and a tile holds
exactly the pixels of the single image.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from sitscli.data.synthetic.phenology import BANDS, CLASS_INDEX, CLASSES, SPECTRA
from sitscli.data.synthetic.scene import FIRST_YEAR, SceneModel, bilinear, fine_coordinates, fine_size
from sitscli.data.synthetic.writers import TIFF_OPTIONS, raster_profile

SEED_VHR = 30
VHR_BANDS = ("R", "G", "B", "NIR")
S2_EQUIVALENT = ("B04", "B03", "B02", "B08")
REFLECTANCE_MAX = np.array([0.35, 0.35, 0.35, 0.6], np.float32)
VHR_DATE = dt.date(FIRST_YEAR + 1, 6, 20)
RESOLUTIONS = (0.2, 1.5)  # m, the range DESIGN.md gives for VHR orthos
BLOCK_ROWS = 256  # fine rows rendered at a time
ORTHO_FILE = "ortho.tif"


@dataclass(frozen=True)
class Rows:
    """The row pattern of a crop class: period (m) and contrast (0-1) of the cover modulation."""

    period: float
    contrast: float


ROWS = {
    "winter_wheat": Rows(3.0, 0.35), "winter_barley": Rows(5.0, 0.35), "winter_rapeseed": Rows(4.0, 0.25),
    "maize": Rows(2.5, 0.6), "sunflower": Rows(3.2, 0.6), "soybean": Rows(4.0, 0.6),
}
CROWN_SPACING, CROWN_RADIUS = 7.0, (2.5, 4.5)  # m
STREET_SPACING, STREET_WIDTH, LOT = 45.0, 8.0, (15.0, 12.0)  # m
ROOFS = np.array([[0.36, 0.20, 0.14, 0.30],   # terracotta tiles (south-west France)
                  [0.24, 0.24, 0.25, 0.27],   # grey
                  [0.33, 0.33, 0.34, 0.36]],  # light flat roof
                 np.float32)  # R, G, B, NIR reflectance
ASPHALT = np.array([0.08, 0.08, 0.09, 0.10], np.float32)
GLINT = np.array([0.6, 0.6, 0.6, 0.5], np.float32)


def hash01(*keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values from integer keys (broadcast), splitmix64-style mixing: the same keys, the same value."""
    state = np.zeros(np.broadcast_shapes(*(np.shape(k) for k in keys)), np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            state = state ^ np.asarray(key).astype(np.int64).astype(np.uint64)
            state = state + np.uint64(0x9E3779B97F4A7C15)
            state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            state = state ^ (state >> np.uint64(31))
    return (state >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


class VHRModel:
    """Per-parcel draws and the VHR grid of a scene; `render(rows)` gives a block of the image."""

    def __init__(self, scene: SceneModel, resolution: float):
        self.scene, self.resolution = scene, resolution
        height, width = scene.shape
        self.shape = (fine_size(height, resolution), fine_size(width, resolution))
        self.transform = scene.transform * Affine.scale(resolution / 10.0)
        rng = np.random.default_rng([scene.seed, SEED_VHR])
        n = scene.land.n_parcels
        self.salt = int(rng.integers(2 ** 62))
        # float64 throughout the rendering: float32 SIMD kernels (cos, sin) may round the last bit
        # differently by position in the array, which would make a tile differ from the whole image
        self.angle = rng.uniform(0, np.pi, n)  # row / street orientation
        self.phase = rng.uniform(0, 1, n)
        self.spacing = rng.uniform(0.9, 1.1, n)  # each farmer's drill: +-10 % of the class period
        self.classes = scene.classes_on(VHR_DATE)
        day = np.array([(VHR_DATE - dt.date(FIRST_YEAR, 10, 1)).days], np.float32)
        self.cover = scene.cover_at(day)[:, :, 0]  # (n, 3)
        self.band_index = [BANDS.index(b) for b in S2_EQUIVALENT]
        self.cols, col_index = fine_coordinates(0, self.shape[1], resolution, width)
        self.col_index = col_index

    def render(self, start: int, stop: int, col_start: int = 0, col_stop: int | None = None) -> np.ndarray:
        """(4, stop - start, cols) uint8 of fine rows start..stop-1 and columns col_start..col_stop-1."""
        scene, res = self.scene, self.resolution
        cols = slice(col_start, self.shape[1] if col_stop is None else col_stop)
        rows, row_index = fine_coordinates(start, stop, res, scene.shape[0])
        ids = scene.land.ids[np.ix_(row_index, self.col_index[cols])]
        classes = self.classes[ids]
        # map position in metres east and south of the origin, and integer metre keys for the hashes
        x = ((np.arange(cols.start, cols.stop) + 0.5) * res)[None, :]
        y = ((np.arange(start, stop) + 0.5) * res)[:, None]
        texture = bilinear(scene.texture, rows, self.cols[cols]).astype(np.float64)
        refl = self._fields(ids, classes, x, y, texture)
        refl = self._forest(refl, classes, x, y)
        refl = self._town(refl, ids, classes, x, y)
        refl = self._water(refl, ids, classes, x, y)
        dn = np.clip(np.rint(refl / REFLECTANCE_MAX * 255), 0, 255).astype(np.uint8)
        return np.moveaxis(dn, -1, 0)

    def _fields(self, ids, classes, x, y, texture) -> np.ndarray:
        """(h, w, 4) linear mixture of the endmembers, crop cover modulated along the rows, grass texture."""
        scene = self.scene
        fractions = np.clip(self.cover[ids] * texture[..., None], 0, 1)
        period = np.array([ROWS[c.name].period if c.name in ROWS else 1.0 for c in CLASSES], np.float64)
        contrast = np.array([ROWS[c.name].contrast if c.name in ROWS else 0.0 for c in CLASSES], np.float64)
        angle = self.angle[ids]
        across = (x * np.cos(angle) + y * np.sin(angle)) / (period[classes] * self.spacing[ids]) + self.phase[ids]
        rows = contrast[classes] * np.cos(2 * np.pi * across)  # +1 on a row, -1 between rows
        fractions[..., :2] *= (1 + rows)[..., None]
        meadow = classes == CLASS_INDEX["meadow"]
        grass = 1 + 0.12 * (hash01(np.floor(x / self.resolution), np.floor(y / self.resolution), self.salt) - 0.5)
        patches = 1 + 0.15 * np.sin(x / 9.0 + 2 * self.phase[ids]) * np.sin(y / 7.0 + 3 * self.phase[ids])
        fractions[..., 0] *= np.where(meadow, grass * patches, 1.0)
        fractions = np.clip(fractions, 0, 1)
        fractions /= np.maximum(fractions.sum(-1, keepdims=True), 1.0)
        spectra = {name: SPECTRA[name][self.band_index] for name in ("green", "dry", "flower", "water", "urban")}
        canopy = np.array([c.canopy for c in CLASSES], np.float64)[classes][..., None]
        straw = np.array([c.dry_brightness for c in CLASSES], np.float64)[classes][..., None]
        background = scene.soil[:, self.band_index]
        background[self.classes == CLASS_INDEX["water"]] = spectra["water"]
        background[self.classes == CLASS_INDEX["artificial"]] = spectra["urban"]
        background = background[ids] * (1 + 0.3 * rows)[..., None]  # seedbed ridges show before emergence
        green, dry, flower = (fractions[..., j: j + 1] for j in range(3))
        return (green * spectra["green"] * canopy + dry * spectra["dry"] * straw + flower * spectra["flower"]
                + (1 - green - dry - flower) * background)

    def _forest(self, refl, classes, x, y) -> np.ndarray:
        """Sunlit crowns on a jittered lattice, darker shaded gaps between them."""
        forest = classes == CLASS_INDEX["deciduous_forest"]
        if not forest.any():
            return refl
        cell_x, cell_y = np.floor(x / CROWN_SPACING).astype(np.int64), np.floor(y / CROWN_SPACING).astype(np.int64)
        crown = np.zeros(forest.shape, np.float64)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                cx, cy = cell_x + dx, cell_y + dy
                centre_x = (cx + hash01(cx, cy, self.salt, 1)) * CROWN_SPACING
                centre_y = (cy + hash01(cx, cy, self.salt, 2)) * CROWN_SPACING
                radius = CROWN_RADIUS[0] + (CROWN_RADIUS[1] - CROWN_RADIUS[0]) * hash01(cx, cy, self.salt, 3)
                dome = 1 - ((x - centre_x) ** 2 + (y - centre_y) ** 2) / radius ** 2
                crown = np.maximum(crown, dome)
        brightness = 0.55 + 0.75 * np.clip(crown, 0, 1)
        return np.where(forest[..., None], refl * brightness[..., None], refl)

    def _town(self, refl, ids, classes, x, y) -> np.ndarray:
        """Streets on a rotated grid, a roof (or a garden) in each lot of the blocks."""
        town = classes == CLASS_INDEX["artificial"]
        if not town.any():
            return refl
        angle = self.angle[ids]
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        street = (np.mod(u, STREET_SPACING) < STREET_WIDTH) | (np.mod(v, STREET_SPACING) < STREET_WIDTH)
        lot_u, lot_v = np.floor(u / LOT[0]).astype(np.int64), np.floor(v / LOT[1]).astype(np.int64)
        inner = ((np.mod(u, LOT[0]) > 1.5) & (np.mod(u, LOT[0]) < LOT[0] - 1.5)
                 & (np.mod(v, LOT[1]) > 1.5) & (np.mod(v, LOT[1]) < LOT[1] - 1.5))
        draw = hash01(lot_u, lot_v, ids, self.salt, 4)
        roof = inner & (draw < 0.7)
        kind = (hash01(lot_u, lot_v, ids, self.salt, 5) * len(ROOFS)).astype(np.int64)
        colour = ROOFS[np.minimum(kind, len(ROOFS) - 1)]
        out = np.where((town & roof)[..., None], colour, refl)
        return np.where((town & street)[..., None], ASPHALT, out)

    def _water(self, refl, ids, classes, x, y) -> np.ndarray:
        """Flat water with a faint ripple and sparse sun glint."""
        water = classes == CLASS_INDEX["water"]
        if not water.any():
            return refl
        angle = self.angle[ids]
        ripple = 1 + 0.05 * np.sin((x * np.cos(angle) + y * np.sin(angle)) / 1.7)
        glint = hash01(np.floor(x / self.resolution), np.floor(y / self.resolution), self.salt, 6) < 0.004
        out = np.where(water[..., None], refl * ripple[..., None], refl)
        return np.where((water & glint)[..., None], GLINT, out)


def tile_windows(shape: tuple[int, int], tiles: bool) -> list[tuple[str, Window]]:
    """(file name, window of the full image) of the single ortho or of each of the 2 x 2 tiles."""
    if not tiles:
        return [(ORTHO_FILE, Window(0, 0, shape[1], shape[0]))]
    half_rows, half_cols = -(-shape[0] // 2), -(-shape[1] // 2)
    out = []
    for r, (row0, height) in enumerate(((0, half_rows), (half_rows, shape[0] - half_rows))):
        for c, (col0, width) in enumerate(((0, half_cols), (half_cols, shape[1] - half_cols))):
            out.append((f"ortho_r{r}_c{c}.tif", Window(col0, row0, width, height)))
    return out


def write_vhr(scene: SceneModel, folder: Path, resolution: float = 1.0, tiles: bool = False) -> Path:
    """Write the ortho (or its 2 x 2 tiles) under `folder`; returns the ortho file, or the folder of tiles."""
    model = VHRModel(scene, resolution)
    folder.mkdir(parents=True, exist_ok=True)
    tags = dict(ACQUISITION_DATE=VHR_DATE.isoformat(),
                REFLECTANCE_MAX=",".join(f"{v:g}" for v in REFLECTANCE_MAX))
    for name, window in tile_windows(model.shape, tiles):
        transform = window_transform(window, model.transform)
        shape = (len(VHR_BANDS), int(window.height), int(window.width))
        with rasterio.open(folder / name, "w", **raster_profile(TIFF_OPTIONS, shape, np.uint8, transform)) as dst:
            for start in range(0, shape[1], BLOCK_ROWS):
                stop = min(shape[1], start + BLOCK_ROWS)
                block = model.render(window.row_off + start, window.row_off + stop,
                                     window.col_off, window.col_off + window.width)
                dst.write(block, window=Window(0, start, shape[2], stop - start))
            for band, description in enumerate(VHR_BANDS, start=1):
                dst.set_band_description(band, description)
            dst.update_tags(**tags)
    return folder / ORTHO_FILE if not tiles else folder
