"""Sample tables (CSV, long or wide) -> prepared dataset.

Long format (the sits R package, GEE point exports): one row per sample and date,
    sample_id, date, <band>..., label[, longitude, latitude]
e.g. ../shared/data/real/rondonia-landsat8/samples_long.csv (the date column is there called
"Index"). Each sample keeps its own dates; series are padded to the longest.

Wide format: one row per sample, one column per band and date named `BAND_DATE`, the date as
YYYY-MM-DD or YYYYMMDD (`B02_2020-01-05`, `NDVI_20200105`); `DATE_BAND` (`20200105_B02`, the
names GEE's `toBands()` gives an image collection indexed by date) is read too. The names carry
the dates, so no sidecar file is needed. Every band needs a column for every date; samples share
the dates. An id column is optional (the row number is used without one).

`layout="auto"` takes a table as wide when a header looks like `BAND_DATE`, else as long.

Columns not named are found by their (case-insensitive) names: id in ID_NAMES, date in DATE_NAMES
(a long table without one: the text column that parses as dates and varies most within
samples), label in LABEL_NAMES, longitude/latitude in LON_NAMES/LAT_NAMES; bands are the numeric
columns left over (long) or the BAND_DATE columns (wide). Columns named "Unnamed: N" (an index
written by pandas) are never bands.

Values: the format stores reflectance on the 0-1 scale as int16 x 10000, which also holds indices
in [-1, 1] (NDVI, EVI). A band whose median absolute value exceeds X10000_MEDIAN is taken as
already scaled x 10000 (the usual integer export) and divided by 10000; the median, not the
maximum, so that a few saturated values of 0-1 data do not rescale a whole band. Empty cells are
invalid observations. A value that cannot be stored after scaling (|v| > 3.2767, e.g. a -9999
nodata marker in 0-1 data) is an error: leave missing values empty instead.

Labels: class names are the distinct labels sorted (numerically when all are integers); with a
code column (`code_col`, one whole number per class, e.g. a nomenclature's code beside its name)
the codes are kept for the maps and the classes are ordered by code. An empty
label makes the sample unlabelled (split "unlabeled", for pretraining). Samples are split train /
val / test by sample (each sample its own group), stratified by class, with a seed. Groups are the
sample ids when these are integers, else the samples' order of first appearance. xy holds
longitude/latitude (EPSG:4326) when the table has them, NaN otherwise.
The table is read into memory at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sitscli.core.config import check_unique
from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import check_output, require_exists
from sitscli.core.legend import apply_color_file, class_codes, default_colors, order_by_code
from sitscli.core.progress import log
from sitscli.data.prepared import SCALE, PreparedWriter, dataset_path
from sitscli.data.splits import check_fractions, split_codes, split_groups

ID_NAMES = ("sample_id", "id", "sample", "point_id", "pid")
DATE_NAMES = ("date", "time", "timeline", "datetime", "acquisition_date", "index")
LABEL_NAMES = ("label", "class", "class_name", "classname", "crop", "crop_type", "lulc")
LON_NAMES = ("longitude", "lon", "lng", "long")
LAT_NAMES = ("latitude", "lat")
LAYOUTS = ("auto", "long", "wide")
X10000_MEDIAN = 1.5                       # reflectance and indices lie well under it on the 0-1 scale
STORABLE = 32767 / SCALE                  # largest |value| int16 x 10000 holds
BLOCK = 4096                              # samples handed to the writer at once
_DATE = r"\d{4}-\d{2}-\d{2}|\d{8}"
_BAND_DATE = re.compile(rf"^(?P<band>.+?)_(?P<date>{_DATE})$")
_DATE_BAND = re.compile(rf"^(?P<date>{_DATE})_(?P<band>.+)$")


@dataclass
class Series:
    """Samples of a table, ready for the writer (N samples, T dates, C bands)."""

    ids: np.ndarray            # (N,) sample ids as text
    x: np.ndarray              # (N, T, C) float32 reflectance 0-1, NaN where missing
    dates: np.ndarray          # (N, T) int32 days; padding repeats a sample's last date
    valid: np.ndarray          # (N, T) bool
    labels: np.ndarray         # (N,) object: label text or None
    xy: np.ndarray | None      # (N, 2) longitude, latitude
    band_names: list[str]
    codes: np.ndarray | None = None  # (N,) object: each sample's class code (code column), or None


def prepare_table(csv, out, *, layout: str = "auto", id_col: str | None = None, date_col: str | None = None,
                  label_col: str | None = None, band_cols: Sequence[str] | None = None, lon_col: str | None = None,
                  lat_col: str | None = None, code_col: str | None = None, colors: str | Path | None = None,
                  fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                  overwrite: bool = False, config: dict | None = None) -> Path:
    """Prepare a long or wide sample table (see the module docstring); returns the `.sits` path.

    Args:
        csv: the table; comma, semicolon or tab separated, with a header line.
        layout: "auto", "long" or "wide".
        id_col, date_col, label_col, lon_col, lat_col: column names (None: found by name).
        band_cols: band columns (long) or band names (wide); None: every band found.
        code_col: column of class codes kept for the maps (one code per class), or None.
        colors: a colour file (`sitscli.core.legend.read_color_file`) for the class colours.
        fractions: train, val, test shares of each class's samples.
        config: options saved as config.yaml (default: these arguments).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    fractions = check_fractions(fractions)
    path = require_exists(csv, "sample table")
    if path.is_dir():
        raise DataFormatError(f"{path} is a folder: give the CSV file of samples")
    if band_cols is not None:
        check_unique(band_cols, "--band-cols")
    out = check_output(dataset_path(out), overwrite)  # before reading a large table for nothing
    header = _read_header(path)
    if layout == "auto":
        layout = "wide" if any(_wide_name(c) for c in header) else "long"
    named = [id_col, date_col, label_col, lon_col, lat_col, code_col, *(band_cols or () if layout == "long" else ())]
    absent = [name for name in named if name is not None and name not in header]
    if absent:
        raise ConfigError(f"{path}: no column {absent[0]!r} (check the --*-col options); columns: {', '.join(header)}")
    label_col = label_col or _find(header, LABEL_NAMES, "label", "--label-col", path)
    id_col = id_col or _find(header, ID_NAMES, "sample id", "--id-col", path, required=layout == "long")
    lon_col, lat_col = _lonlat(header, lon_col, lat_col, path)
    table = _read_table(path, text_columns=[c for c in (id_col, label_col, code_col) if c])
    if layout == "long":
        series = _long(table, path, id_col, date_col, label_col, band_cols, lon_col, lat_col, code_col)
    else:
        series = _wide(table, path, id_col, label_col, band_cols, lon_col, lat_col, code_col)
    if config is None:
        config = {"recipe": "table", "csv": str(path), "layout": layout, "id_col": id_col, "date_col": date_col,
                  "label_col": label_col, "band_cols": list(band_cols) if band_cols else None, "lon_col": lon_col,
                  "lat_col": lat_col, "code_col": code_col, "colors": str(colors) if colors else None,
                  "fractions": list(fractions), "seed": seed}
    return _write(series, out, layout=layout, path=path, fractions=fractions, seed=seed, code_col=code_col,
                  colors=colors, overwrite=overwrite, config=config)


# ------------------------------------------------------------------------------ columns

def _separator(path: Path) -> str:
    """The commonest of , ; and tab on the header line."""
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.readline()
    return max((",", ";", "\t"), key=first.count)


def _read_header(path: Path) -> list[str]:
    try:
        header = [str(c) for c in pd.read_csv(path, sep=_separator(path), nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path} is not a readable CSV table ({type(exc).__name__}): expected a header line, "
                              "then one row per sample (wide) or per sample and date (long)") from None
    if len(header) < 2:
        raise DataFormatError(f"{path} has a single column {header}: expected comma, semicolon or tab separated columns")
    return header


def _read_table(path: Path, text_columns: list[str]) -> pd.DataFrame:
    """The whole table; ids and labels kept as text ("01" is not "1")."""
    try:
        return pd.read_csv(path, sep=_separator(path), dtype={c: str for c in text_columns})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise DataFormatError(f"{path} is not a readable CSV table: {reason}") from None


def _find(header: list[str], candidates: Sequence[str], what: str, option: str, path: Path,
          required: bool = True) -> str | None:
    """The first column whose lower-cased name is a candidate."""
    lower = {c.lower(): c for c in reversed(header)}  # reversed: the first of equal names wins
    for name in candidates:
        if name in lower:
            return lower[name]
    if required:
        raise DataFormatError(f"{path}: no {what} column found (looked for {', '.join(candidates)}); "
                              f"columns: {', '.join(header)}; name it with {option}")
    return None


def _lonlat(header, lon_col, lat_col, path) -> tuple[str | None, str | None]:
    """Both coordinate columns or neither."""
    lon_col = lon_col or _find(header, LON_NAMES, "longitude", "--lon-col", path, required=False)
    lat_col = lat_col or _find(header, LAT_NAMES, "latitude", "--lat-col", path, required=False)
    if (lon_col is None) != (lat_col is None):
        raise ConfigError(f"{path}: found {lon_col or lat_col!r} but not its partner: give both --lon-col and --lat-col")
    return lon_col, lat_col


def _wide_name(name: str) -> tuple[str, int] | None:
    """'B02_2020-01-05' or '20200105_B02' -> ('B02', days); None for other names."""
    match = _BAND_DATE.match(name) or _DATE_BAND.match(name)
    if not match:
        return None
    digits = match["date"].replace("-", "")
    try:
        day = np.datetime64(f"{digits[:4]}-{digits[4:6]}-{digits[6:]}")
    except ValueError:
        return None
    return match["band"], int(to_days([day])[0])


def _parse_dates(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(R,) int32 days of a column of dates (ISO 8601 or YYYYMMDD, a full date first) and (R,) bool
    where a value is one (the days are meaningless elsewhere)."""
    text = values.astype(str).str.strip()
    parsed = pd.to_datetime(text.where(text.str.match(r"\d{4}[-/]?\d{2}[-/]?\d{2}")), format="ISO8601", utc=True,
                            errors="coerce")
    ok = parsed.notna().to_numpy()
    days = parsed.fillna(pd.Timestamp(0, tz="UTC")).dt.tz_convert(None).to_numpy().astype("datetime64[D]")
    return to_days(days), ok


def _date_column(table: pd.DataFrame, date_col: str | None, codes: np.ndarray, path: Path) -> tuple[str, np.ndarray]:
    """The date column and its (R,) days: the named one, else a DATE_NAMES one, else the text column
    that parses as dates with the most distinct (sample, date) pairs (start/end columns repeat)."""
    by_name = [date_col] if date_col else [c for name in DATE_NAMES for c in table.columns if c.lower() == name]
    for column in by_name:
        days, ok = _parse_dates(table[column])
        if ok.all():
            return column, days
        if date_col or ok.mean() > 0.5:  # a date column with a few bad cells: say where
            bad = int(np.flatnonzero(~ok)[0])
            value = table[column].iloc[bad]
            value = "an empty cell" if pd.isna(value) else repr(value)
            raise DataFormatError(f"{path} line {bad + 2}: column {column!r} holds {value}, "
                                  "not a date: write dates as YYYY-MM-DD (or name the date column with --date-col)")
    found = []
    for column in table.columns:
        if column not in by_name and not pd.api.types.is_numeric_dtype(table[column]):
            days, ok = _parse_dates(table[column])
            if ok.all():
                found.append((column, days))
    if found:
        return max(found, key=lambda f: len(pd.MultiIndex.from_arrays([codes, f[1]]).unique()))
    raise DataFormatError(f"{path}: no date column found (looked for {', '.join(DATE_NAMES)} and text columns of dates); "
                          f"columns: {', '.join(map(str, table.columns))}; name it with --date-col")


def _numeric(table: pd.DataFrame, column: str, path: Path, option: str = "--band-cols") -> np.ndarray:
    """(R,) float64 of a numeric column; empty cells NaN, anything else non-numeric an error."""
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(f"{path} line {row + 2}: column {column!r} holds {table[column].iloc[row]!r}, not a number: "
                              f"give numeric columns with {option}")
    return values.to_numpy(dtype=np.float64)


def _mostly_numeric(column: pd.Series) -> bool:
    """A band column: numbers in at least half of its non-empty cells. A stray text cell ("n/a",
    "1,2") in a band must be reported (by `_numeric`), not make the whole band vanish."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    cells = column.dropna()
    return bool(len(cells)) and pd.to_numeric(cells, errors="coerce").notna().mean() >= 0.5


def _scaled(values: np.ndarray, band: str, rows: np.ndarray, path: Path) -> np.ndarray:
    """values (..., ) of one band on the 0-1 scale; rows (same shape) are 0-based data rows, for errors."""
    finite = np.isfinite(values)
    if finite.any() and np.median(np.abs(values[finite])) > X10000_MEDIAN:
        log(f"table: band {band} looks scaled x 10000 (median |value| > {X10000_MEDIAN}): divided by 10000")
        values = values / SCALE
    outside = ~np.isnan(values) & ~(np.abs(values) <= STORABLE)      # infinities included
    if outside.any():
        first = np.flatnonzero(outside.ravel())[0]
        raise DataContentError(f"{path} line {int(rows.ravel()[first]) + 2}: band {band} value {values.ravel()[first]:g} "
                               f"is outside the storable range +-{STORABLE} (0-1 scale): leave missing values empty")
    return values


# ------------------------------------------------------------------------------ layouts

def _per_sample(values: np.ndarray, codes: np.ndarray, n: int, ids: np.ndarray, what: str, path: Path) -> np.ndarray:
    """(n,) the value of each sample, checked equal over all of its rows (NaN equals NaN)."""
    first = np.full(n, -1)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    per = values[first]
    same = (values == per[codes]) | (pd.isna(values) & pd.isna(per[codes]))
    if not same.all():
        row = int(np.flatnonzero(~same)[0])
        raise DataContentError(f"{path} line {row + 2}: sample {ids[codes[row]]} has {what} {values[row]!r} here but "
                               f"{per[codes[row]]!r} on line {first[codes[row]] + 2}: one {what} per sample")
    return per


def _labels(table: pd.DataFrame, label_col: str) -> np.ndarray:
    """(R,) object: stripped label text, None where empty."""
    text = table[label_col].astype(object)
    return np.array([None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in text], dtype=object)


def _coords(table, lon_col, lat_col, path) -> np.ndarray | None:
    """(R, 2) longitude, latitude, checked to be degrees."""
    if lon_col is None:
        return None
    xy = np.stack([_numeric(table, lon_col, path, "--lon-col"), _numeric(table, lat_col, path, "--lat-col")], axis=1)
    if np.nanmax(np.abs(xy[:, 0]), initial=0) > 180 or np.nanmax(np.abs(xy[:, 1]), initial=0) > 90:
        raise DataContentError(f"{path}: {lon_col}/{lat_col} are not longitude/latitude degrees (EPSG:4326); "
                               "give the right columns with --lon-col/--lat-col")
    return xy


def _long(table, path, id_col, date_col, label_col, band_cols, lon_col, lat_col, code_col) -> Series:
    """One row per sample and date -> (N, T, C) series, each sample with its own sorted dates."""
    if table[id_col].isna().any():
        raise DataFormatError(f"{path} line {int(np.flatnonzero(table[id_col].isna().to_numpy())[0]) + 2}: empty sample id")
    codes, ids = pd.factorize(table[id_col].str.strip(), sort=False)     # (R,), (N,) first appearance order
    ids = np.asarray(ids, dtype=object)
    date_col, days = _date_column(table, date_col, codes, path)
    used = {id_col, date_col, label_col, lon_col, lat_col, code_col}
    if band_cols is None:
        band_cols = [c for c in table.columns if c not in used and not c.startswith("Unnamed:") and _mostly_numeric(table[c])]
        if not band_cols:
            raise DataFormatError(f"{path}: no numeric band column besides {', '.join(c for c in used if c)}; "
                                  f"columns: {', '.join(table.columns)}; name them with --band-cols")
    rows = np.arange(len(table))
    values = np.stack([_scaled(_numeric(table, b, path), b, rows, path) for b in band_cols], axis=1)  # (R, C)
    order = np.lexsort((days, codes))
    c_sorted, d_sorted = codes[order], days[order]
    repeat = np.flatnonzero((np.diff(c_sorted) == 0) & (np.diff(d_sorted) == 0))
    if repeat.size:
        a, b = sorted(order[repeat[0]:repeat[0] + 2])
        raise DataFormatError(f"{path} lines {a + 2} and {b + 2}: sample {ids[codes[a]]} has two rows for date "
                              f"{table[date_col].iloc[a]}: one row per sample and date (average or drop the duplicate)")
    n = len(ids)
    counts = np.bincount(codes, minlength=n)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)  # position within its sample
    n_time = int(counts.max())
    x = np.full((n, n_time, len(band_cols)), np.nan, dtype=np.float32)
    x[c_sorted, rank] = values[order]
    dates = np.zeros((n, n_time), dtype=np.int32)
    dates[c_sorted, rank] = d_sorted
    dates = np.take_along_axis(dates, np.minimum(np.arange(n_time), counts[:, None] - 1), axis=1)
    valid = np.arange(n_time) < counts[:, None]
    labels = _per_sample(_labels(table, label_col), codes, n, ids, "label", path)
    sample_codes = _per_sample(_labels(table, code_col), codes, n, ids, "code", path) if code_col else None
    xy = _coords(table, lon_col, lat_col, path)
    if xy is not None:
        xy = np.stack([_per_sample(xy[:, i], codes, n, ids, name, path) for i, name in enumerate(("longitude", "latitude"))],
                      axis=1).astype(np.float64)
    log(f"table (long): {len(table)} rows, {n} samples, up to {n_time} dates; id {id_col}, date {date_col}, "
        f"label {label_col}, bands {', '.join(band_cols)}" + (f", lon/lat {lon_col}/{lat_col}" if xy is not None else ""))
    return Series(ids, x, dates, valid, labels, xy, [str(b) for b in band_cols], sample_codes)


def _wide(table, path, id_col, label_col, band_cols, lon_col, lat_col, code_col) -> Series:
    """One row per sample, BAND_DATE columns -> (N, T, C) series on the shared dates."""
    columns = {c: parsed for c in table.columns if (parsed := _wide_name(c))}
    bands = list(dict.fromkeys(band for band, _ in columns.values()))
    if band_cols is not None:
        unknown = [b for b in band_cols if b not in bands]
        if unknown:
            raise ConfigError(f"{path}: no BAND_DATE columns for band(s) {', '.join(unknown)}; bands found: {', '.join(bands)}")
        bands = list(band_cols)
    if not bands:
        raise DataFormatError(f"{path}: no BAND_DATE column (e.g. B02_2020-01-05) in a wide table; "
                              f"columns: {', '.join(table.columns)}")
    days = np.unique([d for band, d in columns.values() if band in bands]).astype(np.int32)
    where = {parsed: c for c, parsed in columns.items()}
    missing = [f"{b}_{np.datetime64(int(d), 'D')}" for b in bands for d in days if (b, d) not in where]
    if missing:
        raise DataFormatError(f"{path}: every band needs a column for every date; missing {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    n = len(table)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, len(days)))
    x = np.stack([_scaled(np.stack([_numeric(table, where[b, d], path) for d in days], axis=1), b, rows, path)
                  for b in bands], axis=2).astype(np.float32)      # (N, T, C)
    if id_col is None:
        ids = np.array([str(i) for i in range(n)], dtype=object)
    else:
        ids = table[id_col].str.strip().to_numpy(dtype=object)
        repeated = pd.Series(ids).duplicated().to_numpy()
        if repeated.any() or pd.isna(ids).any():
            row = int(np.flatnonzero(repeated | pd.isna(ids))[0])
            raise DataFormatError(f"{path} line {row + 2}: sample id {ids[row]!r} empty or repeated: a wide table has "
                                  "one row per sample (use --layout long for one row per date)")
    xy = _coords(table, lon_col, lat_col, path)
    ignored = [c for c in table.columns if c not in columns and c not in {id_col, label_col, lon_col, lat_col, code_col}]
    log(f"table (wide): {n} samples, {len(days)} dates, bands {', '.join(bands)}"
        + (f"; ignored columns {', '.join(ignored)}" if ignored else ""))
    return Series(ids, x, np.broadcast_to(days, (n, len(days))), np.ones((n, len(days)), bool),
                  _labels(table, label_col), xy, bands, _labels(table, code_col) if code_col else None)


# ------------------------------------------------------------------------------ writing

def _class_names(labels: np.ndarray) -> list[str]:
    """Distinct labels, sorted numerically when all are integers."""
    names = sorted({str(v) for v in labels if v is not None})
    if names and all(re.fullmatch(r"-?\d+", v) for v in names):
        names.sort(key=int)
    return names


def _groups(ids: np.ndarray) -> np.ndarray:
    """(N,) int64: the ids when they are integers, else the position of each sample."""
    try:
        groups = np.array([int(v) for v in ids], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.arange(len(ids), dtype=np.int64)
    return groups if len(np.unique(groups)) == len(groups) else np.arange(len(ids), dtype=np.int64)


def _write(series: Series, out: Path, *, layout: str, path: Path, fractions, seed: int, code_col: str | None,
           colors, overwrite: bool, config: dict) -> Path:
    class_names = _class_names(series.labels)
    if not class_names:
        raise DataContentError(f"{path}: every label is empty: a table needs labelled samples")
    lookup = {name: i for i, name in enumerate(class_names)}
    y = np.array([-1 if v is None else lookup[v] for v in series.labels], dtype=np.int64)
    codes: list[int] = []
    if code_col is not None:
        codes = class_codes(y, series.codes, class_names, field=code_col, where=str(path))
        class_names, codes, y = order_by_code(class_names, codes, y)
    class_colors = default_colors(class_names)
    if colors is not None:
        class_colors = apply_color_file(colors, class_names, codes, class_colors)
    groups = _groups(series.ids)
    split = split_codes(groups, split_groups(groups, y, fractions=fractions, seed=seed))
    valid = series.valid & np.isfinite(series.x).all(axis=2)
    crs = ""
    if series.xy is not None:
        from rasterio.crs import CRS

        crs = CRS.from_epsg(4326).to_wkt()
    with PreparedWriter(out, n_time=series.x.shape[1], band_names=series.band_names, class_names=class_names,
                        class_colors=class_colors, class_codes=codes, sensor="unknown",
                        source=f"table {layout}: {path}", crs=crs, config=config, overwrite=overwrite) as writer:
        for start in range(0, len(y), BLOCK):
            part = slice(start, start + BLOCK)
            writer.append(x=series.x[part], valid=valid[part], date=series.dates[part], y=y[part], split=split[part],
                          group=groups[part], xy=None if series.xy is None else series.xy[part])
    counts = {name: int((split == code).sum()) for code, name in enumerate(("train", "val", "test", "unlabeled"))}
    log(f"table: {len(y)} samples, {len(class_names)} classes; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return writer.path
