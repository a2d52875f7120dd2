"""Synthetic multi-sensor scene: Sentinel-1, PlanetScope, VHR and the Sentinel-2 cloud probability.

File names, dtypes, grids and tags as DESIGN.md gives them (the readers rely on them), physics
that a model can learn from, and bytes that repeat and do not depend on the other sensors.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.features import rasterize

from sitscli.core.errors import ConfigError
from sitscli.data.synthetic import write_planetscope, write_s1, write_synthetic
from sitscli.data.synthetic.scene import SceneModel
from sitscli.data.synthetic.vhr import write_vhr
from tests._cli import sits
from tests.test_synthetic import file_hashes

SIZE, SEED, PS_EVERY = 40, 7, 4
ALL = ("s2", "s1", "planetscope", "vhr")
UTM = CRS.from_string("EPSG:32631")
ASF_NAME = re.compile(r"^(S1[AB])_IW_(\d{8})T(\d{6})_DVP_RTC10_G_gpuned_[0-9A-F]{4}_(VV|VH)\.tif$")
PS_NAME = re.compile(r"^(\d{8})_(\d{6})_[0-9a-f]{4}_3B_(AnalyticMS_SR|udm2)_clip\.tif$")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("mm") / "scene", size=SIZE, seed=SEED, years=1, sensors=ALL,
                           ps_every=PS_EVERY)


def class_raster(scene, transform, shape) -> np.ndarray:
    """(H, W) index into scene.class_names of the year-1 class, from the parcels, on any grid."""
    parcels = gpd.read_file(scene.parcels)
    codes = [scene.class_names.index(name) for name in parcels[scene.class_field]]
    return rasterize(zip(parcels.geometry, codes), out_shape=shape, transform=transform, fill=-1, dtype="int16")


def read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile, dict, tuple]:
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.tags(), src.descriptions


def s1_series(folder: Path) -> tuple[list[dt.date], np.ndarray, np.ndarray]:
    """Dates, linear VV and VH (T, H, W) of one orbit folder, NaN where no data."""
    dates, vv, vh = [], [], []
    for path in sorted(folder.glob("*_VV.tif"), key=lambda p: p.name[7:22]):
        dates.append(dt.datetime.strptime(path.name[7:15], "%Y%m%d").date())
        for pol, out in (("VV", vv), ("VH", vh)):
            data, profile, _, _ = read(path.with_name(path.name.replace("_VV.tif", f"_{pol}.tif")))
            out.append(np.where(data[0] == profile["nodata"], np.nan, data[0]))
    return dates, np.array(vv), np.array(vh)


def test_s1_files_are_asf_rtc_gamma0_on_the_sentinel2_grid(scene):
    assert scene.s1 == scene.root / "s1" and scene.sensors == ALL
    for direction in ("ascending", "descending"):
        names = sorted(p.name for p in (scene.s1 / direction).iterdir())
        assert names and all(ASF_NAME.match(n) for n in names)
        assert {n.replace("_VH.tif", "_VV.tif") for n in names} == {n for n in names if n.endswith("_VV.tif")}
        assert {ASF_NAME.match(n)[1] for n in names} == {"S1A", "S1B"}
        data, profile, tags, _ = read(scene.s1 / direction / names[0])
        assert profile["dtype"] == "float32" and profile["nodata"] == 0 and profile["crs"] == UTM
        assert (profile["width"], profile["height"]) == (SIZE, SIZE) and profile["transform"] == rasterio.Affine(
            10, 0, 360000, 0, -10, 4860000)
        assert tags["ORBIT_DIRECTION"] == direction.upper() and tags["UNITS"] == "linear"
        assert tags["POLARISATION"] == names[0][-6:-4] and tags["RADIOMETRY"] == "gamma0"
        assert tags["ACQUISITION_START"][:10].replace("-", "") == names[0][7:15]
    passes = [p.name for p in scene.s1.rglob("*_VV.tif")]
    # descending ~05:50 UTC, ascending ~17:40 UTC
    assert {ASF_NAME.match(n)[3][:2] for n in passes} == {"05", "17"}


def test_s1_revisit_is_6_days_with_s1b_then_12_days(scene):
    for direction in ("ascending", "descending"):
        dates, _, _ = s1_series(scene.s1 / direction)
        gaps = np.diff([d.toordinal() for d in dates])
        before = np.array(dates[:-1]) <= dt.date(2021, 12, 23)   # S1B's last acquisition
        assert set(gaps[before]) == {6} and set(gaps[~before]) == {12}
        assert dates[0] < dt.date(2021, 10, 7) and dates[-1] > dt.date(2022, 9, 17)


def test_s1_backscatter_follows_the_land_cover(scene):
    classes = class_raster(scene, rasterio.Affine(10, 0, 360000, 0, -10, 4860000), (SIZE, SIZE))
    names = scene.class_names
    dates, vv, vh = s1_series(scene.s1 / "descending")
    assert np.nanmin(vv) > 0 and np.nanmin(vh) > 0                        # linear power

    def mean_db(series, name, months=None):
        keep = [i for i, d in enumerate(dates) if months is None or d.month in months]
        return 10 * np.log10(np.nanmean(series[keep][:, classes == names.index(name)]))

    assert mean_db(vv, "artificial") - mean_db(vv, "water") > 15          # double bounce vs specular
    assert mean_db(vv, "water") < -18 and mean_db(vv, "artificial") > -2
    forest = [10 * np.log10(np.nanmean(v[classes == names.index("deciduous_forest")])) for v in vh]
    assert np.std(forest) < 1.0 and np.mean(forest) > mean_db(vh, "meadow") + 3   # stable volume scattering
    # the structure the optical series does not show: maize VH over soybean, wheat VV under barley in spring
    assert mean_db(vh, "maize", (7, 8)) - mean_db(vh, "soybean", (7, 8)) > 2
    assert mean_db(vv, "winter_barley", (4, 5)) - mean_db(vv, "winter_wheat", (4, 5)) > 1.5
    # speckle: Gamma with ENL ~4.5, coefficient of variation ~0.47 inside a water body
    water = vv[:, classes == names.index("water")]
    cv = np.nanstd(water, axis=1) / np.nanmean(water, axis=1)
    assert 0.35 < np.median(cv) < 0.6


def test_s1_db_multiband_option_holds_the_same_values(tmp_path, scene):
    model = SceneModel(SIZE, SIZE, 1, SEED, 0.3)
    write_s1(model, tmp_path / "s1", units="db", layout="multiband")
    first = sorted((tmp_path / "s1" / "descending").iterdir())[0]
    assert re.fullmatch(r"S1A_IW_20211004T0551\d\d_DESC_gamma0_db\.tif", first.name)
    data, profile, tags, descriptions = read(first)
    assert descriptions == ("VV", "VH") and tags["UNITS"] == "dB" and np.isnan(profile["nodata"])
    assert np.nanmean(data) < -5                                           # dB is mostly negative
    asf = sorted((scene.s1 / "descending").glob(f"*{first.name[7:22]}*"))  # the same pass, linear, one file per pol
    linear = np.stack([read(p)[0][0] for p in sorted(asf, key=lambda p: p.name[-6:] != "VV.tif")])
    np.testing.assert_allclose(data, 10 * np.log10(linear), atol=1e-4)


def test_planetscope_scenes_and_udm2(scene):
    names = sorted(p.name for p in scene.planetscope.iterdir())
    assert names and all(PS_NAME.match(n) for n in names)
    scenes = [n.removesuffix("_3B_AnalyticMS_SR_clip.tif") for n in names if "_SR_" in n]
    assert sorted(f"{s}_3B_udm2_clip.tif" for s in scenes) == [n for n in names if "udm2" in n]
    days = sorted({s[:8] for s in scenes})
    assert 0.6 < len(days) / (365 / PS_EVERY) < 0.95                      # most days delivered, cloudy ones too
    strip_days = [d for d in days if sum(s.startswith(d) for s in scenes) == 2]
    assert strip_days
    sr, profile, tags, descriptions = read(scene.planetscope / f"{scenes[0]}_3B_AnalyticMS_SR_clip.tif")
    assert profile["dtype"] == "uint16" and profile["count"] == 4 and profile["nodata"] == 0 and profile["crs"] == UTM
    assert descriptions == ("blue", "green", "red", "nir") and tags["ACQUIRED"].startswith(scenes[0][:4])
    transform = profile["transform"]
    assert (transform.a, transform.e, transform.c, transform.f) == (3, -3, 360000, 4860000)
    assert profile["width"] * 3 >= SIZE * 10 > (profile["width"] - 1) * 3   # covers the Sentinel-2 area
    udm2, profile, _, descriptions = read(scene.planetscope / f"{scenes[0]}_3B_udm2_clip.tif")
    assert profile["dtype"] == "uint8" and profile["count"] == 8
    assert descriptions == ("clear", "snow", "shadow", "light_haze", "heavy_haze", "cloud", "confidence", "udm1")
    # the two scenes of a strip: one second apart, overlapping rows, each with data where the other has none
    first, second = sorted(s for s in scenes if s.startswith(strip_days[0]))
    a, b = (read(scene.planetscope / f"{s}_3B_AnalyticMS_SR_clip.tif")[0][3] > 0 for s in (first, second))
    assert (a & b).any() and (a & ~b).any() and (b & ~a).any()
    clear = []
    for s in scenes:
        sr = read(scene.planetscope / f"{s}_3B_AnalyticMS_SR_clip.tif")[0]
        udm2 = read(scene.planetscope / f"{s}_3B_udm2_clip.tif")[0]
        inside = (udm2[7] & 1) == 0
        np.testing.assert_array_equal(inside, sr[0] > 0)
        np.testing.assert_array_equal(udm2[:6].sum(0), inside.astype(np.uint8))   # one class per pixel inside
        assert udm2[6].max() <= 100
        clear.append(udm2[0][inside].mean())
    assert 0.3 < np.mean(clear) < 0.85


def test_planetscope_sees_the_same_fields_as_sentinel2_but_not_the_same_values(scene):
    classes = class_raster(scene, rasterio.Affine(3, 0, 360000, 0, -3, 4860000), read(
        next(scene.planetscope.glob("*_SR_clip.tif")))[0].shape[1:])
    forest, soil = [], []
    for path in sorted(scene.planetscope.glob("*_SR_clip.tif")):
        if path.name[4:6] in ("06", "07"):
            sr = read(path)[0].astype(float)
            clear = read(path.with_name(path.name.replace("AnalyticMS_SR", "udm2")))[0][0] == 1
            ndvi = (sr[3] - sr[2]) / (sr[3] + sr[2] + 1)
            forest += list(ndvi[clear & (classes == scene.class_names.index("deciduous_forest"))])
            soil += list(ndvi[clear & (classes == scene.class_names.index("artificial"))])
    assert np.median(forest) > 0.6 and np.median(soil) < 0.3


def test_vhr_ortho_and_tiles(scene, tmp_path):
    data, profile, tags, descriptions = read(scene.vhr)
    assert scene.vhr == scene.root / "vhr" / "ortho.tif"
    assert profile["dtype"] == "uint8" and descriptions == ("R", "G", "B", "NIR") and profile["crs"] == UTM
    assert (profile["width"], profile["height"]) == (SIZE * 10, SIZE * 10) and profile["transform"].a == 1
    assert tags["ACQUISITION_DATE"] == "2022-06-20"
    classes = class_raster(scene, profile["transform"], data.shape[1:])
    names = scene.class_names
    nir = data[3].astype(float)
    assert nir[classes == names.index("water")].mean() < 0.5 * nir[classes == names.index("deciduous_forest")].mean()
    town = data[0][classes == names.index("artificial")]
    assert (town < 70).mean() > 0.1 and (town > 150).mean() > 0.1       # dark streets, bright roofs
    model = SceneModel(SIZE, SIZE, 1, SEED, 0.3)
    tiles = write_vhr(model, tmp_path / "tiles", tiles=True)
    names = sorted(p.name for p in tiles.iterdir())
    assert names == ["ortho_r0_c0.tif", "ortho_r0_c1.tif", "ortho_r1_c0.tif", "ortho_r1_c1.tif"]
    rows = [np.concatenate([read(tiles / f"ortho_r{r}_c{c}.tif")[0] for c in (0, 1)], axis=2) for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=1), data)   # the tiles hold the same pixels
    with rasterio.open(tiles / "ortho_r1_c1.tif") as src:
        assert (src.transform.c, src.transform.f) == (360000 + SIZE * 5, 4860000 - SIZE * 5)
    half = write_vhr(model, tmp_path / "half", resolution=0.5)
    with rasterio.open(half) as src:
        assert src.res == (0.5, 0.5) and src.width == SIZE * 20 and src.count == 4


def test_cloud_probability_matches_the_scene_classification(scene):
    products = sorted(scene.l2a.iterdir())
    assert len(products) == len(scene.dates)
    for product in products[:10]:
        scl_path = next(product.rglob("*_SCL_20m.jp2"))
        prob_path = scl_path.parent.parent.parent / "QI_DATA" / "MSK_CLDPRB_20m.jp2"
        prob, profile, _, _ = read(prob_path)
        scl = read(scl_path)[0]
        assert profile["dtype"] == "uint8" and profile["transform"].a == 20 and prob.max() <= 100
        assert (prob[scl == 9] >= 65).all() and ((prob[scl == 8] >= 35) & (prob[scl == 8] < 65)).all()
        assert (prob[np.isin(scl, (4, 5, 6, 7))] < 35).all()


def test_bytes_repeat_and_do_not_depend_on_the_other_sensors(scene, tmp_path):
    again = write_synthetic(tmp_path / "again", size=SIZE, seed=SEED, years=1, sensors=ALL, ps_every=PS_EVERY, workers=2)
    hashes = file_hashes(again.root)
    assert hashes == file_hashes(scene.root) and any(k.startswith("planetscope/") for k in hashes)
    alone = write_synthetic(tmp_path / "s2", size=SIZE, seed=SEED, years=1)
    assert alone.s1 is alone.planetscope is alone.vhr is None and not (alone.root / "s1").exists()
    assert file_hashes(alone.l2a) == file_hashes(scene.l2a)                      # Sentinel-2 unchanged
    write_planetscope(SceneModel(SIZE, SIZE, 1, SEED, 0.3), tmp_path / "ps", every=PS_EVERY)
    assert file_hashes(tmp_path / "ps") == file_hashes(scene.planetscope)


def test_bad_sensor_options_are_one_line_errors(tmp_path):
    for bad in ({"sensors": ("s1",)}, {"sensors": ("s2", "landsat")}, {"sensors": ALL, "s1_units": "amplitude"},
                {"sensors": ALL, "ps_every": 0}, {"sensors": ALL, "vhr_resolution": 5.0}):
        with pytest.raises(ConfigError) as err:
            write_synthetic(tmp_path / "bad", size=32, years=1, **bad)
        assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_sensors_option(tmp_path, monkeypatch, capsys):
    code, out, err = sits(monkeypatch, capsys, "prepare", "synthetic", "--out", tmp_path / "demo", "--size", 32,
                          "--years", 1, "--layout", "cog", "--sensors", "s2,s1", "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["sensors"] == ["s2", "s1"] and Path(summary["s1"]).is_dir() and "planetscope" not in summary
    assert all((p / "CLD.tif").is_file() for p in (tmp_path / "demo" / "l2a").iterdir())
    code, _, err = sits(monkeypatch, capsys, "prepare", "synthetic", "--out", tmp_path / "bad", "--sensors", "s1,vhr")
    assert code != 0 and "s2" in err and len(err.strip().splitlines()) == 1
