"""Dataset recipes: sample tables (long, wide), TimeSen2Crop, SITS-BERT CSV, and `prepare s2` on
real Sentinel-2 NDVI. Fixtures are written here; real data are read in place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.transform import rowcol

from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.data.prepared import SCALE, open_prepared
from sitscli.data.recipes.sitsbert_csv import prepare_sitsbert_csv
from sitscli.data.recipes.table import prepare_table
from sitscli.data.recipes.timesen2crop import BANDS as TS2C_BANDS
from sitscli.data.recipes.timesen2crop import prepare_timesen2crop
from sitscli.data.splits import TEST, TRAIN, UNLABELED, VAL
from sitscli.workflows.prepare import prepare

RONDONIA = "rondonia-landsat8/samples_long.csv"


def day(text: str) -> int:
    return int(to_days([np.datetime64(text)])[0])


def everything(path) -> dict[str, np.ndarray]:
    ds = open_prepared(path)
    return {**ds.read(0, ds.n_samples), "prepared": ds}


def only(tmp_path, *names) -> bool:
    """Nothing but the given inputs is left in tmp_path (no half-written output)."""
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# ------------------------------------------------------------------------------ long tables

def test_rondonia_long_table_through_the_workflow(real_data, tmp_path):
    csv = real_data / RONDONIA
    result = prepare("table", {"csv": str(csv), "out": str(tmp_path / "ron"), "seed": 1})
    d = everything(result.path)
    ds = d["prepared"]
    assert result.path.name == "ron.sits" and result.summary["samples"] == 160
    assert ds.class_names == ["Deforestation", "Forest", "NatNonForest", "Pasture"]
    assert ds.band_names == ["EVI", "NDVI"] and ds.n_time == 25
    assert d["valid"].all() and "4326" in ds.crs
    assert np.isfinite(d["xy"]).all()
    # each sample is its own group, so no sample is in two splits; every class in every split
    assert len(np.unique(d["group"])) == 160
    for code in (TRAIN, VAL, TEST):
        assert set(d["y"][d["split"] == code]) == {0, 1, 2, 3}
    # values, dates and coordinates of one sample match the CSV rows
    table = pd.read_csv(csv)
    i = int(np.flatnonzero(d["group"] == 7)[0])
    rows = table[table.sample_id == 7].sort_values("Index")
    np.testing.assert_array_equal(d["x"][i], np.rint(rows[["EVI", "NDVI"]].to_numpy() * SCALE))
    np.testing.assert_array_equal(d["date"][i], [day(t) for t in rows["Index"]])
    np.testing.assert_allclose(d["xy"][i], rows[["longitude", "latitude"]].iloc[0])
    assert ds.class_names[d["y"][i]] == rows["label"].iloc[0]


def test_table_config_yaml_prepares_the_same_dataset(real_data, tmp_path):
    first = prepare("table", {"csv": str(real_data / RONDONIA), "out": str(tmp_path / "a"), "seed": 2})
    again = prepare("table", {"out": str(tmp_path / "b")}, config_file=first.path / "config.yaml")
    assert open_prepared(again.path).fingerprint == open_prepared(first.path).fingerprint


def test_table_split_follows_the_seed(real_data, tmp_path):
    csv = real_data / RONDONIA
    splits = [everything(prepare_table(csv, tmp_path / f"s{i}", seed=seed))["split"] for i, seed in enumerate((0, 0, 5))]
    np.testing.assert_array_equal(splits[0], splits[1])
    assert (splits[0] != splits[2]).any()


LONG = """id;acquired;B04;B08;ndvi;crop;note
p2;2021-03-10;812;3012;0.57;maize;x
p1;2021-05-01;700;2500;0.56;wheat;x
p1;2021-01-15;650;2400;;wheat;x
p2;2021-02-01;800;3000;0.58;maize;x
p3;2021-02-01;500;2000;0.6;;x
p1;2021-03-20;600;2600;0.62;wheat;x
"""


def test_long_table_with_own_dates_per_sample(tmp_path):
    """Unsorted rows, semicolons, unaligned dates, x10000 and 0-1 bands, an empty cell and an empty label."""
    csv = tmp_path / "long.csv"
    csv.write_text(LONG)
    d = everything(prepare_table(csv, tmp_path / "long", id_col="id", label_col="crop", fractions=(1, 0, 0)))
    ds = d["prepared"]
    assert ds.band_names == ["B04", "B08", "ndvi"] and ds.class_names == ["maize", "wheat"]
    assert ds.n_time == 3 and np.isnan(d["xy"]).all() and ds.crs == ""
    # samples in order of first appearance: p2, p1, p3; ids are not integers, so groups are positions
    np.testing.assert_array_equal(d["group"], [0, 1, 2])
    np.testing.assert_array_equal(d["y"], [0, 1, -1])
    np.testing.assert_array_equal(d["split"], [TRAIN, TRAIN, UNLABELED])
    np.testing.assert_array_equal(d["date"][1], [day("2021-01-15"), day("2021-03-20"), day("2021-05-01")])
    np.testing.assert_array_equal(d["date"][0], [day("2021-02-01"), day("2021-03-10"), day("2021-03-10")])  # padding repeats
    np.testing.assert_array_equal(d["valid"], [[1, 1, 0], [0, 1, 1], [1, 0, 0]])  # p1's first date lacks ndvi
    np.testing.assert_array_equal(d["x"][1, 1], [600, 2600, 6200])                 # x10000 bands kept, ndvi scaled
    np.testing.assert_array_equal(d["x"][0, 0], [800, 3000, 5800])


def test_long_table_integer_dates_and_labels(tmp_path):
    """A GEE-style export: tab separated, YYYYMMDD integer dates, integer labels, a pandas index column."""
    csv = tmp_path / "gee.tsv"
    rows = [(i, f"s{s}", 20200105 + 10 * t, 1000 + s, label) for i, (s, t, label) in
            enumerate((s, t, label) for s, label in ((0, 10), (1, 2), (2, 1)) for t in range(2))]
    csv.write_text("\tpoint_id\tdate\tB8\tclass\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    d = everything(prepare_table(csv, tmp_path / "gee", fractions=(1, 0, 0)))
    ds = d["prepared"]
    assert ds.band_names == ["B8"] and ds.class_names == ["1", "2", "10"]
    np.testing.assert_array_equal(d["y"], [2, 1, 0])
    np.testing.assert_array_equal(d["date"][0], [day("2020-01-05"), day("2020-01-15")])
    np.testing.assert_array_equal(d["x"][:, 0, 0], [1000, 1001, 1002])


def write_wide(path, date_first=False):
    """Four samples, two bands (B02 x 10000, NDVI 0-1) on three dates, one empty cell."""
    dates = ["2020-01-05", "2020-02-04", "2020-03-05"]
    frame = {"sample_id": [10, 11, 12, 13], "class": ["b", "a", "b", "a"],
             "longitude": [5.0, 5.1, 5.2, 5.3], "latitude": [45.0, 45.1, 45.2, 45.3]}
    for t, date in enumerate(dates):
        compact = date.replace("-", "")
        frame[f"{compact}_B02" if date_first else f"B02_{date}"] = [1000 + 100 * i + t for i in range(4)]
        frame[f"{compact}_NDVI" if date_first else f"NDVI_{compact}"] = [0.1 * i + 0.01 * t for i in range(4)]
    table = pd.DataFrame(frame)
    table.loc[2, f"{dates[1].replace('-', '')}_NDVI" if date_first else "NDVI_20200204"] = np.nan
    table.to_csv(path, index=False)
    return [day(d) for d in dates]


@pytest.mark.parametrize("date_first", [False, True])
def test_wide_table(tmp_path, date_first):
    csv = tmp_path / "wide.csv"
    days = write_wide(csv, date_first)
    d = everything(prepare_table(csv, tmp_path / "wide", seed=3))
    ds = d["prepared"]
    assert ds.band_names == ["B02", "NDVI"] and ds.class_names == ["a", "b"] and ds.n_time == 3
    assert ds.path.joinpath("config.yaml").is_file()
    assert yaml.safe_load(ds.path.joinpath("config.yaml").read_text())["layout"] == "wide"
    np.testing.assert_array_equal(d["group"], [10, 11, 12, 13])
    np.testing.assert_array_equal(d["y"], [1, 0, 1, 0])
    np.testing.assert_array_equal(d["date"], np.tile(days, (4, 1)))
    np.testing.assert_allclose(d["xy"], [[5.0, 45.0], [5.1, 45.1], [5.2, 45.2], [5.3, 45.3]])
    np.testing.assert_array_equal(d["x"][3, 2], [1302, 3200])
    assert not d["valid"][2, 1] and d["valid"].sum() == 11


def test_wide_table_missing_a_band_date_column(tmp_path):
    csv = tmp_path / "wide.csv"
    write_wide(csv)
    pd.read_csv(csv).drop(columns=["B02_2020-02-04"]).to_csv(csv, index=False)
    with pytest.raises(DataFormatError, match="missing B02_2020-02-04"):
        prepare_table(csv, tmp_path / "w")
    assert only(tmp_path, "wide.csv")


# ------------------------------------------------------------------------------ bad tables

def test_missing_label_column_lists_the_columns(real_data, tmp_path):
    csv = tmp_path / "nolabel.csv"
    pd.read_csv(real_data / RONDONIA).drop(columns=["label"]).to_csv(csv, index=False)
    with pytest.raises(DataFormatError) as err:
        prepare_table(csv, tmp_path / "t")
    message = str(err.value)
    assert "no label column" in message and "--label-col" in message and "\n" not in message
    assert "columns: Index, EVI, NDVI, sample_id, longitude, latitude, start_date, end_date" in message
    with pytest.raises(ConfigError, match=r"no column 'crop' \(check the --\*-col options\); columns: Index"):
        prepare_table(csv, tmp_path / "t", label_col="crop")
    assert only(tmp_path, "nolabel.csv")


def test_non_numeric_band_names_column_and_line(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG)
    with pytest.raises(DataFormatError, match=r"line 2: column 'note' holds 'x', not a number: give numeric columns with --band-cols"):
        prepare_table(csv, tmp_path / "t", band_cols=["B04", "note"])
    assert only(tmp_path, "long.csv")


def test_duplicate_sample_and_date_names_both_lines(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG + "p1;2021-03-20;601;2601;0.61;wheat;x\n")
    with pytest.raises(DataFormatError, match=r"lines 7 and 8: sample p1 has two rows for date 2021-03-20"):
        prepare_table(csv, tmp_path / "t")
    assert only(tmp_path, "long.csv")


def test_bad_date_names_the_line(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG.replace("2021-03-10", "10/03/2021"))
    with pytest.raises(DataFormatError, match=r"line 2: column 'acquired' holds '10/03/2021', not a date"):
        prepare_table(csv, tmp_path / "t", date_col="acquired")
    csv.write_text(LONG.replace("acquired", "date").replace("2021-03-10", ""))
    with pytest.raises(DataFormatError, match=r"line 2: column 'date' holds an empty cell, not a date"):
        prepare_table(csv, tmp_path / "t")


def test_ragged_row_is_one_line(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG + "p4;2021-03-20;601;2601;0.61;wheat;x;extra;extra\n")
    with pytest.raises(DataFormatError, match="not a readable CSV table: .*line 8") as err:
        prepare_table(csv, tmp_path / "t")
    assert "\n" not in str(err.value)


def test_label_changing_within_a_sample(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG.replace("p1;2021-03-20;600;2600;0.62;wheat", "p1;2021-03-20;600;2600;0.62;maize"))
    with pytest.raises(DataContentError, match="sample p1 has label 'maize' here but 'wheat'"):
        prepare_table(csv, tmp_path / "t")


def test_nodata_marker_in_a_0_1_band(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(LONG.replace(";;wheat", ";-9999;wheat"))
    with pytest.raises(DataContentError, match="line 4: band ndvi value -9999 is outside the storable range"):
        prepare_table(csv, tmp_path / "t")


# ------------------------------------------------------------------------------ TimeSen2Crop

TILES = {"33TVN": ["20171005", "20170914"], "33UVP": ["2017-09-20", "2017-10-10", "2017-11-01"],
         "32TNS": ["20170915", "20171015"], "33TUM": ["20170916", "20171016", "20171116"]}
PIXELS = {"33TVN": {"Maize": 2, "Soy": 1}, "33UVP": {"Maize": 1, "Wheat": 2},
          "32TNS": {"Maize": 2, "Soy": 2}, "33TUM": {"Wheat": 1}}


def ts2c_value(tile: int, n: int, t: int, band: int) -> int:
    return 1000 * tile + 100 * n + 10 * t + band


def write_timesen2crop(root):
    """The published layout; the first tile's dates.csv is unsorted with a header, the second plain ISO."""
    for k, (tile, dates) in enumerate(TILES.items()):
        (root / tile).mkdir(parents=True)
        (root / tile / "dates.csv").write_text(("acquisition_date\n" if k == 0 else "") + "\n".join(dates) + "\n")
        for cls, count in PIXELS[tile].items():
            (root / tile / cls).mkdir()
            for n in range(count):
                lines = ["B2,B3,B4,B5,B6,B7,B8A,B11,B12,Label"]
                for t in range(len(dates)):
                    condition = (n + t) % 4   # 0 clear, 1 cloud, 2 shadow, 3 snow
                    lines.append(",".join(str(ts2c_value(k, n, t, b)) for b in range(9)) + f",{condition}")
                (root / tile / cls / f"{n}.csv").write_text("\n".join(lines) + "\n")


def test_timesen2crop_tiles_make_the_splits(tmp_path):
    write_timesen2crop(tmp_path / "ts2c")
    result = prepare("timesen2crop", {"root": str(tmp_path / "ts2c"), "out": str(tmp_path / "ts")})
    d = everything(result.path)
    ds = d["prepared"]
    assert ds.class_names == ["Maize", "Soy", "Wheat"] and ds.band_names == list(TS2C_BANDS) and ds.n_time == 3
    # tiles sorted: 32TNS (train), 33TUM (train), 33TVN (val), 33UVP (test); classes and files sorted in a tile
    np.testing.assert_array_equal(d["split"], [TRAIN] * 5 + [VAL] * 3 + [TEST] * 3)
    np.testing.assert_array_equal(d["y"], [0, 0, 1, 1, 2, 0, 0, 1, 0, 2, 2])
    assert len(np.unique(d["group"])) == 11
    # 33TVN, Maize/0.csv: dates sorted, its rows with them; condition != 0 invalid
    i, k, n = 5, 0, 0
    np.testing.assert_array_equal(d["date"][i], [day("2017-09-14"), day("2017-10-05"), day("2017-10-05")])
    np.testing.assert_array_equal(d["valid"][i], [False, True, False])   # file rows: 20171005 clear, 20170914 cloud; padding
    np.testing.assert_array_equal(d["x"][i, 1], [ts2c_value(k, n, 0, b) for b in range(9)])
    # every stored clear observation has condition 0
    assert d["valid"].sum() == sum(((n + t) % 4 == 0) for tile, dates in TILES.items()
                                   for c, count in PIXELS[tile].items() for n in range(count) for t in range(len(dates)))
    assert yaml.safe_load((result.path / "config.yaml").read_text())["source"] == "timesen2crop"


def test_timesen2crop_tile_without_dates(tmp_path):
    write_timesen2crop(tmp_path / "ts2c")
    (tmp_path / "ts2c" / "33TUM" / "dates.csv").unlink()
    with pytest.raises(DataFormatError, match="tile 33TUM has no dates.csv") as err:
        prepare_timesen2crop(tmp_path / "ts2c", tmp_path / "ts")
    assert "\n" not in str(err.value)
    assert only(tmp_path, "ts2c")


# ------------------------------------------------------------------------------ SITS-BERT CSV

def sitsbert_row(series: np.ndarray, doys, label=None) -> str:
    """series (T, 10) x 10000 -> band-major values, DOYs, label."""
    values = list(series.T.ravel()) + list(doys) + ([label] if label is not None else [])
    return ",".join(str(int(v)) for v in values)


def test_sitsbert_csv_values_and_dates(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 5000, (t, 10)) for t in (3, 5, 2))
    (tmp_path / "Train.csv").write_text(sitsbert_row(a, [200, 10, 100], 1) + "\n" + sitsbert_row(b, [5, 6, 7, 8, 9], 0) + "\n")
    (tmp_path / "Test.csv").write_text(sitsbert_row(c, [30, 31], 2) + "\n")
    (tmp_path / "Pre.csv").write_text(sitsbert_row(b, [1, 2, 3, 4, 5]) + "\n\n")
    result = prepare("sitsbert-csv", {"train": str(tmp_path / "Train.csv"), "test": str(tmp_path / "Test.csv"),
                                      "unlabeled": str(tmp_path / "Pre.csv"), "out": str(tmp_path / "sb"), "year": 2019})
    d = everything(result.path)
    ds = d["prepared"]
    assert ds.band_names[:3] == ["B02", "B03", "B04"] and ds.band_names[-3:] == ["B8A", "B11", "B12"]
    assert ds.class_names == ["0", "1", "2"] and ds.n_time == 5
    np.testing.assert_array_equal(d["y"], [1, 0, 2, -1])
    np.testing.assert_array_equal(d["split"], [TRAIN, TRAIN, TEST, UNLABELED])
    jan1 = day("2019-01-01")
    np.testing.assert_array_equal(d["date"][0], jan1 - 1 + np.array([10, 100, 200, 200, 200]))  # sorted, padded
    np.testing.assert_array_equal(d["x"][0, :3], a[[1, 2, 0]])
    np.testing.assert_array_equal(d["valid"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(d["x"][3], b)
    np.testing.assert_array_equal(d["date"][2, :2], [jan1 + 29, jan1 + 30])


def test_sitsbert_csv_bad_row_length_names_the_line(tmp_path):
    rng = np.random.default_rng(1)
    good = sitsbert_row(rng.integers(0, 5000, (3, 10)), [1, 2, 3], 0)
    (tmp_path / "Train.csv").write_text(good + "\n" + good + "\n" + good + ",7\n")
    with pytest.raises(DataFormatError, match=r"row 3 has 35 values; expected a multiple of 11") as err:
        prepare_sitsbert_csv(tmp_path / "Train.csv", tmp_path / "sb")
    assert "\n" not in str(err.value)
    assert only(tmp_path, "Train.csv")


# ------------------------------------------------------------------------------ real Sentinel-2

def test_slovenia_ndvi_through_prepare_s2(real_data, tmp_path):
    """68 NDVI acquisitions, two of them on 2015-12-08: the reader merges same-day acquisitions,
    so the dataset has 67 dates. Stored values are the GeoTIFF's at each sample's coordinates."""
    from sitscli.data.recipes.s2 import prepare_s2

    root = real_data / "slovenia-s2-ndvi"
    out = prepare_s2(root, tmp_path / "slo", labels=root / "lulc.gpkg", class_field="LULC_NAME", max_per_polygon=2, seed=0)
    d = everything(out)
    ds = d["prepared"]
    files = sorted((root / "ndvi").glob("*_NDVI.tif"))
    stamps = [f.name[:8] for f in files]
    assert len(files) == 68 and len(set(stamps)) == 67
    assert ds.band_names == ["NDVI"] and ds.n_time == 67 and "32633" in ds.crs
    assert ds.class_names == sorted(ds.class_names) and len(ds.class_names) == 5
    np.testing.assert_array_equal(d["date"][0], [day(f"{s[:4]}-{s[4:6]}-{s[6:]}") for s in sorted(set(stamps))])
    assert set(np.unique(d["split"])) == {TRAIN, VAL, TEST}
    for code in (VAL, TEST):   # polygons are groups: none in two splits
        assert not set(d["group"][d["split"] == code]) & set(d["group"][d["split"] == TRAIN])
    single = [f for f, s in zip(files, stamps) if stamps.count(s) == 1][::10]
    for f in single:
        t = sorted(set(stamps)).index(f.name[:8])
        with rasterio.open(f) as ndvi, rasterio.open(root / "cloud_mask" / f.name.replace("NDVI", "CLM")) as clm:
            rows, cols = rowcol(ndvi.transform, d["xy"][:, 0], d["xy"][:, 1])
            value = ndvi.read(1)[rows, cols]
            clear = (clm.read(1)[rows, cols] == 0) & np.isfinite(value)
        np.testing.assert_array_equal(d["valid"][:, t], clear)
        np.testing.assert_array_equal(d["x"][clear, t, 0], np.rint(value[clear] * SCALE))
