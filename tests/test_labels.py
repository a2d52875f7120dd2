"""Vector labels on a hand-made 10 m grid: rasterising, cleaning, reprojection, sampling."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.data.cube import Grid
from sitscli.data.labels import (NO_POLYGON, UNLABELED, footprint_window, rasterize_classes, rasterize_window,
                                 read_labels, sample_pixels)

CRS_UTM = CRS.from_epsg(32631)
X0, Y0 = 400000.0, 4800000.0
GRID = Grid(CRS_UTM, Affine(10, 0, X0, 0, -10, Y0), height=40, width=50)


def cell_box(col0, row0, col1, row1):
    """Polygon covering pixel columns col0..col1-1 and rows row0..row1-1 exactly."""
    return shapely.box(X0 + 10 * col0, Y0 - 10 * row1, X0 + 10 * col1, Y0 - 10 * row0)


def write(tmp_path, records, crs=CRS_UTM, name="labels.gpkg"):
    frame = gpd.GeoDataFrame(records, crs=crs.to_wkt() if crs else None)
    path = tmp_path / name
    frame.to_file(path)
    return path


@pytest.fixture
def fields(tmp_path):
    return write(tmp_path, {
        "crop": ["wheat", "maize", "wheat", "barley"],
        "geometry": [cell_box(2, 3, 10, 8), cell_box(20, 5, 30, 15), cell_box(35, 20, 45, 35), cell_box(5, 25, 12, 30)],
    })


def test_rasterised_labels_match_the_polygons(fields):
    labels = read_labels(fields, "crop", crs=CRS_UTM, bounds=GRID.bounds)
    assert labels.class_names == ["barley", "maize", "wheat"]  # sorted: stable ids
    classes = rasterize_classes(labels, GRID, Window(0, 0, GRID.width, GRID.height))
    expected = np.full((40, 50), UNLABELED)
    expected[3:8, 2:10] = 2
    expected[5:15, 20:30] = 1
    expected[20:35, 35:45] = 2
    expected[25:30, 5:12] = 0
    np.testing.assert_array_equal(classes, expected)
    polygon = rasterize_window(labels, GRID, Window(0, 0, 50, 40))
    assert set(np.unique(polygon)) == {NO_POLYGON, 0, 1, 2, 3}  # polygon ids are feature positions


def test_windows_agree_with_the_whole_grid(fields):
    labels = read_labels(fields, "crop", crs=CRS_UTM)
    whole = rasterize_window(labels, GRID, Window(0, 0, 50, 40))
    np.testing.assert_array_equal(rasterize_window(labels, GRID, Window(17, 4, 13, 9)), whole[4:13, 17:30])


def test_inward_buffer_drops_border_pixels(fields):
    labels = read_labels(fields, "crop", crs=CRS_UTM, buffer=10)
    polygon = rasterize_window(labels, GRID, Window(0, 0, 50, 40))
    assert (polygon == 0).sum() == 6 * 3  # an 8 x 5 pixel field loses its one-pixel rim


def test_colours_from_a_colour_field_else_a_palette(tmp_path):
    path = write(tmp_path, {"crop": ["b", "a"], "color": ["#FF0000", "not a colour"],
                            "geometry": [cell_box(0, 0, 5, 5), cell_box(10, 10, 15, 15)]})
    labels = read_labels(path, "crop", crs=CRS_UTM)
    assert labels.class_names == ["a", "b"]
    assert labels.class_colors[1] == "#ff0000"
    assert labels.class_colors[0].startswith("#") and labels.class_colors[0] != "#ff0000"


def test_numeric_classes_sort_as_numbers(tmp_path):
    path = write(tmp_path, {"code": [10, 2, 33], "geometry": [cell_box(0, 0, 5, 5), cell_box(10, 10, 15, 15), cell_box(20, 0, 25, 5)]})
    assert read_labels(path, "code", crs=CRS_UTM).class_names == ["2", "10", "33"]


def test_labels_in_another_crs_are_reprojected(tmp_path, fields):
    frame = gpd.read_file(fields).to_crs(4326)
    path = tmp_path / "wgs84.geojson"
    frame.to_file(path)
    labels = read_labels(path, "crop", crs=CRS_UTM)
    polygon = rasterize_window(labels, GRID, Window(0, 0, 50, 40))
    assert abs(int((polygon == 1).sum()) - 100) <= 2  # the 10 x 10 px field, up to edge rounding


def test_missing_class_field_lists_the_fields(fields):
    with pytest.raises(ConfigError, match=r"'landuse' is not in labels.gpkg: the fields are crop"):
        read_labels(fields, "landuse", crs=CRS_UTM)


def test_invalid_geometries_are_repaired_and_empty_ones_dropped(tmp_path, capsys):
    bow_tie = shapely.Polygon([(X0, Y0), (X0 + 100, Y0 - 100), (X0 + 100, Y0), (X0, Y0 - 100)])
    path = write(tmp_path, {"crop": ["a", "b", "c", ""], "geometry": [bow_tie, shapely.Polygon(), cell_box(20, 20, 25, 25),
                                                                        cell_box(30, 0, 35, 5)]})
    labels = read_labels(path, "crop", crs=CRS_UTM)
    err = capsys.readouterr().err
    assert "repaired 1 invalid" in err and "dropped 1 of 4 features" in err and "dropped 1 polygons with an empty" in err
    assert labels.class_names == ["a", "c"]
    assert labels.polygons.is_valid.all()


def test_only_unusable_geometries_is_an_error(tmp_path):
    path = write(tmp_path, {"crop": ["a", "b"], "geometry": [shapely.LineString([(X0, Y0), (X0 + 50, Y0 - 50)]), shapely.Polygon()]})
    with pytest.raises(DataContentError, match="no usable polygon"):
        read_labels(path, "crop", crs=CRS_UTM)


def test_labels_outside_the_raster_are_an_error(tmp_path):
    path = write(tmp_path, {"crop": ["a"], "geometry": [shapely.box(X0 + 1e5, Y0, X0 + 1e5 + 50, Y0 + 50)]})
    with pytest.raises(DataContentError, match="do not overlap the raster"):
        read_labels(path, "crop", crs=CRS_UTM, bounds=GRID.bounds)


def test_a_buffer_in_degrees_is_refused(fields):
    with pytest.raises(ConfigError, match="projected"):
        read_labels(fields, "crop", crs=CRS.from_epsg(4326), buffer=5)


def test_sampling_caps_each_polygon_and_draws_the_pool_outside(fields):
    labels = read_labels(fields, "crop", crs=CRS_UTM)
    sample = sample_pixels(labels, GRID, max_per_polygon=30, unlabeled=200, seed=1, block=16)
    polygon = rasterize_window(labels, GRID, Window(0, 0, 50, 40))
    footprint = footprint_window(labels, GRID, Window(0, 0, 50, 40))
    labelled = sample.polygon != NO_POLYGON
    counts = np.bincount(sample.polygon[labelled])
    assert counts.tolist() == [30, 30, 30, 30]
    np.testing.assert_array_equal(polygon[sample.row[labelled], sample.col[labelled]], sample.polygon[labelled])
    assert (~labelled).sum() == 200 and not footprint[sample.row[~labelled], sample.col[~labelled]].any()
    assert (sample.y[~labelled] == UNLABELED).all()
    pixels = set(zip(sample.row.tolist(), sample.col.tolist()))
    assert len(pixels) == len(sample)  # without replacement
    again = sample_pixels(labels, GRID, max_per_polygon=30, unlabeled=200, seed=1, block=16)
    np.testing.assert_array_equal(again.row, sample.row)
    other = sample_pixels(labels, GRID, max_per_polygon=30, unlabeled=200, seed=2, block=16)
    assert not np.array_equal(other.row, sample.row)


def test_sampling_is_uniform_across_windows(fields):
    """A polygon cut by many windows is sampled evenly: both halves get about half the draws."""
    labels = read_labels(fields, "crop", crs=CRS_UTM)
    left = 0
    for seed in range(40):
        sample = sample_pixels(labels, GRID, max_per_polygon=20, seed=seed, block=8)
        in_field = sample.polygon == 2  # columns 35..44, split between windows at column 40
        left += int((sample.col[in_field] < 40).sum())
    assert 0.4 < left / (40 * 20) < 0.6


def test_small_polygons_between_pixel_centres_are_an_error(tmp_path):
    path = write(tmp_path, {"crop": ["a"], "geometry": [shapely.box(X0 + 1, Y0 - 4, X0 + 4, Y0 - 1)]})
    labels = read_labels(path, "crop", crs=CRS_UTM)
    with pytest.raises(DataContentError, match="no polygon covers"):
        sample_pixels(labels, GRID, max_per_polygon=5)
