"""Supervised baselines (tempcnn, ltae, lstm, inceptiontime, transformer) on tiny in-memory series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitscli.core.errors import ConfigError
from sitscli.data.batch import collate
from sitscli.models import registry
from sitscli.models.ltae import LTAEEncoder
from sitscli.models.registry import DataInfo
from sitscli.models.temporal import positions, regular_grid, resample_to_grid, sinusoid

TINY = {
    "tempcnn": {"filters": 8, "dense": 16, "dropout": 0.0},
    "ltae": {"d_model": 32, "n_head": 4, "d_k": 4, "mlp": [32, 16], "decoder": [16], "dropout": 0.0},
    "lstm": {"hidden": 16, "layers": 1},
    "inceptiontime": {"depth": 3, "filters": 4, "bottleneck": 4, "kernels": [9, 5, 3]},
    "transformer": {"d_model": 16, "heads": 2, "layers": 1, "d_inner": 32, "dropout": 0.0},
}
NAMES = sorted(TINY)


def _info(num_bands=4, classes="abc"):
    return DataInfo([f"B{i}" for i in range(num_bands)], [0.15] * num_bands, [0.1] * num_bands, list(classes))


def _batch(spec, samples):
    return collate(samples, compact=spec.compact, max_len=spec.max_len)


def test_regular_grid_resampling_is_linear_interpolation_of_clear_observations():
    values = torch.tensor([[[1.0], [99.0], [3.0], [5.0], [0.0]]])     # (1, 5, 1): 99 is a cloud, 0 padding
    days = torch.tensor([[10.0, 15.0, 20.0, 40.0, 40.0]])
    keep = torch.tensor([[True, False, True, True, False]])
    grid = torch.tensor([0.0, 10.0, 15.0, 30.0, 40.0, 50.0])
    out = resample_to_grid(values, days, keep, grid)[0, :, 0]
    assert torch.allclose(out, torch.tensor([1.0, 1.0, 2.0, 4.0, 5.0, 5.0]))


def test_resampling_matches_numpy_interp_on_unsorted_random_series():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.random((6, 12, 3)).astype(np.float32))
    days = torch.from_numpy(rng.permutation(365)[:72].reshape(6, 12).astype(np.float32))
    keep = torch.from_numpy(rng.random((6, 12)) > 0.3)
    keep[0] = False
    grid = regular_grid(37, 10.0)
    out = resample_to_grid(values, days, keep, grid)
    assert torch.equal(out[0], torch.zeros(37, 3))                    # nothing clear: zeros
    for b in range(1, 6):
        k = keep[b].numpy()
        order = np.argsort(days[b].numpy()[k])
        for c in range(3):
            expected = np.interp(grid.numpy(), days[b].numpy()[k][order], values[b, :, c].numpy()[k][order])
            assert np.allclose(out[b, :, c].numpy(), expected, atol=1e-5)


def test_positions_day_of_year_and_days_since_reference():
    dates = torch.from_numpy(np.array([["2021-01-01", "2021-02-01"]], dtype="datetime64[D]").astype(np.int64))
    assert positions(dates, "doy", None).tolist() == [[0.0, 31.0]]
    reference = int(np.datetime64("2020-12-01", "D").astype(int))
    assert positions(dates, "reference", reference).tolist() == [[31.0, 62.0]]
    assert positions(dates, "reference", None).tolist() == [[0.0, 31.0]]


@pytest.mark.parametrize("name", NAMES)
def test_registered_pixel_classifier_gives_finite_logits(name, toy_pixel_series):
    spec = registry.get(name)
    assert spec.input == "pixel" and spec.pretext is None
    model = spec.build(TINY[name], _info()).eval()
    logits = model(_batch(spec, toy_pixel_series(5)))
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_series_without_clear_observation_gives_finite_logits(name, toy_pixel_series):
    spec = registry.get(name)
    samples = toy_pixel_series(3)
    samples[0]["valid"][:] = False
    model = spec.build(TINY[name], _info())
    for mode in (model.train(), model.eval()):
        assert torch.isfinite(mode(_batch(spec, samples))).all()


@pytest.mark.parametrize("name", NAMES)
def test_padding_and_clouds_do_not_change_the_logits(name, toy_pixel_series):
    spec = registry.get(name)
    model = spec.build(TINY[name], _info()).eval()
    samples = toy_pixel_series(4)
    alone = _batch(spec, samples[:1])
    padded = _batch(spec, samples)                                    # sample 0 padded to the longest
    assert padded["valid"].shape[1] > alone["valid"].shape[1]
    with torch.no_grad():
        assert torch.allclose(model(padded)[0], model(alone)[0], atol=1e-5)
    # Clouded values never enter: scrambling them changes nothing.
    noisy = {**samples[0], "values": samples[0]["values"].copy()}
    noisy["values"][~noisy["valid"]] = 0.9
    with torch.no_grad():
        assert torch.allclose(model(_batch(spec, [noisy])), model(alone), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_learns_the_toy_classes(name, toy_pixel_series, held_out_accuracy):
    torch.manual_seed(0)
    spec = registry.get(name)
    model = spec.build(TINY[name], _info())
    train = _batch(spec, toy_pixel_series(96, seed=3))
    test = _batch(spec, toy_pixel_series(60, seed=4))
    accuracy = held_out_accuracy(model, train, test, steps=40, lr=1e-2)
    assert accuracy > 0.8, accuracy     # chance is 1/3


def test_ltae_encoder_contract_for_other_models():
    encoder = LTAEEncoder(6, d_model=32, n_head=4, d_k=4, mlp=(32, 24), dropout=0.0).eval()
    x, days = torch.randn(3, 9, 6), torch.rand(3, 9) * 365
    keep = torch.rand(3, 9) > 0.3
    keep[:, 0] = True
    out = encoder(x, days, keep)
    assert encoder.out_dim == 24 and out.shape == (3, 24)
    scrambled = torch.where(keep.unsqueeze(-1), x, torch.randn_like(x) * 100)
    assert torch.allclose(encoder(scrambled, days, keep), out, atol=1e-5)


@pytest.mark.parametrize("name, bad, match", [
    ("ltae", {"d_model": 30}, "n_head"),
    ("ltae", {"mlp": [64, 32]}, "start with d_model"),
    ("ltae", {"positions": "week"}, "positions"),
    ("tempcnn", {"grid_len": 1}, "grid_len"),
    ("tempcnn", {"kernel": 0}, "kernel"),
    ("lstm", {"dropout": 1.5}, "dropout"),
    ("inceptiontime", {"kernels": []}, "kernel"),
    ("inceptiontime", {"grid_step": 0}, "grid_step"),
    ("transformer", {"d_model": 15, "heads": 2}, "multiple of heads"),
])
def test_bad_hyper_parameters_are_refused(name, bad, match):
    with pytest.raises(ConfigError, match=match):
        registry.get(name).build({**TINY[name], **bad}, _info())


@pytest.mark.parametrize("name", NAMES)
def test_needs_classes(name):
    with pytest.raises(ConfigError, match="needs a dataset with classes"):
        registry.get(name).build(TINY[name], _info(classes=()))


def test_sinusoid_is_the_ltae_reference_table():
    days, dim, period = torch.tensor([0.0, 17.0, 300.0]), 8, 1000.0
    j = np.arange(dim)
    angle = days.numpy()[:, None] / period ** (2 * (j // 2) / dim)
    expected = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    assert np.allclose(sinusoid(days, dim, period).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_day_of_year_positions_map_another_year_alike(name, toy_pixel_series):
    spec = registry.get(name)
    model = spec.build(TINY[name], _info()).eval()
    samples = toy_pixel_series(4)
    four_years_later = [{**s, "dates": s["dates"] + 1461} for s in samples]    # 2020 -> 2024, both leap years
    with torch.no_grad():
        assert torch.allclose(model(_batch(spec, four_years_later)), model(_batch(spec, samples)), atol=1e-5)


@pytest.mark.parametrize("name", ["ltae", "lstm"])
def test_a_single_band_series_reaches_the_classifier(name):
    """One band (an NDVI table): a LayerNorm over the channels would make every series look the same."""
    torch.manual_seed(0)
    info = DataInfo(["NDVI"], [0.6], [0.2], ["a", "b"])
    model = registry.get(name).build({}, info).eval()
    days = torch.arange(0, 300, 20)
    batch = {"values": torch.linspace(0.2, 0.9, days.numel()).repeat(2, 1).unsqueeze(-1),
             "dates": (18262 + days).repeat(2, 1), "valid": torch.ones(2, days.numel(), dtype=torch.bool),
             "xy": torch.zeros(2, 2, dtype=torch.float64)}
    batch["values"][1] = batch["values"][1].flip(0)                       # the same values, another shape
    logits = model(batch)
    assert not torch.allclose(logits[0], logits[1], atol=1e-5)
