"""Bi-modal BERT (Sentinel-2 encoder pre-trained on PlanetScope, month and cloud targets): masking, the
PlanetScope targets, the losses, pre-training on the synthetic multi-sensor scene, and downstream
models that map from Sentinel-2 alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from sitscli.core.errors import CheckpointError, ConfigError, DataContentError
from sitscli.data.batch import collate
from sitscli.data.synthetic import write_synthetic
from sitscli.models import registry
from sitscli.models.bimodal_bert import CLOUD_LEVELS, MONTHS, PS_STEPS, build, month_means
from sitscli.models.registry import DataInfo
from sitscli.ssl import make_pretext
from sitscli.ssl.bimodal import bert_mask, observed_dates, ps_regression_loss, ps_targets
from sitscli.workflows.prepare import prepare
from sitscli.workflows.pretrain import pretrain
from tests._cli import sits

TINY = {"hidden": 32, "layers": 1, "heads": 4, "ffn": 64, "dropout": 0.0}
PS_INFO = {"band_names": ["blue", "green", "red", "nir"], "band_mean": [0.05, 0.08, 0.07, 0.3],
           "band_std": [0.02, 0.03, 0.04, 0.1], "resolution": 3.33, "footprint": [3, 3], "unit": "reflectance"}


def _info(num_bands=4, classes=(), planetscope=True):
    return DataInfo([f"B{i}" for i in range(num_bands)], [0.15] * num_bands, [0.1] * num_bands, list(classes),
                    modalities={"planetscope": PS_INFO} if planetscope else {})


def _days(*iso):
    return torch.tensor([np.datetime64(d, "D").astype(np.int64) for d in iso])


# ---- data on disk, shared by the end-to-end tests --------------------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("bimodal") / "scene", size=32, seed=3, years=1,
                           sensors=("s2", "planetscope"))


def _prepare(scene, out, **extra):
    flags = {"folder": str(scene.l2a), "labels": str(scene.parcels), "class_field": scene.class_field,
             "out": str(out), "max_per_polygon": 6, **extra}
    return prepare("s2", flags).path


@pytest.fixture(scope="module")
def data(scene, tmp_path_factory):
    return _prepare(scene, tmp_path_factory.mktemp("bimodal") / "mm.sits", planetscope=str(scene.planetscope),
                    keep_cloudy=True)


@pytest.fixture(scope="module")
def bad_data(scene, tmp_path_factory):
    """Sentinel-2 alone, four bands, clouds blanked: lacks what the pretext and the pre-trained run need."""
    return _prepare(scene, tmp_path_factory.mktemp("bimodal") / "s2only.sits", bands="B02,B03,B04,B08")


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    return pretrain(out=tmp_path_factory.mktemp("runs") / "pre", data=data, model="bimodal-bert", hparams=TINY,
                    epochs=8, batch_size=32, lr=3e-3, seed=0, device="cpu")


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: sits(monkeypatch, capsys, *args)


# ---- the model ----------------------------------------------------------------------------------
def test_registered_as_in_the_paper():
    spec = registry.get("bimodal-bert")
    assert spec.pretext == "bimodal" and spec.input == "pixel" and not spec.compact
    assert spec.modalities == ("s2",) and spec.optional_modalities == ("planetscope",)
    assert {k: spec.defaults[k] for k in ("hidden", "heads", "ffn")} == {"hidden": 256, "heads": 8, "ffn": 1024}
    model = build({**TINY, "layers": 16}, _info())
    assert len(model.encoder.blocks) == 16 and isinstance(model.encoder.embed, torch.nn.Conv1d)
    assert model.ps.out_features == PS_STEPS * 36 and model.month.out_features == MONTHS
    assert model.cloud.out_features == CLOUD_LEVELS


def test_clear_dates_read_the_same_whether_cloudy_values_were_kept(toy_pixel_series):
    """Downstream the encoder reads the clear dates only: values kept under clouds change nothing."""
    encoder = build(TINY, _info(classes="abc")).encoder.eval()
    batch = collate(toy_pixel_series(4), compact=False)
    blanked = {**batch, "values": batch["values"] * batch["valid"].unsqueeze(-1)}
    with torch.no_grad():
        kept, blank = encoder(batch), encoder(blanked)
    assert torch.allclose(kept[batch["valid"]], blank[batch["valid"]], atol=1e-5)
    # ... while the pretext, which reads cloudy dates too, sees the difference
    observed = observed_dates(batch["values"], batch["valid"])
    with torch.no_grad():
        assert not torch.allclose(encoder({**batch, "observed": observed})[batch["valid"]], kept[batch["valid"]])


def test_month_means_average_the_outputs_of_each_calendar_month():
    tokens = torch.arange(4 * 2, dtype=torch.float32).view(1, 4, 2)
    dates = _days("2022-01-31", "2022-02-01", "2022-02-28", "2022-12-01").view(1, 4)
    keep = torch.tensor([[True, True, True, False]])
    means, present = month_means(tokens, dates, keep)
    assert present[0].tolist() == [True, True] + [False] * 10
    assert torch.equal(means[0, 0], tokens[0, 0]) and torch.equal(means[0, 1], (tokens[0, 1] + tokens[0, 2]) / 2)


# ---- the pretext --------------------------------------------------------------------------------
def test_masking_picks_the_asked_share_and_the_kinds_in_their_proportions():
    values = torch.rand(300, 50, 4) * 0.3 + 0.05
    observed = torch.rand(300, 50) < 0.8
    out, selected, kind = bert_mask(values, observed, 0.3, 0.6, 0.25, torch.Generator().manual_seed(0))
    assert not (selected & ~observed).any()
    assert abs(selected.sum().item() / observed.sum().item() - 0.3) < 0.01
    shares = [(kind[selected] == k).float().mean().item() for k in range(3)]
    assert shares == pytest.approx([0.6, 0.25, 0.15], abs=0.02)
    changed = (out != values).any(-1)
    assert not changed[~selected].any()                                      # only selected dates change
    assert not changed[selected & (kind == 2)].any()                         # "unchanged" stays
    assert changed[selected & (kind == 0)].all()
    # values from the data distribution: each is a whole observation of the batch
    pool = {tuple(v) for v in values[observed].tolist()}
    assert all(tuple(v) in pool for v in out[selected & (kind == 1)].tolist())


def test_planetscope_steps_are_the_matching_date_and_the_ones_before():
    ps_dates = _days("2022-05-01", "2022-05-02", "2022-05-04", "2022-05-10", "2022-05-10").view(1, 5)  # last: padding
    s2 = _days("2022-05-04", "2022-05-05", "2022-05-09", "2022-05-12", "2022-04-30").view(1, 5)
    index, exists = ps_targets(s2, ps_dates, steps=3, window=2)
    # 05-04 -> the 05-04 scene, then 05-02 and 05-01; 05-05 -> 05-04 (one day late, within 2)
    assert index[0, 0].tolist() == [2, 1, 0] and exists[0, 0].all()
    assert index[0, 1].tolist() == [2, 1, 0] and exists[0, 1].all()
    assert not exists[0, 2].any()                                   # 05-09: the last scene before is 5 days old
    assert index[0, 3, 0].item() == 3 and exists[0, 3].all()        # 05-12 -> 05-10, the real one, not the padding
    assert not exists[0, 4].any()                                   # nothing before 04-30
    index, exists = ps_targets(s2[:, :1], ps_dates[:, :2].contiguous(), steps=3, window=5)
    assert exists[0, 0].tolist() == [True, True, False]             # only two scenes on or before


def test_cloudy_or_missing_planetscope_targets_give_no_loss_and_no_gradient():
    torch.manual_seed(0)
    b, t, t2, n = 2, 4, 6, 36
    prediction = torch.randn(b, t, 3, n, requires_grad=True)
    reference = torch.randn(b, t2, n)
    clear = torch.rand(b, t2, n) > 0.4
    index = torch.randint(0, t2, (b, t, 3))
    exists = torch.rand(b, t, 3) > 0.3
    selected = torch.rand(b, t) > 0.4
    loss = ps_regression_loss(prediction, reference, clear, index, exists, selected)
    loss.backward()
    # by hand: the mean of the squared errors over the used targets
    used, errors = torch.zeros(b, t, 3, n, dtype=torch.bool), []
    for i, j, s, k in np.ndindex(b, t, 3, n):
        if selected[i, j] and exists[i, j, s] and clear[i, index[i, j, s], k]:
            used[i, j, s, k] = True
            errors.append((prediction[i, j, s, k] - reference[i, index[i, j, s], k]).item() ** 2)
    assert loss.item() == pytest.approx(np.mean(errors), rel=1e-5)
    assert torch.equal(prediction.grad[~used], torch.zeros_like(prediction.grad[~used]))
    assert (prediction.grad[used] != 0).all()
    # garbage (even NaN) under a cloudy or missing target changes nothing
    reference_bad = torch.where(clear, reference, torch.full_like(reference, float("nan")))
    assert ps_regression_loss(prediction, reference_bad, clear, index, exists, selected).item() == pytest.approx(loss.item())


class _Oracle(torch.nn.Module):
    """Answers the month and cloud tasks from targets computed here, independently of the pretext."""

    def __init__(self, month_shift=0):
        super().__init__()
        self.month_shift, self.seen = month_shift, {}

    def forward(self, batch):
        self.seen = batch
        b, t = batch["dates"].shape
        months = (batch["dates"].numpy().astype("datetime64[D]").astype("datetime64[M]").astype(int) % 12)
        present = torch.zeros(b, MONTHS, dtype=torch.bool)
        observed = batch["observed"]
        for i, j in zip(*np.nonzero(observed.numpy())):
            present[i, months[i, j]] = True
        month_logits = 50.0 * torch.eye(MONTHS).roll(self.month_shift, 1).expand(b, -1, -1)
        cloud_logits = 50.0 * torch.nn.functional.one_hot(batch["cloud"].long(), CLOUD_LEVELS).float()
        return {"month_logits": month_logits, "month_present": present, "cloud_logits": cloud_logits}


def test_month_and_cloud_targets_are_the_dates_month_and_cloud_level(toy_pixel_series):
    batch = collate(toy_pixel_series(16), compact=False)
    batch["cloud"] = torch.randint(0, CLOUD_LEVELS, batch["valid"].shape, dtype=torch.uint8)
    task = make_pretext("bimodal", ps_loss=False)
    loss, logs = task.training_step(_Oracle(), dict(batch))
    assert logs["season"] < 1e-6 and logs["cloud"] < 1e-6
    _, logs = task.training_step(_Oracle(month_shift=1), dict(batch))
    assert logs["season"] > 10 and logs["cloud"] < 1e-6


def test_pretext_options_are_checked():
    with pytest.raises(ConfigError, match="every loss"):
        make_pretext("bimodal", ps_loss=False, season_loss=False, cloud_loss=False)
    with pytest.raises(ConfigError, match="ps_steps"):
        make_pretext("bimodal", ps_steps=4)
    with pytest.raises(ConfigError, match="mask_rate"):
        make_pretext("bimodal", mask_rate=0)


# ---- pre-training on the synthetic scene ---------------------------------------------------------
def test_pretraining_lowers_each_loss(pretrained):
    epochs = json.loads((pretrained.run_dir / "history.json").read_text())["epochs"]
    first, last = epochs[0], epochs[-1]
    for name in ("ps", "season", "cloud"):
        assert last[f"train_{name}"] < 0.9 * first[f"train_{name}"], name
        assert last[f"val_{name}"] < first[f"val_{name}"], name
    assert 0.1 < last["train_masked"] < 0.2                              # 15 % of the dates with data


def test_pretext_refuses_data_without_planetscope_or_cloud_levels(bad_data, tmp_path, cli):
    code, _, err = cli("pretrain", bad_data, "--model", "bimodal-bert", "--out", tmp_path / "r1", "--epochs", "1")
    assert code != 0 and "no PlanetScope" in err and "--planetscope DIR --keep-cloudy" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("pretrain", bad_data, "--model", "bimodal-bert", "--out", tmp_path / "r2", "--epochs", "1",
                       "--pretext", "ps_loss=false")
    assert code != 0 and "without --keep-cloudy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ---- downstream: base models on the per-date representation, Sentinel-2 alone ----------------------
def test_frozen_representation_feeds_a_base_model_that_beats_chance_widely(toy_pixel_series, held_out_accuracy):
    torch.manual_seed(0)
    pre = build(TINY, _info(planetscope=False))
    task = make_pretext("bimodal", ps_loss=False, cloud_loss=False)        # the toy series have no PlanetScope
    optimizer = torch.optim.AdamW(pre.parameters(), lr=3e-3)
    samples = toy_pixel_series(64, seed=5)
    for step in range(20):
        loss, _ = task.training_step(pre, collate(samples[(step % 4) * 16:(step % 4 + 1) * 16]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    spec = registry.get("bimodal-bert+lstm")
    model = spec.build({"encoder": TINY, "base": {"hidden": 16, "layers": 1}}, _info(classes="abc", planetscope=False))
    model.encoder.load_state_dict(pre.encoder.state_dict())
    model.encoder.requires_grad_(False).eval()
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train, test = collate(toy_pixel_series(96, seed=3)), collate(toy_pixel_series(60, seed=4))
    accuracy = held_out_accuracy(model, train, test, steps=60, lr=1e-2)
    assert accuracy > 0.8                                                  # chance is 1/3
    assert all(torch.equal(v, frozen[k]) for k, v in model.encoder.state_dict().items())


def test_only_pretrained_encoders_with_per_date_outputs_stack():
    with pytest.raises(ConfigError, match="not a pre-trained encoder"):
        registry.get("lstm+transformer")
    with pytest.raises(ConfigError, match="cannot run on an encoder"):
        registry.get("bimodal-bert+rf")
    with pytest.raises(ConfigError, match="no per-date representation"):
        registry.get("sitsbert+lstm").build({}, _info(classes="ab"))


def test_finetune_a_base_model_then_map_from_sentinel2_alone(pretrained, data, scene, tmp_path, cli):
    code, out, err = cli("finetune", data, "--from", pretrained.run_dir, "--model", "lstm", "--mode", "frozen",
                         "--out", tmp_path / "ft", "--epochs", "2", "--batch-size", "32", "--hparam", "hidden=16",
                         "--seed", "0", "--json")
    assert code == 0, err
    card = (tmp_path / "ft" / "model.yaml").read_text()
    assert "model: bimodal-bert+lstm" in card and json.loads(out)["model"] == "bimodal-bert+lstm"
    # the map reads the Sentinel-2 folder only: no PlanetScope anywhere
    code, _, err = cli("predict-map", scene.l2a, "--model", tmp_path / "ft", "--out", tmp_path / "map.tif",
                       "--confidence", tmp_path / "conf.tif")
    assert code == 0, err
    with rasterio.open(tmp_path / "map.tif") as src:
        classes = src.read(1)
        assert src.crs.to_epsg() == 32631 and src.shape == (32, 32) and src.res == (10.0, 10.0)
        assert classes.max() < len(scene.class_names) and len(np.unique(classes)) > 1


def test_full_mode_also_trains_the_encoder(pretrained, data, tmp_path):
    from sitscli.engine.checkpoint import load_model
    from sitscli.workflows.finetune import finetune

    result = finetune(out=tmp_path / "full", data=data, from_run=pretrained.run_dir, model="transformer", mode="full",
                      epochs=1, batch_size=32, lr=1e-3, hparams={"d_model": 16, "heads": 2, "layers": 1}, seed=0,
                      device="cpu")
    tuned, card = load_model(result.run_dir)
    original, _ = load_model(pretrained.run_dir)
    assert card.model_name == "bimodal-bert+transformer" and card.hparams["base"]["d_model"] == 16
    assert not torch.equal(tuned.encoder.embed.weight, original.encoder.embed.weight)


def test_a_pretrained_run_refuses_other_sentinel2_bands(pretrained, bad_data, tmp_path, cli):
    code, _, err = cli("finetune", bad_data, "--from", pretrained.run_dir, "--model", "lstm", "--out", tmp_path / "r")
    assert code != 0 and "lacks B05" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---- the baseline: resmlp-contrastive ------------------------------------------------------------
def test_contrastive_pairs_are_clear_spectra_of_the_same_day():
    from sitscli.ssl.bimodal_contrastive import draw_pairs

    dates = _days("2022-05-01", "2022-05-04", "2022-05-07").view(1, 3).repeat(2, 1)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    ps_dates = _days("2022-05-01", "2022-05-04", "2022-05-07", "2022-05-08").view(1, 4).repeat(2, 1)
    ps_valid = torch.zeros(2, 4, 3, 3, dtype=torch.bool)
    ps_valid[0, 2, 1, 1] = True                       # pixel 0: only 05-07 clear in both sensors
    ps_valid[0, 0] = True
    ps_valid[1, 3] = True                             # pixel 1: PlanetScope clear on 05-08 only, S2 on 05-04
    seen = set()
    for seed in range(20):
        s2, ps, ok = draw_pairs(dates, valid, ps_dates, ps_valid, 0, torch.Generator().manual_seed(seed))
        assert ok.tolist() == [True, False]
        seen.add((s2[0].item(), ps[0].item()))
    assert seen == {(0, 0), (2, 2)}                   # both same-day clear pairs, and only those
    _, _, ok = draw_pairs(dates, valid, ps_dates, ps_valid, 4, torch.Generator().manual_seed(0))
    assert ok.tolist() == [True, True]                # within 4 days, 05-04 meets 05-08


def test_info_nce_is_low_for_aligned_pairs_and_log_n_for_unrelated_ones():
    from sitscli.ssl.bimodal_contrastive import info_nce

    z = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    assert info_nce(z, z, 0.05).item() < 0.1
    other = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    assert info_nce(z, other, 100.0).item() == pytest.approx(np.log(64), rel=0.01)


def test_resmlp_contrastive_pretrains_and_serves_a_base_model(data, bad_data, tmp_path):
    from sitscli.workflows.finetune import finetune

    run = pretrain(out=tmp_path / "pre", data=data, model="resmlp-contrastive", hparams={"width": 32, "blocks": 1},
                   epochs=6, batch_size=64, lr=3e-3, seed=0, device="cpu")
    epochs = run.fit.history
    assert epochs[-1]["train_loss"] < 0.9 * epochs[0]["train_loss"] and epochs[0]["train_paired"] > 0.5
    tuned = finetune(out=tmp_path / "ft", data=data, from_run=run.run_dir, model="inceptiontime", mode="frozen",
                     epochs=1, batch_size=32, hparams={"depth": 3, "filters": 8}, seed=0, device="cpu")
    assert tuned.report["model"] == "resmlp-contrastive+inceptiontime"
    with pytest.raises(DataContentError, match="no PlanetScope"):
        pretrain(out=tmp_path / "bad", data=bad_data, model="resmlp-contrastive", epochs=1)
    assert not (tmp_path / "bad").exists()
