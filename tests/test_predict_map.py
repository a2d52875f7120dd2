"""predict-map: batches, the map's georeferencing and legend, probabilities, nodata, resume, bad input.

The classifier is a stand-in registered here ("test-ndvi"): the class follows the mean NDVI of a
pixel's clear observations, so the expected map is known without training anything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from torch import nn

from sitscli.core.errors import CheckpointError, ConfigError, DataContentError, OutputExistsError
from sitscli.data.batch import collate
from sitscli.data.cube import Cube, Grid
from sitscli.engine.checkpoint import save_model
from sitscli.mapping.predict import PixelClassifier, by_series_length, series_batch
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.workflows.predict_map import predict_map

CLASSES = ["water", "bare", "crop"]
COLORS = ["#1f78b4", "#b15928", "#33a02c"]
BANDS = ["B04", "B08"]
MAX_LEN = 6


class MeanNdvi(nn.Module):
    """logits = w * mean NDVI of the clear observations + b: water < 0 < bare < 0.4 < crop."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.head = nn.Linear(1, num_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-20.0], [0.0], [20.0]])[:num_classes])
            self.head.bias.copy_(torch.tensor([0.0, 4.0, -4.0])[:num_classes])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        red, nir = batch["values"][..., 0], batch["values"][..., 1]           # (B, L)
        assert batch["values"].shape[1] <= MAX_LEN                            # compact + max_len honoured
        ndvi = (nir - red) / (nir + red).clamp_min(1e-6)
        valid = batch["valid"].float()
        mean = (ndvi * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp_min(1)
        return self.head(mean)                                               # (B, K)


def _build(hparams: dict, info: DataInfo) -> nn.Module:
    return MeanNdvi(max(info.num_classes, 1))


register(ModelSpec(name="test-ndvi", build=_build, defaults={}, input="pixel", compact=True, max_len=MAX_LEN,
                   description="predict-map test stand-in"))


class ArrayCube(Cube):
    """An in-memory cube: three vertical stripes of water, bare soil and crop, with clouds."""

    def __init__(self, height: int = 40, width: int = 36, n_dates: int = 9, seed: int = 0, all_cloudy: bool = False):
        rng = np.random.default_rng(seed)
        col = np.arange(width)
        ndvi = np.select([col < width // 3, col < 2 * width // 3], [-0.3, 0.2], 0.7)       # (W,)
        red = 0.05 + 0.02 * rng.random((n_dates, height, width))
        nir = red * (1 + ndvi) / (1 - ndvi)
        self.values = np.stack([red, nir], axis=1).astype(np.float32)                    # (T, C, H, W)
        self.valid = rng.random((n_dates, height, width)) > 0.3                          # (T, H, W)
        self.valid[:, :4, :4] = False                                                    # never clear
        if all_cloudy:
            self.valid[:] = False
        self.values *= self.valid[:, None]
        self.dates = (18000 + 12 * np.arange(n_dates)).astype(np.int32)
        self.band_names = list(BANDS)
        self.grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 300000, 0, -10, 5000000), height, width)
        self.layout, self.tile = "memory", None
        self.expected = np.broadcast_to(np.select([col < width // 3, col < 2 * width // 3], [0, 1], 2), (height, width))

    def _read(self, window: Window, times: np.ndarray):
        rows, cols = window.toslices()
        return self.values[times][:, :, rows, cols], self.valid[times][:, rows, cols]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    info = DataInfo(band_names=list(BANDS), band_mean=[0.06, 0.2], band_std=[0.02, 0.1],
                    class_names=list(CLASSES), class_colors=list(COLORS))
    save_model(path, MeanNdvi(3), model_name="test-ndvi", hparams={}, info=info, task="classify")
    return path


def _map(run_dir: Path, out_dir: Path, cube: Cube | None = None, **kw) -> dict:
    return predict_map(cube or ArrayCube(), model=run_dir, out=out_dir / "map.tif", block=16, batch_size=100,
                       device="cpu", **kw)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize("compact,max_len", [(True, None), (True, 4), (True, 1), (False, None)])
def test_series_batch_equals_collate(compact, max_len):
    rng = np.random.default_rng(1)
    b, t, c = 50, 11, 3
    values = rng.random((b, t, c)).astype(np.float32)
    valid = rng.random((b, t)) > 0.4
    valid[0] = False                      # a pixel without any clear date
    dates = np.sort(rng.choice(np.arange(17000, 18000), t, replace=False)).astype(np.int32)
    xy = rng.random((b, 2))
    samples = [{"values": values[i] * valid[i, :, None], "dates": dates, "valid": valid[i], "y": -1, "xy": xy[i]}
               for i in range(b)]
    expected = collate(samples, compact=compact, max_len=max_len)
    got = series_batch(values * valid[..., None], valid, dates, xy, compact=compact, max_len=max_len)
    for key in ("values", "dates", "valid", "xy", "y"):
        assert torch.equal(got[key], expected[key]), key


class Recording(MeanNdvi):
    """MeanNdvi that keeps the clear-date counts (B,) of every batch it is given."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.batches: list[np.ndarray] = []

    def forward(self, batch):
        self.batches.append(batch["valid"].sum(1).numpy())
        return super().forward(batch)


def test_pixels_batched_by_length_come_back_to_their_places():
    cube = ArrayCube(height=12, width=12, n_dates=9, seed=3)
    values, valid = cube.values, cube.valid                                    # (T, C, H, W), (T, H, W)
    xy = np.zeros((12 * 12, 2))
    model = Recording(3).eval()
    probs = PixelClassifier(model, 3, compact=True, max_len=MAX_LEN, batch_size=10, device=torch.device("cpu")) \
        .predict_window(values, valid, cube.dates, xy)                         # (K, H, W)
    # each pixel alone: no batch, no padding, no sorting
    series, masks = values.reshape(9, 2, -1), valid.reshape(9, -1)
    expected = np.full((3, 12 * 12), np.nan, dtype=np.float32)
    with torch.no_grad():
        for p in np.flatnonzero(masks.any(axis=0)):
            one = series_batch(series[:, :, [p]].transpose(2, 0, 1), masks[:, [p]].T, cube.dates, xy[[p]],
                               compact=True, max_len=MAX_LEN)
            expected[:, p] = MeanNdvi(3)(one).softmax(-1)[0].numpy()
    np.testing.assert_allclose(probs.reshape(3, -1), expected, rtol=0, atol=1e-6)
    assert np.array_equal(np.isnan(probs[0]), ~valid.any(axis=0))
    counts = np.concatenate(model.batches)
    assert np.all(np.diff(counts) >= 0)                                        # batches of similar series, short first
    assert counts.size == masks.any(axis=0).sum()


def test_by_series_length_is_a_stable_sort_on_clear_dates():
    valid = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 1, 1], [0, 1, 0, 1, 0]], dtype=bool)    # (T, P) counts 2 2 0 3 1
    assert by_series_length(np.array([0, 1, 3, 4]), valid).tolist() == [4, 0, 1, 3]


def test_map_georeferencing_legend_and_probabilities(run_dir, tmp_path):
    cube = ArrayCube()
    summary = _map(run_dir, tmp_path, cube, probabilities=tmp_path / "p.tif", confidence=tmp_path / "c.tif")
    assert summary["blocks"] == 9 and summary["pixels_mapped"] == 40 * 36 - 16
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert ds.crs == cube.grid.crs and ds.transform == cube.grid.transform
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8" and ds.block_shapes[0] == (512, 512)
        assert ds.compression.value.lower() == "deflate"
        cmap = ds.colormap(1)
        assert [cmap[i][:3] for i in range(3)] == [(0x1f, 0x78, 0xb4), (0xb1, 0x59, 0x28), (0x33, 0xa0, 0x2c)]
        assert json.loads(ds.tags()["CLASS_NAMES"]) == CLASSES
        classes = ds.read(1)
    assert "<Category>crop</Category>" in (tmp_path / "map.tif.aux.xml").read_text()
    no_obs = ~cube.valid.any(axis=0)
    assert (classes[no_obs] == 255).all() and no_obs.sum() == 16
    assert (classes[~no_obs] == cube.expected[~no_obs]).all()

    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.descriptions == tuple(f"probability {n}" for n in CLASSES) and ds.scales == (0.01,) * 3
        probs = ds.read()
    total = probs[:, ~no_obs].astype(int).sum(axis=0)
    assert np.abs(total - 100).max() <= 2                      # percent, each rounded
    assert (probs[:, no_obs] == 255).all()
    assert (probs.argmax(axis=0)[~no_obs] == classes[~no_obs]).all()
    assert (_read(tmp_path / "c.tif")[0][~no_obs] == probs.max(axis=0)[~no_obs]).all()
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


def test_float_probabilities_sum_to_one(run_dir, tmp_path):
    cube = ArrayCube()
    _map(run_dir, tmp_path, cube, probabilities=tmp_path / "p.tif", prob_dtype="float32")
    probs = _read(tmp_path / "p.tif")
    no_obs = ~cube.valid.any(axis=0)
    np.testing.assert_allclose(probs[:, ~no_obs].sum(axis=0), 1.0, atol=1e-5)
    assert np.isnan(probs[:, no_obs]).all()


def test_cog_output_by_default(run_dir, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    _map(run_dir, tmp_path, confidence=tmp_path / "c.tif")
    for name in ("map.tif", "c.tif"):
        assert cog_validate(str(tmp_path / name))[:2] == (True, [])
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.colormap(1)[2][:3] == (0x33, 0xa0, 0x2c)


def test_resume_after_fault_equals_uninterrupted(run_dir, tmp_path):
    (tmp_path / "full").mkdir()
    _map(run_dir, tmp_path / "full", probabilities=tmp_path / "full" / "p.tif")

    def fault(done: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif", after_block=fault)
    assert not (tmp_path / "map.tif").exists() and (tmp_path / ".map.tif.partial").exists()
    summary = _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif", resume=True)
    assert summary["blocks_resumed"] == 4
    for name in ("map.tif", "p.tif"):
        np.testing.assert_array_equal(_read(tmp_path / name), _read(tmp_path / "full" / name))
    assert not (tmp_path / ".map.tif.partial").exists()


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import test_predict_map as t
from pathlib import Path
def kill(done):
    if done == 3:
        os.kill(os.getpid(), signal.SIGKILL)
t._map(Path({run!r}), Path({out!r}), after_block=kill)
"""


def test_resume_after_sigkill_equals_uninterrupted(run_dir, tmp_path):
    code = KILLED_RUN.format(tests=str(Path(__file__).parent), run=str(run_dir), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    progress = json.loads((tmp_path / ".map.tif.partial.progress.json").read_text())
    assert len(progress["blocks"]) == 3
    assert _map(run_dir, tmp_path, resume=True)["blocks_resumed"] == 3
    (tmp_path / "full").mkdir()
    _map(run_dir, tmp_path / "full")
    np.testing.assert_array_equal(_read(tmp_path / "map.tif"), _read(tmp_path / "full" / "map.tif"))


def test_resume_with_other_options_is_refused(run_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _map(run_dir, tmp_path, after_block=lambda done: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(ConfigError, match="block"):
        predict_map(ArrayCube(), model=run_dir, out=tmp_path / "map.tif", block=32, device="cpu", resume=True)


def test_no_valid_pixel_leaves_nothing(run_dir, tmp_path):
    with pytest.raises(DataContentError, match="no pixel"):
        _map(run_dir, tmp_path, ArrayCube(all_cloudy=True), confidence=tmp_path / "c.tif")
    assert list(tmp_path.iterdir()) == []


def test_pretraining_run_is_refused(tmp_path):
    info = DataInfo(band_names=list(BANDS), band_mean=[0.0, 0.0], band_std=[1.0, 1.0])
    save_model(tmp_path / "pre", MeanNdvi(1), model_name="test-ndvi", hparams={}, info=info, task="pretrain")
    with pytest.raises(CheckpointError, match="pre-training run"):
        _map(tmp_path / "pre", tmp_path)
    assert not (tmp_path / "map.tif").exists()


def test_run_for_other_bands_is_refused(tmp_path):
    info = DataInfo(band_names=["B04", "B11"], band_mean=[0.0, 0.0], band_std=[1.0, 1.0], class_names=list(CLASSES))
    save_model(tmp_path / "run", MeanNdvi(3), model_name="test-ndvi", hparams={}, info=info, task="classify")
    with pytest.raises(CheckpointError, match="B11"):
        _map(tmp_path / "run", tmp_path)


def test_reordered_bands_are_selected(run_dir, tmp_path):
    cube = ArrayCube()
    swapped = ArrayCube()
    swapped.values, swapped.band_names = cube.values[:, ::-1].copy(), BANDS[::-1]
    _map(run_dir, tmp_path, swapped)
    (tmp_path / "ref").mkdir()
    _map(run_dir, tmp_path / "ref", cube)
    np.testing.assert_array_equal(_read(tmp_path / "map.tif"), _read(tmp_path / "ref" / "map.tif"))


def test_existing_output_is_refused_unless_overwrite(run_dir, tmp_path):
    (tmp_path / "map.tif").write_text("keep me")
    with pytest.raises(OutputExistsError):
        _map(run_dir, tmp_path)
    assert (tmp_path / "map.tif").read_text() == "keep me"
    _map(run_dir, tmp_path, overwrite=True)
    assert _read(tmp_path / "map.tif").shape == (1, 40, 36)


def write_stack(cube: ArrayCube, path: Path) -> Path:
    """The cube as a GeoTIFF stack: T x C uint16 bands (reflectance x 10000, 0 = no data), date-major,
    described '2019-04-14 B04'."""
    from sitscli.core.dates import iso

    t, c, h, w = cube.values.shape
    data = np.rint(cube.values * 10000).astype(np.uint16).reshape(t * c, h, w)
    profile = {"driver": "GTiff", "width": w, "height": h, "count": t * c, "dtype": "uint16", "nodata": 0,
               "crs": cube.grid.crs, "transform": cube.grid.transform}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = tuple(f"{iso(d)} {b}" for d in cube.dates for b in cube.band_names)
    return path


CLI = """
import sys
sys.path.insert(0, {tests!r})
import test_predict_map  # registers the stand-in model
from sitscli.cli.app import main
sys.argv = ["sits"] + {args!r}
main()
"""


def _sits(*args: str) -> subprocess.CompletedProcess:
    code = CLI.format(tests=str(Path(__file__).parent), args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_maps_a_geotiff_stack(run_dir, tmp_path):
    cube = ArrayCube()
    stack = write_stack(cube, tmp_path / "stack.tif")
    proc = _sits("predict-map", stack, "--model", run_dir, "--out", tmp_path / "map.tif", "--confidence",
                 tmp_path / "c.tif", "--block", "16", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pixels_mapped"] == 40 * 36 - 16
    classes = _read(tmp_path / "map.tif")[0]
    observed = cube.valid.any(axis=0)
    assert (classes[observed] == cube.expected[observed]).all() and (classes[~observed] == 255).all()

    again = _sits("predict-map", stack, "--model", run_dir, "--out", tmp_path / "map.tif")
    assert again.returncode == 3
    assert again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr
