"""`sits prepare s2 ... --s1 --planetscope --vhr --keep-cloudy` on the synthetic four-sensor scene:
every sensor lands under the right Sentinel-2 sample, in pixel and patch mode, with any subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from sitscli.data.prepared import open_prepared
from sitscli.data.readers import open_planetscope, open_s1, open_source
from sitscli.data.synthetic import write_synthetic
from sitscli.data.torchdata import SeriesDataset
from tests._cli import sits

SIZE = 40


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("mm") / "scene", size=SIZE, seed=3, years=1,
                           sensors=("s2", "s1", "planetscope", "vhr"))


def prepare(cli, scene, out, *extra):
    code, _, err = cli("prepare", "s2", scene.l2a, "--labels", scene.parcels, "--class-field", scene.class_field,
                       "--out", out, "--max-per-polygon", "6", "--unlabeled", "20", "--json", *extra)
    assert code == 0, err
    return open_prepared(out)


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: sits(monkeypatch, capsys, *args)


def test_pixel_mode_all_sensors_under_the_right_pixel(cli, scene, tmp_path):
    data = prepare(cli, scene, tmp_path / "px.sits", "--s1", str(scene.s1), "--planetscope", str(scene.planetscope),
                   "--vhr", str(scene.vhr), "--keep-cloudy")
    assert data.modalities == ("s2", "s1", "planetscope", "vhr") and data.keep_cloudy
    raw = data.read(0, data.n_samples, data.modalities)
    cube = open_source(scene.l2a)
    rows, cols = rasterio.transform.rowcol(cube.grid.transform, raw["xy"][:, 0], raw["xy"][:, 1])
    rows, cols = np.asarray(rows), np.asarray(cols)
    # Sentinel-1: the stored series is the reader's series at the sample's own pixel, in 0.01 dB
    period = (int(cube.dates.min()), int(cube.dates.max()))  # other sensors are read over the Sentinel-2 period
    s1 = open_s1(scene.s1, cube.grid, date_range=period)
    i = int(np.argmax(raw["s1_valid"].sum(axis=1)))
    values, valid = s1.read(Window(int(cols[i]), int(rows[i]), 1, 1))
    np.testing.assert_allclose(raw["s1_x"][i] / 100, np.where(valid[:, None, 0, 0], values[:, :, 0, 0], 0), atol=0.006)
    # PlanetScope: the 3 x 3 block of 3.33 m pixels inside that Sentinel-2 pixel
    ps = open_planetscope(scene.planetscope, cube.grid, date_range=period)
    values, valid = ps.read(Window(int(cols[i]), int(rows[i]), 1, 1))
    assert raw["ps_x"].shape[1:] == (len(ps.dates), 4, 3, 3)
    np.testing.assert_allclose(raw["ps_x"][i] / 1e4, np.where(valid[:, None], values, 0), atol=6e-5)
    assert raw["vhr_x"].shape[1:3] == (4, 10) and raw["cloud"].shape == raw["valid"].shape
    assert raw["cloud"][~raw["valid"]].mean() > raw["cloud"][raw["valid"]].mean()  # cloudy dates carry high levels
    assert (raw["x"][~raw["valid"]] != 0).any()                                     # and their values are kept
    summary = data.summary()["modalities"]
    assert summary["s1"]["unit"] == "dB" and 0 < summary["planetscope"]["clear_fraction"] < 1


def test_patch_mode_and_a_subset_of_sensors(cli, scene, tmp_path):
    data = prepare(cli, scene, tmp_path / "tiles.sits", "--patch-size", "16", "--s1", str(scene.s1), "--vhr", str(scene.vhr))
    assert data.modalities == ("s2", "s1", "vhr") and not data.keep_cloudy
    ds = data.ds
    assert ds["s1_x"].dims == ("sample", "s1_time", "s1_band", "py", "px")
    assert ds["vhr_x"].shape[1:] == (4, 160, 160) and "ps_x" not in ds and "cloud" not in ds
    y, tiles = ds["y"].values, ds["y_tile"].values
    for k in range(len(y)):
        np.testing.assert_array_equal(np.flatnonzero(tiles[k]), np.unique(y[k][y[k] >= 0]))
    item = SeriesDataset(data, splits=("train", "val", "test", "unlabeled"), modalities=("s2", "s1", "vhr"))[0]
    assert item["s1_values"].shape[-2:] == (16, 16) and item["vhr_values"].shape == (4, 160, 160)


def test_info_lists_every_sensor(cli, scene, tmp_path):
    prepare(cli, scene, tmp_path / "i.sits", "--s1", str(scene.s1), "--planetscope", str(scene.planetscope))
    code, out, err = cli("info", tmp_path / "i.sits")
    assert code == 0, err
    assert "sensors:" in out and "planetscope" in out and "s1" in out
    found = json.loads(cli("info", tmp_path / "i.sits", "--json")[1])
    assert set(found["modalities"]) == {"s2", "s1", "planetscope"}


@pytest.mark.parametrize("case", ["no-overlap", "ps-without-udm2", "s1-outside-period", "vhr-bands", "s1-no-date"])
def test_bad_sensor_inputs_one_line_and_nothing_written(cli, scene, tmp_path, case):
    import shutil

    args = []
    if case == "no-overlap":
        far = tmp_path / "far"
        far.mkdir()
        with rasterio.open(next(scene.s1.rglob("*_VV.tif"))) as src:
            profile = dict(src.profile, transform=src.transform * rasterio.Affine.translation(1e5, 0))
            data = src.read()
        with rasterio.open(far / "S1A_IW_20211005T055130_DVP_RTC10_G_gpuned_1A2B_VV.tif", "w", **profile) as dst:
            dst.write(data)
        args = ["--s1", str(far)]
    elif case == "ps-without-udm2":
        ps = tmp_path / "ps"
        shutil.copytree(scene.planetscope, ps)
        next(ps.rglob("*udm2*.tif")).unlink()
        args = ["--planetscope", str(ps)]
    elif case == "s1-outside-period":
        old = tmp_path / "s1old"
        old.mkdir()
        for pol in ("VV", "VH"):
            shutil.copy(next(scene.s1.rglob(f"*_{pol}.tif")), old / f"S1A_IW_20100105T055130_DVP_RTC10_G_gpuned_1A2B_{pol}.tif")
        args = ["--s1", str(old)]
    elif case == "vhr-bands":
        args = ["--vhr", str(scene.vhr), "--vhr-bands", "R,G,B,NIR,SWIR"]
    elif case == "s1-no-date":
        bad = tmp_path / "s1bad"
        bad.mkdir()
        shutil.copy(next(scene.s1.rglob("*_VV.tif")), bad / "backscatter_VV.tif")
        args = ["--s1", str(bad)]
    out = tmp_path / "bad.sits"
    code, _, err = cli("prepare", "s2", scene.l2a, "--labels", scene.parcels, "--class-field", scene.class_field,
                       "--out", out, *args)
    assert code != 0
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob("bad.sits*"))
