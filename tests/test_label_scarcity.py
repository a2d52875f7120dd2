"""bench/label_scarcity.py: the few-label copies of the Slovenia scene, the ALISE arms' patch copies (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sitscli.core.config import load_yaml
from sitscli.data.prepared import open_prepared
from sitscli.data.splits import TEST, TRAIN, UNLABELED, VAL
from tests._bench import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("label_scarcity")


def everything(path: Path) -> dict[str, np.ndarray]:
    prepared = open_prepared(path)
    return prepared.read(0, prepared.n_samples) | {"classes": prepared.class_names}


@pytest.fixture(scope="module")
def slovenia(bench, real_data, tmp_path_factory) -> Path:
    """The whole scene in pixel mode: every pixel of every polygon, and the pool outside them."""
    return bench.prepare_slovenia(real_data / "slovenia-s2-ndvi", tmp_path_factory.mktemp("slo") / "full.sits", seed=0)


def polygons(d: dict, code: int, k: int) -> set:
    return set(np.unique(d["group"][(d["split"] == code) & (d["y"] == k)]).tolist())


def test_slovenia_full_scene_is_every_pixel(slovenia):
    """100 x 101 px: every pixel with a clear date is a sample, outside the polygons in the pool."""
    d = everything(slovenia)
    assert 9900 < len(d["y"]) <= 100 * 101 and len(d["classes"]) == 5
    pool = d["split"] == UNLABELED
    assert pool.any() and (d["y"][pool] == -1).all()
    assert (d["y"][~pool] >= 0).all()
    assert len(np.unique(d["xy"], axis=0)) == len(d["y"])       # no pixel twice


@pytest.mark.parametrize("level", [2, 5])
def test_slovenia_reduction_keeps_level_polygons_per_class(bench, slovenia, tmp_path, level):
    """Train: `level` polygons of each class labelled (all of a class that has fewer), at most the
    labelled pixels of each; val: one polygon per class; test untouched; the rest in the pool."""
    counts = bench.reduce_labels(slovenia, tmp_path / "few.sits", train_per_class=level, val_per_class=1,
                                 pixels_per_parcel=3, seed=1)
    full, few = everything(slovenia), everything(tmp_path / "few.sits")
    assert len(few["y"]) == len(full["y"])
    np.testing.assert_array_equal(few["xy"], full["xy"])
    for k, name in enumerate(full["classes"]):
        kept = polygons(few, TRAIN, k)
        assert len(kept) == min(level, len(polygons(full, TRAIN, k))) == counts["train"]["parcels_per_class"][name]
        assert kept <= polygons(full, TRAIN, k)
        assert len(polygons(few, VAL, k)) == min(1, len(polygons(full, VAL, k)))
    labelled = np.isin(few["split"], (TRAIN, VAL))
    for g in np.unique(few["group"][labelled]):
        assert (labelled & (few["group"] == g)).sum() == min(3, (full["group"] == g).sum())
    test = full["split"] == TEST
    np.testing.assert_array_equal(few["split"] == TEST, test)
    for key in ("x", "valid", "y", "group"):
        np.testing.assert_array_equal(few[key][test], full[key][test])
    pool = few["split"] == UNLABELED
    np.testing.assert_array_equal(pool, ~test & ~labelled)     # every other pixel, inside polygons or not
    assert (few["y"][pool] == -1).all() and counts["unlabeled_pixels"] == pool.sum()
    np.testing.assert_array_equal(few["x"][pool], full["x"][pool])


def test_labelled_pixels_drawn_at_random_in_the_parcel(bench):
    """Not the first pixels in storage (raster) order: another seed, other pixels; always `per_group` each."""
    group = np.repeat(np.arange(4), 50)
    picks = [bench.some_pixels(group, 5, np.random.default_rng(seed)) for seed in (0, 1)]
    for keep in picks:
        np.testing.assert_array_equal(np.bincount(group[keep]), [5, 5, 5, 5])
    assert not np.array_equal(*picks)
    np.testing.assert_array_equal(bench.some_pixels(group, 80, np.random.default_rng(0)), np.ones(200, bool))


def test_gain_is_paired_by_seed_with_its_interval(bench):
    """Differences are taken seed by seed (same parcels); the 95 % t interval of 3 seeds is
    mean +- 4.303 sd / sqrt(3); a lone seed has no interval."""
    runs = {"sitsbert_full": {5: [{"seed": s, "oa": oa, "macro_f1": oa} for s, oa in [(0, 0.80), (1, 0.85), (2, 0.90)]]},
            "sitsbert_scratch": {5: [{"seed": s, "oa": oa, "macro_f1": oa} for s, oa in [(2, 0.88), (0, 0.70), (1, 0.80)]]}}
    gain = bench.gains(runs)["sitsbert_full"][5]
    assert gain["seeds"] == [0, 1, 2]
    assert gain["oa"]["per_seed"] == [0.1, 0.05, 0.02]
    assert gain["oa"]["seeds_gaining"] == 3
    half = 4.3027 * 0.0404 / 3 ** 0.5
    assert gain["oa"]["ci95"] == pytest.approx([0.0567 - half, 0.0567 + half], abs=2e-4)
    assert bench.paired_gain([0.03])["ci95"] is None


def test_dataset_defaults(bench):
    """The levels and val/labelled sizes follow the scene unless given."""
    args = bench.parse_args(["--dataset", "slovenia"])
    assert (args.levels, args.val_parcels_per_class, args.labelled_pixels) == ([1, 2, 3, 5], 1, 20)
    args = bench.parse_args(["--levels", "5,10", "--labelled-pixels", "4"])
    assert (args.dataset, args.levels, args.val_parcels_per_class, args.labelled_pixels) == ("synthetic", [5, 10], 3, 4)


def test_resume_of_a_workdir_made_before_the_dataset_options(bench, tmp_path):
    """A synthetic workdir saved without --dataset/--class-weights/--finetune-monitor resumes with
    their defaults, and refuses another dataset."""
    args = bench.parse_args([])
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "report_only", "real_root")}
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps({k: v for k, v in settings.items()
                                 if k not in ("dataset", "class_weights", "finetune_monitor", "pretrain_min_delta")}))
    bench.check_same_settings(saved, settings, bench.FREE_ON_RESUME)
    with pytest.raises(SystemExit, match="dataset was 'synthetic'"):
        bench.check_same_settings(saved, settings | {"dataset": "slovenia"}, bench.FREE_ON_RESUME)


def test_pretraining_stopping_rule_may_change_until_it_has_finished(bench, tmp_path):
    """An unfinished pre-training may be resumed with another cap, patience or min_delta (the
    engine allows it); once finished, its settings are those of the runs made from it."""
    settings = {k: v for k, v in vars(bench.parse_args([])).items() if k not in ("workdir", "report_only", "real_root")}
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps(settings))
    longer = settings | {"pretrain_epochs": 60, "pretrain_patience": 8, "pretrain_min_delta": 0.01}
    bench.check_same_settings(saved, longer, bench.FREE_ON_RESUME + bench.PRETRAIN_STOPPING["pretrain"])
    with pytest.raises(SystemExit, match="pretrain_min_delta was 0.0, now 0.01"):
        bench.check_same_settings(saved, longer, bench.FREE_ON_RESUME)


# ALISE small enough for a 32 px scene of 16 px patches in seconds
ALISE_TINY = {"d_model": 8, "layers": 1, "heads": 2, "d_ff": 16, "n_q": 2, "proj_heads": 2, "d_emb": 8,
              "unet_widths": [4, 4, 8, 8], "dropout": 0.0, "run_length": 8, "crop": 16}
TINY_RUN = ["--size", "32", "--patch-size", "16", "--levels", "2", "--seeds", "3", "--pixels-per-parcel", "10",
            "--labelled-pixels", "3", "--val-parcels-per-class", "1", "--arms", "alise_probe,alise_scratch", "--small",
            "--alise-pretrain-epochs", "1", "--finetune-epochs", "1", "--scratch-epochs", "1", "--alise-lr", "0.003"]


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory) -> Path:
    """One level (2 parcels per class), one seed, the two ALISE arms, one epoch of everything."""
    work = tmp_path_factory.mktemp("scarcity")
    original = bench.ALISE_SMALL
    bench.ALISE_SMALL = ALISE_TINY
    try:
        bench.main(["--workdir", str(work), *TINY_RUN])
    finally:
        bench.ALISE_SMALL = original
    return work


def labelled_places(d: dict, transform, size: int) -> dict[tuple, tuple]:
    """(x, y) of every labelled pixel of a patch store -> (class, split), from each patch's centre."""
    a, e = transform.a, transform.e
    n, r, c = np.nonzero(d["y"] >= 0)
    x = d["xy"][n, 0] + (c - size / 2 + 0.5) * a
    y = d["xy"][n, 1] + (r - size / 2 + 0.5) * e
    return {(round(float(u), 3), round(float(v), 3)): (int(k), int(s))
            for u, v, k, s in zip(x, y, d["y"][n, r, c], d["split"][n])}


def test_tiny_run_reports_the_alise_arms(tiny_run):
    """The report holds both arms at the level, scored on the test pixels of the pixel copy, and the
    probe's gain over scratch; ALISE was pre-trained once; --alise-lr trains scratch, not the probe."""
    report = json.loads((tiny_run / "report.json").read_text())
    assert set(report["results"]) == {"alise_probe", "alise_scratch"}
    assert report["results"]["alise_probe"]["2"]["seeds"] == [3]
    assert set(report["gain_pretrained_minus_scratch"]) == {"alise_probe"}
    assert report["pretraining_alise"]["epochs_run"] == 1 and report["pretraining"] is None
    pixels = everything(tiny_run / "runs" / "parcels002_seed3" / "data.sits")
    tested = int(((pixels["split"] == TEST) & (pixels["y"] >= 0)).sum())
    for arm in ("alise_probe", "alise_scratch"):
        metrics = json.loads((tiny_run / "runs" / "parcels002_seed3" / arm / "metrics.json").read_text())
        assert metrics["split"] == "test" and metrics["samples"] == tested > 0
    lr = {arm: load_yaml(tiny_run / "runs" / "parcels002_seed3" / arm / "config.yaml")["lr"]
          for arm in ("alise_probe", "alise_scratch")}
    assert lr == {"alise_probe": 1e-4, "alise_scratch": 0.003}


def test_patch_copy_labels_the_pixel_copy_pixels(bench, tiny_run):
    """The patch copy of a level/seed labels exactly the pixel copy's labelled pixels (same place,
    class and split): train labels on the drawn parcels only, `--labelled-pixels` of each."""
    folder = tiny_run / "runs" / "parcels002_seed3"
    pixels, patches = everything(folder / "data.sits"), everything(folder / "patches.sits")
    transform = bench.grid_transform(tiny_run)
    labelled = pixels["y"] >= 0
    expected = {(round(float(u), 3), round(float(v), 3)): (int(k), int(s))
                for (u, v), k, s in zip(pixels["xy"][labelled], pixels["y"][labelled], pixels["split"][labelled])}
    assert labelled_places(patches, transform, 16) == expected
    full = everything(tiny_run / "full.sits")
    drawn = bench.keep_groups(full["group"], full["y"], full["split"] == TRAIN, 2, np.random.default_rng(3))
    train = labelled & (pixels["split"] == TRAIN)
    assert set(np.unique(pixels["group"][train]).tolist()) == set(drawn.tolist())
    in_full = np.bincount(full["group"], minlength=full["group"].max() + 1)[drawn]
    np.testing.assert_array_equal(np.bincount(pixels["group"][train], minlength=full["group"].max() + 1)[drawn],
                                  np.minimum(3, in_full))
    assert set(np.unique(patches["split"]).tolist()) <= {TRAIN, VAL, TEST}


def test_prepare_splits_polygons_alike_in_both_modes(bench, tiny_run):
    """prepare_s2 with the same seed: a labelled pixel of patches.sits is in the split full.sits gives
    its parcel (the patch copies do not rely on it: they take full.sits's labels)."""
    full, patches = everything(tiny_run / "full.sits"), everything(tiny_run / "patches.sits")
    patch, row, col = bench.pixel_places(full["xy"], patches["xy"], bench.grid_transform(tiny_run), 16)
    in_patch = patches["y"][patch, row, col]
    seen = in_patch >= 0
    assert seen.any()
    np.testing.assert_array_equal(patches["split"][patch][seen], full["split"][seen])
    np.testing.assert_array_equal(in_patch[seen], full["y"][seen])


def test_alise_arms_refused_on_slovenia(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset", "slovenia", "--arms", "rf,alise_full"])


def test_resume_of_a_workdir_made_before_the_alise_arms(bench, tmp_path):
    """A workdir saved without the ALISE options resumes with them; a changed SITS-BERT option still refuses."""
    args = bench.parse_args(["--arms", "alise_full", "--patch-size", "32"])
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "report_only", "real_root")}
    settings["alise_hparams"] = bench.ALISE_SMALL
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps({k: v for k, v in settings.items() if k not in bench.ALISE_SETTINGS}))
    bench.check_same_settings(saved, settings, bench.FREE_ON_RESUME)
    with pytest.raises(SystemExit, match="size was 256"):
        bench.check_same_settings(saved, settings | {"size": 512}, bench.FREE_ON_RESUME)
