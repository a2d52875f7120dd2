"""Warnings a practitioner needs: one log line each, where the situation arises (and none otherwise)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from sitscli.core.progress import Progress
from sitscli.data.prepared import SPLIT_CODES, PreparedWriter, open_prepared
from sitscli.engine.checkpoint import save_model
from sitscli.models import registry
from sitscli.models.registry import DataInfo
from sitscli.workflows.embed import warn_patch_size
from sitscli.workflows.finetune import warn_scarce_classes
from sitscli.workflows.pretrain import warn_folded_years


def toy_dataset(path, first: str, last: str, per_class: dict[str, int]):
    """Pixel samples of one band, dated between `first` and `last`, `per_class` training samples each."""
    names = list(per_class)
    dates = np.array([np.datetime64(first), np.datetime64(last)]).astype("datetime64[D]").astype(np.int32)
    with PreparedWriter(path, n_time=2, band_names=["NDVI"], class_names=names, sensor="S2", source="test") as w:
        for k, (name, n) in enumerate(per_class.items()):
            w.append(x=np.full((n, 2, 1), 0.3), valid=np.ones((n, 2), bool), date=dates, y=[k] * n,
                     split=[SPLIT_CODES["train"]] * n, group=np.arange(n) + 100 * k)
    return open_prepared(path)


def test_two_years_folded_onto_day_of_year(tmp_path, capsys):
    two_years = toy_dataset(tmp_path / "two", "2020-10-01", "2022-09-30", {"a": 12, "b": 12})
    warn_folded_years(two_years, registry.get("rf"), {})
    err = capsys.readouterr().err
    assert "spans 2020-10-01 to 2022-09-30 (730 days) but rf folds dates onto the day of year" in err
    assert "prepare one season per dataset" in err and err.count("\n") == 1

    ltae = registry.get("ltae")
    warn_folded_years(two_years, ltae, ltae.defaults)
    assert "--hparam positions=reference" in capsys.readouterr().err      # the model can count days instead
    warn_folded_years(two_years, ltae, {**ltae.defaults, "positions": "reference"})
    one_year = toy_dataset(tmp_path / "one", "2021-10-01", "2022-09-30", {"a": 12, "b": 12})
    warn_folded_years(one_year, registry.get("rf"), {})
    assert capsys.readouterr().err == ""


def test_classes_with_few_training_samples_are_named(tmp_path, capsys):
    warn_scarce_classes(toy_dataset(tmp_path / "d", "2021-03-01", "2021-09-01", {"wheat": 25, "rice": 3, "oats": 9}))
    err = capsys.readouterr().err
    assert "2 class(es) with fewer than 10 training samples: rice (3), oats (9)" in err and "wheat" not in err
    warn_scarce_classes(toy_dataset(tmp_path / "e", "2021-03-01", "2021-09-01", {"wheat": 25, "rice": 10}))
    assert capsys.readouterr().err == ""


def test_predict_map_dates_outside_the_training_period(tmp_path, capsys):
    from test_predict_map import BANDS, CLASSES, ArrayCube, MeanNdvi

    from sitscli.workflows.predict_map import predict_map

    cube = ArrayCube()                                     # dates 18000 + 12 * (0..8)
    for name, period in (("inside", [17990, 18100]), ("outside", [18000, 18050]), ("old", [])):
        info = DataInfo(list(BANDS), [0.06, 0.2], [0.02, 0.1], class_names=list(CLASSES), train_period=period)
        save_model(tmp_path / name, MeanNdvi(3), model_name="test-ndvi", hparams={}, info=info, task="classify")
        predict_map(cube, model=tmp_path / name, out=tmp_path / f"{name}.tif", device="cpu")
        err = capsys.readouterr().err
        expected = "4 of 9 input dates lie outside the training period 2019-04-14 to 2019-06-03"
        assert (expected in err) == (name == "outside"), err


def test_otsu_flagging_most_pixels_as_changed(tmp_path, capsys):
    from test_change_detect import series, write_stack

    from sitscli.workflows.change_detect import change_detect

    values, dates = series(0, corner_short=False)
    changed = values.copy()
    changed[:, :, :, :36] += 0.2                           # three quarters of the area change
    a, b = write_stack(tmp_path / "a.tif", values, dates), write_stack(tmp_path / "b.tif", changed, dates)
    summary = change_detect(a, b, out=tmp_path / "score.tif", method="gapfill", threshold="otsu")
    assert summary["changed_fraction"] > 0.5
    assert "warning: Otsu's threshold flags" in capsys.readouterr().err
    few = values.copy()
    few[:, :, :, :8] += 0.2
    change_detect(a, write_stack(tmp_path / "c.tif", few, dates), out=tmp_path / "few.tif", method="gapfill",
                  threshold="otsu")
    assert "warning" not in capsys.readouterr().err


def test_patch_other_than_the_pretraining_crop(capsys):
    card = SimpleNamespace(hparams={"crop": 64}, run_dir="runs/alise")
    warn_patch_size(32, card)
    assert "--patch 32 differs from the pre-training crop of runs/alise (64 px)" in capsys.readouterr().err
    warn_patch_size(64, card)
    assert capsys.readouterr().err == ""


def test_progress_writes_a_line_while_a_long_step_runs(capsys):
    with Progress(3, "predict-map", interval=0.05) as bar:
        bar.advance(1)
        seen, deadline = "", time.monotonic() + 5
        while "still working" not in seen:               # the step "runs" while nothing advances
            assert time.monotonic() < deadline, "no line within 5 s of a 0.05 s interval"
            time.sleep(0.02)
            seen += capsys.readouterr().err
    assert "predict-map: 1/3 (" in seen
    time.sleep(0.15)
    assert capsys.readouterr().err == ""                  # closed: no line after the end
    with Progress(3, "quiet", interval=float("inf")) as bar:
        time.sleep(0.1)
    assert capsys.readouterr().err == ""
