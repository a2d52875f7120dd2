"""`sits pretrain`, `sits finetune` and `sits probe` through the command line."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import yaml

from sitscli.cli.app import main
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE
from sitscli.workflows.finetune import ClassificationTask
from _cli import sits
from test_finetune import write_toy_dataset

TINY = ["--hparam", "hidden=32", "--hparam", "layers=1", "--hparam", "heads=4", "--hparam", "dropout=0.0"]
FAST = ["--device", "cpu", "--batch-size", "32", "--lr", "0.002"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series, n=150)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, toy_data):
    """A pre-trained run made through the CLI (module-scoped: monkeypatch and capsys are not)."""
    out = tmp_path_factory.mktemp("runs") / "pre"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["sits", "pretrain", str(toy_data), "--model", "sitsbert", "--out", str(out),
                                    "--epochs", "2", *TINY, *FAST, "--pretext", "p=0.3"])
        main()
    return out


def test_pretrain_writes_a_run_with_the_flags_resolved(pretrained):
    options = yaml.safe_load((pretrained / "config.yaml").read_text())
    assert options["hparams"] == {"hidden": 32, "layers": 1, "heads": 4, "dropout": 0.0}
    assert options["pretext"] == {"p": 0.3} and options["epochs"] == 2 and options["lr"] == 0.002
    assert (pretrained / "model.yaml").is_file() and (pretrained / "curves.png").is_file()


def test_finetune_prints_the_report_and_evaluate_rescores_the_run(tmp_path, monkeypatch, capsys, toy_data, pretrained):
    run = tmp_path / "ft"
    code, out, err = sits(monkeypatch, capsys, "finetune", toy_data, "--from", pretrained, "--out", run,
                          "--epochs", "3", "--eval-date-shift", "0,7", *FAST)
    assert code == 0, err
    assert "OA" in out and "macro-F1" in out and "precision" in out and str(run) in out
    assert all(f"\n{name} " in out for name in ("a", "b", "c"))           # one row per class
    report = json.loads((run / "metrics.json").read_text())
    assert set(report["date_shift"]) == {"0", "7"}

    code, out, err = sits(monkeypatch, capsys, "finetune", "--evaluate", run, "--data", toy_data, "--out",
                          tmp_path / "scores", "--eval-date-shift", "0,7", "--json", "--device", "cpu")
    assert code == 0, err
    again = json.loads(out)
    assert again["confusion"] == report["confusion"] and again["date_shift"] == report["date_shift"]
    assert json.loads((tmp_path / "scores" / "metrics.json").read_text())["oa"] == report["oa"]
    assert (tmp_path / "scores" / "confusion.png").is_file()


def test_min_total_steps_raises_the_epochs_on_few_samples(tmp_path, monkeypatch, capsys, toy_data, pretrained):
    run = tmp_path / "ft"
    code, out, err = sits(monkeypatch, capsys, "finetune", toy_data, "--from", pretrained, "--out", run,
                          "--epochs", "2", "--min-total-steps", "40", *FAST)
    assert code == 0, err
    history = json.loads((run / "history.json").read_text())
    assert history["planned_epochs"] > 2 and len(history["epochs"]) == history["planned_epochs"]
    assert "min_total_steps" in err


def test_probe_command(tmp_path, monkeypatch, capsys, toy_data, pretrained):
    code, out, err = sits(monkeypatch, capsys, "probe", toy_data, "--from", pretrained, "--out", tmp_path / "probe",
                          "--epochs", "2", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["split"] == "test"
    assert yaml.safe_load((tmp_path / "probe" / "config.yaml").read_text())["mode"] == "frozen"


def test_a_stopped_run_exits_75_says_how_to_resume_and_resumes(tmp_path, monkeypatch, capsys, toy_data, pretrained):
    original = ClassificationTask.training_step

    def stopped_at_first_step(self, model, batch):
        monkeypatch.setattr(ClassificationTask, "training_step", original)
        os.kill(os.getpid(), signal.SIGTERM)           # what SLURM sends at the end of the wall time
        return original(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "training_step", stopped_at_first_step)
    run = tmp_path / "ft"
    code, out, err = sits(monkeypatch, capsys, "finetune", toy_data, "--from", pretrained, "--out", run,
                          "--epochs", "2", *FAST)
    assert code == INTERRUPTED_EXIT_CODE, (out, err)
    assert f"--resume {run}" in err and not (run / "model.yaml").exists()
    code, out, err = sits(monkeypatch, capsys, "finetune", "--resume", run)
    assert code == 0, err
    assert (run / "model.yaml").is_file() and "OA" in out


@pytest.mark.parametrize("case, expected", [
    ("unlabelled", "no classes"),
    ("other_bands", "bands"),
    ("no_from", "--from RUN"),
    ("bad_hparam", "key=value"),
    ("exists", "output exists"),
])
def test_bad_inputs_give_one_clear_line(case, expected, tmp_path, monkeypatch, capsys, toy_data, pretrained,
                                        toy_pixel_series):
    args = {
        "unlabelled": ["finetune", write_toy_dataset(tmp_path / "u", toy_pixel_series, n=20, labelled=False),
                       "--model", "sitsbert", "--out", tmp_path / "run"],
        "other_bands": ["finetune", write_toy_dataset(tmp_path / "b", toy_pixel_series, n=20, band_names=["B2", "B3", "B4", "B8"]),
                        "--from", pretrained, "--out", tmp_path / "run"],
        "no_from": ["finetune", toy_data, "--out", tmp_path / "run"],
        "bad_hparam": ["pretrain", toy_data, "--out", tmp_path / "run", "--hparam", "hidden"],
        "exists": ["finetune", toy_data, "--from", pretrained, "--out", pretrained],
    }[case]
    code, out, err = sits(monkeypatch, capsys, *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "run").exists()
