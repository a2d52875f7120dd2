"""sits accuracy: the Olofsson et al. (2014) estimators, references of every kind, the report, bad input.

Data: a 6 x 6 px class map (10 m pixels, EPSG:32631) of three named classes, rows 0-1 wheat (12 px),
rows 2-4 maize (18 px), row 5 forest (5 px) with its last pixel nodata; references are written
by hand onto known pixels so that every count is known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import Point, box

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError, OutputExistsError
from sitscli.data.cube import Grid
from sitscli.data.prepared import SPLIT_CODES, PreparedWriter
from sitscli.mapping.accuracy import area_adjusted, sample_accuracy
from sitscli.mapping.geotiff import class_map_spec, pam_categories, write_raster
from sitscli.workflows.accuracy import accuracy, read_class_file
from tests._cli import sits

CRS_UTM = CRS.from_epsg(32631)
X0, Y0, RES = 500000.0, 4800000.0, 10.0
TRANSFORM = Affine(RES, 0, X0, 0, -RES, Y0)
GRID = Grid(CRS_UTM, TRANSFORM, 6, 6)
NAMES = ["wheat", "maize", "forest"]
NODATA = 255


def centre(row: float, col: float) -> tuple[float, float]:
    return X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES


def map_array() -> np.ndarray:
    array = np.zeros((6, 6), np.uint8)
    array[2:5] = 1
    array[5] = 2
    array[5, 5] = NODATA
    return array


@pytest.fixture()
def class_map(tmp_path) -> Path:
    path = tmp_path / "map.tif"
    write_raster(path, map_array()[None], GRID, class_map_spec(NAMES, None))
    return path


def write_points(path: Path, cells: list[tuple[float, float, object]], crs=CRS_UTM, field: str = "crop") -> Path:
    """Points at the centres of (row, col) pixels, each with its class value."""
    frame = gpd.GeoDataFrame({field: [v for _, _, v in cells]}, geometry=[Point(*centre(r, c)) for r, c, _ in cells],
                             crs=CRS_UTM)
    frame.to_crs(crs).to_file(path)
    return path


# The hand-made sample of the map above (rows = map class, columns = reference class):
#   wheat-mapped: 4 wheat, 1 maize;  maize-mapped: 1 wheat, 3 maize, 1 forest;  forest-mapped: 2 forest
POINTS = ([(0, c, "wheat") for c in range(4)] + [(1, 0, "maize")]
          + [(2, 0, "wheat")] + [(3, c, "maize") for c in range(3)] + [(4, 5, "forest")]
          + [(5, 0, "forest"), (5, 1, "forest")]
          + [(5, 5, "forest"), (9, 9, "wheat")])  # on the nodata pixel and off the map: left out
COUNTS = [[4, 1, 0], [1, 3, 1], [0, 0, 2]]


# --------------------------------------------------------------------------- the estimators

def test_olofsson_2014_worked_example():
    """Olofsson et al. (2014), Section 5 / Tables 8-9: 640 samples, 10 million 30 m pixels (0.09 ha)."""
    counts = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
    mapped = np.array([200_000, 150_000, 3_200_000, 6_450_000])
    est = area_adjusted(counts, mapped, pixel_area=0.09)
    table_9 = [[0.0176, 0, 0.0013, 0.0011], [0, 0.0110, 0.0016, 0.0024],
               [0.0019, 0, 0.2967, 0.0213], [0.0040, 0.0020, 0.0179, 0.6212]]
    np.testing.assert_array_equal(np.round(est.proportions, 4), table_9)
    assert round(est.overall, 2) == 0.95 and round(est.overall_ci, 2) == 0.02
    np.testing.assert_array_equal(np.round(est.users, 2), [0.88, 0.73, 0.93, 0.96])
    np.testing.assert_array_equal(np.round(est.users_ci, 2), [0.07, 0.10, 0.04, 0.02])
    np.testing.assert_array_equal(np.round(est.producers, 2), [0.75, 0.85, 0.93, 0.96])
    # The paper prints +-0.21, 0.23, 0.03, 0.01; its own eq. 7 gives 0.213, 0.254, 0.034, 0.018 (the
    # second and fourth printed values are slips, as other implementations of eq. 7 also find).
    np.testing.assert_allclose(est.producers_ci, [0.2133, 0.2544, 0.0343, 0.0184], atol=5e-5)
    np.testing.assert_array_equal(np.round(est.area), [21158, 11686, 285770, 581386])        # ha
    np.testing.assert_array_equal(np.round(est.area_ci), [6158, 3756, 15510, 16282])         # ha, 95 %
    assert est.population_share == 1.0 and not est.unsampled.any()


def test_sample_figures_by_hand():
    counts = np.array(COUNTS)
    s = sample_accuracy(counts)
    assert s.samples == 12 and s.overall == 9 / 12
    assert math.isclose(s.overall_ci, 1.96 * math.sqrt(0.75 * 0.25 / 12))
    chance = (5 * 5 + 5 * 4 + 2 * 3) / 144
    assert math.isclose(s.kappa, (0.75 - chance) / (1 - chance))
    np.testing.assert_allclose(s.users, [4 / 5, 3 / 5, 2 / 2])
    np.testing.assert_allclose(s.producers, [4 / 5, 3 / 4, 2 / 3])
    np.testing.assert_allclose(s.f1, [8 / 10, 6 / 9, 4 / 5])


def test_undefined_figures_are_nan_not_zero():
    # class 2 is mapped but has no sample at all; class 1 has a single sample
    counts = np.array([[5, 0, 0], [0, 1, 0], [0, 0, 0]])
    est = area_adjusted(counts, [10, 10, 10])
    assert np.isnan(est.users[2]) and np.isnan(est.producers[2]) and est.unsampled.tolist() == [False, False, True]
    assert math.isclose(est.population_share, 2 / 3)
    assert np.isnan(est.overall_ci) and np.isnan(est.area_ci).all()     # n_i. - 1 = 0 in a sampled stratum
    assert est.users[1] == 1.0 and est.overall == 1.0
    s = sample_accuracy(np.array([[3, 0], [0, 0]]))
    assert np.isnan(s.kappa) and np.isnan(s.users[1]) and np.isnan(s.producers[1]) and np.isnan(s.f1[1])
    assert np.isnan(sample_accuracy(np.zeros((2, 2), int)).overall)


# ------------------------------------------------------------------------------ references

def test_points_give_the_hand_counts_and_area_estimates(class_map, tmp_path):
    points = write_points(tmp_path / "points.gpkg", POINTS)
    report = accuracy(class_map, reference=points, field="crop", out=tmp_path / "report")
    assert report["reference_kind"] == "points" and report["reference_values"] == "names"
    assert report["confusion"]["counts"] == COUNTS and report["confusion"]["rows"] == "map"
    assert report["samples"] == 12 and report["kappa"] == pytest.approx((0.75 - 51 / 144) / (1 - 51 / 144))
    wheat, maize, forest = report["per_class"]
    assert [c["mapped_pixels"] for c in report["per_class"]] == [12, 18, 5]
    assert wheat["mapped_area_ha"] == pytest.approx(0.12)                          # 12 px of 100 m2
    # Olofsson et al. (2014) by hand: W = 12/35, 18/35, 5/35
    w = np.array([12, 18, 5]) / 35
    assert report["area_adjusted_overall_accuracy"] == pytest.approx(w[0] * 4 / 5 + w[1] * 3 / 5 + w[2] * 1)
    v_o = w[0] ** 2 * 0.8 * 0.2 / 4 + w[1] ** 2 * 0.6 * 0.4 / 4 + 0
    assert report["area_adjusted_overall_accuracy_ci95"] == pytest.approx(1.96 * math.sqrt(v_o))
    assert wheat["area_adjusted_producers_accuracy"] == pytest.approx((w[0] * 0.8) / (w[0] * 0.8 + w[1] * 0.2))
    assert wheat["estimated_area_ha"] == pytest.approx(35 * (w[0] * 0.8 + w[1] * 0.2) * 0.01)
    assert maize["users_accuracy"] == 0.6 and maize["users_accuracy_ci95"] == pytest.approx(1.96 * math.sqrt(0.24 / 4))
    assert forest["producers_accuracy"] == pytest.approx(2 / 3)


def test_points_in_another_crs_with_integer_ids(class_map, tmp_path):
    cells = [(r, c, NAMES.index(v)) for r, c, v in POINTS]
    points = write_points(tmp_path / "ids.geojson", cells, crs=CRS.from_epsg(4326), field="code")
    report = accuracy(class_map, reference=points, field="code", out=tmp_path / "report")
    assert report["reference_values"] == "ids" and report["confusion"]["counts"] == COUNTS


def test_polygons_per_pixel_and_per_polygon(class_map, tmp_path):
    # "wheat" over rows 0-2 (12 wheat-mapped + 6 maize-mapped pixels); "forest" over rows 4-5, cols 0-2
    # (3 maize-mapped + 3 forest-mapped: a tie, which goes to the smallest class id, maize)
    top, bottom = Y0, Y0 - 3 * RES
    frame = gpd.GeoDataFrame({"crop": ["wheat", "forest"]}, crs=CRS_UTM, geometry=[
        box(X0, bottom, X0 + 6 * RES, top), box(X0, Y0 - 6 * RES, X0 + 3 * RES, Y0 - 4 * RES)])
    path = tmp_path / "fields.gpkg"
    frame.to_file(path)
    pixels = accuracy(class_map, reference=path, field="crop", out=tmp_path / "pixels")
    assert pixels["confusion"]["counts"] == [[12, 0, 0], [6, 0, 3], [0, 0, 3]]
    assert pixels["reference_kind"] == "polygons (per pixel)" and pixels["notes"]
    polygons = accuracy(class_map, reference=path, field="crop", out=tmp_path / "polygons", per_polygon=True)
    assert polygons["confusion"]["counts"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_raster_reference_on_another_grid_matched_by_name(class_map, tmp_path):
    # a 7 x 7 reference one pixel further west and north, naming its classes in another order
    ref_names = ["forest", "wheat", "maize"]
    truth = map_array().copy()
    truth[0, 0] = 1  # one wheat-mapped pixel is maize in the reference
    ref = np.full((7, 7), NODATA, np.uint8)
    recode = np.array([ref_names.index(n) for n in NAMES] + [NODATA] * 253, np.uint8)
    ref[1:, 1:] = recode[truth]
    write_raster(tmp_path / "ref.tif", ref[None], Grid(CRS_UTM, Affine(RES, 0, X0 - RES, 0, -RES, Y0 + RES), 7, 7),
                 class_map_spec(ref_names, None))
    report = accuracy(class_map, reference=tmp_path / "ref.tif", out=tmp_path / "report")
    assert report["reference_kind"] == "raster" and report["reference_values"] == "names"
    assert report["confusion"]["counts"] == [[11, 1, 0], [0, 18, 0], [0, 0, 5]]


def test_prepared_test_split_is_the_reference(class_map, tmp_path):
    # pixel mode: the test samples at POINTS; the train samples (all "forest") must be ignored
    cells = [(r, c, v) for r, c, v in POINTS]
    dataset_names = ["maize", "wheat", "forest"]
    xy = np.array([centre(r, c) for r, c, _ in cells] + [centre(0, 0)] * 5)
    y = np.array([dataset_names.index(v) for _, _, v in cells] + [2] * 5)
    split = np.array([SPLIT_CODES["test"]] * len(cells) + [SPLIT_CODES["train"]] * 5)
    n = len(y)
    with PreparedWriter(tmp_path / "pix", n_time=2, band_names=["B04"], class_names=dataset_names, sensor="s2",
                        source="test", crs=CRS_UTM.to_wkt()) as w:
        w.append(x=np.full((n, 2, 1), 0.1), valid=np.ones((n, 2), bool), date=np.array([18000, 18010]), y=y,
                 split=split, group=np.arange(n), xy=xy)
    report = accuracy(class_map, reference=tmp_path / "pix.sits", out=tmp_path / "report")
    assert report["reference_kind"] == "prepared dataset (test split)" and report["confusion"]["counts"] == COUNTS

    # patch mode: one 2 x 2 test patch over pixels (1..2, 0..1), centred on their shared corner
    patch_y = np.array([[[0, 1], [1, -1]]])  # maize, wheat / wheat, unlabelled (dataset ids)
    with PreparedWriter(tmp_path / "patch", n_time=2, band_names=["B04"], class_names=dataset_names, sensor="s2",
                        source="test", mode="patch", patch_size=2, crs=CRS_UTM.to_wkt()) as w:
        w.append(x=np.full((1, 2, 1, 2, 2), 0.1), valid=np.ones((1, 2, 2, 2), bool), date=np.array([18000, 18010]),
                 y=patch_y, split=np.array([SPLIT_CODES["test"]]), group=np.array([0]),
                 xy=np.array([[X0 + RES, Y0 - 2 * RES]]))
    patches = accuracy(class_map, reference=tmp_path / "patch.sits", out=tmp_path / "patches")
    # pixel (1, 0) wheat-mapped: maize; (1, 1) wheat-mapped: wheat; (2, 0) maize-mapped: wheat
    assert patches["confusion"]["counts"] == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_unnamed_map_with_a_class_file(tmp_path):
    codes = np.where(map_array() == NODATA, 0, map_array() * 10 + 10).astype(np.uint8)  # ids 10, 20, 30; nodata 0
    with rasterio.open(tmp_path / "codes.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="uint8",
                       nodata=0, crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(codes, 1)
    ids = write_points(tmp_path / "ids.gpkg", [(r, c, (NAMES.index(v) + 1) * 10) for r, c, v in POINTS])
    report = accuracy(tmp_path / "codes.tif", reference=ids, field="crop", out=tmp_path / "by_id")
    assert [c["name"] for c in report["per_class"]] == ["10", "20", "30"] and report["confusion"]["counts"] == COUNTS
    classes = tmp_path / "classes.csv"
    classes.write_text("id,name\n10,wheat\n20,maize\n30,forest\n")
    names = write_points(tmp_path / "names.gpkg", POINTS)
    report = accuracy(tmp_path / "codes.tif", reference=names, field="crop", classes=classes, out=tmp_path / "by_name")
    assert report["class_names_from"] == "--classes" and report["confusion"]["counts"] == COUNTS
    (tmp_path / "bare.txt").write_text("# one name a line\nwheat\nmaize\n")
    assert read_class_file(tmp_path / "bare.txt") == {0: "wheat", 1: "maize"}


def test_map_named_by_gdal_categories(tmp_path):
    """A class map from another tool: no CLASS_NAMES tag, category names in the PAM sidecar."""
    with rasterio.open(tmp_path / "qgis.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="uint8",
                       nodata=NODATA, crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(map_array(), 1)
    (tmp_path / "qgis.tif.aux.xml").write_text(pam_categories(class_map_spec(NAMES, None)))
    report = accuracy(tmp_path / "qgis.tif", reference=write_points(tmp_path / "p.gpkg", POINTS), field="crop",
                      out=tmp_path / "report")
    assert report["class_names_from"] == "map" and report["confusion"]["counts"] == COUNTS


# ---------------------------------------------------------------------------- outputs, CLI

def test_cli_writes_markdown_json_and_png(class_map, tmp_path, monkeypatch, capsys):
    points = write_points(tmp_path / "points.gpkg", POINTS[:5])  # only wheat-mapped samples: the rest undefined
    out = tmp_path / "report"
    code, stdout, _ = sits(monkeypatch, capsys, "accuracy", class_map, "--reference", points, "--field", "crop",
                           "--out", out, "--json")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.json", "accuracy.md", "confusion.png"]
    assert json.loads(stdout)["outputs"]["json"] == str(out / "accuracy.json")
    saved = json.loads((out / "accuracy.json").read_text())
    forest = saved["per_class"][2]
    assert forest["users_accuracy"] is None and forest["weight"] is None                  # JSON null, never 0 for n/a
    assert forest["estimated_area_ha"] == 0.0                                             # no reference sample is forest
    assert saved["per_class"][1]["users_accuracy"] is None and saved["per_class"][1]["producers_accuracy"] == 0.0
    assert saved["population_share"] == pytest.approx(12 / 35) and saved["notes"]
    text = (out / "accuracy.md").read_text()
    assert "rows = map, columns = reference" in text and "user's accuracy" in text and "producer's accuracy" in text
    assert "n/a" in text and "Olofsson" in text
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = sits(monkeypatch, capsys, "accuracy", class_map, "--reference", points, "--field", "crop", "--out", out)
    assert code != 0 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_real_slovenia_map_against_its_polygons(real_data, tmp_path):
    folder = real_data / "slovenia-s2-ndvi"
    report = accuracy(folder / "lulc_reference.tif", reference=folder / "lulc.gpkg", field="LULC_ID", out=tmp_path / "r")
    # the raster is the rasterised polygons: every classified pixel (100 x 101 minus 155 nodata) agrees
    assert report["samples"] == 9945 and report["overall_accuracy"] == 1.0
    assert [c["id"] for c in report["per_class"]] == [1, 2, 3, 4, 8]
    assert report["mapped_area_ha"] == pytest.approx(9945 * 9.99479222007154 * 9.997448467363668 / 1e4)


# ------------------------------------------------------------------------------- bad input

def test_bad_inputs_are_one_clear_error(class_map, tmp_path):
    points = write_points(tmp_path / "points.gpkg", POINTS)
    gpd.GeoDataFrame({"crop": ["wheat"]}, geometry=[Point(X0 + 1e5, Y0)], crs=CRS_UTM).to_file(tmp_path / "far.gpkg")
    gpd.GeoDataFrame({"crop": ["wheat"]}, geometry=[box(X0 + 1e5, Y0, X0 + 2e5, Y0 + 1e3)],
                     crs=CRS_UTM).to_file(tmp_path / "far_polygons.gpkg")
    write_points(tmp_path / "odd.gpkg", POINTS[:3] + [(0, 0, "barley"), (0, 1, "rye")])
    gpd.GeoDataFrame({"crop": []}, geometry=[], crs=CRS_UTM).to_file(tmp_path / "empty.gpkg")
    with rasterio.open(tmp_path / "float.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="float32",
                       crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(np.zeros((6, 6), np.float32), 1)
    with rasterio.open(tmp_path / "degrees.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="uint8",
                       crs=CRS.from_epsg(4326), transform=Affine(0.001, 0, 3, 0, -0.001, 45)) as ds:
        ds.write(np.zeros((6, 6), np.uint8), 1)
    with rasterio.open(tmp_path / "unnamed.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="uint8",
                       crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(map_array(), 1)
    with PreparedWriter(tmp_path / "train_only", n_time=1, band_names=["B04"], class_names=NAMES, sensor="s2",
                        source="test", crs=CRS_UTM.to_wkt()) as w:
        w.append(x=np.full((1, 1, 1), 0.1), valid=np.ones((1, 1), bool), date=np.array([18000]), y=np.array([0]),
                 split=np.array([SPLIT_CODES["train"]]), group=np.array([0]), xy=np.array([centre(0, 0)]))
    cases = [
        ({"map_path": tmp_path / "unnamed.tif", "reference": points, "field": "crop"}, ConfigError,
         "names its classes.*--classes FILE"),
        ({"reference": tmp_path / "train_only.sits"}, DataContentError, "no labelled test sample"),
        ({"reference": tmp_path / "far.gpkg", "field": "crop"}, DataContentError, "does not overlap"),
        ({"reference": tmp_path / "far_polygons.gpkg", "field": "crop"}, DataContentError, "do not overlap"),
        ({"reference": points, "field": "landuse"}, ConfigError, "'landuse' is not in points.gpkg.*--field"),
        ({"reference": points}, ConfigError, "--field: name the class field.*crop"),
        ({"reference": tmp_path / "odd.gpkg", "field": "crop"}, DataContentError, "does not know: barley, rye"),
        ({"map_path": tmp_path / "float.tif", "reference": points, "field": "crop"}, DataFormatError, "not class ids"),
        ({"map_path": tmp_path / "degrees.tif", "reference": points, "field": "crop"}, DataContentError,
         "geographic CRS.*reproject"),
        ({"reference": tmp_path / "empty.gpkg", "field": "crop"}, DataContentError, "no features"),
        ({"reference": points, "field": "crop", "per_polygon": True}, ConfigError, "--per-polygon needs polygons"),
    ]
    out = tmp_path / "report"
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match) as caught:
            accuracy(kwargs.pop("map_path", class_map), out=out, **kwargs)
        assert "\n" not in str(caught.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        accuracy(class_map, reference=points, field="crop", out=out)
