"""Multi-sensor prepared datasets: each sensor on its own time axis, its own statistics and validity;
cloud levels kept beside Sentinel-2; tile multi-labels; the torch side and the model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.data.batch import collate
from sitscli.data.modalities import Modality, parse_modalities
from sitscli.data.prepared import PreparedWriter, open_prepared
from sitscli.data.torchdata import SeriesDataset
from sitscli.models.registry import ModelSpec

CLASSES = ["wheat", "maize", "rape"]


def modalities(patch: int | None = None) -> list[Modality]:
    p = patch or 1
    return [
        Modality("s1", ("VV", "VH", "VV/VH"), 5, (p, p) if patch else (), 10.0, "s1/"),
        Modality("planetscope", ("blue", "green", "red", "nir"), 7, (3 * p, 3 * p), 10 / 3, "ps/"),
        Modality("vhr", ("R", "G", "B", "NIR"), 0, (10 * p, 10 * p), 1.0, "vhr.tif"),
    ]


def block(rng, n, mods, t=6, patch=None, split=None):
    spatial = (patch, patch) if patch else ()
    out = dict(
        x=rng.uniform(0, 0.6, (n, t, 3) + spatial).astype(np.float32),
        valid=rng.random((n, t) + spatial) > 0.3,
        date=np.arange(18000, 18000 + 10 * t, 10),
        y=rng.integers(-1, 3, (n,) + spatial),
        split=rng.integers(0, 4, n) if split is None else np.full(n, split),
        group=np.arange(n),
        xy=rng.uniform(0, 1e5, (n, 2)),
        cloud=rng.integers(0, 32, (n, t) + spatial).astype(np.uint8),
        others={},
    )
    for m in mods:
        low, high = (-25.0, 0.0) if m.name == "s1" else (0.0, 0.5)
        x = rng.uniform(low, high, (n, *m.sample_shape())).astype(np.float32)
        valid = rng.random(x.shape[:2] + x.shape[3:] if m.temporal else x.shape[:1] + x.shape[2:]) > 0.2
        part = {"x": x, "valid": valid}
        if m.temporal:
            part["date"] = np.arange(18001, 18001 + 3 * m.n_time, 3)
        out["others"][m.name] = part
    return out


def write(path, blocks, mods, patch=None, keep_cloudy=True, chunk_samples=8):
    with PreparedWriter(path, n_time=6, band_names=["B02", "B03", "B04"], class_names=CLASSES, sensor="sentinel-2",
                        source="test", mode="patch" if patch else "pixel", patch_size=patch, crs="EPSG:32631",
                        modalities=mods, keep_cloudy=keep_cloudy, cloud_source="test levels",
                        chunk_samples=chunk_samples) as w:
        for b in blocks:
            w.append(**b)
    return w.path


def test_pixel_round_trip_every_sensor_on_its_own_axes(tmp_path):
    rng = np.random.default_rng(0)
    mods = modalities()
    blocks = [block(rng, n, mods) for n in (5, 11)]
    p = open_prepared(write(tmp_path / "mm", blocks, mods))
    assert p.modalities == ("s2", "s1", "planetscope", "vhr")
    ds = p.ds
    assert ds["s1_x"].dims == ("sample", "s1_time", "s1_band")
    assert ds["ps_x"].dims == ("sample", "ps_time", "ps_band", "ps_row", "ps_col")
    assert ds["vhr_x"].dims == ("sample", "vhr_band", "vhr_row", "vhr_col")
    assert ds.sizes["s1_time"] == 5 and ds.sizes["ps_time"] == 7 and ds.sizes["time"] == 6
    got = p.read(0, 16, p.modalities)
    cat = {name: np.concatenate([b["others"][name]["x"] for b in blocks]) for name in ("s1", "planetscope", "vhr")}
    valid_s1 = np.concatenate([b["others"]["s1"]["valid"] for b in blocks])
    # dB x 100 in int16: a value reads back to 0.01 dB, zero where not clear
    np.testing.assert_array_equal(got["s1_x"], np.where(valid_s1[:, :, None], np.rint(cat["s1"] * 100), 0))
    np.testing.assert_array_equal(got["s1_valid"], valid_s1)
    np.testing.assert_array_equal(got["s1_date"][3], np.arange(18001, 18016, 3))
    valid_ps = np.concatenate([b["others"]["planetscope"]["valid"] for b in blocks])
    np.testing.assert_array_equal(got["ps_x"], np.where(valid_ps[:, :, None], np.rint(cat["planetscope"] * 1e4), 0))
    assert got["vhr_x"].shape == (16, 4, 10, 10) and "vhr_date" not in got
    # kept cloudy: Sentinel-2 values under clouds stay, with their cloud level beside them
    x = np.concatenate([b["x"] for b in blocks])
    np.testing.assert_array_equal(got["x"], np.rint(x * 1e4))
    np.testing.assert_array_equal(got["cloud"], np.concatenate([b["cloud"] for b in blocks]))


def test_statistics_and_summary_per_sensor(tmp_path):
    rng = np.random.default_rng(1)
    mods = modalities()
    b = block(rng, 40, mods)
    b["others"]["s1"]["x"][b["split"] != 0] += 20.0  # non-train samples must not leak into the statistics
    p = open_prepared(write(tmp_path / "mm", [b], mods))
    s1 = p.others["s1"]
    train = b["split"] == 0
    obs = np.rint(b["others"]["s1"]["x"][train][b["others"]["s1"]["valid"][train]] * 100) / 100
    np.testing.assert_allclose(s1["band_mean"], obs.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(s1["band_std"], obs.std(axis=0), atol=1e-4)
    assert s1["band_stats_from"] == "train" and s1["unit"] == "dB" and s1["scale"] == 100
    assert s1["clear_fraction"] == pytest.approx(b["others"]["s1"]["valid"].mean(), abs=1e-4)
    info = p.info()
    assert info.modalities["planetscope"]["band_names"] == ["blue", "green", "red", "nir"]
    summary = p.summary()["modalities"]
    assert summary["s1"]["dates"] == 5 and summary["s1"]["date_range"][0] == "2019-04-15"
    assert summary["vhr"]["resolution"] == 1.0 and summary["s2"]["keep_cloudy"] is True


def test_single_sensor_stores_are_unchanged(tmp_path):
    rng = np.random.default_rng(2)
    b = block(rng, 9, [])
    b.pop("others"), b.pop("cloud")
    p = open_prepared(write(tmp_path / "plain", [b], [], keep_cloudy=False))
    assert p.modalities == ("s2",) and not p.keep_cloudy
    assert "cloud" not in p.ds.data_vars and "modalities" not in p.summary()
    assert set(p.read(0, 9)) == {"x", "valid", "date", "y", "split", "group", "xy"}
    with pytest.raises(DataContentError, match="no s1 data.*--s1"):
        SeriesDataset(p, splits=("train", "val", "test", "unlabeled"), modalities=("s2", "s1"))


def test_patch_mode_tile_labels_and_shapes(tmp_path):
    rng = np.random.default_rng(3)
    mods = modalities(patch=4)
    b = block(rng, 3, mods, patch=4)
    b["y"][0] = -1
    b["y"][0, 0, 0], b["y"][0, 3, 3] = 2, 0
    p = open_prepared(write(tmp_path / "tiles", [b], mods, patch=4))
    assert p.ds["s1_x"].dims == ("sample", "s1_time", "s1_band", "py", "px")
    assert p.ds["ps_x"].shape == (3, 7, 4, 12, 12) and p.ds["vhr_x"].shape == (3, 4, 40, 40)
    np.testing.assert_array_equal(p.read(0, 1)["y_tile"][0], [True, False, True])


def test_dataset_and_collate_pad_each_sensor_on_its_own_time_axis(tmp_path):
    rng = np.random.default_rng(4)
    mods = modalities()
    path = write(tmp_path / "mm", [block(rng, 12, mods, split=0)], mods)
    data = SeriesDataset(path, splits=("train",), modalities=("s2", "s1", "vhr"))
    item = data[0]
    assert item["s1_values"].shape == (5, 3) and item["s1_dates"].shape == (5,)
    assert item["vhr_values"].shape == (4, 10, 10) and "ps_values" not in item
    assert item["s1_values"].min() < -1  # decoded to dB, not reflectance
    # two samples whose Sentinel-1 series differ in length: each sensor pads to its own longest
    short = dict(item, s1_values=item["s1_values"][:2], s1_valid=item["s1_valid"][:2], s1_dates=item["s1_dates"][:2])
    batch = collate([item, short])
    assert batch["values"].shape == (2, 6, 3) and batch["s1_values"].shape == (2, 5, 3)
    assert not batch["s1_valid"][1, 2:].any() and (batch["s1_dates"][1, 2:] == item["s1_dates"][1]).all()
    assert batch["cloud"].dtype == torch.uint8 and batch["vhr_values"].shape == (2, 4, 10, 10)
    streamed = SeriesDataset(path, splits=("train",), modalities=("s2", "s1", "vhr"), in_memory=False)
    np.testing.assert_array_equal(streamed[3]["s1_values"], data[3]["s1_values"])


def test_model_modalities_required_optional_and_chosen():
    spec = ModelSpec("m", build=lambda h, i: None, defaults={}, modalities=("s2", "planetscope"),
                     optional_modalities=("s1",))
    assert spec.data_modalities(("s2", "s1", "planetscope", "vhr")) == ("s2", "planetscope", "s1")
    assert spec.data_modalities(("s2", "planetscope")) == ("s2", "planetscope")
    with pytest.raises(DataContentError, match="needs planetscope.*--planetscope PATH"):
        spec.data_modalities(("s2", "s1"))
    with pytest.raises(ConfigError, match="cannot use vhr"):
        spec.data_modalities(("s2", "planetscope", "vhr"), chosen=("vhr",))
    assert parse_modalities("S2, s1") == ("s2", "s1")
    with pytest.raises(ConfigError, match="cannot be left out"):
        parse_modalities("s1")
