"""Inputs that used to become a silently wrong dataset are refused with one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sitscli.data.prepared import open_prepared
from _cli import sits

T, BANDS = 6, 10


def _sitsbert(path: Path, *, labeled: bool = True, change=None) -> Path:
    """A SITS-BERT CSV of 12 rows: 10 bands x 6 dates, then 6 days of year, then the label."""
    rng = np.random.default_rng(0)
    rows = np.hstack([rng.integers(100, 4000, (12, BANDS * T)), np.tile(np.arange(1, T + 1) * 40, (12, 1)),
                      rng.integers(0, 3, (12, 1))]).astype(float)
    if not labeled:
        rows = rows[:, :-1]
    if change is not None:
        change(rows)
    path.write_text("".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows))
    return path


def _set(row: int, column: int, value: float):
    return lambda rows: rows.__setitem__((row, column), value)


@pytest.mark.parametrize("change, flags, expected", [
    (None, ["--bands", "B02,B03"], "row 1: day of year 2"),                  # reflectances read as days
    (_set(3, 5, np.inf), [], "row 4: value inf is not a reflectance"),
    (_set(3, 5, 1e12), [], "row 4: value 1e+12 is not a reflectance"),
    (_set(2, BANDS * T + 1, 400), [], "row 3: day of year 400"),
    (_set(2, BANDS * T + 1, 40), [], "row 3: day of year 40 appears twice"),
    (_set(4, -1, 1.5), [], "row 5: label 1.5 is not a class id"),
    (None, ["--year", "-5"], "--year -5"),
    (None, ["--bands", "B2,B02,B03,B04,B05,B06,B07,B08,B8A,B11"], "--bands: B02 is given twice"),
])
def test_sitsbert_csv_inputs_that_would_change_meaning_are_refused(change, flags, expected, tmp_path, monkeypatch,
                                                                  capsys):
    csv = _sitsbert(tmp_path / "train.csv", change=change)
    code, _, err = sits(monkeypatch, capsys, "prepare", "sitsbert-csv", csv, "--out", tmp_path / "d", *flags)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def test_sitsbert_csv_unlabeled_file_alone_is_a_dataset(tmp_path, monkeypatch, capsys):
    csv = _sitsbert(tmp_path / "pretrain.csv", labeled=False)
    code, _, err = sits(monkeypatch, capsys, "prepare", "sitsbert-csv", "--unlabeled", csv, "--out", tmp_path / "d")
    assert code == 0, err
    prepared = open_prepared(tmp_path / "d.sits")
    assert prepared.class_names == [] and prepared.summary()["splits"] == {"unlabeled": 12}


def _long_table(path: Path, cell: str = "0.07", where: tuple[int, int] = (3, 2)) -> Path:
    lines = ["sample_id,date,B02,B03,label"]
    for s in range(20):
        for d in range(5):
            b02 = cell if (s, d) == where else f"{0.05 + 0.01 * d:.3f}"
            lines.append(f"{s},2020-0{d + 1}-15,{b02},0.100,{'ab'[s % 2]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("cell, flags, expected", [
    ("abc", [], "line 19: column 'B02' holds 'abc', not a number"),          # the band used to vanish
    ("inf", [], "line 19: band B02 value inf is outside the storable range"),
    ("1e12", [], "line 19: band B02 value 1e+12 is outside the storable range"),
    ("0.07", ["--band-cols", "B02,B02"], "--band-cols: B02 is given twice"),
])
def test_table_inputs_that_would_change_meaning_are_refused(cell, flags, expected, tmp_path, monkeypatch, capsys):
    csv = _long_table(tmp_path / "samples.csv", cell)
    code, _, err = sits(monkeypatch, capsys, "prepare", "table", csv, "--out", tmp_path / "d", *flags)
    assert code != 0
    assert err.count("\n") == 1 and expected in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["samples.csv"]


def test_table_keeps_every_band(tmp_path, monkeypatch, capsys):
    code, _, err = sits(monkeypatch, capsys, "prepare", "table", _long_table(tmp_path / "s.csv"), "--out", tmp_path / "d")
    assert code == 0, err
    assert open_prepared(tmp_path / "d.sits").band_names == ["B02", "B03"]


def test_a_folder_given_as_the_table_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = sits(monkeypatch, capsys, "prepare", "table", tmp_path, "--out", tmp_path / "d")
    assert code == 1 and err.strip() == f"error: {tmp_path} is a folder: give the CSV file of samples"
    assert list(tmp_path.iterdir()) == []
