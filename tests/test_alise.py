"""ALISE model, views and pretext losses (tiny models, in-memory patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.models import registry
from sitscli.models.alise import AliseClassifier, AlisePretrain, build
from sitscli.ssl.alise import AliseTask, covariance_loss, draw_views, make_views

TINY = {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "unet_widths": [8, 8, 16, 16], "n_q": 3, "d_emb": 16,
        "run_length": 12, "crop": 16}
START = int(np.datetime64("2020-01-01", "D").astype(np.int64))


def info(num_classes: int = 0, bands: int = 3) -> registry.DataInfo:
    return registry.DataInfo(band_names=[f"B{i}" for i in range(bands)], band_mean=[0.2] * bands, band_std=[0.1] * bands,
                             class_names=[f"c{i}" for i in range(num_classes)], reference_date=START)


def patch_batch(b: int = 2, t: int = 20, size: int = 16, bands: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Patches whose left and right halves follow two phenologies; 20% of pixel-dates invalid (zeroed)."""
    g = torch.Generator().manual_seed(seed)
    days = torch.sort(torch.randperm(365, generator=g)[:t]).values
    curve_a = torch.exp(-0.5 * ((days - 120) / 30.0) ** 2)
    curve_b = torch.exp(-0.5 * ((days - 240) / 30.0) ** 2)
    halves = torch.cat((curve_a[:, None].expand(t, size // 2), curve_b[:, None].expand(t, size // 2)), 1)  # (T, W)
    gains = torch.linspace(0.1, 0.4, bands)
    values = 0.05 + gains[None, :, None, None] * halves[:, None, None, :]                            # (T, C, 1, W)
    values = values.expand(b, t, bands, size, size) + 0.01 * torch.randn(b, t, bands, size, size, generator=g)
    valid = torch.rand(b, t, size, size, generator=g) > 0.2
    return {"values": (values * valid[:, :, None]).float(), "valid": valid,
            "dates": (START + days).long().expand(b, t).clone()}


@pytest.mark.parametrize("t", [20, 45])
def test_representation_has_fixed_size_whatever_the_dates(t):
    torch.manual_seed(0)
    model = build(TINY, info()).eval()
    y = model(patch_batch(t=t))
    assert y.shape == (2, TINY["n_q"], TINY["d_model"], 16, 16)
    assert torch.isfinite(y).all()
    assert model.encoder.represent(patch_batch(t=t)).shape == (2, TINY["n_q"] * TINY["d_model"], 16, 16)


def test_padding_dates_do_not_change_the_representation():
    torch.manual_seed(0)
    model = build(TINY, info()).eval()
    batch = patch_batch(b=1, t=20)
    padded = {k: torch.cat((v, torch.zeros_like(v[:, :5]) if k != "dates" else v[:, -1:].expand(1, 5)), 1)
              for k, v in batch.items()}
    torch.testing.assert_close(model(batch), model(padded), atol=1e-5, rtol=1e-4)


def test_classifier_gives_per_pixel_logits_and_registry_knows_alise():
    spec = registry.get("alise")
    assert spec.input == "patch" and spec.pretext == "alise"
    model = spec.build(TINY, info(num_classes=4))
    assert isinstance(model, AliseClassifier)
    assert model(patch_batch()).shape == (2, 4, 16, 16)
    assert isinstance(spec.build(TINY, info()), AlisePretrain)


def test_patch_not_divisible_by_8_is_refused():
    model = build(TINY, info()).eval()
    with pytest.raises(ConfigError, match="multiples of 8"):
        model(patch_batch(size=12))


@pytest.mark.parametrize("n, run, t_w", [(60, 60, 2), (100, 60, 2), (7, 60, 2), (45, 20, 3)])
def test_views_are_disjoint_and_cover_a_consecutive_run(n, run, t_w):
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = draw_views(n, run, t_w, rng)
        assert not set(a) & set(b)
        both = np.sort(np.concatenate((a, b)))
        assert len(both) == min(run, n) and np.all(np.diff(both) == 1) and both[0] >= 0 and both[-1] < n
        assert a[0] == both[0] and np.all(np.diff(a[:t_w]) == 1)   # A starts with a whole window


def test_views_are_redrawn_each_epoch():
    task = AliseTask(run_length=10, t_w=2, crop=16)
    firsts = set()
    for epoch in range(6):
        task.on_epoch_start(epoch)
        firsts.add(int(draw_views(40, 10, 2, task.train_rng)[0][0]))
    assert len(firsts) > 1


def test_too_few_dates_is_a_clear_error():
    batch = patch_batch(b=1, t=3)
    with pytest.raises(DataContentError, match="at least"):
        make_views(batch, 60, 2, 16, np.random.default_rng(0), random_crop=True)


def test_covariance_loss_matches_a_hand_computation():
    z = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    # column means (3, 2); centred rows (-2, 0), (0, -2), (2, 2); cov_01 = (0 + 0 + 4) / (3 - 1) = 2
    # c(Z) = (cov_01^2 + cov_10^2) / d = (4 + 4) / 2 = 4
    assert covariance_loss(z).item() == pytest.approx(4.0)
    # per-group version: two groups, the second with uncorrelated columns (loss 0) -> mean 2
    other = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])   # centred: cov_01 = 0
    assert covariance_loss(torch.stack((z, other), 1)).item() == pytest.approx(2.0)


def test_pretext_losses_fall():
    torch.manual_seed(0)
    model = build(TINY, info())
    task = AliseTask(run_length=12, t_w=2, crop=16, w_cov=0.04)
    batch = patch_batch(b=4, t=24)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    task.on_epoch_start(0)
    before = task.validation_step(model.eval(), batch)
    model.train()
    for step in range(40):
        task.on_epoch_start(step)
        loss, logs = task.training_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.on_epoch_start(0)
    after = task.validation_step(model.eval(), batch)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["rec"] < 0.5 * before["rec"]
    assert set(logs) == {"rec", "inv", "cov"}


def _with_a_clouded_date(batch: dict[str, torch.Tensor], t: int, raw: float) -> dict[str, torch.Tensor]:
    """The batch with date `t` fully clouded (valid False everywhere) but its raw reflectance kept."""
    out = {k: v.clone() for k, v in batch.items()}
    out["valid"][:, t] = False
    out["values"][:, t] = raw
    return out


def test_cloudy_raw_values_reach_the_encoder_only_when_the_dataset_keeps_them():
    torch.manual_seed(0)
    model = build(TINY, info()).eval()
    base = patch_batch(b=1, t=12)
    low, high = _with_a_clouded_date(base, 5, 0.1), _with_a_clouded_date(base, 5, 0.6)
    # stored with zeros under clouds (no `cloud` key): a fully clouded date is left out
    torch.testing.assert_close(model(low), model(high))
    # prepared with --keep-cloudy: the raw cloudy value is part of the encoder's input
    for kept in (low, high):
        kept["cloud"] = (~kept["valid"]).to(torch.uint8) * 31
    assert not torch.allclose(model(low), model(high), atol=1e-4)


def test_padding_is_still_left_out_when_clouds_are_kept():
    torch.manual_seed(0)
    model = build(TINY, info()).eval()
    batch = _with_a_clouded_date(patch_batch(b=1, t=12), 3, 0.5)
    batch["cloud"] = (~batch["valid"]).to(torch.uint8) * 31
    padded = {k: torch.cat((v, torch.full_like(v[:, :4], 0.7) if k == "values" else
                            v[:, -1:].expand(1, 4) if k == "dates" else torch.zeros_like(v[:, :4])), 1)
              for k, v in batch.items()}
    torch.testing.assert_close(model(batch), model(padded), atol=1e-5, rtol=1e-4)


def test_views_keep_fully_clouded_acquisitions_when_clouds_are_kept():
    batch = _with_a_clouded_date(patch_batch(b=1, t=8), 2, 0.5)
    a, b = make_views(batch, run_length=8, t_w=2, crop=16, rng=np.random.default_rng(0), random_crop=False)
    assert a["dates"].shape[1] + b["dates"].shape[1] == 7 and "cloud" not in a      # the clouded date dropped
    batch["cloud"] = (~batch["valid"]).to(torch.uint8) * 31
    a, b = make_views(batch, run_length=8, t_w=2, crop=16, rng=np.random.default_rng(0), random_crop=False)
    assert a["dates"].shape[1] + b["dates"].shape[1] == 8 and a["cloud"].shape == a["valid"].shape
    # run of all 8 dates, windows of 2: view B holds dates 2, 3, 6, 7, so the clouded date 2 comes first
    assert (b["values"][0, 0] == 0.5).all() and not b["valid"][0, 0].any() and (b["cloud"][0, 0] == 31).all()


def test_season_positions_give_two_years_the_same_encodings():
    torch.manual_seed(0)
    model = build({**TINY, "positions": "season", "season_start": "10-01"}, info()).eval()
    batch = patch_batch(b=1, t=12)
    batch["dates"] = batch["dates"] + 366                         # the same calendar days of 2021
    next_year = {**batch, "dates": batch["dates"] + 365}          # ... and of 2022
    torch.testing.assert_close(model(batch), model(next_year), atol=1e-5, rtol=1e-4)
    paper = build(TINY, info()).eval()
    assert not torch.allclose(paper(batch), paper(next_year), atol=1e-4)
    assert registry.get("alise").folds_years({"positions": "season"})
    with pytest.raises(ConfigError, match="season_start"):
        build({**TINY, "positions": "season", "season_start": "13-40"}, info())


def test_pretraining_and_probe_defaults_are_the_papers():
    from sitscli.workflows.pretrain import model_training_defaults
    from sitscli.workflows.probe import PROBE_SETTINGS
    pretrain = model_training_defaults(registry.get("alise"), "pretrain")
    assert (pretrain["batch_size"], pretrain["epochs"], pretrain["restart_period"], pretrain["patience"]) == (2, 260, 2, None)
    assert (PROBE_SETTINGS["plateau_patience"], PROBE_SETTINGS["plateau_factor"]) == (10, 0.05)
