"""`sits prepare` and `sits info` through the CLI: the demo chain, and one-line errors on bad input."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest

from sitscli.data.prepared import open_prepared
from sitscli.data.synthetic import write_synthetic
from _cli import sits


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("demo") / "demo", size=32, seed=3, layout="cog", years=1)


def test_prepare_synthetic_then_s2_then_info(tmp_path, monkeypatch, capsys):
    code, out, err = sits(monkeypatch, capsys, "prepare", "synthetic", "--out", tmp_path / "demo", "--size", 32,
                          "--years", 1, "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["kind"] == "l2a" and made["summary"]["layout"] == "safe" and made["summary"]["crs"] == "EPSG:32631"
    l2a, labels = made["summary"]["l2a"], made["summary"]["labels"]

    code, out, err = sits(monkeypatch, capsys, "prepare", "s2", l2a, "--labels", labels, "--class-field", "class_y1",
                          "--max-per-polygon", 10, "--out", tmp_path / "demo.sits")
    assert code == 0, err
    assert out.startswith(f"dataset: {tmp_path / 'demo.sits'} (pixel,") and "samples per split: train" in out
    data = open_prepared(tmp_path / "demo.sits")
    assert data.n_samples > 100 and len(data.band_names) == 10 and "winter_wheat" in data.class_names

    code, out, err = sits(monkeypatch, capsys, "info", tmp_path / "demo.sits")
    assert code == 0, err
    assert "clear dates per sample: min" in out and "samples per class and split" in out and "EPSG:32631" in out
    assert "winter_wheat" in out and "B8A" in out
    code, out, _ = sits(monkeypatch, capsys, "info", tmp_path / "demo.sits", "--json")
    summary = json.loads(out)
    assert summary["kind"] == "dataset" and summary["samples"] == data.n_samples
    assert set(summary["class_counts"]) == {"train", "val", "test"}   # the parcels tile the whole image

    code, out, err = sits(monkeypatch, capsys, "info", l2a, "--json")
    assert code == 0, err
    cube = json.loads(out)
    assert cube["kind"] == "l2a" and cube["layout"] == "safe" and cube["tile"] == "31TCJ" and cube["width"] == 32
    assert cube["n_dates"] == made["summary"]["dates"]
    assert all(0.0 <= d["cloud_fraction"] <= 0.95 for d in cube["dates"])
    code, out, _ = sits(monkeypatch, capsys, "info", l2a)
    assert "layout" in out and "cloudy %" in out and out.count("\n") > cube["n_dates"]


def test_prepare_takes_options_from_config(tmp_path, monkeypatch, capsys, demo):
    config = tmp_path / "prep.yaml"
    config.write_text(f"folder: {demo.l2a}\nlabels: {demo.parcels}\nclass_field: class_y1\nmax_per_polygon: 5\n"
                      f"out: {tmp_path / 'from_config.sits'}\n")
    code, out, err = sits(monkeypatch, capsys, "prepare", "s2", "--config", config, "--bands", "B04,B08", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["bands"] == ["B04", "B08"]


def test_info_describes_a_run_directory(tmp_path, monkeypatch, capsys):
    from torch import nn

    from sitscli.engine.checkpoint import save_model
    from sitscli.models.registry import DataInfo

    info = DataInfo(band_names=["B02", "B03"], band_mean=[0.1, 0.1], band_std=[0.05, 0.05], class_names=["a", "b"],
                    class_colors=["#000000", "#ffffff"])
    save_model(tmp_path / "run", nn.Linear(2, 2), model_name="tiny", hparams={"hidden": 8}, info=info, task="classify")
    code, out, err = sits(monkeypatch, capsys, "info", tmp_path / "run")
    assert code == 0, err
    assert "tiny" in out and "classify" in out and "hidden" in out and "B03" in out
    code, out, _ = sits(monkeypatch, capsys, "info", tmp_path / "run" / "model.yaml", "--json")
    assert json.loads(out)["classes"] == ["a", "b"]


def _one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_inputs_give_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, demo):
    out = tmp_path / "never.sits"
    common = ("--labels", demo.parcels, "--class-field", "class_y1", "--out", out)

    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", tmp_path / "missing", *common)
    _one_line_error(code, err, "not found", "missing")

    code, _, err = sits(monkeypatch, capsys, "prepare", "landsat", demo.l2a)
    _one_line_error(code, err, "unknown source", "s2", "synthetic")

    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", demo.l2a, "--labels", demo.parcels,
                        "--class-field", "crop", "--out", out)
    _one_line_error(code, err, "crop", "class_y1", "parcel_id")

    far = gpd.read_file(demo.parcels)
    far["geometry"] = far.geometry.translate(50_000, 0)        # 50 km east of the image
    far.to_file(tmp_path / "far.gpkg")
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", demo.l2a, "--labels", tmp_path / "far.gpkg",
                        "--class-field", "class_y1", "--out", out)
    _one_line_error(code, err)

    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", demo.l2a, "--labels", demo.parcels, "--out", out)
    _one_line_error(code, err, "--class-field")

    code, _, err = sits(monkeypatch, capsys, "info", tmp_path / "nothing_here")
    _one_line_error(code, err, "not found")

    code, _, err = sits(monkeypatch, capsys, "prepare", "synthetic", "--out", demo.root)
    _one_line_error(code, err, "exists", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.gpkg"]
