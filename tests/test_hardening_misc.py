"""Smaller hardening items: declared dependencies, repeatable weights files, rank-0 logging, `info` on
interrupted and tampered runs, the one-class warning."""

from __future__ import annotations

import ast
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from sitscli.core.progress import log
from sitscli.engine.checkpoint import WEIGHTS, save_model
from sitscli.models.registry import DataInfo
from _cli import sits
from test_finetune import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "sklearn": "scikit-learn"}
TINY = ["--hparam", "hidden=32", "--hparam", "layers=1", "--hparam", "heads=4", "--device", "cpu", "--epochs", "1"]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(text)).name.lower(): r for text in project["dependencies"]}


def _imported_distributions() -> set[str]:
    names = set()
    for path in (ROOT / "sitscli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {DISTRIBUTIONS.get(n, n).lower() for n in names if n not in sys.stdlib_module_names and n != "sitscli"}


def test_every_imported_package_is_declared_and_nothing_else():
    declared, imported = set(_requirements()), _imported_distributions()
    assert imported <= declared, f"imported but not declared: {sorted(imported - declared)}"
    assert declared <= imported, f"declared but never imported: {sorted(declared - imported)}"


def test_zarr_is_pinned_to_the_tested_major():
    zarr = _requirements()["zarr"].specifier
    assert not zarr.contains("2.17") and zarr.contains("3.1.6") and not zarr.contains("4.0")


def test_identical_saves_are_byte_identical(tmp_path):
    info = DataInfo(["B02"], [0.1], [0.1], class_names=["a", "b"], class_colors=["#000000", "#ffffff"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    files = []
    for i in range(8):     # safetensors orders a metadata map at random, per map made
        save_model(tmp_path / str(i), model, model_name="tiny", hparams={}, info=info, task="classify")
        files.append((tmp_path / str(i) / WEIGHTS).read_bytes())
    assert all(f == files[0] for f in files)


def test_only_rank_0_logs(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    log("from rank 1")
    monkeypatch.setenv("RANK", "0")
    log("from rank 0")
    assert capsys.readouterr().err.splitlines() == ["from rank 0"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series, n=40,
                             band_names=["B02", "B03", "B04", "B08"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, toy_data):
    from sitscli.workflows.pretrain import pretrain

    run = tmp_path_factory.mktemp("runs") / "run"
    pretrain(out=run, data=toy_data, hparams={"hidden": 32, "layers": 1, "heads": 4}, epochs=1, device="cpu")
    return run


def test_info_says_a_run_is_interrupted_and_how_to_continue(finished_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "model.yaml").unlink()
    code, out, err = sits(monkeypatch, capsys, "info", run, "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["status"] == "interrupted" and found["progress"].startswith("1 of 1 epochs done")
    assert found["continue"] == f"sits pretrain --resume {run}"
    shutil.rmtree(run / "resume")
    code, out, _ = sits(monkeypatch, capsys, "info", run)
    assert code == 0 and "stopped before its first save" in out


def test_info_tells_tampered_weights(finished_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    weights = bytearray((run / WEIGHTS).read_bytes())
    weights[-1] ^= 1
    (run / WEIGHTS).write_bytes(bytes(weights))
    code, out, _ = sits(monkeypatch, capsys, "info", run, "--json")
    assert code == 0 and json.loads(out)["weights"] == "changed"
    code, out, _ = sits(monkeypatch, capsys, "info", finished_run, "--json")
    assert json.loads(out)["weights"] == "verified"


def test_fine_tuning_on_one_class_says_so(tmp_path, monkeypatch, capsys, toy_pixel_series):
    one_class = write_toy_dataset(tmp_path / "one", toy_pixel_series, n=20, class_names=("crop",))
    code, _, err = sits(monkeypatch, capsys, "finetune", one_class, "--model", "sitsbert", "--out", tmp_path / "run",
                        *TINY)
    assert code == 0, err
    assert "warning: the train split" in err and "holds one class only (crop)" in err
