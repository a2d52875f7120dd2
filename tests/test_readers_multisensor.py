"""Readers of other sensors (Sentinel-1, PlanetScope, VHR) on the Sentinel-2 grid, and Sentinel-2
cloud levels / keep-cloudy, on tiny rasters written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from sitscli.core.dates import parse_date
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError, SitsError
from sitscli.data.cube import Grid
from sitscli.data.readers import open_planetscope, open_s1, open_source, open_vhr
from sitscli.data.readers.common import cloud_level

UTM = CRS.from_epsg(32631)
X0, Y0 = 400000.0, 4800000.0
N = 20  # Sentinel-2 grid side, pixels
GRID = Grid(UTM, Affine(10, 0, X0, 0, -10, Y0), N, N)
DAY = parse_date("2020-08-15")


def write_tif(path: Path, data: np.ndarray, transform=GRID.transform, crs=UTM, *, nodata=None, descriptions=None,
              tags=None, driver="GTiff", **options) -> Path:
    """Write (C, h, w) or (h, w) `data` as a raster (`options`: creation options)."""
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **options) as ds:
        ds.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, text)
        if tags:
            ds.update_tags(**tags)
    return path


# An engineering CRS: PROJ has no operation between it and UTM.
LOCAL = CRS.from_wkt('LOCAL_CS["arbitrary",LOCAL_DATUM["d",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]')


def check_error(excinfo, kind, phrase):
    """A one-line SitsError of the right type holding `phrase`."""
    assert isinstance(excinfo.value, SitsError) and type(excinfo.value) is kind
    message = str(excinfo.value)
    assert "\n" not in message and phrase in message, message


# ----------------------------------------------------------------------------------------- Sentinel-1
def db_field(offset: float) -> np.ndarray:
    """(N, N) float32 dB values that encode the pixel: -5 - 0.01 * (row * N + col) - offset."""
    rows, cols = np.mgrid[0:N, 0:N]
    return (-5.0 - 0.01 * (rows * N + cols) - offset).astype(np.float32)


def asf_name(stamp: str, pol: str, scale: str = "d") -> str:
    """An ASF RTC file name; `scale` p (power), d (dB) or a (amplitude)."""
    return f"S1A_IW_{stamp}_DVP_RTC10_G_g{scale}uned_1A2B_{pol}.tif"


def test_s1_db_per_polarisation_reads_back_exactly(tmp_path):
    vv, vh = db_field(0), db_field(8)
    vh[3, 4] = -60  # border noise: invalid
    write_tif(tmp_path / "s1" / asf_name("20200815T055130", "VV"), vv, nodata=np.nan)
    write_tif(tmp_path / "s1" / asf_name("20200815T055130", "VH"), vh, nodata=np.nan)
    write_tif(tmp_path / "s1" / "S1A_IW_20200815T055130_DVP_RTC10_G_gpuned_1A2B_ls_map.tif", np.zeros((N, N), np.uint8))
    cube = open_s1(tmp_path / "s1", GRID)
    assert cube.layout == "s1" and cube.units == "db" and cube.band_names == ["VV", "VH", "VV/VH"]
    assert cube.dates.tolist() == [DAY] and cube.orbits == ["unknown"] and cube.grid == GRID
    values, valid = cube.read(Window(2, 1, 6, 5))
    assert values.shape == (1, 3, 5, 6) and values.dtype == np.float32
    want_vv, want_vh = vv[1:6, 2:8], vh[1:6, 2:8]
    ok = want_vh > -50
    assert (valid[0] == ok).all() and not ok.all()
    np.testing.assert_array_equal(values[0, 0][ok], want_vv[ok])
    np.testing.assert_array_equal(values[0, 1][ok], want_vh[ok])
    np.testing.assert_allclose(values[0, 2][ok], (want_vv - want_vh)[ok], atol=1e-5)
    assert (values[0][:, ~ok] == 0).all()


def test_s1_linear_multiband_export_and_validity(tmp_path):
    power = np.stack([10 ** (db_field(0) / 10), 10 ** (db_field(7) / 10), np.full((N, N), 35, np.float32)])
    power[0, 0, 0], power[1, 0, 1], power[0, 0, 2] = 0, -0.1, -9999  # zero, negative, no-data
    write_tif(tmp_path / "gee" / "S1_GRD_20200815.tif", power.astype(np.float32), nodata=-9999,
              descriptions=["VV", "VH", "angle"])
    write_tif(tmp_path / "gee" / "S1_GRD_20200827.tif", power.astype(np.float32), nodata=-9999,
              descriptions=["VH", "VV", "angle"])  # bands found by description, not position
    cube = open_s1(tmp_path / "gee", GRID)
    assert cube.dates.tolist() == [DAY, DAY + 12]
    values, valid = cube.read()
    assert not valid[:, 0, :3].any() and valid[0, 1:].all()
    np.testing.assert_allclose(values[0, 0, 1:], db_field(0)[1:], atol=1e-4)
    np.testing.assert_allclose(values[0, 1, 1:], db_field(7)[1:], atol=1e-4)
    np.testing.assert_allclose(values[1, 0, 1:], db_field(7)[1:], atol=1e-4)  # swapped descriptions
    assert (values[:, :, 0, :3] == 0).all()


def test_s1_units_are_detected_or_told(tmp_path):
    linear = (10 ** (db_field(0) / 10)).astype(np.float32)
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "lin" / f"s1_20200815_{pol}.tif", linear)
        write_tif(tmp_path / "db" / f"s1_20200815_{pol}.tif", db_field(0))
    auto_lin, auto_db = open_s1(tmp_path / "lin", GRID).read()[0], open_s1(tmp_path / "db", GRID).read()[0]
    np.testing.assert_allclose(auto_lin, auto_db, atol=1e-4)
    forced = open_s1(tmp_path / "lin", GRID, units="db").read()[0]  # linear values taken as dB: not the same
    assert np.abs(forced[:, 0] - auto_db[:, 0]).min() > 1


def test_s1_warped_from_geographic_coordinates(tmp_path):
    """A linear field in longitude, stored in EPSG:4326, lands where the S2 pixel centres are."""
    wgs84 = CRS.from_epsg(4326)
    west, south, east, north = transform_bounds(UTM, wgs84, *GRID.bounds)
    lon0, lon1, lat0, lat1 = west - 0.001, east + 0.001, south - 0.001, north + 0.001
    width, height = 60, 60
    transform = Affine((lon1 - lon0) / width, 0, lon0, 0, -(lat1 - lat0) / height, lat1)
    lon = lon0 + (np.arange(width) + 0.5) * transform.a
    power = np.broadcast_to(0.01 + 0.1 * (lon - lon0) / (lon1 - lon0), (height, width)).astype(np.float32)
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "s1" / f"S1B_20200815_ASC_{pol}.tif", power, transform=transform, crs=wgs84)
    cube = open_s1(tmp_path / "s1", GRID)
    values, valid = cube.read(Window(5, 5, 10, 10))
    assert valid.all() and cube.orbits == ["ascending"]
    rows, cols = np.mgrid[5:15, 5:15]
    xs, ys = rasterio.transform.xy(GRID.transform, rows.ravel(), cols.ravel())
    centre_lon = np.asarray(transform_points(UTM, wgs84, xs, ys)[0]).reshape(10, 10)
    want = 10 * np.log10(0.01 + 0.1 * (centre_lon - lon0) / (lon1 - lon0))
    np.testing.assert_allclose(values[0, 0], want, atol=0.02)
    assert np.abs(values[0, 2]).max() < 1e-4  # VV == VH


def test_s1_orbits_merge_and_selection(tmp_path):
    half = db_field(0)
    half[:, :10] = np.nan  # the ascending pass covers the right half only
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "s1" / f"S1A_20200815T175000_ASC_{pol}.tif", half, nodata=np.nan)
        write_tif(tmp_path / "s1" / f"S1A_20200815T055000_DESC_{pol}.tif", db_field(3), nodata=np.nan)
    both = open_s1(tmp_path / "s1", GRID)
    assert both.dates.tolist() == [DAY] and both.orbits == ["both"]
    values, valid = both.read()
    assert valid.all()
    np.testing.assert_allclose(values[0, 0, :, 10:], db_field(0)[:, 10:], atol=1e-5)  # ascending first
    np.testing.assert_allclose(values[0, 0, :, :10], db_field(3)[:, :10], atol=1e-5)
    descending = open_s1(tmp_path / "s1", GRID, orbit="descending")
    assert descending.orbits == ["descending"]
    np.testing.assert_allclose(descending.read()[0][0, 0], db_field(3), atol=1e-5)
    ascending = open_s1(tmp_path / "s1", GRID, orbit="Ascending")
    assert not ascending.read()[1][0, :, :10].any()
    # an orbit given by a tag
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "tag" / f"s1_20200815_{pol}.tif", db_field(0), tags={"orbitProperties_pass": "DESCENDING"})
    assert open_s1(tmp_path / "tag", GRID, orbit="descending").orbits == ["descending"]


def test_s1_hh_hv_described_single_band_files(tmp_path):
    for pol in ("HH", "HV"):
        write_tif(tmp_path / "s1" / f"S1A_EW_20200815_{pol}.tif", db_field(0), descriptions=[pol])
    cube = open_s1(tmp_path / "s1", GRID)
    assert cube.band_names == ["HH", "HV", "HH/HV"] and len(cube.dates) == 1


def test_s1_asf_scale_letter(tmp_path):
    """ASF's p / d / a scale letter is believed over a sample: amplitude is squared to power."""
    power = (10 ** (db_field(0) / 10)).astype(np.float32)
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "amp" / asf_name("20200815T055130", pol, "a"), np.sqrt(power))
        write_tif(tmp_path / "pow" / asf_name("20200815T055130", pol, "p"), power)
    np.testing.assert_allclose(open_s1(tmp_path / "amp", GRID).read()[0][0, 0], db_field(0), atol=1e-4)
    np.testing.assert_allclose(open_s1(tmp_path / "pow", GRID).read()[0][0, 0], db_field(0), atol=1e-4)


def test_s1_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    write_tif(tmp_path / "empty" / "elevation.tif", db_field(0))
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "empty", GRID)
    check_error(err, DataFormatError, "no Sentinel-1 backscatter file")
    write_tif(tmp_path / "nodate" / "S1A_VV.tif", db_field(0))
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "nodate", GRID)
    check_error(err, DataFormatError, "cannot tell the date of Sentinel-1 file")
    assert "S1A_VV.tif" in str(err.value)
    write_tif(tmp_path / "novh" / "s1_20200815_VV.tif", db_field(0))
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "novh", GRID)
    check_error(err, DataFormatError, "no VH")
    far = Affine(10, 0, X0 + 1e5, 0, -10, Y0)
    for pol in ("VV", "VH"):
        write_tif(tmp_path / "far" / f"s1_20200815_{pol}.tif", db_field(0), transform=far)
        write_tif(tmp_path / "local" / f"s1_20200815_{pol}.tif", db_field(0), crs=LOCAL)
        write_tif(tmp_path / "unknown" / f"s1_20200815_{pol}.tif", db_field(0))
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "far", GRID)
    check_error(err, DataContentError, "does not overlap the Sentinel-2 grid")
    assert "EPSG:32631" in str(err.value) and "500000.0" in str(err.value) and "400000.0" in str(err.value)
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "local", GRID)
    check_error(err, DataFormatError, "cannot transform")
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "unknown", GRID, date_range=(DAY + 1, DAY + 30))
    check_error(err, DataContentError, "in the date range 2020-08-16 to 2020-09-14 (it holds 2020-08-15 to 2020-08-15)")
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "unknown", GRID, orbit="ascending")
    check_error(err, ConfigError, "cannot tell the orbit direction")
    with pytest.raises(SitsError) as err:
        open_s1(tmp_path / "unknown", GRID, units="decibel")
    check_error(err, ConfigError, "choose auto, linear, db")


# ----------------------------------------------------------------------------------------- PlanetScope
PS_RES = 3.0
PS_ORIGIN = (X0 - 1.0, Y0 + 2.0)  # a 3 m grid that is not aligned with the 10 m one
PS_SIDE = 70  # 210 m: covers the 200 m grid


def write_scene(folder: Path, scene: str, reflectance: np.ndarray, clear: np.ndarray | None = None, *,
                eight: bool = False, udm2: bool = True) -> None:
    """A PSScene (C, PS_SIDE, PS_SIDE) uint16 reflectance x 10000 and its UDM2 (clear where `clear`)."""
    transform = Affine(PS_RES, 0, PS_ORIGIN[0], 0, -PS_RES, PS_ORIGIN[1])
    kind = "AnalyticMS_SR_8b" if eight else "AnalyticMS_SR"
    write_tif(folder / f"{scene}_3B_{kind}_clip.tif", reflectance.astype(np.uint16), transform, nodata=0)
    if udm2:
        masks = np.zeros((8, PS_SIDE, PS_SIDE), np.uint8)
        masks[0] = np.ones((PS_SIDE, PS_SIDE), bool) if clear is None else clear
        write_tif(folder / f"{scene}_3B_udm2_clip.tif", masks, transform)


def constant(values) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.uint16)[:, None, None], (len(values), PS_SIDE, PS_SIDE)).copy()


def test_planetscope_fine_grid_and_a_bright_pixel_under_the_right_s2_pixel(tmp_path):
    image = constant([500, 600, 700, 3000])
    x, y = X0 + 10 * 6 + 5, Y0 - 10 * 13 - 5  # map point at the centre of S2 pixel (row 13, col 6)
    ps_row, ps_col = int((PS_ORIGIN[1] - y) // PS_RES), int((x - PS_ORIGIN[0]) // PS_RES)
    image[3, ps_row, ps_col] = 9000
    write_scene(tmp_path / "ps" / "order" / "PSScene", "20200815_101512_1035", image)
    cube = open_planetscope(tmp_path / "ps", GRID)
    assert cube.layout == "planetscope" and cube.factor == 3 and cube.band_names == ["blue", "green", "red", "nir"]
    assert cube.fine_grid.width == 3 * N and cube.fine_grid.transform.a == pytest.approx(10 / 3) and cube.grid == GRID
    assert cube.dates.tolist() == [DAY]
    values, valid = cube.read(Window(4, 10, 5, 6))  # S2 columns 4-8, rows 10-15
    assert values.shape == (1, 4, 18, 15) and valid.all()
    np.testing.assert_allclose(values[0, :3, 0, 0], [0.05, 0.06, 0.07], atol=1e-6)
    row, col = np.unravel_index(np.argmax(values[0, 3]), values[0, 3].shape)
    assert (row // 3 + 10, col // 3 + 4) == (13, 6)  # in the 3 x 3 block of S2 pixel (13, 6)
    # the fine pixel holding the bright pixel's centre is the brightest
    centre_x, centre_y = PS_ORIGIN[0] + (ps_col + 0.5) * PS_RES, PS_ORIGIN[1] - (ps_row + 0.5) * PS_RES
    fine_row, fine_col = rasterio.transform.rowcol(cube.fine_grid.transform, centre_x, centre_y)
    assert (row + 30, col + 12) == (fine_row, fine_col)


def test_planetscope_same_day_mosaic_and_band_sets(tmp_path):
    left = np.zeros((PS_SIDE, PS_SIDE), bool)
    left[:, :35] = True  # the earlier scene is clear on its left half only
    write_scene(tmp_path / "ps", "20200815_101512_1035", constant([100] * 8), left, eight=True)
    write_scene(tmp_path / "ps", "20200815_101530_1035", constant([200, 300, 400, 500]))
    write_scene(tmp_path / "ps", "20200820_101000_2201", constant([1000, 2000, 3000, 4000]))
    cube = open_planetscope(tmp_path / "ps", GRID, factor=2)
    assert cube.dates.tolist() == [DAY, DAY + 5] and cube.band_names == ["blue", "green", "red", "nir"]
    values, valid = cube.read()
    assert values.shape == (2, 4, 40, 40) and valid.all()
    edge = int((PS_ORIGIN[0] + 35 * PS_RES - X0) // 5)  # fine column (5 m) where the clear half ends
    np.testing.assert_allclose(values[0, :, :, :edge - 1], 0.01, atol=1e-6)   # earliest scene first
    np.testing.assert_allclose(values[0, 3, :, edge + 1:], 0.05, atol=1e-6)   # the later scene elsewhere
    np.testing.assert_allclose(values[1, :, 5, 5], [0.1, 0.2, 0.3, 0.4], atol=1e-6)
    eight = open_planetscope(tmp_path / "ps", GRID, date_range=(DAY, DAY))
    assert len(eight.dates) == 1 and eight.band_names == ["blue", "green", "red", "nir"]
    write_scene(tmp_path / "ps8", "20200815_101512_1035", constant(list(range(100, 900, 100))), eight=True)
    cube8 = open_planetscope(tmp_path / "ps8", GRID)
    assert cube8.band_names == ["coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"]
    np.testing.assert_allclose(cube8.read(Window(0, 0, 2, 2))[0][0, :, 1, 1], np.arange(0.01, 0.09, 0.01), atol=1e-6)


def test_planetscope_cloudy_pixels_are_invalid(tmp_path):
    clear = np.ones((PS_SIDE, PS_SIDE), bool)
    clear[:30] = False
    write_scene(tmp_path / "ps", "20200815_101512_1035", constant([500, 600, 700, 3000]), clear)
    values, valid = open_planetscope(tmp_path / "ps", GRID).read()
    assert not valid[0, :25].any() and valid[0, 30:].all()
    assert (values[0][:, ~valid[0]] == 0).all()


def test_planetscope_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SitsError) as err:
        open_planetscope(tmp_path / "empty", GRID)
    check_error(err, DataFormatError, "no PlanetScope scene")
    write_scene(tmp_path / "noudm", "20200815_101512_1035", constant([1, 2, 3, 4]), udm2=False)
    with pytest.raises(SitsError) as err:
        open_planetscope(tmp_path / "noudm", GRID)
    check_error(err, DataFormatError, "20200815_101512_1035_3B_udm2_clip.tif")
    write_scene(tmp_path / "ok", "20200815_101512_1035", constant([1, 2, 3, 4]))
    with pytest.raises(SitsError) as err:
        open_planetscope(tmp_path / "ok", Grid(UTM, Affine(10, 0, X0 + 5000, 0, -10, Y0), N, N))
    check_error(err, DataContentError, "does not overlap the Sentinel-2 grid")
    with pytest.raises(SitsError) as err:
        open_planetscope(tmp_path / "ok", GRID, date_range=(DAY - 30, DAY - 1))
    check_error(err, DataContentError, "in the date range 2020-07-16 to 2020-08-14")
    with pytest.raises(SitsError) as err:
        open_planetscope(tmp_path / "ok", GRID, factor=0)
    check_error(err, ConfigError, "factor")


# ----------------------------------------------------------------------------------------- VHR
VHR_N = 4  # S2 pixels per side of the VHR tests' grid
VHR_GRID = Grid(UTM, Affine(10, 0, X0, 0, -10, Y0), VHR_N, VHR_N)


def test_vhr_single_file_read_as_stored_and_averaged(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (3, 80, 80), dtype=np.uint8)  # 0.5 m RGB over the 40 m grid
    write_tif(tmp_path / "ortho_20200701.tif", image, Affine(0.5, 0, X0, 0, -0.5, Y0))
    vhr = open_vhr(tmp_path / "ortho_20200701.tif", VHR_GRID)
    assert vhr.layout == "vhr" and vhr.factor == 20 and vhr.band_names == ["R", "G", "B"]
    assert vhr.date == parse_date("2020-07-01") and vhr.fine_grid.transform.a == 0.5
    values, valid = vhr.read(Window(1, 2, 2, 1))
    assert values.shape == (3, 20, 40) and valid.all()
    np.testing.assert_allclose(values, image[:, 40:60, 20:60] / 255, atol=1e-7)
    coarse = open_vhr(tmp_path / "ortho_20200701.tif", VHR_GRID, resolution=1.0)
    assert coarse.factor == 10
    mean = image.astype(np.float64).reshape(3, 40, 2, 40, 2).mean(axis=(2, 4)) / 255
    np.testing.assert_allclose(coarse.read()[0], mean, atol=1e-6)


def test_vhr_folder_of_tiles(tmp_path):
    names = ["red", "green", "blue", "nir"]
    west, east = np.full((4, 80, 40), 1200, np.uint16), np.full((4, 80, 40), 2400, np.uint16)
    west[:, 0, 0] = 0  # no-data
    write_tif(tmp_path / "tiles" / "a" / "tile_0_0.tif", west, Affine(0.5, 0, X0, 0, -0.5, Y0), nodata=0,
              descriptions=names)
    write_tif(tmp_path / "tiles" / "b" / "tile_0_1.tif", east, Affine(0.5, 0, X0 + 20, 0, -0.5, Y0), nodata=0,
              descriptions=names)
    vhr = open_vhr(tmp_path / "tiles", VHR_GRID, bands=["NIR", "red"])
    assert vhr.band_names == ["NIR", "red"] and vhr.factor == 20 and vhr.scale == 1e-4 and vhr.date is None
    values, valid = vhr.read()
    assert values.shape == (2, 80, 80) and valid.sum() == 80 * 80 - 1 and not valid[0, 0]
    np.testing.assert_allclose(values[:, 1:, :40], 0.12, atol=1e-6)
    np.testing.assert_allclose(values[:, :, 40:], 0.24, atol=1e-6)
    assert (values[:, 0, 0] == 0).all()
    np.testing.assert_allclose(vhr.read(Window(3, 0, 1, 1))[0], 0.24, atol=1e-6)  # one tile only


def test_vhr_bad_inputs(tmp_path):
    image = np.ones((3, 80, 80), np.uint8)
    write_tif(tmp_path / "rgb.tif", image, Affine(0.5, 0, X0, 0, -0.5, Y0))
    with pytest.raises(SitsError) as err:
        open_vhr(tmp_path / "rgb.tif", VHR_GRID, bands="R,G,B,NIR")
    check_error(err, DataFormatError, "4 VHR bands asked (R, G, B, NIR) but")
    write_tif(tmp_path / "named.tif", image, Affine(0.5, 0, X0, 0, -0.5, Y0), descriptions=["red", "green", "blue"])
    with pytest.raises(SitsError) as err:
        open_vhr(tmp_path / "named.tif", VHR_GRID, bands=["red", "nir"])
    check_error(err, ConfigError, "has no band nir (bands there: red, green, blue)")
    write_tif(tmp_path / "far.tif", image, Affine(0.5, 0, X0 + 1000, 0, -0.5, Y0))
    with pytest.raises(SitsError) as err:
        open_vhr(tmp_path / "far.tif", VHR_GRID)
    check_error(err, DataContentError, "does not overlap the Sentinel-2 grid")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(SitsError) as err:
        open_vhr(tmp_path / "broken.tif", VHR_GRID)
    check_error(err, DataFormatError, "cannot read raster")


# ----------------------------------------------------------------------------------------- S2 clouds
JP2 = {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES"}  # lossless, as ESA


def write_safe(root: Path, stamp: str, b02: np.ndarray, scl: np.ndarray, probability: np.ndarray | None) -> None:
    """A minimal SAFE: B02 (N x N, 10 m), SCL and, if given, MSK_CLDPRB (N/2 x N/2, 20 m)."""
    safe = root / f"S2B_MSIL2A_{stamp}_N0214_R008_T31TCJ_{stamp[:8]}T134220.SAFE"
    granule = safe / "GRANULE" / f"L2A_T31TCJ_A018000_{stamp}"
    (safe).mkdir(parents=True)
    (safe / "MTD_MSIL2A.xml").write_text("<Level-2A_User_Product><BOA_QUANTIFICATION_VALUE>10000"
                                         "</BOA_QUANTIFICATION_VALUE></Level-2A_User_Product>")
    coarse = Affine(20, 0, X0, 0, -20, Y0)
    write_tif(granule / "IMG_DATA" / "R10m" / f"T31TCJ_{stamp}_B02_10m.jp2", b02, **JP2)
    write_tif(granule / "IMG_DATA" / "R20m" / f"T31TCJ_{stamp}_SCL_20m.jp2", scl, coarse, **JP2)
    if probability is not None:
        write_tif(granule / "QI_DATA" / "MSK_CLDPRB_20m.jp2", probability, coarse, **JP2)


def test_cloud_levels_from_probability_and_scl_fallback_and_keep_cloudy(tmp_path):
    b02 = np.full((N, N), 1500, np.uint16)
    b02[0, :] = 0  # no data
    scl = np.full((N // 2, N // 2), 4, np.uint8)
    scl[5:, :] = 9  # cloud high probability on the lower half
    scl[5:, 8:] = 3  # cloud shadow
    probability = (np.arange(N * N // 4).reshape(N // 2, N // 2) % 101).astype(np.uint8)
    write_safe(tmp_path / "l2a", "20200815T103629", b02, scl, probability)
    write_safe(tmp_path / "l2a", "20200820T103631", b02, scl, None)
    cube = open_source(tmp_path / "l2a", bands=["B02"])
    assert cube.cloud_source == "MSK_CLDPRB+SCL" and not cube.keep_cloudy
    levels = cube.read_cloud()
    assert levels.dtype == np.uint8 and levels.shape == (2, N, N)
    up = np.kron(probability.astype(int), np.ones((2, 2), int))  # 20 m -> 10 m, nearest
    np.testing.assert_array_equal(levels[0], np.rint(up * 31 / 100))
    want = np.kron(np.where(scl == 9, 31, np.where(scl == 3, 10, 0)), np.ones((2, 2), int))
    np.testing.assert_array_equal(levels[1], want)
    values, valid = cube.read()
    cloudy = np.kron(scl == 9, np.ones((2, 2), bool))
    assert not valid[:, cloudy].any() and (values[:, 0][:, cloudy] == 0).all()
    kept = open_source(tmp_path / "l2a", bands=["B02"], keep_cloudy=True)
    kept_values, kept_valid = kept.read()
    np.testing.assert_array_equal(kept_valid, valid)
    np.testing.assert_allclose(kept_values[:, 0][:, cloudy], 0.15)  # reflectance under the clouds
    assert (kept_values[:, 0, 0] == 0).all()  # no data stays 0
    np.testing.assert_array_equal(kept_values[:, 0][valid], values[:, 0][valid])
    together = kept.read_with_cloud(Window(10, 0, 5, 13), [0])
    assert together[2][0, 0].any()  # the no-data row has a cloud probability
    np.testing.assert_array_equal(together[2], levels[:1, 0:13, 10:15])


def test_same_day_merge_keeps_the_first_clear_else_the_first_cloudy_observation(tmp_path):
    """Two acquisitions of one day (generic layout with SCL): pixel 0 clear in the second only,
    pixel 1 cloudy in both, pixel 2 clear in both."""
    for stamp, value, classes in (("20200815T100000", 1000, [8, 8, 4]), ("20200815T110000", 2000, [4, 9, 4])):
        write_tif(tmp_path / "ts" / f"{stamp}_B02.tif", np.full((1, 3), value, np.uint16))
        write_tif(tmp_path / "ts" / f"{stamp}_SCL.tif", np.array([classes], np.uint8))
    default = open_source(tmp_path / "ts")
    kept = open_source(tmp_path / "ts", keep_cloudy=True)
    assert default.cloud_source == "SCL" and len(default.dates) == 1
    values, valid = default.read()
    assert valid[0, 0].tolist() == [True, False, True]
    np.testing.assert_allclose(values[0, 0, 0], [0.2, 0, 0.1])
    kept_values, kept_valid, levels = kept.read_with_cloud()
    assert kept_valid[0, 0].tolist() == [True, False, True]
    np.testing.assert_allclose(kept_values[0, 0, 0], [0.2, 0.1, 0.1])
    assert levels[0, 0].tolist() == [0, 20, 0] and default.read_cloud()[0, 0].tolist() == [0, 20, 0]


def test_keep_cloudy_on_a_stack_and_without_cloud_information(tmp_path):
    layers = np.array([[[500, 600]], [[4, 9]], [[700, 800]], [[8, 4]]], np.uint16)
    write_tif(tmp_path / "stack.tif", layers, descriptions=["2020-08-15 B02", "2020-08-15 SCL", "2020-08-25 B02",
                                                            "2020-08-25 SCL"])
    cube = open_source(tmp_path / "stack.tif", keep_cloudy=True)
    values, valid = cube.read()
    assert cube.cloud_source == "SCL" and valid[:, 0].tolist() == [[True, False], [False, True]]
    np.testing.assert_allclose(values[:, 0, 0], [[0.05, 0.06], [0.07, 0.08]])
    assert cube.read_cloud()[:, 0].tolist() == [[0, 31], [20, 0]]
    np.testing.assert_allclose(open_source(tmp_path / "stack.tif").read()[0][:, 0, 0], [[0.05, 0], [0, 0.08]])
    write_tif(tmp_path / "plain" / "20200815_B02.tif", np.full((2, 2), 500, np.uint16))
    with pytest.raises(SitsError) as err:
        open_source(tmp_path / "plain", keep_cloudy=True)
    check_error(err, ConfigError, "--keep-cloudy needs cloud information")
    assert open_source(tmp_path / "plain").cloud_source is None
    with pytest.raises(SitsError) as err:
        open_source(tmp_path / "plain").read_cloud()
    check_error(err, ConfigError, "cloud levels need cloud information")


def test_cloud_level_tables():
    assert cloud_level(np.array([0, 50, 100, 120]), "probability").tolist() == [0, 16, 31, 31]
    assert cloud_level(np.arange(12), "scl").tolist() == [0, 0, 0, 10, 0, 0, 0, 0, 20, 31, 16, 0]
    # MAJA CLM: clear, clouds (bits 0-2), thinnest clouds, shadows (bits 0 and 5), high clouds
    assert cloud_level(np.array([0, 0b111, 0b10000, 0b100001, 0b10000000]), "clm_bits").tolist() == [0, 31, 16, 10, 16]
    assert cloud_level(np.array([0, 1, 255]), "binary").tolist() == [0, 31, 31]
