"""`sits prepare s2` over several tiles: one dataset, one split over all polygons, a per-sample tile index.

Two synthetic COG scenes make the tiles: the scene of `write_synthetic` (31TCJ, UTM 31N) and a copy
of it moved into another UTM zone (32TLP) with its parcels; a third copy, shifted by half a scene
in the same CRS, makes a tile overlap.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from sitscli.core.errors import ConfigError
from sitscli.data.prepared import SCALE, open_prepared
from sitscli.data.recipes.s2 import tile_jobs
from sitscli.data.synthetic import write_synthetic

from _cli import sits
from test_remote_stac import _item_collection, _no_proxy, serve  # noqa: F401  (HTTP server with byte ranges)

OPTIONS = ("--class-field", "class_y1", "--bands", "B04,B08", "--max-per-polygon", 4, "--seed", 3)


def moved(scene, out: Path, tile: str, crs: str, shift: tuple[float, float]) -> tuple[Path, gpd.GeoDataFrame]:
    """A copy of `scene`'s COG folder catalogued as `tile`, georeferenced in `crs` with its origin moved
    by `shift` metres (same pixels): (the L2A folder, its parcels in `crs`)."""
    l2a = out / "l2a"
    for item_file in sorted(scene.l2a.glob("*/*.json")):
        folder = l2a / item_file.parent.name.replace(scene.tile, tile)
        folder.mkdir(parents=True)
        item = json.loads(item_file.read_text())
        item["id"] = item["id"].replace(scene.tile, tile)
        item["properties"].update({"s2:mgrs_tile": tile, "proj:epsg": int(crs.split(":")[1])})
        (folder / f"{item['id']}.json").write_text(json.dumps(item))
        for raster in item_file.parent.glob("*.tif"):
            with rasterio.open(raster) as src:
                profile, data, t = src.profile, src.read(), src.transform
            profile.update(driver="GTiff", crs=crs, transform=Affine(t.a, t.b, t.c + shift[0], t.d, t.e, t.f + shift[1]))
            with rasterio.open(folder / raster.name, "w", **profile) as dst:
                dst.write(data)
    parcels = gpd.read_file(scene.parcels)
    parcels = parcels.set_geometry(parcels.translate(*shift)).set_crs(crs, allow_override=True)
    return l2a, parcels


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Two tiles in two UTM zones, one more overlapping the first, and one label file over all of them."""
    root = tmp_path_factory.mktemp("tiles")
    scene = write_synthetic(root / "scene", size=32, seed=4, layout="cog", years=1)
    other, other_parcels = moved(scene, root / "other", "32TLP", "EPSG:32632", (-40000.0, 20000.0))
    overlap, _ = moved(scene, root / "overlap", "31TDJ", scene.crs, (160.0, 0.0))
    first = gpd.read_file(scene.parcels)
    labels = root / "labels.gpkg"
    gpd.GeoDataFrame(pd.concat([first, other_parcels.to_crs(first.crs)], ignore_index=True)).to_file(labels)
    return {"scene": scene, "a": scene.l2a, "b": other, "overlap": overlap, "labels": labels, "root": root}


def _run(monkeypatch, capsys, tiles, out: Path, *sources, extra=()):
    code, stdout, err = sits(monkeypatch, capsys, "prepare", "s2", *sources, "--labels", tiles["labels"], *OPTIONS,
                             *extra, "--out", out)
    assert code == 0, err
    return open_prepared(out), stdout


@pytest.fixture(scope="module")
def singles(tiles, tmp_path_factory):
    """The two tiles prepared one at a time, with the same options."""
    out = tmp_path_factory.mktemp("singles")
    mp, cap = pytest.MonkeyPatch(), _Capture()
    try:
        return [_run(mp, cap, tiles, out / f"{k}.sits", tiles[k])[0] for k in ("a", "b")]
    finally:
        mp.undo()


class _Capture:
    """capsys for a module-scoped fixture: `sits` only needs readouterr()."""

    def readouterr(self):
        return "", ""


def _splits_per_group(prepared) -> dict[int, set[int]]:
    group, split = prepared.ds["group"].values, prepared.ds["split"].values
    return {int(g): set(split[group == g].tolist()) for g in np.unique(group[group >= 0])}


def test_catalog_of_two_tiles_over_http_makes_one_dataset(tiles, singles, tmp_path, monkeypatch, capsys):
    with serve(tiles["root"]) as url:
        features = []
        for key in ("a", "b"):
            folder = tiles[key]
            base = f"{url}/{folder.relative_to(tiles['root']).as_posix()}"
            features += _item_collection(SimpleNamespace(l2a=folder), base)["features"]
        (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        with serve(tmp_path) as catalog_url:
            both, stdout = _run(monkeypatch, capsys, tiles, tmp_path / "both.sits", f"{catalog_url}/items.json")
    a, b = singles
    assert both.n_samples == a.n_samples + b.n_samples
    assert [t["id"] for t in both.tiles] == ["T31TCJ", "T32TLP"]
    assert [t["crs"] for t in both.tiles] == ["EPSG:32631", "EPSG:32632"]
    assert both.crs == "" and a.crs != b.crs                       # xy is in each sample's own tile CRS
    tile = both.ds["tile"].values
    assert np.bincount(tile).tolist() == [a.n_samples, b.n_samples]
    # each tile's samples are those of its single-tile dataset (same pixels, same dates, series padded)
    for k, single in enumerate(singles):
        n_time = single.n_time
        for name in ("x", "valid", "date", "y", "group", "xy"):
            np.testing.assert_array_equal(both.ds[name].values[tile == k][:, :n_time] if name in ("x", "valid", "date")
                                          else both.ds[name].values[tile == k], single.ds[name].values)
    # one split drawn over the polygons of both tiles: no polygon in two splits
    assert all(len(s) == 1 for s in _splits_per_group(both).values())
    # band statistics of the whole train split, over both tiles
    train = both.ds["split"].values == 0
    x, valid = both.ds["x"].values[train], both.ds["valid"].values[train]
    np.testing.assert_allclose(both.ds.attrs["band_mean"], (x[valid] / SCALE).mean(axis=0), atol=1e-6)
    assert "tiles (2): T31TCJ" in stdout
    code, out, err = sits(monkeypatch, capsys, "info", tmp_path / "both.sits")
    assert code == 0, err
    assert "2: T31TCJ (EPSG:32631" in out and "T32TLP (EPSG:32632" in out and "per tile" in out


def test_two_local_folders_make_one_dataset(tiles, singles, tmp_path, monkeypatch, capsys):
    both, _ = _run(monkeypatch, capsys, tiles, tmp_path / "both.sits", tiles["a"], tiles["b"])
    a, b = singles
    assert both.n_samples == a.n_samples + b.n_samples
    assert all(len(s) == 1 for s in _splits_per_group(both).values())
    assert both.summary()["tiles"] == [{"id": "T31TCJ", "crs": "EPSG:32631", "samples": a.n_samples},
                                       {"id": "T32TLP", "crs": "EPSG:32632", "samples": b.n_samples}]
    # the single-tile stores keep their layout: no tile variable, no tiles attribute
    assert "tile" not in a.ds.data_vars and "tiles" not in a.ds.attrs
    # the saved config.yaml lists both folders and prepares the same dataset again
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", "--config", tmp_path / "both.sits" / "config.yaml",
                        "--out", tmp_path / "again")
    assert code == 0, err
    assert open_prepared(tmp_path / "again.sits").fingerprint == both.fingerprint


def test_polygon_on_a_tile_overlap_is_sampled_once(tiles, singles, tmp_path, monkeypatch, capsys):
    """The overlap tile (shifted half a scene east) first: the polygons it holds come from it, the others
    from the first tile, each polygon from one tile only and every polygon of the first scene kept."""
    both, _ = _run(monkeypatch, capsys, tiles, tmp_path / "both.sits", tiles["overlap"], tiles["a"])
    group, tile = both.ds["group"].values, both.ds["tile"].values
    assert set(np.unique(tile).tolist()) == {0, 1}
    assert all(len(set(tile[group == g].tolist())) == 1 for g in np.unique(group))
    assert set(np.unique(group).tolist()) == set(np.unique(singles[0].ds["group"].values).tolist())


def test_patches_of_two_tiles(tiles, tmp_path, monkeypatch, capsys):
    both, _ = _run(monkeypatch, capsys, tiles, tmp_path / "both.sits", tiles["a"], tiles["b"], extra=("--patch-size", 16))
    assert both.n_samples == 8 and np.bincount(both.ds["tile"].values).tolist() == [4, 4]
    assert both.ds["x"].shape[1:] == (both.n_time, 2, 16, 16)


def test_mismatched_bands_is_one_line_and_writes_nothing(tiles, tmp_path, monkeypatch, capsys):
    stack = tmp_path / "stack.tif"
    with rasterio.open(next(tiles["a"].glob("*/B04.tif"))) as src:
        profile = {**src.profile, "driver": "GTiff", "count": 2}
        data = np.concatenate([src.read(), src.read()])
    with rasterio.open(stack, "w", **profile) as dst:
        dst.write(data)
        dst.set_band_description(1, "2021-10-05 B04")
        dst.set_band_description(2, "2021-10-05 B08")
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", tiles["a"], stack, "--labels", tiles["labels"],
                        "--class-field", "class_y1", "--out", tmp_path / "mixed")
    assert code != 0
    line = err.strip()
    assert "\n" not in line and "has bands B04,B08 but tile T31TCJ has B02," in line and "--bands" in line
    assert not (tmp_path / "mixed.sits").exists()


def test_tile_jobs(tiles, tmp_path):
    assert tile_jobs([tiles["a"]], "T31TCJ,31TDJ") == [(tiles["a"], "31TCJ"), (tiles["a"], "31TDJ")]
    assert tile_jobs([tiles["a"], tiles["b"]], None) == [(tiles["a"], None), (tiles["b"], None)]
    assert tile_jobs([tiles["a"], tiles["b"]], ["32TLP"]) == [(tiles["a"], "32TLP"), (tiles["b"], "32TLP")]
    with pytest.raises(ConfigError, match="picks several tiles of one source"):
        tile_jobs([tiles["a"], tiles["b"]], "31TCJ,32TLP")
    catalog = tmp_path / "items.json"
    features = [f for k in ("a", "b") for f in _item_collection(SimpleNamespace(l2a=tiles[k]), None)["features"]]
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert tile_jobs([catalog], None) == [(catalog, "31TCJ"), (catalog, "32TLP")]
    assert tile_jobs([catalog], "32TLP") == [(catalog, "32TLP")]


def test_accuracy_places_each_tiles_samples_from_its_own_crs(tiles, tmp_path, monkeypatch, capsys):
    """`sits accuracy --reference both.sits` on a map in UTM 31N over the 32TLP tile (UTM 32N): that tile's test
    samples land on the pixels of their polygons, though the dataset records no single CRS."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    from sitscli.data.cube import Grid
    from sitscli.data.labels import rasterize_classes, read_labels
    from sitscli.workflows.accuracy import prepared_reference

    both, _ = _run(monkeypatch, capsys, tiles, tmp_path / "both.sits", tiles["a"], tiles["b"])
    other = both.tiles[1]
    left, bottom, right, top = transform_bounds(other["crs"], "EPSG:32631", *_bounds(other))
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, left // 10 * 10, 0, -10, top // 10 * 10 + 10),
                int((top - bottom) // 10) + 2, int((right - left) // 10) + 2)
    truth = rasterize_classes(read_labels(tiles["labels"], "class_y1", crs=grid.crs), grid, Window(0, 0, grid.width, grid.height))
    reference = prepared_reference(tmp_path / "both.sits", grid, block=64)
    test = (both.ds["split"].values == 2) & (both.ds["tile"].values == 1)
    assert reference.codes.size == test.sum()
    assert (truth[reference.rows, reference.cols] == reference.codes).mean() > 0.9


def _bounds(tile: dict) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = tile["transform"]
    return c, f + e * tile["height"], c + a * tile["width"], f


def test_other_sensors_with_several_tiles_are_refused(tiles, tmp_path, monkeypatch, capsys):
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", tiles["a"], tiles["b"], "--labels", tiles["labels"],
                        "--class-field", "class_y1", "--s1", tmp_path, "--out", tmp_path / "s1")
    assert code != 0 and "--s1, --planetscope and --vhr join a single tile" in err and "\n" not in err.strip()
    assert not (tmp_path / "s1.sits").exists()
