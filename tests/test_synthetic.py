"""Synthetic L2A demo data: every layout reads back with its dates, CRS and bands; bytes repeat."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from rasterio.crs import CRS
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, OutputExistsError
from sitscli.data.readers import detect_layout, open_source
from sitscli.data.readers.common import DEFAULT_S2_BANDS
from sitscli.data.synthetic import write_synthetic

SMALL = 32  # px; one agronomic year: ~45 delivered dates, a few seconds per layout


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The same scene (seed 5) written in each layout."""
    root = tmp_path_factory.mktemp("synthetic")
    return {layout: write_synthetic(root / layout, size=SMALL, seed=5, layout=layout, years=1)
            for layout in ("safe", "cog", "theia")}


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["safe", "cog", "theia"])
def test_each_layout_reads_back_with_dates_crs_and_bands(scenes, layout):
    scene = scenes[layout]
    assert detect_layout(scene.l2a) == layout
    cube = open_source(scene.l2a)
    np.testing.assert_array_equal(cube.dates, scene.dates)
    assert len(scene.dates) > 30 and np.all(np.diff(scene.dates) % 5 == 0)   # 5-day revisit, cloudy ones dropped
    assert cube.grid.crs == CRS.from_string("EPSG:32631") and cube.tile == "31TCJ"
    assert (cube.grid.width, cube.grid.height) == (SMALL, SMALL)
    assert cube.grid.transform.a == 10 and (cube.grid.transform.c, cube.grid.transform.f) == (360000.0, 4860000.0)
    assert cube.band_names == list(DEFAULT_S2_BANDS)
    values, valid = cube.read()
    assert values.shape == (len(scene.dates), 10, SMALL, SMALL)
    assert 0.2 < valid.mean() < 0.9                                            # partly cloudy, partly clear


def test_layouts_hold_the_same_reflectance_and_the_mask_hides_clouds(scenes):
    cubes = {layout: open_source(s.l2a) for layout, s in scenes.items()}
    reads = {layout: cube.read() for layout, cube in cubes.items()}
    safe_values, safe_valid = reads["safe"]
    for layout in ("cog", "theia"):
        values, valid = reads[layout]
        both = safe_valid & valid
        assert both.mean() > 0.2
        np.testing.assert_allclose(np.moveaxis(values, 1, -1)[both], np.moveaxis(safe_values, 1, -1)[both], atol=1.5e-4)
    # What the SCL leaves valid looks like land; what it masks is mostly bright cloud (some dark shadow).
    raw = open_source(scenes["safe"].l2a, bands=["B02"], valid_scl=tuple(range(12))).read()[0][:, 0]
    blue_clear, blue_masked = raw[safe_valid], raw[~safe_valid & (raw > 0)]
    assert np.median(blue_clear) < 0.12 and np.median(blue_masked) > 2 * np.median(blue_clear)


def test_parcels_carry_a_class_per_year_and_changes_list_the_rotated_ones(tmp_path):
    scene = write_synthetic(tmp_path / "two", size=SMALL, seed=2, layout="cog", years=2)
    parcels = gpd.read_file(scene.parcels)
    assert parcels.crs.to_epsg() == 32631 and {"class_y1", "class_y2"} <= set(parcels.columns)
    assert scene.class_field == "class_y1" and set(parcels["class_y1"]) <= set(scene.class_names)
    assert len(scene.years) == 2 and scene.years[0] == ("2021-10-01", "2022-09-30")
    changes = pd.read_csv(scene.changes)
    changed = parcels.loc[parcels["class_y1"] != parcels["class_y2"], "parcel_id"]
    assert sorted(changes["parcel_id"]) == sorted(changed) and len(changed) > 0
    # the parcels cover the image and nothing else
    assert np.allclose(parcels.total_bounds, [360000, 4860000 - 10 * SMALL, 360000 + 10 * SMALL, 4860000])


def test_same_seed_writes_the_same_bytes_with_any_number_of_workers(tmp_path, scenes):
    again = write_synthetic(tmp_path / "again", size=SMALL, seed=5, layout="safe", years=1, workers=2)
    hashes = file_hashes(again.root)
    assert len(hashes) > 13 * 30 and hashes == file_hashes(scenes["safe"].root)


def test_baseline_04_offset_reads_back_the_same_reflectance_as_baseline_02(tmp_path, scenes):
    # By default each product carries its date's baseline: 03.01 before 25 January 2022, then 04.00
    # with BOA_ADD_OFFSET -1000 in its metadata and DNs.
    new = scenes["safe"]
    products = sorted(p.name for p in new.l2a.iterdir())
    assert all(("_N0301_" in n) == (n[11:19] < "20220125") for n in products)
    offset = [n for n in products if "_N0400_" in n]
    assert len(offset) > 10
    assert '<BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET>' in (new.l2a / offset[0] / "MTD_MSIL2A.xml").read_text()
    old = write_synthetic(tmp_path / "n0214", size=SMALL, seed=5, years=1, baseline="02.14")
    assert all("_N0214_" in p.name for p in old.l2a.iterdir())
    assert "BOA_ADD_OFFSET" not in (old.l2a / sorted(p.name for p in old.l2a.iterdir())[-1] / "MTD_MSIL2A.xml").read_text()
    new_values, new_valid = open_source(new.l2a).read()
    old_values, old_valid = open_source(old.l2a).read()
    np.testing.assert_array_equal(new_valid, old_valid)
    np.testing.assert_allclose(new_values, old_values, atol=1e-6)


def test_zipped_safe_reads_back_the_same(tmp_path, scenes):
    scene = write_synthetic(tmp_path / "zip", size=SMALL, seed=5, years=1, zipped=True)
    assert all(p.name.endswith(".SAFE.zip") for p in scene.l2a.iterdir())
    window = Window(3, 5, 20, 17)
    for got, want in zip(open_source(scene.l2a).read(window), open_source(scenes["safe"].l2a).read(window)):
        np.testing.assert_array_equal(got, want)


def test_existing_output_is_refused_and_bad_options_leave_nothing(tmp_path, scenes):
    with pytest.raises(OutputExistsError):
        write_synthetic(scenes["cog"].root, size=SMALL, layout="cog", years=1)
    for bad in ({"layout": "landsat"}, {"size": 8}, {"years": 0}, {"difficulty": 2.0}, {"baseline": "4"},
                {"layout": "cog", "zipped": True}):
        with pytest.raises(ConfigError):
            write_synthetic(tmp_path / "bad", **{"size": SMALL, "years": 1, **bad})
    assert list(tmp_path.iterdir()) == []
