"""The field pattern of the synthetic scene: Voronoi parcels, their classes per year, crop rotation.

Parcels are the Voronoi cells of seeds on a jittered grid, some seeds dropped so that field sizes
vary (as in a real cadastre, small fields next to merged large ones). The polygons are traced from
the same raster that drives the image, so labels and pixels agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from affine import Affine
from rasterio import features
from scipy.spatial import cKDTree
from shapely.geometry import shape

from sitscli.data.synthetic.phenology import CLASS_INDEX, CLASSES

# Share of parcels per class, roughly the land use of the Lauragais plain near Toulouse.
CLASS_SHARE = {
    "winter_wheat": 0.20, "winter_barley": 0.07, "winter_rapeseed": 0.09, "maize": 0.12,
    "sunflower": 0.13, "soybean": 0.06, "meadow": 0.14, "deciduous_forest": 0.10,
    "water": 0.03, "artificial": 0.06,
}

# Next year's crop given this year's (probabilities). Classic rotations of the region: a cereal
# after a break crop (rapeseed, sunflower, soybean), maize often after maize; permanent classes stay.
ROTATION = {
    "winter_wheat": {"winter_rapeseed": 0.3, "sunflower": 0.3, "maize": 0.15, "soybean": 0.1, "winter_wheat": 0.15},
    "winter_barley": {"winter_rapeseed": 0.5, "sunflower": 0.3, "winter_wheat": 0.2},
    "winter_rapeseed": {"winter_wheat": 0.8, "winter_barley": 0.2},
    "maize": {"maize": 0.5, "winter_wheat": 0.3, "soybean": 0.2},
    "sunflower": {"winter_wheat": 0.7, "winter_barley": 0.3},
    "soybean": {"winter_wheat": 0.6, "maize": 0.4},
}


@dataclass
class Landscape:
    """Parcels of the scene.

    ids: (H, W) int32 parcel index 0..n-1 of each 10 m pixel.
    classes: (n, years) class index of each parcel in each agronomic year.
    """

    ids: np.ndarray
    classes: np.ndarray

    @property
    def n_parcels(self) -> int:
        return self.classes.shape[0]


def voronoi_parcels(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width) int32 parcel index from jittered-grid seeds, ~0.5 to 8 ha per parcel.

    Seed spacing is 16 px (160 m, ~2.5 ha cells), reduced on small scenes so that they still hold
    enough parcels for every class; dropping a third of the seeds merges cells into bigger fields.
    """
    spacing = int(np.clip(min(height, width) / 8, 8, 16))
    rows, cols = np.meshgrid(np.arange(height // spacing + 2), np.arange(width // spacing + 2), indexing="ij")
    grid = (np.stack([rows.ravel(), cols.ravel()], -1) - 0.5) * spacing
    seeds = grid + rng.uniform(0, spacing, grid.shape)
    seeds = seeds[rng.random(len(seeds)) > 0.33]
    centres = np.stack(np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij"), -1).reshape(-1, 2)
    _, nearest = cKDTree(seeds).query(centres)
    _, ids = np.unique(nearest, return_inverse=True)  # renumber the seeds that own pixels 0..n-1
    return ids.reshape(height, width).astype(np.int32)


def assign_classes(n: int, years: int, rng: np.random.Generator) -> np.ndarray:
    """(n, years) class indices: every class at least once in year 1 (when n allows), then rotation."""
    names = list(CLASS_SHARE)
    share = np.array([CLASS_SHARE[k] for k in names])
    first = rng.choice(len(names), size=n, p=share / share.sum())
    order = rng.permutation(n)
    first[order[: min(n, len(names))]] = np.arange(min(n, len(names)))
    out = np.empty((n, years), dtype=np.int64)
    out[:, 0] = [CLASS_INDEX[names[i]] for i in first]
    for year in range(1, years):
        for p in range(n):
            name = CLASSES[out[p, year - 1]].name
            nxt = ROTATION.get(name, {name: 1.0})
            out[p, year] = CLASS_INDEX[rng.choice(list(nxt), p=list(nxt.values()))]
    return out


def make_landscape(height: int, width: int, years: int, rng: np.random.Generator) -> Landscape:
    ids = voronoi_parcels(height, width, rng)
    return Landscape(ids=ids, classes=assign_classes(int(ids.max()) + 1, years, rng))


def class_field(year: int) -> str:
    """Name of the class column of agronomic year `year` (0-based): class_y1, class_y2..."""
    return f"class_y{year + 1}"


def parcel_table(land: Landscape, transform: Affine, crs: str) -> gpd.GeoDataFrame:
    """Polygons traced from the parcel raster, one row per parcel, with a class column per year."""
    pieces: dict[int, list] = {}
    for geom, value in features.shapes(land.ids, transform=transform):
        pieces.setdefault(int(value), []).append(shape(geom))
    parcel = np.arange(land.n_parcels)
    geoms = gpd.GeoSeries([pieces[p][0] if len(pieces[p]) == 1 else gpd.GeoSeries(pieces[p]).union_all()
                           for p in parcel], crs=crs)
    table = {"parcel_id": parcel + 1}
    for year in range(land.classes.shape[1]):
        table[class_field(year)] = [CLASSES[c].name for c in land.classes[:, year]]
    return gpd.GeoDataFrame(table, geometry=geoms)


def write_parcels(parcels: gpd.GeoDataFrame, path) -> None:
    """GeoPackage, layer "parcels"; the GPKG timestamp is pinned so the same seed gives the same bytes."""
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        pyogrio.write_dataframe(parcels, path, layer="parcels", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def write_changes(parcels: gpd.GeoDataFrame, path) -> pd.DataFrame:
    """CSV of the parcels whose class differs between year 1 and year 2 (header only for one year)."""
    y1, y2 = class_field(0), class_field(1)
    changed = parcels[parcels[y1] != parcels[y2]] if y2 in parcels else parcels.iloc[:0]
    table = pd.DataFrame({
        "parcel_id": changed["parcel_id"], y1: changed[y1],
        y2: changed[y2] if y2 in changed else pd.Series(dtype=str), "area_m2": changed.area.round(1),
    })
    table.to_csv(path, index=False)
    return table
