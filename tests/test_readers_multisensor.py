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
              tags=None, driver="GTiff") -> Path:
    """Write (C, h, w) or (h, w) `data` as a raster."""
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, text)
        if tags:
            ds.update_tags(**tags)
    return path


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


def asf_name(stamp: str, pol: str) -> str:
    return f"S1A_IW_{stamp}_DVP_RTC10_G_gpuned_1A2B_{pol}.tif"


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


def test_s1_hh_hv(tmp_path):
    for pol in ("HH", "HV"):
        write_tif(tmp_path / "s1" / f"S1A_EW_20200815_{pol}.tif", db_field(0))
    assert open_s1(tmp_path / "s1", GRID).band_names == ["HH", "HV", "HH/HV"]


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
        write_tif(tmp_path / "local" / f"s1_20200815_{pol}.tif", db_field(0),
                  crs=CRS.from_wkt('LOCAL_CS["arbitrary",LOCAL_DATUM["d",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'))
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
