"""smooth and uncertainty: Bayesian smoothing of class probabilities, uncertainty rasters, sample suggestion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from _cli import sits
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.data.cube import Grid
from sitscli.mapping.geotiff import RasterSpec, write_raster
from sitscli.mapping.smooth import bayes_smooth, logits
from sitscli.mapping.uncertainty import uncertainty
from sitscli.workflows.smooth import smooth
from sitscli.workflows.uncertainty import uncertainty_map

CLASSES = ["wheat", "maize", "forest"]
GRID = Grid(CRS.from_epsg(32631), Affine(10, 0, 300000, 0, -10, 5000000), 60, 60)


def write_probs(path: Path, probs: np.ndarray, dtype: str = "uint8", names: list[str] | None = None) -> Path:
    """(K, H, W) probabilities (NaN = nodata) as predict-map writes them: uint8 percent or float32."""
    names = names or CLASSES[:probs.shape[0]]
    grid = Grid(GRID.crs, GRID.transform, probs.shape[1], probs.shape[2])
    if dtype == "uint8":
        spec = RasterSpec(count=len(names), dtype="uint8", nodata=255, scale=0.01,
                          descriptions=[f"probability {n}" for n in names])
        data = np.where(np.isnan(probs), 255, np.rint(np.nan_to_num(probs) * 100))
    else:
        spec = RasterSpec(count=len(names), dtype="float32", nodata=float("nan"),
                          descriptions=[f"probability {n}" for n in names])
        data = probs
    write_raster(path, data, grid, spec)
    return path


def two_parcels(seed: int = 0, noise: float = 0.08, size: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Left half wheat, right half maize, `noise` of the pixels (salt and pepper) won by another class.

    Returns probs (3, H, W) float32 and the true classes (H, W).
    """
    rng = np.random.default_rng(seed)
    truth = np.where(np.arange(size) < size // 2, 0, 1)[None].repeat(size, axis=0)       # (H, W)
    winner = truth.copy()
    flipped = rng.random(truth.shape) < noise
    winner[flipped] = (truth[flipped] + rng.integers(1, 3, flipped.sum())) % 3
    probs = np.full((3, size, size), 0.15, dtype=np.float32)
    np.put_along_axis(probs, truth[None], np.where(flipped, 0.3, 0.7)[None].astype(np.float32), axis=0)
    np.put_along_axis(probs, winner[None], np.where(flipped, 0.55, 0.7)[None].astype(np.float32), axis=0)
    return probs, truth


def isolated(classes: np.ndarray) -> int:
    """Interior pixels whose class none of their 8 neighbours has."""
    c = classes[1:-1, 1:-1]
    same = np.zeros(c.shape, dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                same |= classes[1 + dr:classes.shape[0] - 1 + dr, 1 + dc:classes.shape[1] - 1 + dc] == c
    return int((~same).sum())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_smoothing_removes_isolated_pixels_and_keeps_the_border(tmp_path):
    probs, truth = two_parcels()
    probs[:, :3, 50:] = np.nan                                                             # a nodata corner
    src = write_probs(tmp_path / "p.tif", probs)
    summary = smooth(src, out=tmp_path / "s.tif", class_map=tmp_path / "map.tif", block=16)
    before = np.nan_to_num(probs, nan=-1).argmax(axis=0)
    after = read(tmp_path / "map.tif")[0]
    valid = ~np.isnan(probs[0])
    assert summary["pixels_smoothed"] == valid.sum() and summary["window"] == 9 and summary["smoothness"] == [20.0] * 3
    assert isolated(np.where(valid, before, 9)) > 150 and isolated(np.where(valid, after, 9)) == 0
    distance_to_border = np.abs(np.arange(60) - 29.5)[None].repeat(60, axis=0)   # the border: between 29 and 30
    wrong = valid & (after != truth)
    assert not wrong[distance_to_border > 1].any()
    assert (after[~valid] == 255).all()

    with rasterio.open(tmp_path / "s.tif") as ds:
        assert ds.crs == GRID.crs and ds.transform == GRID.transform
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.scales == (0.01,) * 3
        assert ds.descriptions == tuple(f"probability {c}" for c in CLASSES)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        smoothed = ds.read()
    assert (smoothed[:, ~valid] == 255).all()
    assert np.abs(smoothed[:, valid].astype(int).sum(axis=0) - 100).max() <= 2
    assert (smoothed.argmax(axis=0)[valid] == after[valid]).all()
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert json.loads(ds.tags()["CLASS_NAMES"]) == CLASSES and len(ds.colormap(1)) >= 3
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


def test_posterior_is_the_papers_formula():
    """One class, no fraction: the posterior of the centre pixel from its 3 x 3 neighbourhood by hand."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1], size=(3, 3)).transpose(2, 0, 1).astype(np.float32)        # (2, 3, 3)
    sigma2 = np.array([10.0, 5.0])
    got = bayes_smooth(probs, window=3, neigh_fraction=1.0, smoothness=sigma2)[:, 1, 1]
    x = logits(probs).astype(np.float64)
    m, s2 = x.reshape(2, -1).mean(axis=1), x.reshape(2, -1).var(axis=1, ddof=1)
    posterior = (s2 * x[:, 1, 1] + sigma2 * m) / (s2 + sigma2)
    p = 1 / (1 + np.exp(-posterior))
    np.testing.assert_allclose(got, p / p.sum(), rtol=1e-5)


def test_neighbour_fraction_keeps_the_highest_logits():
    """neigh_fraction 0.5 of a 3 x 3 window: the 5 highest logits (of 9) make the prior."""
    probs = np.zeros((2, 5, 5), dtype=np.float32)
    probs[0] = np.linspace(0.05, 0.95, 25, dtype=np.float32).reshape(5, 5)
    probs[1] = 1 - probs[0]
    got = bayes_smooth(probs, window=3, neigh_fraction=0.5, smoothness=4.0)[0, 2, 2]
    x = logits(probs).astype(np.float64)
    top = np.sort(x[0, 1:4, 1:4].ravel())[::-1][:5]
    m0, s0 = top.mean(), top.var(ddof=1)
    top1 = np.sort(x[1, 1:4, 1:4].ravel())[::-1][:5]
    m1, s1 = top1.mean(), top1.var(ddof=1)
    post = np.array([(s0 * x[0, 2, 2] + 4 * m0) / (s0 + 4), (s1 * x[1, 2, 2] + 4 * m1) / (s1 + 4)])
    p = 1 / (1 + np.exp(-post))
    assert got == pytest.approx(p[0] / p.sum(), rel=1e-5)


def test_blockwise_equals_whole_image(tmp_path):
    probs, _ = two_parcels(seed=1, size=60)
    probs = probs[:, :45, :37].copy()
    probs[:, 20:24, 5:9] = np.nan
    src = write_probs(tmp_path / "p.tif", probs, dtype="float32")
    smooth(src, out=tmp_path / "blocks.tif", block=16, smoothness="10,20,30", cog=False)
    smooth(src, out=tmp_path / "whole.tif", block=64, smoothness="10,20,30", cog=False)
    blocks, whole = read(tmp_path / "blocks.tif"), read(tmp_path / "whole.tif")
    np.testing.assert_array_equal(blocks, whole)
    np.testing.assert_array_equal(whole, bayes_smooth(probs, smoothness=np.array([10.0, 20.0, 30.0])))
    assert np.isnan(blocks[:, 20:24, 5:9]).all()


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    probs, _ = two_parcels(seed=2, size=40)
    src = write_probs(tmp_path / "p.tif", probs)
    smooth(src, out=tmp_path / "full.tif", class_map=tmp_path / "full_map.tif", block=16)

    def fault(done: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        smooth(src, out=tmp_path / "s.tif", class_map=tmp_path / "map.tif", block=16, after_block=fault)
    assert not (tmp_path / "s.tif").exists() and (tmp_path / ".s.tif.partial").exists()
    with pytest.raises(ConfigError, match="window"):
        smooth(src, out=tmp_path / "s.tif", class_map=tmp_path / "map.tif", block=16, window=5, resume=True)
    with pytest.raises(KeyboardInterrupt):
        smooth(src, out=tmp_path / "s.tif", class_map=tmp_path / "map.tif", block=16, after_block=fault)
    summary = smooth(src, out=tmp_path / "s.tif", class_map=tmp_path / "map.tif", block=16, resume=True)
    assert summary["blocks_resumed"] == 4 and summary["blocks"] == 9
    np.testing.assert_array_equal(read(tmp_path / "s.tif"), read(tmp_path / "full.tif"))
    np.testing.assert_array_equal(read(tmp_path / "map.tif"), read(tmp_path / "full_map.tif"))
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


def test_uncertainty_types_against_hand_computed_values(tmp_path):
    pixels = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.45, 0.45, 0.1]], dtype=np.float32)
    probs = np.full((3, 1, 5), np.nan, dtype=np.float32)
    probs[:, 0, :4] = pixels.T
    src = write_probs(tmp_path / "p.tif", probs, dtype="float32")
    entropy_first = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3)
    entropy_last = -(2 * 0.45 * math.log(0.45) + 0.1 * math.log(0.1)) / math.log(3)
    expected = {
        "entropy": [entropy_first, 0.0, 1.0, entropy_last],
        "margin": [1 - (0.5 - 0.3), 0.0, 1.0, 1.0],
        "least": [0.5, 0.0, 2 / 3, 0.55],
    }
    for kind, values in expected.items():
        np.testing.assert_allclose(uncertainty(probs, kind)[0, :4], values, atol=1e-6)
        uncertainty_map(src, out=tmp_path / f"{kind}.tif", type=kind, dtype="float32")
        got = read(tmp_path / f"{kind}.tif")[0, 0]
        np.testing.assert_allclose(got[:4], values, atol=1e-6)
        assert np.isnan(got[4])
    summary = uncertainty_map(src, out=tmp_path / "u16.tif", type="entropy", block=16)
    with rasterio.open(tmp_path / "u16.tif") as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535 and ds.scales == (1e-4,)
        assert ds.crs == GRID.crs and "entropy" in ds.descriptions[0]
        got = ds.read(1)[0]
    assert list(got) == [round(entropy_first * 1e4), 0, 10000, round(entropy_last * 1e4), 65535]
    assert summary["pixels_measured"] == 4 and summary["samples"] is None


def test_uncertainty_resumes_but_not_with_suggestions(tmp_path):
    probs, _ = two_parcels(seed=4, size=40)
    src = write_probs(tmp_path / "p.tif", probs)
    uncertainty_map(src, out=tmp_path / "full.tif", block=16)
    with pytest.raises(KeyboardInterrupt):
        uncertainty_map(src, out=tmp_path / "u.tif", block=16, after_block=lambda done: done < 5 or _interrupt())
    with pytest.raises(ConfigError, match="--resume cannot suggest"):
        uncertainty_map(src, out=tmp_path / "u.tif", block=16, resume=True, suggest=3)
    summary = uncertainty_map(src, out=tmp_path / "u.tif", block=16, resume=True)
    assert summary["blocks_resumed"] == 5 and summary["mean_uncertainty"] is None
    np.testing.assert_array_equal(read(tmp_path / "u.tif"), read(tmp_path / "full.tif"))


def _interrupt():
    raise KeyboardInterrupt


def bumps(size: int = 60) -> np.ndarray:
    """Two classes; the second's probability has bumps (0.5 = a tie) at known pixels, else 0.05."""
    rows, cols = np.mgrid[0:size, 0:size]
    second = np.full((size, size), 0.05)
    for (r, c), height in {(10, 10): 0.5, (12, 14): 0.48, (10, 45): 0.4, (45, 30): 0.3, (50, 52): 0.2}.items():
        second = np.maximum(second, height * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 8))
    return np.stack([1 - second, second]).astype(np.float32)


def brute_force_greedy(unc: np.ndarray, n: int, distance_px: float) -> list[tuple[int, int]]:
    order = sorted(((-u, r, c) for (r, c), u in np.ndenumerate(unc) if np.isfinite(u)))
    chosen: list[tuple[int, int]] = []
    for _, r, c in order:
        if all(math.hypot(r - r2, c - c2) >= distance_px for r2, c2 in chosen):
            chosen.append((r, c))
            if len(chosen) == n:
                break
    return chosen


def test_suggested_samples_are_the_most_uncertain_places_apart(tmp_path):
    probs = bumps()
    probs[:, 30:34, :] = np.nan
    src = write_probs(tmp_path / "p.tif", probs, dtype="float32", names=["crop", "grass"])
    summary = uncertainty_map(src, out=tmp_path / "u.tif", type="margin", suggest=6, min_distance=100, block=16)
    points = gpd.read_file(tmp_path / "u_samples.gpkg")
    assert summary["samples"] == 6 and summary["outputs"]["samples"] == str(tmp_path / "u_samples.gpkg")
    assert points.crs == GRID.crs and list(points["rank"]) == [1, 2, 3, 4, 5, 6]
    assert [(r, c) for r, c in zip(points["row"], points["col"])][:4] == [(10, 10), (10, 45), (45, 30), (50, 52)]
    # the same as the greedy choice over every pixel of the whole raster
    unc = uncertainty(probs, "margin")
    assert list(zip(points["row"], points["col"])) == brute_force_greedy(unc, 6, 10)
    xy = np.stack([points.geometry.x, points.geometry.y], axis=1)
    gaps = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))[np.triu_indices(6, 1)]
    assert gaps.min() >= 100
    first = points.iloc[0]
    assert (first.geometry.x, first.geometry.y) == (300000 + 10.5 * 10, 5000000 - 10.5 * 10)
    assert first["uncertainty"] == pytest.approx(1.0) and {first["class_1"], first["class_2"]} == {"crop", "grass"}
    assert first["prob_1"] == pytest.approx(0.5) and first["prob_2"] == pytest.approx(0.5)
    third = points.iloc[2]
    assert (third["class_1"], third["prob_1"], third["class_2"], third["prob_2"]) == \
        ("crop", pytest.approx(0.7), "grass", pytest.approx(0.3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_wise_candidates_give_the_greedy_choice_over_every_pixel(seed):
    """On white-noise uncertainty (the hardest case for keeping few candidates per block)."""
    from rasterio.windows import Window

    from sitscli.mapping.predict import pixel_centres
    from sitscli.mapping.uncertainty import SampleSuggester

    unc = np.random.default_rng(seed).random((64, 64)).astype(np.float32)
    probs = np.stack([unc, 1 - unc])
    suggester = SampleSuggester(30, 50, GRID.transform)
    for row in range(0, 64, 16):
        for col in range(0, 64, 16):
            suggester.add(unc[row:row + 16, col:col + 16], probs[:, row:row + 16, col:col + 16],
                          pixel_centres(GRID.transform, Window(col, row, 16, 16)))
    assert [(c.row, c.col) for c in suggester.select()] == brute_force_greedy(unc, 30, 5)


def test_few_samples_fit_when_the_distance_is_large(tmp_path):
    src = write_probs(tmp_path / "p.tif", bumps(), dtype="float32", names=["crop", "grass"])
    summary = uncertainty_map(src, out=tmp_path / "u.tif", suggest=10, min_distance=450,
                              suggest_out=tmp_path / "pts.gpkg")
    points = gpd.read_file(tmp_path / "pts.gpkg")
    assert summary["samples"] == len(points) < 10
    assert (points["row"].iloc[0], points["col"].iloc[0]) == (10, 10)


def test_cli_on_the_probabilities_of_predict_map(tmp_path, monkeypatch, capsys):
    """predict-map's probability raster (the stand-in classifier of test_predict_map) through both commands."""
    from sitscli.engine.checkpoint import save_model
    from sitscli.models.registry import DataInfo
    from sitscli.workflows.predict_map import predict_map
    from test_predict_map import BANDS, COLORS, ArrayCube, MeanNdvi
    from test_predict_map import CLASSES as STRIPES

    info = DataInfo(band_names=list(BANDS), band_mean=[0.06, 0.2], band_std=[0.02, 0.1],
                    class_names=list(STRIPES), class_colors=list(COLORS))
    save_model(tmp_path / "run", MeanNdvi(3), model_name="test-ndvi", hparams={}, info=info, task="classify")
    cube = ArrayCube()
    predict_map(cube, model=tmp_path / "run", out=tmp_path / "map.tif", probabilities=tmp_path / "p.tif", block=16,
                device="cpu")
    code, out, err = sits(monkeypatch, capsys, "smooth", tmp_path / "p.tif", "--out", tmp_path / "s.tif",
                          "--class-map", tmp_path / "smap.tif", "--window", "5", "--smoothness", "10,20,30",
                          "--block", "16", "--no-cog", "--json")
    assert code == 0, err
    assert json.loads(out)["smoothness"] == [10.0, 20.0, 30.0]
    with rasterio.open(tmp_path / "smap.tif") as ds:
        classes = ds.read(1)
        assert [ds.colormap(1)[i][:3] for i in range(3)] == [(0x1f, 0x78, 0xb4), (0xb1, 0x59, 0x28), (0x33, 0xa0, 0x2c)]
        assert ds.tags()["SITS_MODEL"] == "test-ndvi" and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
    observed = cube.valid.any(axis=0)
    assert (classes[~observed] == 255).all()
    assert (classes[observed] == cube.expected[observed]).mean() > 0.95

    code, out, err = sits(monkeypatch, capsys, "uncertainty", tmp_path / "s.tif", "--out", tmp_path / "u.tif",
                          "--suggest", "3", "--type", "least")
    assert code == 0, err
    assert out.split() == ["uncertainty:", str(tmp_path / "u.tif"), "samples:", str(tmp_path / "u_samples.gpkg")]
    assert set(gpd.read_file(tmp_path / "u_samples.gpkg")["class_1"]) <= set(STRIPES)


def probs_file(tmp_path: Path) -> Path:
    probs, _ = two_parcels(size=20)
    return write_probs(tmp_path / "p.tif", probs)


@pytest.mark.parametrize("args,code,message", [
    (["smooth", "{map}", "--out", "{out}"], 1, "not a class-probability raster"),
    (["smooth", "{probs}", "--out", "{out}", "--window", "4"], 2, "--window 4"),
    (["smooth", "{probs}", "--out", "{out}", "--window", "1"], 2, "--window 1"),
    (["smooth", "{probs}", "--out", "{out}", "--smoothness", "0"], 2, "--smoothness 0"),
    (["smooth", "{probs}", "--out", "{out}", "--smoothness", "10,-2,5"], 2, "--smoothness"),
    (["smooth", "{probs}", "--out", "{out}", "--smoothness", "10,20"], 2, "3 comma-separated"),
    (["smooth", "{probs}", "--out", "{out}", "--neigh-fraction", "0"], 2, "--neigh-fraction"),
    (["smooth", "{probs}", "--out", "{existing}"], 3, "--overwrite"),
    (["uncertainty", "{map}", "--out", "{out}"], 1, "not a class-probability raster"),
    (["uncertainty", "{probs}", "--out", "{out}", "--type", "gini"], 2, "--type"),
    (["uncertainty", "{probs}", "--out", "{out}", "--suggest", "401"], 2, "only 400 pixels"),
    (["uncertainty", "{probs}", "--out", "{out}", "--suggest", "5", "--suggest-out", "{gpkg}"], 3, "--overwrite"),
    (["uncertainty", "{probs}", "--out", "{existing}"], 3, "--overwrite"),
])
def test_bad_inputs_give_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, args, code, message):
    probs = probs_file(tmp_path)
    class_map = tmp_path / "map.tif"
    write_raster(class_map, np.zeros((1, 20, 20), np.uint8), Grid(GRID.crs, GRID.transform, 20, 20),
                 RasterSpec(count=1, dtype="uint8", nodata=255, descriptions=["class"]))
    (tmp_path / "existing.tif").write_text("keep me")
    (tmp_path / "existing.gpkg").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    paths = {"probs": probs, "map": class_map, "out": tmp_path / "out.tif", "existing": tmp_path / "existing.tif",
             "gpkg": tmp_path / "existing.gpkg"}
    exit_code, out, err = sits(monkeypatch, capsys, *[a.format(**paths) for a in args])
    assert exit_code == code, err
    assert err.strip().count("\n") == 0 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "existing.tif").read_text() == "keep me"


def test_a_file_that_is_no_raster_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a raster")
    with pytest.raises(DataFormatError, match="not a raster"):
        smooth(tmp_path / "notes.txt", out=tmp_path / "s.tif")
    with pytest.raises(DataFormatError, match="not a raster"):
        uncertainty_map(tmp_path / "notes.txt", out=tmp_path / "u.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
