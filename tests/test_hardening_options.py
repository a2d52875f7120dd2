"""Typed options: training options, model hyper-parameters and loaded metadata (model.yaml, state.json)
are checked against declared schemas; a wrong value is one line naming key, value and what is allowed."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from _cli import sits
from test_finetune import write_toy_dataset

TINY = ["--hparam", "hidden=32", "--hparam", "layers=1", "--hparam", "heads=4", "--device", "cpu"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series, n=40)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, toy_data):
    """A one-epoch SITS-BERT pre-training run and its interrupted twin (state saved, no model.yaml)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        code, _, err = _run(patch, "pretrain", toy_data, "--out", root / "run", "--epochs", "1", *TINY)
    assert code == 0, err
    return root / "run"


def _run(monkeypatch, *args):
    """`sits ARGS` without capsys (for module fixtures): -> (code, '', '')."""
    import sys

    from sitscli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["sits", *map(str, args)])
    try:
        main()
        return 0, "", ""
    except SystemExit as exc:
        return exc.code or 0, "", ""


def _one_line(err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(e in lines[0] for e in expected), err


@pytest.mark.parametrize("config, flags, expected", [
    ({"epochs": "many"}, [], ["option epochs='many'", "valid integer"]),
    ({"epochs": 1.5}, [], ["option epochs=1.5", "fractional part"]),
    ({"patience": -1}, [], ["option patience=-1", "greater than or equal to 1"]),
    ({}, ["--lr", "nan"], ["option lr=nan", "finite number"]),
    ({"optimizer": "sgd"}, [], ["option optimizer='sgd'", "'adamw' or 'adam'"]),
    ({"val_fraction": 1.5}, [], ["option val_fraction=1.5", "less than 1"]),
    ({"hparams": 5}, [], ["option hparams=5", "valid dictionary"]),
    ({}, ["--hparam", "hidden=abc"], ["sitsbert hyper-parameter hidden='abc'", "valid integer"]),
    ({}, ["--hparam", "layers=0"], ["sitsbert hyper-parameter layers=0", "greater than or equal to 1"]),
    ({}, ["--hparam", "dropout=2"], ["sitsbert hyper-parameter dropout=2", "less than 1"]),
    ({}, ["--hparam", "pooling=sum"], ["pooling='sum'", "'cls', 'mean' or 'max'"]),
    ({}, ["--hparam", "hiden=64"], ["unknown sitsbert hyper-parameter 'hiden'", "known attention_dropout, dropout, heads, hidden"]),
])
def test_a_wrong_option_or_hyper_parameter_is_one_line_and_writes_nothing(config, flags, expected, tmp_path,
                                                                          monkeypatch, capsys, toy_data):
    config_file = tmp_path / "options.yaml"
    config_file.write_text(yaml.safe_dump(config))
    code, _, err = sits(monkeypatch, capsys, "pretrain", toy_data, "--out", tmp_path / "run", "--config", config_file,
                        *flags)
    assert code == 2
    _one_line(err, *expected)
    assert [p.name for p in tmp_path.iterdir()] == ["options.yaml"]


def test_finetune_options_are_typed_too(tmp_path, monkeypatch, capsys, toy_data):
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--model", "tempcnn", "--out", tmp_path / "run",
                        "--mode", "partial", "--hparam", "kernel=3")
    assert code == 2
    _one_line(err, "option mode='partial'", "'full', 'frozen' or 'lora'")
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--model", "tempcnn", "--out", tmp_path / "run",
                        "--hparam", "kernel=-3")
    _one_line(err, "tempcnn hyper-parameter kernel=-3", "greater than or equal to 1")
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--model", "tempcnn", "--out", tmp_path / "run",
                        "--patience", "-1")
    _one_line(err, "option patience=-1", "greater than or equal to 1")
    assert list(tmp_path.iterdir()) == []


def test_hyper_parameters_given_as_text_are_saved_typed(tmp_path, monkeypatch, capsys, toy_data):
    config_file = tmp_path / "options.yaml"
    config_file.write_text(yaml.safe_dump({"hparams": {"hidden": "32", "layers": 1, "heads": 4}, "epochs": "1"}))
    code, _, err = sits(monkeypatch, capsys, "pretrain", toy_data, "--out", tmp_path / "run", "--config", config_file,
                        "--device", "cpu")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["hparams"] == {"hidden": 32, "layers": 1, "heads": 4} and saved["epochs"] == 1


def _cut_before(text: str, marker: str) -> str:
    """The text cut short where `marker` starts: a copy that stopped there, still valid YAML."""
    return text[:text.index(marker)]


def _edited_copy(run, tmp_path, edit) -> object:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    edit(copy)
    return copy


@pytest.mark.parametrize("edit, expected", [
    (lambda run: (run / "model.yaml").write_text((run / "model.yaml").read_text().replace("layers: 1", "layers: x")),
     ["model.yaml: sitsbert hyper-parameter layers='x'", "valid integer"]),
    (lambda run: (run / "model.yaml").write_text(_cut_before((run / "model.yaml").read_text(), "  reference_date")),
     ["model.yaml is incomplete or damaged (entry data.reference_date is missing)", "copy the run again"]),
])
def test_a_damaged_model_card_is_blamed_on_the_card(edit, expected, finished_run, tmp_path, monkeypatch, capsys,
                                                    toy_data):
    run = _edited_copy(finished_run, tmp_path, edit)
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--from", run, "--out", tmp_path / "ft")
    assert code == 1
    _one_line(err, *expected)
    assert "safetensors" not in err and not (tmp_path / "ft").exists()


def test_wrong_types_in_the_resume_state_are_one_line(finished_run, tmp_path, monkeypatch, capsys):
    def interrupted_with_bad_state(run):
        (run / "model.yaml").unlink()
        state = json.loads((run / "resume" / "state.json").read_text())
        state["epoch"] = "three"
        (run / "resume" / "state.json").write_text(json.dumps(state))

    run = _edited_copy(finished_run, tmp_path, interrupted_with_bad_state)
    code, _, err = sits(monkeypatch, capsys, "pretrain", "--resume", run)
    assert code == 1 and "Traceback" not in err
    _one_line(err.strip().splitlines()[-1], "resume state", "is damaged", "epoch='three'", "without --resume")


def test_models_lists_hyper_parameters_with_defaults_allowed_values_and_sources(monkeypatch, capsys):
    code, out, err = sits(monkeypatch, capsys, "models", "sitsbert", "--json")
    assert code == 0, err
    found = json.loads(out)
    rows = {h["name"]: h for h in found["hparams"]}
    assert rows["hidden"] == {"name": "hidden", "default": 256, "allowed": "integer >= 1",
                              "source": "Yuan & Lin 2021, experiments (reference README)"}
    assert rows["dropout"]["allowed"] == "number >= 0 and < 1"
    assert found["training"]["pretrain"]["lr"] == 1e-4
    code, out, _ = sits(monkeypatch, capsys, "models")
    assert code == 0 and any(line.startswith("sitsbert ") for line in out.splitlines())
