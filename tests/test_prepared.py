"""The prepared-dataset format: round trip, statistics, splits, atomic writes and bad stores."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError, InputNotFoundError, OutputExistsError
from sitscli.data.prepared import FORMAT_VERSION, SPLITS, PreparedWriter, open_prepared
from sitscli.data.splits import check_fractions, split_codes, split_groups


def random_block(rng, n, t=6, c=3, spatial=()):
    return dict(
        x=rng.uniform(0, 0.6, (n, t, c) + spatial).astype(np.float32),
        valid=rng.random((n, t) + spatial) > 0.3,
        date=np.sort(rng.integers(18000, 18400, (n, t)), axis=1),
        y=rng.integers(-1, 3, (n,) + spatial),
        split=rng.integers(0, 4, n),
        group=rng.integers(0, 1000, n),
        xy=rng.uniform(0, 1e5, (n, 2)),
    )


def write(path, blocks, n_time=6, c=3, **kw):
    kw.setdefault("chunk_samples", 8)
    with PreparedWriter(path, n_time=n_time, band_names=[f"B{i}" for i in range(c)], class_names=["wheat", "maize", "rape"],
                        class_colors=["#ff0000", "#00ff00", "#0000ff"], sensor="sentinel-2", source="test",
                        crs="EPSG:32631", config={"seed": 0}, **kw) as w:
        for b in blocks:
            w.append(**b)
    return w.path


def test_round_trip_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [random_block(rng, n) for n in (5, 13, 1, 9)]  # 28 samples, chunks of 8, uneven appends
    path = write(tmp_path / "ds", blocks)
    assert path.name == "ds.sits" and (path / "dataset.yaml").is_file() and (path / "config.yaml").is_file()
    p = open_prepared(tmp_path / "ds")
    assert p.n_samples == 28 and p.chunk_samples == 8 and p.ds["x"].dtype == np.int16
    got = p.read(0, 28)
    cat = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    expected_x = np.where(cat["valid"][:, :, None], np.rint(cat["x"] * 10000), 0)
    np.testing.assert_array_equal(got["x"], expected_x)
    np.testing.assert_array_equal(got["valid"], cat["valid"])
    np.testing.assert_array_equal(got["date"], cat["date"])
    np.testing.assert_array_equal(got["y"], cat["y"])
    np.testing.assert_array_equal(got["split"], cat["split"])
    np.testing.assert_array_equal(got["group"], cat["group"])
    np.testing.assert_allclose(got["xy"], cat["xy"])
    assert p.ds["split"].attrs["flag_meanings"] == "train val test unlabeled"
    assert p.ds["split"].attrs["flag_values"] == [0, 1, 2, 3]
    assert p.ds["xy"].attrs["crs"] == "EPSG:32631"
    np.testing.assert_array_equal(p.indices("train", "val"), np.flatnonzero(np.isin(cat["split"], [0, 1])))
    np.testing.assert_array_equal(p.indices("test", labeled_only=True),
                                  np.flatnonzero((cat["split"] == 2) & (cat["y"] >= 0)))


def test_band_stats_are_train_only_over_valid_observations(tmp_path):
    rng = np.random.default_rng(1)
    b = random_block(rng, 40)
    b["x"][b["split"] != 0] += 1.0  # non-train samples are far brighter: they must not leak in
    p = open_prepared(write(tmp_path / "ds", [b]))
    train = b["split"] == 0
    obs = np.rint(b["x"][train][b["valid"][train]] * 10000) / 10000  # (m, C)
    np.testing.assert_allclose(p.info().band_mean, obs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(p.info().band_std, obs.std(axis=0), atol=1e-5)
    assert p.ds.attrs["band_stats_from"] == "train"


def test_summary_and_yaml(tmp_path):
    rng = np.random.default_rng(2)
    b = random_block(rng, 30)
    p = open_prepared(write(tmp_path / "ds", [b]))
    s = p.summary()
    assert s["samples"] == 30 and s["time_steps"] == 6 and s["bands"] == ["B0", "B1", "B2"]
    assert sum(s["splits"].values()) == 30
    train = b["split"] == 0
    assert s["class_counts"]["train"].get("maize", 0) == int((b["y"][train] == 1).sum())
    seen = b["valid"].sum(axis=1)
    assert s["dates_per_sample"] == {"min": int(seen.min()), "median": float(np.median(seen)), "max": int(seen.max())}
    on_disk = yaml.safe_load((p.path / "dataset.yaml").read_text())
    assert on_disk["samples"] == 30 and on_disk["fingerprint"] == p.fingerprint
    assert p.info().class_colors == ["#ff0000", "#00ff00", "#0000ff"]


def test_short_series_are_padded_invalid(tmp_path):
    rng = np.random.default_rng(3)
    b = random_block(rng, 4, t=3)
    p = open_prepared(write(tmp_path / "ds", [b], n_time=5))
    got = p.read(0, 4)
    assert got["valid"].shape == (4, 5) and not got["valid"][:, 3:].any()
    np.testing.assert_array_equal(got["date"][:, 3:], np.repeat(b["date"][:, -1:], 2, axis=1))


def test_reflectance_is_clipped_to_int16(tmp_path):
    b = random_block(np.random.default_rng(4), 2)
    b["valid"][:] = True
    b["x"][0, 0, 0], b["x"][0, 0, 1] = 5.0, -5.0
    got = open_prepared(write(tmp_path / "ds", [b])).read(0, 2)["x"]
    assert got[0, 0, 0] == 32767 and got[0, 0, 1] == -32768


def test_patch_mode(tmp_path):
    rng = np.random.default_rng(5)
    b = random_block(rng, 6, spatial=(4, 4))
    path = write(tmp_path / "p", [b], mode="patch", patch_size=4)
    p = open_prepared(path)
    assert p.mode == "patch" and p.patch_size == 4 and p.ds["x"].shape == (6, 6, 3, 4, 4)
    assert p.ds["y"].shape == (6, 4, 4) and p.ds["valid"].shape == (6, 6, 4, 4)
    labeled = (b["y"].reshape(6, -1) >= 0).any(axis=1)
    np.testing.assert_array_equal(p.indices(labeled_only=True), np.flatnonzero(labeled))


def test_fingerprint_follows_content(tmp_path):
    blocks = [random_block(np.random.default_rng(6), 10)]
    a = open_prepared(write(tmp_path / "a", blocks)).fingerprint
    b = open_prepared(write(tmp_path / "b", blocks)).fingerprint
    blocks[0]["y"][0] = (blocks[0]["y"][0] + 2) % 3
    c = open_prepared(write(tmp_path / "c", blocks)).fingerprint
    assert a == b != c


def test_error_inside_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with PreparedWriter(tmp_path / "x", n_time=6, band_names=["a", "b", "c"], class_names=["k"], sensor="s",
                            source="t", chunk_samples=2) as w:
            w.append(**random_block(np.random.default_rng(7), 5) | {"y": np.zeros(5)})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_empty_and_existing_outputs(tmp_path):
    with pytest.raises(DataContentError, match="no samples"):
        write(tmp_path / "e", [])
    assert list(tmp_path.iterdir()) == []
    write(tmp_path / "d", [random_block(np.random.default_rng(8), 3)])
    with pytest.raises(OutputExistsError):
        write(tmp_path / "d", [random_block(np.random.default_rng(8), 3)])
    write(tmp_path / "d", [random_block(np.random.default_rng(9), 4)], overwrite=True)
    assert open_prepared(tmp_path / "d.sits").n_samples == 4


def test_open_errors(tmp_path):
    with pytest.raises(InputNotFoundError):
        open_prepared(tmp_path / "missing.sits")
    (tmp_path / "empty.sits").mkdir()
    with pytest.raises(DataFormatError, match="not a prepared dataset"):
        open_prepared(tmp_path / "empty.sits")
    path = write(tmp_path / "new", [random_block(np.random.default_rng(10), 3)])
    import zarr

    zarr.open_group(path / "data.zarr", mode="r+").attrs.update({"format_version": FORMAT_VERSION + 1, "sitscli_version": "9.0"})
    with pytest.raises(DataFormatError, match="newer"):
        open_prepared(path)


# -- splits ---------------------------------------------------------------------------------------
def test_split_groups_stratified_deterministic_and_never_cut():
    rng = np.random.default_rng(11)
    groups = np.arange(200)
    labels = rng.integers(0, 4, 200)
    labels[:5] = -1
    a = split_groups(groups, labels, seed=3)
    assert a == split_groups(groups, labels, seed=3) and a != split_groups(groups, labels, seed=4)
    assert all(a[g] == 3 for g in range(5))
    for cls in range(4):
        members = groups[labels == cls]
        share = np.bincount([a[g] for g in members], minlength=3)[:3] / len(members)
        np.testing.assert_allclose(share, (0.7, 0.15, 0.15), atol=0.05)
    # per-sample input: many samples per group, every sample of a group in one split
    sample_group = rng.integers(0, 50, 2000)
    group_class = rng.integers(0, 3, 50)
    mapping = split_groups(sample_group, group_class[sample_group], seed=0)
    codes = split_codes(sample_group, mapping)
    for g in np.unique(sample_group):
        assert len(np.unique(codes[sample_group == g])) == 1


def test_small_classes_reach_train_and_every_split():
    labels = np.array([0, 1, 1, 2, 2, 2])
    out = split_groups(np.arange(6), labels, seed=0)
    assert out[0] == 0                                          # one group: train
    assert out[1] == out[2] == 0                                # two groups: both train (0.3 + 0.3 rounds to 0)
    assert sorted(out[g] for g in (3, 4, 5)) == [0, 1, 2]       # three groups: one per split


def test_split_errors():
    with pytest.raises(ConfigError):
        check_fractions((0.5, 0.2, 0.2))
    with pytest.raises(DataContentError, match="several classes"):
        split_groups(np.array([1, 1]), np.array([0, 1]))
    assert SPLITS == ("train", "val", "test", "unlabeled")
