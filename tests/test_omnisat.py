"""OmniSat model pieces, pretext losses and training on toy tiles (tiny models, in-memory batches)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.models import registry
from sitscli.models.omnisat import (ImageDecoder, ImageEncoder, OmniSatClassifier, OmniSatPretrain, build,
                                    euclidean_buckets, patchify, unpatchify)
from sitscli.ssl.omnisat import OmniSatTask, contrastive_loss, reconstruction_loss, top_dates

TINY = {"d_model": 16, "depth": 1, "heads": 2, "dropout": 0.0, "ltae_in": [8, 16], "ltae_heads": 2, "ltae_d_k": 4,
        "ltae_mlp": [16, 16], "ltae_dropout": 0.0, "patch": 2}
START = int(np.datetime64("2021-01-01", "D").astype(np.int64))
S1 = {"band_names": ["VV", "VH", "VV/VH"], "band_mean": [-10.0, -16.0, 6.0], "band_std": [3.0, 3.0, 2.0],
      "resolution": 10.0, "footprint": [4, 4], "unit": "dB"}
VHR = {"band_names": ["R", "G", "B", "NIR"], "band_mean": [0.1] * 4, "band_std": [0.05] * 4, "resolution": 2.5,
       "footprint": [16, 16], "unit": "reflectance"}


def info(num_classes: int = 0, bands: int = 4, modalities=("s1", "vhr"), vhr=VHR) -> registry.DataInfo:
    others = {"s1": S1, "vhr": vhr}
    return registry.DataInfo(band_names=[f"B{i}" for i in range(bands)], band_mean=[0.2] * bands, band_std=[0.1] * bands,
                             class_names=[f"c{i}" for i in range(num_classes)], reference_date=START,
                             modalities={m: others[m] for m in modalities})


def tiles(b: int = 4, size: int = 4, t: int = 12, bands: int = 4, classes: int = 3, patch: int = 2, k: int = 4,
          seed: int = 0) -> dict[str, torch.Tensor]:
    """Toy tiles whose patches (patch x patch pixels) each hold a class: its Sentinel-2 bump peaks at a
    class-specific day, its S1 VH level and VHR brightness follow the class; 15 % of S2 pixel-dates cloudy.
    Every seed shares one acquisition calendar (that of a satellite), labels and noise differ."""
    g = torch.Generator().manual_seed(seed)
    grid = size // patch
    labels = torch.randint(0, classes, (b, grid, grid), generator=g)
    y = labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)                   # (B, H, W)
    days = torch.sort(torch.randperm(365, generator=torch.Generator().manual_seed(t))[:t]).values   # one calendar
    peaks = 60.0 + 100.0 * y.float()                                                   # (B, H, W)
    curve = torch.exp(-0.5 * ((days[None, :, None, None] - peaks[:, None]) / 30.0) ** 2)  # (B, T, H, W)
    gains = torch.linspace(0.1, 0.4, bands)
    values = 0.05 + gains[None, None, :, None, None] * curve[:, :, None] + 0.01 * torch.randn(b, t, bands, size, size, generator=g)
    valid = torch.rand(b, t, size, size, generator=g) > 0.15
    t1 = 9
    s1 = torch.randn(b, t1, 3, size, size, generator=g) + torch.tensor([-10.0, -16.0, 6.0])[None, None, :, None, None]
    s1[:, :, 1] += 2.0 * y[:, None].float()
    vhr = 0.1 + 0.05 * y.float().repeat_interleave(k, 1).repeat_interleave(k, 2)[:, None].expand(b, 4, -1, -1)
    return {"values": (values * valid[:, :, None]).float(), "valid": valid,
            "dates": (START + days).long().expand(b, t).clone(), "y": y,
            "s1_values": s1.float(), "s1_valid": torch.ones(b, t1, size, size, dtype=torch.bool),
            "s1_dates": (START + 7 * torch.arange(t1)).long().expand(b, t1).clone(),
            "vhr_values": (vhr + 0.01 * torch.randn(vhr.shape, generator=g)).float(),
            "vhr_valid": torch.ones(b, size * k, size * k, dtype=torch.bool)}


def s2_only(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith(("s1_", "vhr_"))}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- tokenisation, shapes, parameter counts ------------------------------------------------------

def test_patchify_round_trips_and_orders_patches_row_major():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)      # (B, C, H, W)
    p = patchify(x, 2)                                                             # (B, 6, C, 4)
    assert p.shape == (2, 6, 3, 4)
    torch.testing.assert_close(p[0, 1, 0], x[0, 0, 0:2, 2:4].flatten())          # second patch: first row, cols 2-3
    torch.testing.assert_close(unpatchify(p, 2, 3, 2), x)


@pytest.mark.parametrize("patch, size", [(1, 4), (2, 4), (4, 8)])
def test_token_shapes_per_modality(patch, size):
    torch.manual_seed(0)
    k = 4
    vhr = dict(VHR, footprint=[size * k, size * k])
    model = build({**TINY, "patch": patch}, info(vhr=vhr)).eval()
    batch = tiles(b=2, size=size, patch=patch, k=k)
    encoded = model.encoder.encode(batch)
    n = (size // patch) ** 2
    assert list(encoded) == ["s2", "s1", "vhr"]
    for e in encoded.values():
        assert e.tokens.shape == (2, n, TINY["d_model"])
    assert encoded["s2"].target.shape == (2, n, 12, 4 * patch * patch)
    assert encoded["s1"].attention.shape == (2, n, 9)
    assert encoded["vhr"].target.shape == (2, n, 4, k * patch, k * patch)
    assert model.encoder(batch).shape == (2, n, TINY["d_model"])


def test_parameter_counts_match_the_paper():
    """Section 3.4: combiner ~3.6 M parameters, Sentinel-2 encoder ~403 k (10 bands, 10 m patches, d = 256)."""
    full = info(bands=10, modalities=())
    encoder = build({}, full).encoder
    assert count(encoder.combiner) == pytest.approx(3.6e6, rel=0.02)
    assert count(encoder.encoders["s2"]) == pytest.approx(403e3, rel=0.005)


def test_relative_buckets_follow_the_piecewise_euclidean_index():
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 4.0], [30.0, 40.0]])
    buckets = euclidean_buckets(points[:1], points, 1.9)[0]
    # distances 0, 1, 1.41 (<= alpha 1.9: rounded), 5 -> 1.9 + ln(5/1.9)/ln(8) * 1.9 = 2.78 -> 3, 50 -> beta 3.8 -> 4
    assert buckets.tolist() == [0, 1, 1, 3, 4]


def test_registry_and_model_kinds():
    spec = registry.get("omnisat")
    assert spec.input == "patch" and spec.pretext == "omnisat"
    assert spec.modalities == ("s2",) and set(spec.optional_modalities) == {"s1", "vhr"}
    assert isinstance(build(TINY, info()), OmniSatPretrain)
    classifier = build(TINY, info(num_classes=3))
    assert isinstance(classifier, OmniSatClassifier)
    assert classifier(tiles()).shape == (4, 3, 4, 4)
    assert build({**TINY, "task": "tile"}, info(num_classes=3))(tiles()).shape == (4, 3)


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="do not divide"):
        build({**TINY, "patch": 3}, info(num_classes=2))(tiles(size=4))
    with pytest.raises(ConfigError, match="divides 10 m"):
        build(TINY, info(vhr=dict(VHR, resolution=3.0)))
    batch = tiles(k=4)
    batch["vhr_values"] = batch["vhr_values"][..., :12, :12]
    batch["vhr_valid"] = batch["vhr_valid"][..., :12, :12]
    with pytest.raises(DataContentError, match="VHR resolution"):
        build(TINY, info(num_classes=2))(batch)
    with pytest.raises(ConfigError, match="task"):
        build({**TINY, "task": "pixel"}, info(num_classes=2))


def test_trained_on_three_modalities_predicts_from_sentinel2_alone():
    torch.manual_seed(0)
    model = build(TINY, info(num_classes=3)).eval()
    batch = tiles()
    with torch.no_grad():
        alone, together = model(s2_only(batch)), model(batch)
    assert alone.shape == together.shape == (4, 3, 4, 4)
    assert torch.isfinite(alone).all() and not torch.allclose(alone, together)


# ---- pretext losses -------------------------------------------------------------------------------

def test_contrastive_loss_matches_a_hand_computation_and_skips_same_tile_same_modality():
    # one tile, modalities a and b, patches 0 and 1: a0 = a1 = (1, 0) (same modality and tile: never
    # compared), b0 = (1, 0), b1 = (0, 1). With temperature 0.1, cosine 1 -> 10 and 0 -> 0:
    # a0: positive b0 (10), negative b1 (0): log(e^10 + 1) - 10
    # a1: positive b1 (0), negative b0 (10): log(e^10 + 1)
    # b0: positive a0 (10), negative a1 (10): log 2;  b1: positive a1 (0), negative a0 (0): log 2
    tokens = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]]])     # (B=1, M=2, N=2, d=2)
    expected = (2 * math.log(math.exp(10) + 1) - 10 + 2 * math.log(2)) / 4
    assert contrastive_loss(tokens, 0.1).item() == pytest.approx(expected, rel=1e-5)
    # scaling a token leaves cosine similarities, hence the loss, unchanged
    assert contrastive_loss(tokens * 3.0, 0.1).item() == pytest.approx(expected, rel=1e-5)
    assert contrastive_loss(tokens[:, :1], 0.1).item() == 0.0                       # one modality: nothing to contrast


def test_top_dates_keep_the_most_attended_quarter_of_the_attended_dates():
    attention = torch.tensor([[0.1, 0.4, 0.0, 0.2, 0.3, 0.0, 0.0, 0.0], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0]])
    keep = torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    chosen = top_dates(attention, keep, 0.25)
    # row 0: 7 attended dates -> ceil(1.75) = 2: dates 1 (0.4) and 4 (0.3); row 1: 6 -> 2: date 0 and the first 0.1
    assert chosen[0].nonzero().flatten().tolist() == [1, 4]
    assert chosen[1].nonzero().flatten().tolist() == [0, 1]


def test_reconstruction_loss_is_the_mean_over_tokens_of_their_mean_squared_error():
    target = torch.zeros(2, 3, 2)
    prediction = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]], [[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    weight = torch.tensor([[[1], [1], [0]], [[1], [0], [0]]], dtype=torch.bool)
    # token 0: (1 + 1 + 4 + 4) / 4 = 2.5; token 1: (9 + 0) / 2 = 4.5 -> 3.5; the unweighted 9s never count
    assert reconstruction_loss(prediction, target, weight).item() == pytest.approx(3.5)


def pretrain_outputs(seed: int = 0):
    torch.manual_seed(seed)
    model = build(TINY, info()).eval()
    task = OmniSatTask(mask_ratio=0.5)
    with torch.no_grad():
        out = model(tiles(), task.mask_ratio, torch.Generator().manual_seed(seed))
    return model, task, out


def test_masks_differ_across_modalities_and_only_masked_tokens_are_rebuilt():
    _, task, out = pretrain_outputs()
    mask = out["mask"]                                                              # (B, M, N)
    assert mask.shape == (4, 3, 4) and mask.float().mean().item() == pytest.approx(0.5)
    assert not all(torch.equal(mask[:, 0], mask[:, i]) for i in (1, 2))
    for i, name in enumerate(out["names"]):
        prediction, index = out["rebuilt"][name]
        assert index.tolist() == mask[:, i].flatten().nonzero().flatten().tolist()
        encoded = out["encoded"][name]
        before = task.modality_loss(name, encoded, prediction, index)
        unmasked = ~mask[:, i]
        encoded.target[unmasked] += 100.0                                           # unmasked tokens do not count
        assert task.modality_loss(name, encoded, prediction, index).item() == pytest.approx(before.item(), rel=1e-6)
        encoded.target[mask[:, i]] += 100.0                                         # masked ones do
        assert task.modality_loss(name, encoded, prediction, index).item() > before.item() + 100


def test_only_the_top_dates_enter_the_sentinel2_loss():
    _, task, out = pretrain_outputs()
    encoded = out["encoded"]["s2"]
    _, index = out["rebuilt"]["s2"]
    target = encoded.target.flatten(0, 1)[index]
    chosen = top_dates(encoded.attention.flatten(0, 1)[index], encoded.keep.flatten(0, 1)[index], 0.25)   # (n, T)
    wrong_elsewhere = target + 5.0 * (~chosen)[..., None]                          # errors on the other dates only
    assert task.modality_loss("s2", encoded, wrong_elsewhere, index).item() == 0.0
    wrong_on_top = target + 5.0 * chosen[..., None]
    assert task.modality_loss("s2", encoded, wrong_on_top, index).item() > 1.0
    unfiltered = OmniSatTask(mask_ratio=0.5, date_filter=False)
    assert unfiltered.modality_loss("s2", encoded, wrong_elsewhere, index).item() > 1.0
    # Sentinel-1 is never filtered: an error on any date counts
    s1 = out["encoded"]["s1"]
    _, index1 = out["rebuilt"]["s1"]
    assert task.modality_loss("s1", s1, s1.target.flatten(0, 1)[index1] + 1.0, index1).item() == pytest.approx(1.0)


def test_switches_and_bad_options():
    with pytest.raises(ConfigError, match="switch off both"):
        OmniSatTask(contrastive=False, reconstruction=False)
    with pytest.raises(ConfigError, match="mask_ratio"):
        OmniSatTask(mask_ratio=1.0)
    model, _, _ = pretrain_outputs()
    batch = tiles()
    only_rec = OmniSatTask(contrastive=False).losses(model, batch, torch.Generator().manual_seed(0))
    assert only_rec["loss"].item() == pytest.approx(only_rec["rec"].item())
    only_con = OmniSatTask(reconstruction=False).losses(model, batch, torch.Generator().manual_seed(0))
    assert only_con["loss"].item() == pytest.approx(only_con["con"].item())


# ---- learning -------------------------------------------------------------------------------------

def spots(n: int, side: int, seed: int) -> torch.Tensor:
    """(n, 2, side, side) images each with one bright 1-pixel spot per channel at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2, side * side)
    x.scatter_(2, torch.randint(0, side * side, (n, 2, 1), generator=g), 4.0)
    return x.reshape(n, 2, side, side)


def test_unpooling_decoder_rebuilds_a_patch_better_than_one_without_indices():
    errors = {}
    for unpooling in (True, False):
        torch.manual_seed(0)
        encoder, decoder = ImageEncoder(2, 8, 8), ImageDecoder(2, 8, 8, unpooling)
        opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-2)
        for step in range(60):
            x = spots(32, 8, step)
            tokens, pool = encoder(x)
            loss = ((decoder(tokens, pool) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = spots(64, 8, 999)
            tokens, pool = encoder.eval()(x)
            errors[unpooling] = ((decoder.eval()(tokens, pool) - x) ** 2).mean().item()
    assert errors[True] < 0.5 * errors[False]


def test_pretraining_lowers_both_losses():
    torch.manual_seed(0)
    model = build(TINY, info())
    task = OmniSatTask(mask_ratio=0.5)
    batch = tiles(b=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = task.validation_step(model.eval(), batch)
    model.train()
    for epoch in range(40):
        task.on_epoch_start(epoch)
        loss, logs = task.training_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.validation_step(model.eval(), batch)
    assert after["con"] < 0.8 * before["con"] and after["rec"] < 0.5 * before["rec"]
    assert {"con", "rec", "rec_s2", "rec_s1", "rec_vhr"} <= set(logs)


def test_fine_tuned_dense_classifier_beats_chance_widely():
    torch.manual_seed(0)
    model = build(TINY, info(num_classes=3, modalities=()))
    train, test = s2_only(tiles(b=16, seed=1)), s2_only(tiles(b=16, seed=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(train), train["y"])       # (B, K, H, W) against (B, H, W)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(test).argmax(1) == test["y"]).float().mean().item()
    assert accuracy > 0.8            # chance: 1/3


# ---- through the CLI, on the synthetic three-sensor scene -------------------------------------------

CLI_HPARAMS = [f"--hparam={k}={v}" for k, v in {**TINY, "ltae_in": "[8,16]", "ltae_mlp": "[16,16]"}.items()]
TRAIN = ["--epochs", "2", "--batch-size", "4", "--lr", "0.003", "--seed", "0"]


@pytest.fixture
def cli(monkeypatch, capsys):
    from tests._cli import sits

    return lambda *args: sits(monkeypatch, capsys, *args)


def run(*args) -> None:
    """`sits ARGS` in-process for module fixtures (no capsys there); fails the test on a non-zero exit."""
    import sys
    from unittest import mock

    from sitscli.cli.app import main

    with mock.patch.object(sys, "argv", ["sits", *map(str, args)]):
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"sits {' '.join(map(str, args))} exited with {exc.code}"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The synthetic scene seen by Sentinel-2, Sentinel-1 and a 1 m ortho, cut into 8 x 8 tiles."""
    from sitscli.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("omnisat")
    s = write_synthetic(root / "scene", size=32, seed=3, years=1, sensors=("s2", "s1", "vhr"))
    run("prepare", "s2", s.l2a, "--labels", s.parcels, "--class-field", s.class_field, "--out", root / "tiles.sits",
        "--patch-size", 8, "--s1", s.s1, "--vhr", s.vhr)
    return s, root / "tiles.sits"


@pytest.fixture(scope="module")
def pretrained(scene, tmp_path_factory):
    """A tiny OmniSat pre-trained on the three sensors, and one on Sentinel-2 alone."""
    runs = tmp_path_factory.mktemp("runs")
    for name, extra in (("mm", []), ("s2", ["--modalities", "s2"])):
        run("pretrain", scene[1], "--model", "omnisat", "--out", runs / name, *CLI_HPARAMS, *TRAIN, *extra)
    return runs / "mm", runs / "s2"


def test_cli_pretrain_three_sensors_then_finetune_probe_and_map_with_all_or_sentinel2_alone(cli, scene, pretrained, tmp_path):
    import json

    import rasterio
    import yaml

    from sitscli.data.readers import open_source

    s, data = scene
    mm, _ = pretrained
    card = yaml.safe_load((mm / "model.yaml").read_text())
    assert card["extra"]["modalities"] == ["s2", "s1", "vhr"] and set(card["data"]["modalities"]) == {"s1", "vhr"}
    history = json.loads((mm / "history.json").read_text())["epochs"]
    assert {"train_con", "train_rec_vhr", "val_rec_s2"} <= set(history[0])
    for name, extra in (("all", []), ("s2", ["--modalities", "s2"])):
        code, out, err = cli("finetune", data, "--from", mm, "--out", tmp_path / name, *TRAIN, "--json", *extra)
        assert code == 0, err
        assert json.loads(out)["samples"] > 0
    assert yaml.safe_load((tmp_path / "s2" / "model.yaml").read_text())["extra"]["modalities"] == ["s2"]
    code, out, err = cli("probe", data, "--from", mm, "--out", tmp_path / "probe", *TRAIN, "--modalities", "s2")
    assert code == 0, err
    grid = open_source(s.l2a).grid
    maps = {}
    for name, run_dir, extra in (("all", "all", ["--s1", s.s1, "--vhr", s.vhr]), ("s2", "s2", []), ("mm-s2", "all", [])):
        code, out, err = cli("predict-map", s.l2a, "--model", tmp_path / run_dir, "--out", tmp_path / f"{name}.tif", *extra)
        assert code == 0, err
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            assert ds.crs == grid.crs and ds.transform == grid.transform
            maps[name] = ds.read(1)
    for classes in maps.values():                        # one class per 2 x 2 patch: a map at patch resolution
        blocks = classes.reshape(16, 2, 16, 2).transpose(0, 2, 1, 3).reshape(256, 4)
        observed = (blocks != 255).all(1)
        assert observed.mean() > 0.9 and (blocks[observed] == blocks[observed][:, :1]).all()


def test_cli_tile_multilabel_classification_reports_weighted_f1(cli, scene, pretrained, tmp_path):
    import json

    code, out, err = cli("finetune", scene[1], "--from", pretrained[0], "--out", tmp_path / "tile", *TRAIN,
                         "--hparam", "task=tile", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["multilabel"] and 0 <= report["weighted_f1"] <= 1 and "confusion" not in report
    assert (tmp_path / "tile" / "per_class.csv").is_file()
    code, _, err = cli("predict-map", scene[0].l2a, "--model", tmp_path / "tile", "--out", tmp_path / "m.tif")
    assert code != 0 and "task=dense" in err and not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("case", ["missing-sensor", "grid", "not-pretrained-with", "map-unknown-sensor"])
def test_cli_bad_inputs_one_line_and_nothing_left(cli, scene, pretrained, tmp_path, case):
    s, data = scene
    out = tmp_path / "run"
    if case == "missing-sensor":
        s2_only_data = tmp_path / "s2.sits"
        assert cli("prepare", "s2", s.l2a, "--labels", s.parcels, "--class-field", s.class_field, "--out", s2_only_data,
                   "--patch-size", 8)[0] == 0
        args, expected = ("pretrain", s2_only_data, "--model", "omnisat", "--modalities", "s2,s1"), "no s1 data"
    elif case == "grid":
        args, expected = ("pretrain", data, "--model", "omnisat", *CLI_HPARAMS, "--hparam", "patch=3"), "do not divide"
    elif case == "not-pretrained-with":
        args, expected = ("finetune", data, "--from", pretrained[1], "--modalities", "s2,vhr"), "without vhr"
    else:
        s2_run = tmp_path / "s2run"
        assert cli("finetune", data, "--from", pretrained[1], "--out", s2_run, *TRAIN)[0] == 0
        args, expected = ("predict-map", s.l2a, "--model", s2_run, "--vhr", s.vhr), "trained without vhr"
        out = tmp_path / "map.tif"
    code, _, err = cli(*args, "--out", out, *TRAIN[:4] if args[0] != "predict-map" else ())
    last = err.strip().splitlines()[-1]
    assert code != 0 and last.startswith("error:") and expected in last     # one line says what is wrong
    assert not out.exists()
