"""Legends users keep: default colours, colour files, class codes from labels to map, sidecars, COGs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from _cli import sits
from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.legend import (apply_color_file, class_codes, clr_text, default_colors, parse_color, qml_text,
                                 read_color_file)
from sitscli.data.cube import Grid
from sitscli.mapping import geotiff

LULC_NAMES = ["cultivated land", "forest", "grassland", "schrubland", "artificial surface"]
LULC_CODES = [1, 2, 3, 4, 8]


def rgb(color: str) -> tuple[int, int, int]:
    return parse_color(color)[:3]


# ------------------------------------------------------------------------------------- colours

def test_land_cover_names_get_land_cover_colours():
    names = ["Coniferous forest", "Broadleaf forest", "Water bodies", "Urban fabric", "Winter wheat", "Maize",
             "Meadow", "Bare soil", "class 7", "Seasonal crops"]
    colors = [rgb(c) for c in default_colors(names)]
    for forest in colors[:2]:
        r, g, b = forest
        assert g > r and g > b                              # green, never orange
    assert colors[0] != colors[1]                           # two forests, two greens
    assert colors[2][2] > max(colors[2][:2])                # water blue
    assert colors[3][0] > colors[3][2]                      # urban red / grey
    for crop in (colors[4], colors[5], colors[9]):          # crops yellow: red and green high, blue low
        assert min(crop[0], crop[1]) > 150 and crop[2] < 150
    assert len({colors[4], colors[5], colors[9]}) == 3      # "seasonal" does not read as the sea
    assert colors[6][1] > colors[6][0] and colors[6][1] > 180   # meadow light green
    assert colors[7][0] > colors[7][2]                      # bare soil brown
    assert colors[8] == rgb(default_colors(["anything else"])[0])   # no keyword: the qualitative palette


def test_many_crops_get_distinct_crop_colours():
    names = [f"crop type {i}" for i in range(30)]
    colors = default_colors(names)
    assert len(set(colors)) == 30
    assert all(rgb(c)[0] >= rgb(c)[2] for c in colors)       # warm hues: no blue crops


def test_unnamed_classes_get_a_qualitative_palette():
    colors = default_colors([str(i) for i in range(5)])
    assert len(set(colors)) == 5 and colors[0] == "#1f77b4"     # tab20's first colour


# ---------------------------------------------------------------------------------- colour files

def test_csv_colours_by_code_and_by_name(tmp_path, capsys):
    path = tmp_path / "colors.csv"
    path.write_text("class,color\n2,#00ff00\nGrassland,#aabbcc\n# a comment\n99,#123456\n")
    colors = apply_color_file(path, LULC_NAMES, LULC_CODES, ["#000000"] * 5)
    assert colors == ["#000000", "#00ff00", "#aabbcc", "#000000", "#000000"]
    assert "no colour for cultivated land, schrubland, artificial surface" in capsys.readouterr().err


def test_qml_and_clr_round_trip(tmp_path):
    colors = default_colors(LULC_NAMES)
    (tmp_path / "style.qml").write_text(qml_text(LULC_CODES, LULC_NAMES, colors))
    (tmp_path / "style.clr").write_text(clr_text(LULC_CODES, LULC_NAMES, colors))
    for name in ("style.qml", "style.clr"):
        entries = read_color_file(tmp_path / name)
        assert [(e.value, e.label, e.color) for e in entries] == list(zip(LULC_CODES, LULC_NAMES, colors))
        assert apply_color_file(tmp_path / name, LULC_NAMES, LULC_CODES, ["#000000"] * 5) == colors


def test_qgis_colour_map_export_is_read(tmp_path):
    path = tmp_path / "export.txt"
    path.write_text("# QGIS Generated Color Map Export File\nINTERPOLATION:EXACT\n2,0,128,0,255,forest\n8,200,0,0,255,built up\n")
    assert [(e.value, e.label, e.color) for e in read_color_file(path)] == [(2, "forest", "#008000"),
                                                                           (8, "built up", "#c80000")]


def test_colour_file_naming_no_class_is_refused(tmp_path):
    path = tmp_path / "colors.csv"
    path.write_text("water,#0000ff\n")
    with pytest.raises(ConfigError, match="no entry names a class") as err:
        apply_color_file(path, LULC_NAMES, LULC_CODES, ["#000000"] * 5)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------- codes

def test_class_codes_one_per_class():
    ids = np.array([0, 1, 1, -1, 0])
    assert class_codes(ids, [3, "8", 8.0, None, 3], ["a", "b"], field="ID", where="f") == [3, 8]
    with pytest.raises(DataContentError, match=r"class 'a' has codes 3 and 4 in 'ID'"):
        class_codes(ids, [3, 8, 8, None, 4], ["a", "b"], field="ID", where="f")
    with pytest.raises(DataContentError, match=r"classes 'a', 'b' share code 3"):
        class_codes(ids, [3, 3, 3, None, 3], ["a", "b"], field="ID", where="f")
    with pytest.raises(DataContentError, match=r"holds 2.5 for class 'a'"):
        class_codes(ids, [2.5, 8, 8, None, 2.5], ["a", "b"], field="ID", where="f")


def test_code_field_of_the_labels(real_data):
    from sitscli.data.labels import read_labels

    gpkg, crs = real_data / "slovenia-s2-ndvi" / "lulc.gpkg", CRS.from_epsg(32633)
    with pytest.raises(ConfigError, match=r"^code field 'LULC' is not in lulc.gpkg: the fields are LULC_ID, LULC_NAME "
                                          r"\(pass one with --code-field\)$"):
        read_labels(gpkg, "LULC_NAME", crs=crs, code_field="LULC")
    same = read_labels(gpkg, "LULC_ID", crs=crs, code_field="LULC_ID")      # codes as names
    assert same.class_names == ["0", "1", "2", "3", "4", "8"] and same.class_codes == [0, 1, 2, 3, 4, 8]


def test_table_code_column_keeps_codes(tmp_path):
    from sitscli.data.prepared import open_prepared
    from sitscli.data.recipes.table import prepare_table

    rows = ["id,date,B04,B08,label,code"]
    for i, (label, code) in enumerate([("water", 12), ("forest", 5), ("water", 12), ("forest", 5), ("crop", 40)] * 4):
        rows += [f"{i},2020-0{m}-15,0.1,0.{m},{label},{code}" for m in (3, 5, 7)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    prepared = open_prepared(prepare_table(tmp_path / "t.csv", tmp_path / "t", code_col="code"))
    assert prepared.class_names == ["forest", "water", "crop"] and prepared.class_codes == [5, 12, 40]
    y = prepared.read(0, prepared.n_samples)["y"]
    assert list(y[:5]) == [1, 0, 1, 0, 2]                  # ids follow the code order


# ------------------------------------------------------------------------- class map and sidecars

def test_class_map_with_codes_writes_values_legend_and_sidecars(tmp_path):
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 465000, 0, -10, 5080000), 600, 700)
    spec = geotiff.class_map_spec(["forest", "water", "built"], None, class_codes=[2, 8, 300])
    assert (spec.dtype, spec.nodata) == ("uint16", 65535)      # a code above 254: uint16, nodata never a code
    data = np.tile(np.array([2, 8, 300, 65535], np.uint16), (600, 175))[None]
    path = tmp_path / "map.tif"
    geotiff.write_raster(path, data, grid, spec)
    assert cog_validate(str(path))[:2] == (True, [])
    with rasterio.open(path) as ds:
        assert ds.nodata == 65535 and ds.overviews(1) == [2]
        assert ds.colormap(1)[300][:3] == rgb(spec.class_colors[2])
        assert json.loads(ds.tags()["CLASS_CODES"]) == [2, 8, 300]
        overview = ds.read(1, out_shape=(300, 350))
    assert set(np.unique(overview)) <= {2, 8, 300, 65535}         # mode overviews: no invented classes
    legend = geotiff.read_legend(path)
    assert (legend.values, legend.names, legend.codes) == ([2, 8, 300], ["forest", "water", "built"], [2, 8, 300])

    palette = ElementTree.parse(tmp_path / "map.qml").getroot().find("pipe/rasterrenderer")
    assert palette.get("type") == "paletted" and palette.get("band") == "1"
    entries = [(e.get("value"), e.get("label"), e.get("color")) for e in palette.iter("paletteEntry")]
    assert entries == [("2", "forest", spec.class_colors[0]), ("8", "water", spec.class_colors[1]),
                       ("300", "built", spec.class_colors[2])]
    r, g, b = rgb(spec.class_colors[0])
    assert f"2 {r} {g} {b} 255 forest" in (tmp_path / "map.clr").read_text().splitlines()
    pam = ElementTree.parse(tmp_path / "map.tif.aux.xml").getroot()
    categories = [c.text or "" for c in pam.iter("Category")]
    assert len(categories) == 301 and categories[2] == "forest" and categories[300] == "built" and categories[5] == ""
    assert [[f.text for f in row][:2] for row in pam.iter("Row")] == [["2", "forest"], ["8", "water"], ["300", "built"]]

    other = geotiff.RasterSpec(count=1, dtype="float32", nodata=float("nan"), descriptions=["score"])
    geotiff.write_raster(path, np.zeros((1, 600, 700), np.float32), grid, other, overwrite=True, cog=False)
    assert not any((tmp_path / n).exists() for n in ("map.qml", "map.clr", "map.tif.aux.xml"))  # stale legends gone
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]
    (tmp_path / "map.qml").write_text("<qgis>a style of the user's own</qgis>")
    geotiff.write_raster(path, np.zeros((1, 600, 700), np.float32), grid, other, overwrite=True)
    assert (tmp_path / "map.qml").read_text() == "<qgis>a style of the user's own</qgis>"


def test_score_raster_is_a_cog_with_average_overviews(tmp_path):
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 300000, 0, -10, 5000000), 1030, 1100)
    spec = geotiff.RasterSpec(count=2, dtype="float32", nodata=float("nan"), descriptions=["a", "b"])
    data = np.zeros((2, 1030, 1100), np.float32)
    data[:, ::2, ::2] = 4.0                                # average of each 2 x 2 cell: 1.0
    geotiff.write_raster(tmp_path / "s.tif", data, grid, spec)
    assert cog_validate(str(tmp_path / "s.tif"))[:2] == (True, [])
    with rasterio.open(tmp_path / "s.tif") as ds:
        assert ds.block_shapes[0] == (512, 512) and ds.overviews(1) == [2, 4]
        overview = ds.read(1, out_shape=(515, 550))
    np.testing.assert_allclose(overview, 1.0)


def test_codes_beyond_uint16_are_refused():
    with pytest.raises(ConfigError, match="0..65534"):
        geotiff.class_map_spec(["a"], None, class_codes=[70000])


# -------------------------------------------------------------------- Slovenia: labels -> map

def test_slovenia_codes_and_colours_survive_from_labels_to_map(real_data, tmp_path, monkeypatch, capsys):
    root = real_data / "slovenia-s2-ndvi"
    colors = tmp_path / "colors.csv"
    colors.write_text("code,color\n8,#ff0000\n")
    code, out, err = sits(monkeypatch, capsys, "prepare", "s2", root, "--labels", root / "lulc.gpkg",
                          "--class-field", "LULC_NAME", "--code-field", "LULC_ID", "--colors", colors,
                          "--max-per-polygon", 30, "--out", tmp_path / "slo")
    assert code == 0, err
    assert "classes (5): 1 cultivated land, 2 forest, 3 grassland, 4 schrubland, 8 artificial surface" in out

    from sitscli.data.prepared import open_prepared

    prepared = open_prepared(tmp_path / "slo.sits")
    assert prepared.class_names == LULC_NAMES and prepared.class_codes == LULC_CODES
    assert prepared.class_colors[4] == "#ff0000"                      # from --colors, by code
    forest = rgb(prepared.class_colors[1])
    assert forest[1] > forest[0] and forest[1] > forest[2]           # land-cover default: green
    # every sample's class code is the LULC_ID of the polygon it was drawn from
    lulc = gpd.read_file(root / "lulc.gpkg")
    d = prepared.read(0, prepared.n_samples)
    labelled = d["y"] >= 0
    assert (np.asarray(LULC_CODES)[d["y"][labelled]] == lulc["LULC_ID"].to_numpy()[d["group"][labelled]]).all()

    code, _, err = sits(monkeypatch, capsys, "finetune", tmp_path / "slo.sits", "--model", "rf", "--hparam",
                        "n_estimators=20", "--hparam", "n_jobs=1", "--out", tmp_path / "run", "--device", "cpu")
    assert code == 0, err
    card = (tmp_path / "run" / "model.yaml").read_text()
    assert "class_codes:\n  - 1\n  - 2\n  - 3\n  - 4\n  - 8" in card

    code, _, err = sits(monkeypatch, capsys, "predict-map", root, "--model", tmp_path / "run", "--out",
                        tmp_path / "map.tif", "--probabilities", tmp_path / "p.tif", "--device", "cpu")
    assert code == 0, err
    with rasterio.open(tmp_path / "map.tif") as ds, rasterio.open(root / "lulc_reference.tif") as ref:
        predicted, reference = ds.read(1), ref.read(1)
        assert ds.nodata == 255 and ds.colormap(1)[8][:3] == (255, 0, 0) and ds.colormap(1)[2][:3] == forest
    assert set(np.unique(predicted)) <= set(LULC_CODES) | {255}
    # the reference raster holds the same LULC_ID codes: a map of ids (0..4) would disagree
    known = reference > 0
    assert (predicted[known] == reference[known]).mean() > 0.6
    assert cog_validate(str(tmp_path / "map.tif"))[0] and cog_validate(str(tmp_path / "p.tif"))[0]
    assert geotiff.read_legend(tmp_path / "p.tif").codes == LULC_CODES           # for smooth / uncertainty
    assert 'value="8" color="#ff0000" alpha="255" label="artificial surface"' in (tmp_path / "map.qml").read_text()
    r, g, b = rgb(prepared.class_colors[2])
    assert f"3 {r} {g} {b} 255 grassland" in (tmp_path / "map.clr").read_text().splitlines()


def test_predict_map_colors_and_no_cog(tmp_path, monkeypatch, capsys):
    from test_predict_map import ArrayCube, MeanNdvi

    from sitscli.engine.checkpoint import save_model
    from sitscli.models.registry import DataInfo
    from sitscli.workflows.predict_map import predict_map

    info = DataInfo(band_names=["B04", "B08"], band_mean=[0.06, 0.2], band_std=[0.02, 0.1],
                    class_names=["water", "bare", "crop"], class_codes=[10, 60, 211])
    save_model(tmp_path / "run", MeanNdvi(3), model_name="test-ndvi", hparams={}, info=info, task="classify")
    (tmp_path / "c.csv").write_text("crop,#010203\n")
    cube = ArrayCube()
    predict_map(cube, model=tmp_path / "run", out=tmp_path / "map.tif", colors=tmp_path / "c.csv", cog=False, device="cpu")
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        assert ds.colormap(1)[211][:3] == (1, 2, 3)
        assert ds.colormap(1)[10][2] > 150                               # water: default blue
        values = ds.read(1)
    observed = cube.valid.any(axis=0)
    assert (values[observed] == np.array([10, 60, 211])[cube.expected[observed]]).all()
