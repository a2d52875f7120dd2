"""SITS-BERT CSV files (Yuan & Lin 2021) -> prepared dataset.

The published format (github.com/linlei1214/SITS-BERT, README and dataset/*_dataset.py): comma
separated, no header, one pixel per row, band-major values, then the day-of-year of each
observation, then (fine-tuning files only) the integer class label:
    B1(t1..tT), ..., B10(t1..tT), DOY(t1..tT)[, label]     reflectance x 10000
Each row has its own length T (only clear observations are kept), so a row's length must be a
multiple of bands + 1 (+ 1 for the label). The reference code splits each line on "," and reshapes
to (bands + 1, T). Rows padded with zeros are accepted: DOY 0 marks padding (invalid).
The reference files are Train.csv / Validate.csv / Test.csv and Pre-Training-Data.csv (unlabeled).
Files carry day-of-year only: `year` places them on the calendar.
A row is refused, with its number, when its numbers cannot mean what the format says: a value
that is not a storable reflectance x 10000 (NaN, infinite, beyond int16), a day of year that is
not a whole day in 0-366 (what a wrong band count gives: reflectances read as days), a day twice,
or a label that is not a whole number >= 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sitscli.core.config import check_unique
from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import Progress, log
from sitscli.data.prepared import PreparedWriter, dataset_path
from sitscli.data.splits import TEST, TRAIN, UNLABELED, VAL

SITSBERT_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")  # README: Sentinel-2 bands 2-8, 8A, 11, 12
SCALE = 10000.0
STORABLE = 32767                  # largest |reflectance x 10000| the int16 store holds
MAX_DOY = 366
# Dates are stored as days since 1970-01-01; no satellite image time series is older (Landsat 1: 1972).
MIN_YEAR, MAX_YEAR = 1970, 2100
BLOCK = 4096


def canonical_band(name: str) -> str:
    """'B2' -> 'B02' (the names the Sentinel-2 readers use); 'B8A', 'NDVI' stay."""
    if len(name) == 2 and name[0] in "Bb" and name[1].isdigit():
        return f"B0{name[1]}"
    return name


def _rows(path: Path, n_bands: int, labeled: bool) -> Iterator[tuple[int, np.ndarray]]:
    """(line number, values) of each non-empty row, checked for its length."""
    extra = 1 if labeled else 0
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                values = np.array(line.split(","), dtype=np.float64)
            except ValueError:
                raise DataFormatError(f"{path} row {number}: non-numeric value; SITS-BERT files are comma-separated numbers without header") from None
            if len(values) <= extra or (len(values) - extra) % (n_bands + 1):
                what = f"{n_bands} bands + DOY" + (" + 1 label" if labeled else "")
                raise DataFormatError(f"{path} row {number} has {len(values)} values; expected a multiple of {n_bands + 1} "
                                      f"({what}): check the band count and whether the file is labelled")
            _check_row(values, n_bands, labeled, f"{path} row {number}")
            yield number, values


def _check_row(values: np.ndarray, n_bands: int, labeled: bool, where: str) -> None:
    """Refuse a row whose numbers cannot mean what the format says, rather than store them wrongly.

    With the wrong band count a row may still split evenly, and reflectances are then read as days
    of year: the day-of-year check is what catches it.
    """
    body = values[:-1] if labeled else values
    series = body.reshape(n_bands + 1, -1)                # (bands + DOY, T)
    reflectance, doy = series[:-1], series[-1]
    bad = ~(np.abs(reflectance) <= STORABLE)              # NaN and infinities included
    if bad.any():
        raise DataContentError(f"{where}: value {reflectance[bad][0]:g} is not a reflectance x 10000 (storable: "
                               f"-{STORABLE:g} to {STORABLE:g}): fix or drop the row")
    if not (np.isin(doy, np.arange(MAX_DOY + 1))).all():
        odd = doy[~np.isin(doy, np.arange(MAX_DOY + 1))][0]
        raise DataContentError(f"{where}: day of year {odd:g} is not a whole day in 1-{MAX_DOY} (0 = padding): "
                               f"check --bands (this row reads as {n_bands} bands + DOY) and that bands come first")
    days = doy[doy > 0]
    if np.unique(days).size < days.size:
        twice = days[np.flatnonzero(np.diff(np.sort(days)) == 0)[0]]
        raise DataContentError(f"{where}: day of year {twice:g} appears twice: a series has one observation per date")
    if labeled and not (values[-1] >= 0 and float(values[-1]).is_integer()):
        raise DataContentError(f"{where}: label {values[-1]:g} is not a class id (a whole number, 0 or more)")


def _scan(path: Path, n_bands: int, labeled: bool) -> tuple[int, int, set[int]]:
    """Rows, longest series and the labels of a file (first pass, nothing kept)."""
    n, longest, labels = 0, 0, set()
    for _, values in _rows(path, n_bands, labeled):
        n += 1
        longest = max(longest, (len(values) - labeled) // (n_bands + 1))
        if labeled:
            labels.add(int(values[-1]))
    return n, longest, labels


def prepare_sitsbert_csv(train, out, *, val=None, test=None, unlabeled=None, bands=SITSBERT_BANDS, year: int = 2019,
                         class_names=None, overwrite: bool = False, seed: int = 0, config: dict | None = None) -> Path:
    """Prepare SITS-BERT CSV files, each becoming one split; returns the `.sits` path.

    Args:
        train, val, test: labelled files (label last); unlabeled: a pre-training file (no label).
            `train` may be None when only an unlabeled file is prepared.
        bands: band order of the files.
        year: calendar year of the days-of-year (not stored in the files; 2019 is only a default:
            give the year of your data when date-aware models matter).
        class_names: names for label ids 0..K-1 (default: the ids as text).
        seed: recorded only; the files already are the splits.
        config: the options saved as config.yaml (default: these arguments).
    """
    files = [(f, code, code != UNLABELED) for f, code in ((train, TRAIN), (val, VAL), (test, TEST), (unlabeled, UNLABELED))
             if f is not None]
    if not files:
        raise ConfigError("no SITS-BERT file given: pass a labelled TRAIN file and/or --unlabeled FILE")
    files = [(require_exists(f, "SITS-BERT CSV file"), code, labeled) for f, code, labeled in files]
    for path, _, _ in files:
        if path.is_dir():
            raise DataFormatError(f"{path} is a folder: give the SITS-BERT CSV file")
    check_unique([canonical_band(b) for b in bands], "--bands")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ConfigError(f"--year {year}: give the calendar year of the data ({MIN_YEAR}-{MAX_YEAR})")
    n_bands = len(bands)
    scans = {path: _scan(path, n_bands, labeled) for path, _, labeled in files}
    labels = set().union(*(s[2] for s in scans.values()))
    if labels and min(labels) < 0:
        raise DataFormatError(f"negative class label {min(labels)} in the SITS-BERT files: labels are ids 0..K-1")
    n_classes = max(labels) + 1 if labels else 0
    if class_names is None:
        class_names = [str(i) for i in range(n_classes)]
    elif len(class_names) < n_classes:
        raise ConfigError(f"{len(class_names)} class names given but the files use labels up to {n_classes - 1}")
    n_time = max(s[1] for s in scans.values())
    total = sum(s[0] for s in scans.values())
    log(f"SITS-BERT CSV: {total} series, up to {n_time} observations, {n_classes} classes, dates placed in {year}")
    if config is None:
        config = {"recipe": "sitsbert-csv", "train": train, "val": val, "test": test, "unlabeled": unlabeled,
                  "bands": list(bands), "year": year, "class_names": list(class_names), "seed": seed}
    jan1 = int(to_days([np.datetime64(f"{year}-01-01")])[0])
    with PreparedWriter(dataset_path(out), n_time=n_time, band_names=[canonical_band(b) for b in bands],
                        class_names=class_names, sensor="sentinel-2", source="sitsbert-csv", config=config,
                        overwrite=overwrite) as writer, Progress(total, "reading series") as bar:
        group = 0
        for path, code, labeled in files:
            block = []
            for _, values in _rows(path, n_bands, labeled):
                block.append(values)
                if len(block) == BLOCK:
                    group = _append(writer, block, n_bands, n_time, labeled, code, jan1, group)
                    bar.advance(len(block))
                    block = []
            if block:
                group = _append(writer, block, n_bands, n_time, labeled, code, jan1, group)
                bar.advance(len(block))
    return writer.path


def _append(writer: PreparedWriter, rows: list[np.ndarray], n_bands: int, n_time: int, labeled: bool, code: int,
            jan1: int, first_group: int) -> int:
    """Reshape rows to series, sort by date, pad and hand them to the writer; each row is its own group."""
    n = len(rows)
    series = np.zeros((n, n_bands + 1, n_time))             # (n, bands + DOY, T), zero = padding
    y = np.full(n, -1)
    for i, values in enumerate(rows):
        body = values[:-1] if labeled else values
        series[i, :, : len(body) // (n_bands + 1)] = body.reshape(n_bands + 1, -1)
        if labeled:
            y[i] = int(values[-1])
    doy = series[:, -1]                                       # (n, T)
    valid = doy > 0
    order = np.argsort(np.where(valid, doy, np.inf), axis=1, kind="stable")  # clear dates first, by day
    x = np.take_along_axis(series[:, :-1], order[:, None, :], axis=2).transpose(0, 2, 1) / SCALE  # (n, T, C)
    valid = np.take_along_axis(valid, order, axis=1)
    doy = np.take_along_axis(doy, order, axis=1)
    last = np.maximum.accumulate(np.where(valid, doy, 0), axis=1)           # padding repeats the last day
    dates = jan1 + np.maximum(last, 1).astype(np.int32) - 1
    writer.append(x=x.astype(np.float32), valid=valid, date=dates, y=y, split=np.full(n, code),
                  group=np.arange(first_group, first_group + n))
    return first_group + n
