"""TimeSen2Crop (Weikmann, Paris & Bruzzone 2021) -> prepared dataset.

Layout, as published (Zenodo 4715631, dataset description):
    ROOT/<tile>/dates.csv          acquisition dates of the tile, oldest first
    ROOT/<tile>/<class>/<n>.csv    one pixel: one row per date, columns B2 B3 B4 B5 B6 B7 B8A B11 B12
                                   (reflectance x 10000) and a last condition column:
                                   0 clear, 1 cloud, 2 shadow, 3 snow
What the text does not pin down, and how it is read here:
  - dates.csv: one date per row, with or without a header line, possibly after an index column;
    dates as YYYYMMDD (e.g. 20170914) or YYYY-MM-DD. Lines with no readable date (a header) are
    skipped. Rows are sorted by date, and each pixel's rows with them.
  - pixel CSVs: an optional header line; the last ten columns are the nine bands and the condition,
    so a leading index column is tolerated.
  - class folders: their names are the class names (numeric names sort numerically), the union
    over tiles, so ids agree across tiles.
Anything but condition 0 is an invalid observation. Tiles have different dates: series are padded
to the longest. Default split (the common one): 33TVN validation, 33UVP test, other tiles train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sitscli.core.dates import to_days
from sitscli.core.errors import DataFormatError, InputNotFoundError
from sitscli.core.io import require_exists
from sitscli.core.progress import Progress, log
from sitscli.data.prepared import PreparedWriter, dataset_path
from sitscli.data.splits import TEST, TRAIN, VAL

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")  # the file's B2 ... B12, named as elsewhere
SCALE = 10000.0
BLOCK = 4096  # pixels handed to the writer at once


def _parse_date(field: str) -> int | None:
    text = field.strip().strip('"')
    digits = text.replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return int(to_days([np.datetime64(f"{digits[:4]}-{digits[4:6]}-{digits[6:]}")])[0])
    except ValueError:
        return None


def read_dates(path: Path) -> np.ndarray:
    """(T,) int32 days of a tile's dates.csv, in file order."""
    days = []
    for line in path.read_text().splitlines():
        parsed = [d for d in (_parse_date(f) for f in line.split(",")) if d is not None]
        if parsed:
            days.append(parsed[-1])
    if not days:
        raise DataFormatError(f"{path} holds no date: expected one date per line, e.g. 20170914 or 2017-09-14")
    return np.asarray(days, dtype=np.int32)


def read_pixel(path: Path, n_dates: int) -> np.ndarray:
    """(T, 10) float: nine bands x 10000 and the condition, rows in dates.csv order."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if lines and not lines[0].lstrip().lstrip('"-').replace(".", "", 1)[:1].isdigit():
        lines = lines[1:]  # header
    if len(lines) != n_dates:
        raise DataFormatError(f"{path} has {len(lines)} rows but its tile's dates.csv lists {n_dates} dates: "
                              "the file is truncated or belongs to another tile")
    try:
        table = np.array([ln.split(",") for ln in lines], dtype=np.float64)
    except ValueError:
        raise DataFormatError(f"{path}: non-numeric or ragged rows; expected B2..B12 and a condition per line") from None
    if table.ndim != 2 or table.shape[1] < len(BANDS) + 1:
        raise DataFormatError(f"{path} has {table.shape[-1]} columns; expected {len(BANDS) + 1} (9 bands and the condition)")
    return table[:, -(len(BANDS) + 1):]


def _numeric_first(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _find_tiles(root: Path) -> list[Path]:
    tiles = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not tiles:
        raise InputNotFoundError(f"no tiles found in {root}: expected ROOT/<tile>/dates.csv and ROOT/<tile>/<class>/<n>.csv")
    for tile in tiles:
        if not (tile / "dates.csv").is_file():
            raise DataFormatError(f"tile {tile.name} has no dates.csv ({tile / 'dates.csv'}): every tile folder needs its acquisition dates")
    return tiles


def _class_dirs(tile: Path) -> list[Path]:
    return [p for p in tile.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _pixels(tile: Path, dates: np.ndarray, class_ids: dict[str, int]) -> Iterator[tuple[np.ndarray, int]]:
    """(T, 10) rows sorted by date and the class id of every pixel CSV of a tile."""
    order = np.argsort(dates, kind="stable")
    for class_dir in sorted(_class_dirs(tile), key=lambda p: _numeric_first(p.name)):
        for csv in sorted(class_dir.glob("*.csv"), key=lambda p: _numeric_first(p.stem)):
            yield read_pixel(csv, len(dates))[order], class_ids[class_dir.name]


def prepare_timesen2crop(root, out, *, val_tiles=("33TVN",), test_tiles=("33UVP",), overwrite: bool = False,
                         seed: int = 0, config: dict | None = None) -> Path:
    """Prepare a TimeSen2Crop tree; returns the `.sits` path.

    The split is by tile (no random draw), so `seed` only goes into config.yaml for the record.
    `config`: the options saved as config.yaml (default: these arguments).
    """
    root = require_exists(root, "TimeSen2Crop root")
    tiles = _find_tiles(root)
    names = {t.name for t in tiles}
    for what, chosen in (("validation", val_tiles), ("test", test_tiles)):
        for tile in chosen:
            if tile not in names:
                log(f"{what} tile {tile} not found in {root}: it gets no samples")
    tile_dates = {t.name: read_dates(t / "dates.csv") for t in tiles}
    class_names = sorted({c.name for t in tiles for c in _class_dirs(t)}, key=_numeric_first)
    if not class_names:
        raise DataFormatError(f"no class folders in the tiles of {root}: expected ROOT/<tile>/<class>/<n>.csv")
    class_ids = {name: i for i, name in enumerate(class_names)}
    n_time = max(len(d) for d in tile_dates.values())
    if config is None:
        config = {"recipe": "timesen2crop", "root": str(root), "val_tiles": list(val_tiles),
                  "test_tiles": list(test_tiles), "seed": seed}
    total = sum(1 for t in tiles for c in _class_dirs(t) for _ in c.glob("*.csv"))
    log(f"TimeSen2Crop: {len(tiles)} tiles, {len(class_names)} classes, {total} pixels, up to {n_time} dates")
    group = 0
    with PreparedWriter(dataset_path(out), n_time=n_time, band_names=BANDS, class_names=class_names, sensor="sentinel-2",
                        source="timesen2crop", config=config, overwrite=overwrite) as writer, \
            Progress(total, "reading pixels") as bar:
        for tile in tiles:
            code = VAL if tile.name in val_tiles else TEST if tile.name in test_tiles else TRAIN
            dates = np.sort(tile_dates[tile.name])
            rows, labels = [], []
            for table, label in _pixels(tile, tile_dates[tile.name], class_ids):
                rows.append(table)
                labels.append(label)
                if len(rows) == BLOCK:
                    group = _append(writer, rows, labels, dates, code, group)
                    bar.advance(len(rows))
                    rows, labels = [], []
            if rows:
                group = _append(writer, rows, labels, dates, code, group)
                bar.advance(len(rows))
    return writer.path


def _append(writer: PreparedWriter, rows: list[np.ndarray], labels: list[int], dates: np.ndarray, code: int,
            first_group: int) -> int:
    """Hand a block of one tile's pixels to the writer; each pixel file is its own group."""
    table = np.stack(rows)                                   # (n, T, 10)
    n = len(rows)
    writer.append(x=(table[:, :, :-1] / SCALE).astype(np.float32), valid=table[:, :, -1] == 0, date=dates,
                  y=np.asarray(labels), split=np.full(n, code), group=np.arange(first_group, first_group + n))
    return first_group + n
