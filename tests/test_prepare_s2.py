"""`prepare s2`: pixel and patch modes on a hand-made cube, on the synthetic L2A folder, on real data."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import rowcol
from rasterio.windows import Window

from sitscli.core.errors import DataContentError, OutputExistsError
from sitscli.data.cube import Cube, Grid
from sitscli.data.prepared import SCALE, open_prepared
from sitscli.data.recipes.s2 import _read_pixels, _SampleReader, prepare_cube

CRS_UTM = CRS.from_epsg(32631)
X0, Y0 = 400000.0, 4800000.0
H, W, T, C = 40, 50, 6, 3


def expected_values(rows, cols, times, bands):
    """Reflectance that encodes where and when it was seen: exact in int16 x 10000."""
    return (1e-4 * (rows * 64 + cols) + 0.05 * bands + 0.01 * times).astype(np.float32)


class ArrayCube(Cube):
    """A cube computed on the fly; pixels right of column 45 are never clear (nodata)."""

    layout = "test"

    def __init__(self):
        self.dates = np.arange(18000, 18000 + 10 * T, 10, dtype=np.int32)
        self.band_names = ["B02", "B03", "B04"]
        self.grid = Grid(CRS_UTM, Affine(10, 0, X0, 0, -10, Y0), H, W)
        self.reads = []

    def _read(self, window: Window, times: np.ndarray):
        self.reads.append((window, tuple(times)))
        r, c = np.mgrid[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width]
        t, b = np.asarray(times)[:, None, None, None], np.arange(C)[None, :, None, None]
        values = expected_values(r[None, None], c[None, None], t, b)     # (t, C, h, w)
        valid = np.broadcast_to((c < 45)[None], (len(times),) + c.shape).copy()
        valid &= (np.asarray(times) != 2)[:, None, None]                  # date 2 cloudy everywhere
        return np.where(valid[:, None], values, 0), valid


def cell_box(col0, row0, col1, row1):
    return shapely.box(X0 + 10 * col0, Y0 - 10 * row1, X0 + 10 * col1, Y0 - 10 * row0)


# (col0, row0, col1, row1) of each field and its crop: three fields per class, so every split gets one
FIELDS = [((2, 3, 10, 8), "wheat"), ((20, 5, 30, 15), "maize"), ((35, 20, 50, 35), "wheat"), ((5, 25, 12, 30), "barley"),
          ((13, 16, 19, 23), "maize"), ((24, 30, 32, 38), "barley"), ((35, 2, 44, 10), "barley"), ((2, 12, 9, 20), "wheat"),
          ((12, 32, 20, 39), "maize")]
CLASS_IDS = {"barley": 0, "maize": 1, "wheat": 2}


@pytest.fixture
def labels(tmp_path):
    frame = gpd.GeoDataFrame({"crop": [c for _, c in FIELDS], "geometry": [cell_box(*box) for box, _ in FIELDS]},
                             crs=CRS_UTM.to_wkt())
    path = tmp_path / "fields.gpkg"
    frame.to_file(path)
    return path


def stored_pixels(ds):
    """Grid row and column of each pixel sample, from its stored map coordinates."""
    xy = ds["xy"].values
    rows, cols = rowcol(Affine(10, 0, X0, 0, -10, Y0), xy[:, 0], xy[:, 1])
    return np.asarray(rows), np.asarray(cols)


def test_pixel_mode_stores_each_pixels_series(tmp_path, labels):
    cube = ArrayCube()
    out = prepare_cube(cube, tmp_path / "px.sits", labels=labels, class_field="crop", max_per_polygon=25,
                       unlabeled=100, seed=3, config={"note": "kept"})
    data = open_prepared(out)
    ds = data.ds
    rows, cols = stored_pixels(ds)
    x = ds["x"].values.astype(np.float64) / SCALE                      # (n, T, C)
    valid = ds["valid"].values
    t, b = np.arange(T)[None, :, None], np.arange(C)[None, None, :]
    want = expected_values(rows[:, None, None], cols[:, None, None], t, b)
    np.testing.assert_allclose(np.where(valid[..., None], x, 0), np.where(valid[..., None], want, 0), atol=1e-4)
    assert not valid[:, 2].any() and valid[:, [0, 1, 3]].all()
    assert (ds["date"].values == cube.dates).all()
    y, split, group = ds["y"].values, ds["split"].values, ds["group"].values
    assert data.class_names == ["barley", "maize", "wheat"]
    # the wheat field at columns 35..49 lost its nodata pixels (>= 45): none is stored
    assert (cols < 45).all()
    labelled = y >= 0
    assert np.bincount(group[labelled]).max() <= 25
    for g in np.unique(group[labelled]):
        assert len(np.unique(split[group == g])) == 1                 # no polygon in two splits
    assert set(np.unique(split[labelled])) == {0, 1, 2}
    assert ((split == 3) == ~labelled).all() and (~labelled).sum() <= 100
    wheat = labelled & (y == 2)
    in_wheat = np.zeros((H, W), bool)
    for (c0, r0, c1, r1), crop in FIELDS:
        in_wheat[r0:r1, c0:c1] |= crop == "wheat"
    assert in_wheat[rows[wheat], cols[wheat]].all()                    # wheat pixels lie in wheat fields
    assert "PROJCS" in data.crs or "PROJCRS" in data.crs
    assert (out / "config.yaml").read_text().strip() == "note: kept"


def test_pixels_are_read_by_blocks_holding_samples_only():
    cube = ArrayCube()
    rows, cols = np.array([1, 3, 2, 33, 35]), np.array([2, 4, 3, 41, 44])  # two clusters, far apart
    seen = {}
    for index, s2, others in _read_pixels(_SampleReader(cube, None, keep_cloudy=False), rows, cols, block=10):
        values, valid = s2["values"], s2["valid"]
        assert others == {} and "cloud" not in s2
        want = expected_values(rows[index, None, None], cols[index, None, None], np.arange(T)[None, :, None],
                               np.arange(C)[None, None, :])
        np.testing.assert_allclose(values[valid], want[valid])
        seen.update(dict.fromkeys(index.tolist()))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [(w.col_off, w.row_off, w.width, w.height) for w, _ in cube.reads] == [(2, 1, 3, 3), (41, 33, 4, 3)]


def test_patch_mode_keeps_polygons_in_one_split(tmp_path, labels):
    cube = ArrayCube()
    out = prepare_cube(cube, tmp_path / "patch.sits", labels=labels, class_field="crop", patch_size=12, seed=0)
    data = open_prepared(out)
    ds = data.ds
    assert data.mode == "patch" and data.patch_size == 12
    x, valid, y = ds["x"].values, ds["valid"].values, ds["y"].values   # (n, T, C, P, P), (n, T, P, P), (n, P, P)
    assert x.shape[1:] == (T, C, 12, 12) and y.shape[1:] == (12, 12)
    assert ds.sizes["sample"] == 4 * 4  # 4 x 5 patches, the last column (cols 48..49) is nodata only
    split = ds["split"].values
    # top-left corner of each patch from its centre
    xy = ds["xy"].values
    corner_row = np.rint((Y0 - xy[:, 1]) / 10 - 6).astype(int)
    corner_col = np.rint((xy[:, 0] - X0) / 10 - 6).astype(int)
    assert set(zip(corner_row.tolist(), corner_col.tolist())) == {(r, c) for r in (0, 12, 24, 36) for c in (0, 12, 24, 36)}
    # padding past the grid's last row (40) is invalid and unlabelled
    bottom = corner_row == 36
    assert not valid[bottom][:, :, 4:].any() and (y[bottom][:, 4:] == -1).all()
    np.testing.assert_allclose(x[bottom][:, 0, 0, 0, 0] / SCALE, expected_values(36, corner_col[bottom], 0, 0), atol=1e-4)
    # each labelled pixel's class matches the polygon under it, and each polygon's labels sit in one split
    boxes = {p: box for p, (box, _) in enumerate(FIELDS)}
    classes = {p: CLASS_IDS[crop] for p, (_, crop) in enumerate(FIELDS)}
    splits_of = {p: set() for p in boxes}
    for i in range(len(split)):
        rr, cc = np.nonzero(y[i] >= 0)
        for r, c in zip(rr + corner_row[i], cc + corner_col[i]):
            owner = [p for p, (c0, r0, c1, r1) in boxes.items() if c0 <= c < c1 and r0 <= r < r1]
            assert len(owner) == 1 and y[i][r - corner_row[i], c - corner_col[i]] == classes[owner[0]]
            splits_of[owner[0]].add(int(split[i]))
    assert all(len(s) == 1 for s in splits_of.values())
    assert (split == 3).sum() >= 1  # patches with no labelled pixel are kept for pretraining
    assert ((y >= 0).reshape(len(y), -1).any(axis=1) == (split != 3)).all()


def test_existing_output_is_refused_and_left_alone(tmp_path, labels):
    cube = ArrayCube()
    out = prepare_cube(cube, tmp_path / "px.sits", labels=labels, class_field="crop", max_per_polygon=2)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputExistsError):
        prepare_cube(cube, out, labels=labels, class_field="crop", max_per_polygon=2)
    assert sorted(p.name for p in out.iterdir()) == before


def test_every_sample_cloudy_is_an_error_and_leaves_nothing(tmp_path, labels):
    class Cloudy(ArrayCube):
        def _read(self, window, times):
            values, valid = super()._read(window, times)
            return values * 0, valid & False

    with pytest.raises(DataContentError, match="cloudy or nodata on every date"):
        prepare_cube(Cloudy(), tmp_path / "c.sits", labels=labels, class_field="crop")
    assert list(tmp_path.iterdir()) == [labels]
