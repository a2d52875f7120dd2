"""change-detect and embed: gap filling, Otsu, ALISE over overlapping patches, grids, references, bad input.

Data: two GeoTIFF stacks ("year A" 2020, "year B" 2021, each with its own irregular dates and
clouds) of a 48 x 48 px area cut into 16 parcels of 12 x 12 px; each parcel follows one of three
phenologies, and a known half of the parcels changes phenology in year B.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box
from typer.testing import CliRunner

from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataContentError, OutputExistsError
from sitscli.engine.checkpoint import save_model
from sitscli.mapping.change import AlignedEncoder, otsu_threshold, patch_origins, ramp
from sitscli.mapping.gapfill import annual_grid, linear_gapfill
from sitscli.models.registry import DataInfo
from sitscli.workflows.change_detect import change_detect
from sitscli.workflows.embed import embed

BANDS = ["B02", "B03", "B04", "B08"]
SIZE, PARCEL = 48, 12
CRS_UTM = CRS.from_epsg(32631)
ORIGIN = (300000.0, 5000000.0)
TRANSFORM = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
PEAKS = (100, 180, 260)                         # day of year of each phenology's green peak
CHANGED = [1, 2, 4, 7, 8, 11, 13, 14]           # parcel ids (row-major, 4 x 4) that change phenology
TINY = {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "unet_widths": [8, 8, 16, 16], "n_q": 4, "d_emb": 16,
        "run_length": 12, "crop": 16}


def parcel_ids() -> np.ndarray:
    """(SIZE, SIZE) parcel id of each pixel, 0..15 row-major."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] // PARCEL
    return rows * (SIZE // PARCEL) + cols


def classes(year: int) -> np.ndarray:
    base = np.random.default_rng(7).integers(0, 3, 16)
    return np.where(np.isin(np.arange(16), CHANGED), (base + 1) % 3, base) if year == 1 else base


def series(year: int, n_dates: int = 26, seed: int = 0, corner_short: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(T, C, H, W) float32 reflectance (NaN = cloud) and (T,) dates of one year."""
    rng = np.random.default_rng(seed + 100 * year)
    start = int(np.datetime64(f"{2020 + year}-01-01", "D").astype(np.int64))
    doy = np.sort(rng.choice(np.arange(5, 360), n_dates, replace=False))
    peak = np.asarray(PEAKS)[classes(year)][parcel_ids()]                          # (H, W)
    green = np.exp(-0.5 * ((doy[:, None, None] - peak[None]) / 35.0) ** 2)          # (T, H, W)
    base = np.array([0.05, 0.07, 0.08, 0.15])[None, :, None, None]
    gain = np.array([-0.01, 0.03, -0.05, 0.35])[None, :, None, None]
    values = base + gain * green[:, None] + rng.normal(0, 0.01, (n_dates, 4, SIZE, SIZE))
    cloudy = rng.random((n_dates, SIZE, SIZE)) < 0.15
    if corner_short:
        cloudy[1:, :4, :4] = True                                                   # one valid date: no score
    values = np.where(cloudy[:, None], np.nan, values).astype(np.float32)
    return values, (start + doy).astype(np.int32)


def write_stack(path: Path, values: np.ndarray, dates: np.ndarray, transform: Affine = TRANSFORM,
                crs: CRS = CRS_UTM) -> Path:
    t, c, h, w = values.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=t * c, dtype="float32", nodata=np.nan,
                       crs=crs, transform=transform) as ds:
        ds.write(values.reshape(t * c, h, w))
        ds.descriptions = tuple(f"{iso(d)} {b}" for d in dates for b in BANDS)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("change")
    paths = {f"year{y}": write_stack(root / f"year{y}.tif", *series(y)) for y in (0, 1)}
    truth = np.isin(parcel_ids(), CHANGED).astype(np.uint8)
    paths["truth"] = root / "truth.tif"
    with rasterio.open(paths["truth"], "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8",
                       nodata=255, crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(truth[None])
    cells = [box(ORIGIN[0] + 10 * PARCEL * (i % 4), ORIGIN[1] - 10 * PARCEL * (i // 4 + 1),
                 ORIGIN[0] + 10 * PARCEL * (i % 4 + 1), ORIGIN[1] - 10 * PARCEL * (i // 4)) for i in range(16)]
    frame = gpd.GeoDataFrame({"crop": [f"pheno{c}" for c in classes(0)], "changed": [int(i in CHANGED) for i in range(16)],
                              "geometry": cells}, crs="EPSG:32631")
    paths["parcels"] = root / "parcels.gpkg"
    frame.to_file(paths["parcels"])
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def alise_run(data) -> Path:
    """A tiny ALISE pre-trained two epochs on year A's 16 x 16 patches."""
    from sitscli.data.readers import open_source
    from sitscli.data.recipes.s2 import prepare_cube
    from sitscli.workflows.pretrain import pretrain

    prepared = prepare_cube(open_source(data["year0"]), data["root"] / "a.sits", labels=data["parcels"],
                            class_field="crop", patch_size=16, fractions=(0.6, 0.2, 0.2))
    run = data["root"] / "alise_run"
    torch.manual_seed(0)
    pretrain(out=run, data=prepared, model="alise", hparams=TINY, pretext={"run_length": 12, "crop": 16},
             epochs=2, batch_size=4, device="cpu", lr=1e-3, log_every_s=1e9)
    return run


# ------------------------------------------------------------------------------- building blocks

def test_linear_gapfill_is_exact_on_a_hand_example():
    values = np.array([[[0.0], [10.0], [20.0], [99.0]],
                       [[1.0], [2.0], [3.0], [4.0]],
                       [[5.0], [6.0], [7.0], [8.0]]], dtype=np.float32)              # (N=3, T=4, C=1)
    valid = np.array([[1, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    grid = np.array([-5, 0, 5, 10, 15, 20, 25, 30, 35])
    filled = linear_gapfill(values, np.array([0, 10, 20, 30]), valid, grid)[..., 0]
    np.testing.assert_allclose(filled[0], [0, 0, 5, 10, 32.25, 54.5, 76.75, 99, 99])   # flat at the ends
    np.testing.assert_allclose(filled[1], 3.0)                                           # one valid date: flat
    assert np.isnan(filled[2]).all()                                                     # none: NaN
    # per-pixel (unsorted) days give the same as the shared calendar
    days = np.array([[30, 0, 20, 10]] * 3)
    perm = np.array([3, 0, 2, 1])
    again = linear_gapfill(values[:, perm], days, valid[:, perm], grid)[..., 0]
    np.testing.assert_allclose(again[:2], filled[:2])


def test_annual_grids_align_day_of_year_across_years():
    jan5 = [int(np.datetime64(d, "D").astype(np.int64)) for d in ("2020-01-05", "2021-01-03")]
    g0, g1 = annual_grid(np.array([jan5[0]]), 0), annual_grid(np.array([jan5[1]]), 0)
    assert len(g0) == 73 and np.all(np.diff(g0) == 5)
    assert iso(g0[0]) == "2020-01-01" and iso(g1[0]) == "2021-01-01"
    oct3 = int(np.datetime64("2021-10-03", "D").astype(np.int64))     # agronomic year anchored on 1 October
    assert iso(annual_grid(np.array([oct3]), 273)[0]) == "2021-10-01"


def test_otsu_splits_a_bimodal_array():
    rng = np.random.default_rng(0)
    low, high = rng.normal(1.0, 0.2, 5000), rng.normal(5.0, 0.5, 1000)
    threshold = otsu_threshold(np.r_[low, high, [np.nan]])
    assert (low < threshold).mean() > 0.99 and (high > threshold).all()


def test_patches_cover_the_axis_and_ramps_blend():
    assert patch_origins(100, 64, 48).tolist() == [0, 36]
    assert patch_origins(40, 64, 48).tolist() == [0]
    assert patch_origins(160, 64, 48).tolist() == [0, 48, 96]
    w = ramp(64, 16)
    assert w.min() > 0 and w.max() == 1 and w[0] < w[8] < w[16] == 1


# ------------------------------------------------------------------------------- change-detect

def test_gapfill_change_detect_finds_the_changed_parcels(data, tmp_path):
    out = tmp_path / "gf.tif"
    summary = change_detect(data["year0"], data["year1"], out=out, method="gapfill", threshold="otsu",
                            reference=data["truth"], block=32)
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("float32",) and ds.crs == CRS_UTM and ds.transform == TRANSFORM
        assert (ds.width, ds.height) == (SIZE, SIZE)
        score = ds.read(1)
    assert np.isnan(score[:4, :4]).all() and np.isfinite(score[4:, 4:]).all()    # < 2 valid dates in A: nodata
    assert summary["auc"] > 0.9
    assert Path(summary["outputs"]["roc"]).stat().st_size > 1000
    with rasterio.open(summary["outputs"]["binary"]) as ds:
        binary = ds.read(1)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
    truth = np.isin(parcel_ids(), CHANGED)
    assert (binary[:4, :4] == 255).all()
    assert ((binary == 1) == truth)[4:, 4:].mean() > 0.85


def test_alise_change_detect_scores_on_a_grid_and_reads_vector_references(data, alise_run, tmp_path):
    summary = change_detect(data["year0"], data["year1"], model=alise_run, out=tmp_path / "alise.tif",
                            reference=data["parcels"], reference_field="changed", patch=32, overlap=8, block=24)
    with rasterio.open(tmp_path / "alise.tif") as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM and ds.tags()["SITS_METHOD"] == "alise"
        assert ds.tags()["SITS_DISTANCE"] == "cosine" == summary["distance"]    # ALISE's default score
        score = ds.read(1)
    assert np.isnan(score[:4, :4]).all() and np.isfinite(score[4:, 4:]).all() and (score[4:, 4:] >= 0).all()
    assert summary["reference_pixels"] == SIZE * SIZE - 16
    assert 0.0 <= summary["auc"] <= 1.0    # a two-epoch tiny model need not separate the parcels yet
    same = change_detect(data["year0"], data["year0"], model=alise_run, out=tmp_path / "same.tif", patch=32, overlap=8)
    with rasterio.open(tmp_path / "same.tif") as ds:
        np.testing.assert_allclose(np.nan_to_num(ds.read(1)), 0.0, atol=1e-6)       # a series does not change
    assert same["pixels_scored"] == SIZE * SIZE - 16


class _ScaledEncoder(torch.nn.Module):
    """Y = (1 + the series' mean value) times a fixed direction: (B, n_q 2, d_model 3, P, P). Scaling
    the series changes Y's length, not its direction."""
    n_q, d_model = 2, 3

    def forward(self, batch):
        v = batch["values"].float().mean(dim=(1, 2))                              # (B, P, P)
        direction = torch.arange(1.0, 7.0).view(1, 2, 3, 1, 1)
        return direction * (1 + v[:, None, None])                                 # (B, 2, 3, P, P)


def test_cosine_distance_scores_direction_and_mse_is_eq_12():
    encoder = AlignedEncoder(_ScaledEncoder(), torch.device("cpu"))
    values = np.ones((1, 3, 4, 2, 2), np.float32)                                 # (n, T, C, P, P)
    valid = np.ones((1, 3, 2, 2), bool)
    dates = np.arange(3)
    pairs = [(values, valid), (3 * values, valid)]                                # B: Y twice as long, same direction
    mse = encoder.distance_fn(dates, dates, "mse")(pairs)
    cosine = encoder.distance_fn(dates, dates, "cosine")(pairs)
    assert mse.shape == cosine.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(mse, np.mean(np.arange(1.0, 7.0) ** 2 * 4), rtol=1e-6)   # ((2 - 4) d)^2 averaged
    np.testing.assert_allclose(cosine, 0.0, atol=1e-6)


def test_alise_scores_are_zero_without_change_for_both_distances(data, alise_run, tmp_path):
    for distance in ("cosine", "mse"):
        summary = change_detect(data["year0"], data["year0"], model=alise_run, out=tmp_path / f"same_{distance}.tif",
                                patch=32, overlap=8, distance=distance)
        with rasterio.open(tmp_path / f"same_{distance}.tif") as ds:
            assert ds.tags()["SITS_DISTANCE"] == distance == summary["distance"]
            np.testing.assert_allclose(np.nan_to_num(ds.read(1)), 0.0, atol=1e-5)
    changed = change_detect(data["year0"], data["year1"], model=alise_run, out=tmp_path / "changed.tif", patch=32,
                            overlap=8, distance="cosine")
    with rasterio.open(tmp_path / "changed.tif") as ds:
        score = ds.read(1)
    assert changed["pixels_scored"] > 0 and np.nanmax(score) > 1e-4 and np.nanmax(score) <= 2.0


def test_b_on_another_grid_is_resampled_onto_a(data, tmp_path, capsys):
    values, dates = series(1)
    padded = np.full((len(dates), 4, SIZE + 4, SIZE + 4), 0.3, np.float32)
    padded[:, :, 2:-2, 2:-2] = values
    shifted = write_stack(tmp_path / "shifted.tif", padded, dates, TRANSFORM * Affine.translation(-2, -2))
    change_detect(data["year0"], shifted, out=tmp_path / "moved.tif", method="gapfill")
    change_detect(data["year0"], data["year1"], out=tmp_path / "aligned.tif", method="gapfill")
    assert "resampling it onto A's grid" in capsys.readouterr().err
    with rasterio.open(tmp_path / "moved.tif") as m, rasterio.open(tmp_path / "aligned.tif") as a:
        assert m.transform == TRANSFORM
        np.testing.assert_allclose(m.read(1), a.read(1), equal_nan=True)


# ------------------------------------------------------------------------------- embed

def test_embed_writes_aligned_bands_on_the_input_grid(data, alise_run, tmp_path):
    out = tmp_path / "emb.tif"
    summary = embed(data["year0"], model=alise_run, out=out, patch=32, overlap=8, block=16)
    n = TINY["n_q"] * TINY["d_model"]
    with rasterio.open(out) as ds:
        assert ds.count == n and ds.dtypes[0] == "float32"
        assert ds.descriptions[0] == "q00_c000" and ds.descriptions[-1] == "q03_c015"
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM
        emb = ds.read()
    assert np.isnan(emb[:, :4, :4]).all() and np.isfinite(emb[:, 4:, 4:]).all()
    assert summary["bands"] == n
    # the patch lattice is global: another block size gives the same embedding
    embed(data["year0"], model=alise_run, out=tmp_path / "emb48.tif", patch=32, overlap=8, block=48)
    with rasterio.open(tmp_path / "emb48.tif") as ds:
        np.testing.assert_allclose(ds.read(), emb, atol=1e-5, equal_nan=True)
    store = tmp_path / "emb.zarr"
    embed(data["year0"], model=alise_run, out=store, format="zarr", patch=32, overlap=8, block=16)
    ds = xr.open_zarr(store)
    assert ds["embedding"].dims == ("band", "y", "x") and ds["embedding"].shape == (n, SIZE, SIZE)
    assert CRS.from_wkt(ds.attrs["crs"]) == CRS_UTM and ds.attrs["transform"] == list(TRANSFORM)[:6]
    assert float(ds["x"][0]) == ORIGIN[0] + 5
    np.testing.assert_allclose(ds["embedding"].values, emb, atol=1e-6, equal_nan=True)


def write_scl_stack(path: Path, values: np.ndarray, dates: np.ndarray, cloudy: np.ndarray) -> Path:
    """uint16 stack with an SCL layer after each date's bands: 9 (cloud, high probability) where `cloudy`,
    4 (vegetation) elsewhere; the reflectance under clouds is stored as it is."""
    t, c, h, w = values.shape
    scl = np.where(cloudy, 9, 4)[:, None]                                           # (T, 1, H, W)
    layers = np.concatenate((np.rint(values * 10000), scl), 1).astype(np.uint16)  # (T, C + 1, H, W)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=t * (c + 1), dtype="uint16",
                       crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(layers.reshape(-1, h, w))
        ds.descriptions = tuple(f"{iso(d)} {b}" for d in dates for b in [*BANDS, "SCL"])
    return path


def test_a_model_trained_on_kept_clouds_is_fed_raw_cloudy_values_at_inference(data, tmp_path):
    """A run pre-trained on a --keep-cloudy dataset records it, and `embed` reads its input the same way:
    the reflectance under a fully clouded date changes the embedding (it reaches the encoder, as in
    training). A run trained on zeros under clouds leaves that date out, whatever lies under the cloud."""
    from sitscli.data.readers import open_source
    from sitscli.data.recipes.s2 import prepare_cube
    from sitscli.engine.checkpoint import read_card
    from sitscli.workflows.pretrain import pretrain

    values, dates = series(0, corner_short=False)
    values = np.nan_to_num(values, nan=0.3)
    cloudy = np.zeros((len(dates), SIZE, SIZE), bool)
    cloudy[5] = True                                                   # date 5 fully clouded
    dark, bright = values.copy(), values.copy()
    dark[5], bright[5] = 0.05, 0.6                                     # what lies under the cloud
    sources = {v: write_scl_stack(tmp_path / f"{v}.tif", x, dates, cloudy) for v, x in (("dark", dark), ("bright", bright))}
    runs = {}
    for kept in (True, False):
        prepared = prepare_cube(open_source(sources["dark"], keep_cloudy=kept), tmp_path / f"{kept}.sits",
                                labels=data["parcels"], class_field="crop", patch_size=16, fractions=(0.6, 0.2, 0.2),
                                keep_cloudy=kept)
        runs[kept] = tmp_path / f"run_{kept}"
        torch.manual_seed(0)
        pretrain(out=runs[kept], data=prepared, model="alise", hparams=TINY, pretext={"run_length": 12, "crop": 16},
                 epochs=1, batch_size=4, device="cpu", lr=1e-3, log_every_s=1e9)
        assert read_card(runs[kept]).info.keep_cloudy is kept
    for kept, differs in ((True, True), (False, False)):
        embeddings = []
        for v in ("dark", "bright"):
            embed(sources[v], model=runs[kept], out=tmp_path / f"{kept}_{v}.tif", patch=16, overlap=0, block=16)
            with rasterio.open(tmp_path / f"{kept}_{v}.tif") as ds:
                embeddings.append(ds.read())
        assert (not np.allclose(*embeddings, atol=1e-4)) is differs
    # predict-map opens its inputs the same way (an ALISE classifier fine-tuned on kept clouds)
    from sitscli.workflows.predict_map import _open

    for kept in (True, False):
        cube = _open(sources["dark"], read_card(runs[kept]), bands=None, aoi=None, date_range=None, dates_file=None)
        assert cube.keep_cloudy is kept
    # an input without cloud information cannot be read as the kept-cloudy model was trained: said so
    plain = write_stack(tmp_path / "plain.tif", dark, dates)
    with pytest.raises(ConfigError, match=r"run_True, trained on values kept under clouds \(prepare --keep-cloudy\), "
                                          "needs cloud information"):
        embed(plain, model=runs[True], out=tmp_path / "plain_emb.tif", patch=16, overlap=0, block=16)
    assert not (tmp_path / "plain_emb.tif").exists()


# ------------------------------------------------------------------------------- bad input

def test_bad_inputs_are_one_clear_error(data, alise_run, tmp_path):
    a, b = data["year0"], data["year1"]
    with pytest.raises(ConfigError, match="multiple of 8"):
        change_detect(a, b, model=alise_run, out=tmp_path / "x.tif", patch=30)
    with pytest.raises(ConfigError, match="multiple of 8"):
        embed(a, model=alise_run, out=tmp_path / "x.tif", block=100)
    with pytest.raises(ConfigError, match="needs --model"):
        change_detect(a, b, out=tmp_path / "x.tif")
    with pytest.raises(ConfigError, match="--distance 'l1'"):
        change_detect(a, b, model=alise_run, out=tmp_path / "x.tif", distance="l1")
    with pytest.raises(ConfigError, match="with --method alise"):
        change_detect(a, b, out=tmp_path / "x.tif", method="gapfill", distance="cosine")
    with pytest.raises(ConfigError, match="otsu"):
        change_detect(a, b, out=tmp_path / "x.tif", method="gapfill", threshold="high")
    (tmp_path / "exists.tif").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        change_detect(a, b, out=tmp_path / "exists.tif", method="gapfill")
    values, dates = series(0)
    one_date = write_stack(tmp_path / "one.tif", values[:1], dates[:1])
    with pytest.raises(DataContentError, match="at least 2"):
        change_detect(a, one_date, out=tmp_path / "x.tif", method="gapfill")
    pixel_run = tmp_path / "pixel_run"
    from sitscli.models import registry

    info = DataInfo(BANDS, [0.1] * 4, [0.1] * 4)
    spec = registry.get("sitsbert")
    save_model(pixel_run, spec.build({}, info), model_name="sitsbert", hparams={}, info=info, task="pretrain")
    with pytest.raises(ConfigError, match="no aligned representation.*alise"):
        embed(a, model=pixel_run, out=tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_cli_prints_the_summary(data, tmp_path):
    import sitscli.cli.change_detect  # noqa: F401  (registers the command)
    from sitscli.cli.app import app

    out = tmp_path / "cli.tif"
    result = CliRunner().invoke(app, ["change-detect", str(data["year0"]), str(data["year1"]), "--out", str(out),
                                      "--method", "gapfill", "--reference", str(data["truth"]), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["auc"] > 0.9 and Path(summary["outputs"]["score"]) == out
