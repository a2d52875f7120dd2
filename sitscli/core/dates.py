"""Dates are int32 days since 1970-01-01 throughout the package; helpers convert to what models want."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np

from sitscli.core.errors import ConfigError

EPOCH = np.datetime64("1970-01-01", "D")


def to_days(dates: Iterable) -> np.ndarray:
    """Dates (str, datetime.date, np.datetime64) -> int32 days since 1970-01-01."""
    arr = np.asarray(list(dates) if not isinstance(dates, np.ndarray) else dates)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    return (arr.astype("datetime64[D]") - EPOCH).astype(np.int32)


def to_datetime64(days: np.ndarray) -> np.ndarray:
    """int days since epoch -> datetime64[D]."""
    return EPOCH + np.asarray(days).astype("timedelta64[D]")


def iso(days: int) -> str:
    return str(EPOCH + np.timedelta64(int(days), "D"))


def day_of_year(days: np.ndarray) -> np.ndarray:
    """Day of year, 1..366, of int days since epoch (same shape)."""
    d = to_datetime64(days)
    year_start = d.astype("datetime64[Y]").astype("datetime64[D]")
    return ((d - year_start).astype(np.int32) + 1).astype(np.int32)


def parse_date(text: str, what: str = "date") -> int:
    """'2020-08-15' or '20200815' -> days since epoch, with a clear error."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return int(to_days([dt.datetime.strptime(text.strip(), fmt).date()])[0])
        except ValueError:
            continue
    raise ConfigError(f"cannot read {what} {text!r}: write it as YYYY-MM-DD")


def parse_date_range(text: str | None) -> tuple[int, int] | None:
    """'2020-01-01:2020-12-31' (either end may be empty) -> (first, last) days, inclusive."""
    if not text:
        return None
    if ":" not in text:
        raise ConfigError(f"--dates {text!r}: write a range as START:END, e.g. 2020-01-01:2020-12-31")
    start, end = text.split(":", 1)
    first = parse_date(start, "start date") if start else np.iinfo(np.int32).min
    last = parse_date(end, "end date") if end else np.iinfo(np.int32).max
    if first > last:
        raise ConfigError(f"--dates {text!r}: the start is after the end")
    return int(first), int(last)
