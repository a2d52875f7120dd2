"""The prepared dataset `NAME.sits/`: what every training and evaluation command reads.

    NAME.sits/data.zarr     xarray dataset in a zarr store, chunked along `sample`
    NAME.sits/dataset.yaml  the summary for people (sizes, classes per split, dates, band stats)
    NAME.sits/config.yaml   the resolved options that produced it

Variables (P = patch size, patch mode only):
    x      (sample, time, band[, py, px]) int16   reflectance x 10000 (0 where not valid)
    valid  (sample, time[, py, px])       bool    clear observation
    date   (sample, time)                 int32   days since 1970-01-01; padding repeats the last date
    y      (sample[, py, px])             int16   class id, -1 unlabeled
    split  (sample)                       int8    0 train, 1 val, 2 test, 3 unlabeled (CF flags)
    group  (sample)                       int64   parcel / polygon id; splits never cut a group
    xy     (sample, 2)                    float64 map coordinates (attr crs), NaN when unknown
    tile   (sample)                       int16   several tiles only: index into the `tiles` attribute
                                                  (id, crs, transform, width, height of each tile); xy is
                                                  then in the sample's own tile CRS, and `crs` is the CRS
                                                  of every tile, or empty when they span several
    cloud  (sample, time[, py, px])       uint8   Sentinel-2 cloud level 0-31 (with --keep-cloudy only;
                                                  x then keeps the values under clouds too)
    y_tile (sample, class)                bool    patch mode: the classes present in the patch (tile-level
                                                  multi-label target, as OmniSat evaluates)
    s1_x, ps_x, vhr_x ...                         other sensors, see `sitscli.data.modalities`

`PreparedWriter` streams samples in and computes the train-split band statistics on the way;
`open_prepared` gives a lazy `Prepared` view that reads chunk by chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from sitscli import __version__
from sitscli.core.config import dump_yaml
from sitscli.core.dates import iso
from sitscli.core.errors import DataContentError, DataFormatError
from sitscli.core.io import atomic_output, require_exists
from sitscli.core.legend import default_colors
from sitscli.data.modalities import S2, Modality
from sitscli.models.registry import DataInfo

SPLITS = ("train", "val", "test", "unlabeled")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
FORMAT_VERSION = 1          # bump when the layout changes; readers refuse newer stores
# (other sensors, `cloud` and `y_tile` are optional variables: a version-1 reader of today opens
# single-sensor stores unchanged)
SCALE = 10000               # int16 storage: reflectance x 10000 holds [-3.2768, 3.2767]
MAX_CHUNK_BYTES = 64 << 20  # a patch-mode chunk of 4096 large patches would be gigabytes: cap it
_OPEN = dict(consolidated=False, chunks=None, mask_and_scale=False, decode_times=False, decode_timedelta=False)


def dataset_path(path) -> Path:
    """The `.sits` directory for `path` (the suffix is added when missing)."""
    p = Path(path)
    return p if p.suffix == ".sits" else p.with_name(p.name + ".sits")


class _BandMoments:
    """Per-band count, mean and M2 of a stream, merged chunk by chunk (Chan et al. 1979)."""

    def __init__(self, n_bands: int):
        self.count = np.zeros(n_bands)
        self.mean = np.zeros(n_bands)
        self.m2 = np.zeros(n_bands)

    def update(self, values: np.ndarray) -> None:
        """values (m, C) float64 observations."""
        n = values.shape[0]
        if n == 0:
            return
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


class PreparedWriter:
    """Write a prepared dataset sample block by sample block; use as a context manager.

    On an exception nothing is left behind; `close()` finishes the store and moves it into place.
    Samples are buffered and written in whole chunks of `chunk_samples` so that memory stays one
    chunk whatever the dataset size.
    """

    def __init__(self, path, *, n_time: int, band_names, class_names, class_colors=None, class_codes=None, sensor: str, source: str,
                 mode: str = "pixel", patch_size: int | None = None, crs: str = "", config: dict | None = None,
                 overwrite: bool = False, chunk_samples: int = 4096, modalities: Sequence[Modality] = (),
                 keep_cloudy: bool = False, cloud_source: str = "", tiles: Sequence[Mapping] = ()):
        if mode not in ("pixel", "patch"):
            raise ValueError(f"mode must be 'pixel' or 'patch', not {mode!r}")
        if mode == "patch" and not patch_size:
            raise ValueError("patch mode needs a patch_size")
        if n_time < 1:
            raise ValueError("n_time must be >= 1")
        class_colors = list(class_colors) if class_colors is not None else default_colors([str(c) for c in class_names])
        if len(class_colors) != len(class_names):
            raise ValueError("one colour per class is needed")
        self.class_codes = [int(c) for c in class_codes or []]  # source codes (map pixel values), [] = none
        if self.class_codes and len(self.class_codes) != len(class_names):
            raise ValueError("one code per class is needed")
        self.path = dataset_path(path)
        self.n_time, self.mode, self.crs = int(n_time), mode, crs
        self.patch_size = int(patch_size) if mode == "patch" else None
        self.band_names, self.class_names = [str(b) for b in band_names], [str(c) for c in class_names]
        self.class_colors = class_colors
        self.sensor, self.source, self.config = sensor, source, dict(config or {})
        spatial = (self.patch_size,) * 2 if self.patch_size else ()
        self._spatial = spatial
        self.modalities = {m.name: m for m in modalities}
        self.keep_cloudy, self.cloud_source = bool(keep_cloudy), cloud_source
        self.tiles = [dict(t) for t in tiles]  # several tiles: each sample says which (a `tile` variable)
        sample_bytes = self.n_time * len(self.band_names) * int(np.prod(spatial, dtype=int)) * 2
        sample_bytes += sum(2 * int(np.prod(m.sample_shape(), dtype=int)) for m in self.modalities.values())
        self.chunk_samples = max(1, min(int(chunk_samples), MAX_CHUNK_BYTES // max(sample_bytes, 1)))

        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(self.path, overwrite))
        self._tmp.mkdir()
        self._store = self._tmp / "data.zarr"
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._written = 0
        self._closed = False
        # running summaries, so close() never reads the store back
        self._train_moments = _BandMoments(len(self.band_names))
        self._all_moments = _BandMoments(len(self.band_names))
        self._moments = {m.name: (_BandMoments(len(m.band_names)), _BandMoments(len(m.band_names)))  # train, all
                         for m in self.modalities.values()}
        self._clear = {S2: np.zeros(2, dtype=np.int64), **{m: np.zeros(2, dtype=np.int64) for m in self.modalities}}  # clear, observed
        self._class_counts = np.zeros((len(SPLITS), len(self.class_names) + 1), dtype=np.int64)  # last: unlabeled
        self._split_sizes = np.zeros(len(SPLITS), dtype=np.int64)
        self._dates_per_sample: list[np.ndarray] = []
        self._date_min, self._date_max = np.iinfo(np.int32).max, np.iinfo(np.int32).min
        self._hash = hashlib.blake2b(digest_size=8)
        self._hash.update(json.dumps([self.band_names, self.class_names, mode, self.patch_size]).encode())
        if self.modalities or self.keep_cloudy:  # single-sensor fingerprints stay as they were
            self._hash.update(json.dumps([[m.name, m.band_names, m.sample_shape()] for m in self.modalities.values()]
                                         + [self.keep_cloudy]).encode())

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "PreparedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort(exc_type, exc, tb)
        elif not self._closed:
            self.close()
        return False

    def _abort(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self._closed = True
            self._stack.__exit__(exc_type, exc, tb)  # atomic_output removes the temporary directory

    # -- writing ---------------------------------------------------------------------------------
    def append(self, *, x: np.ndarray, valid, date, y, split, group, xy=None, cloud=None,
               others: Mapping[str, Mapping[str, np.ndarray]] | None = None, tile: int | None = None) -> None:
        """Add n samples.

        Args:
            x: (n, T, C[, P, P]) float reflectance 0-1; stored as int16 x 10000, clipped.
            valid: (n, T[, P, P]) bool; NaN values in x are made invalid as well.
            date: (n, T) or (T,) days since 1970-01-01.
            y: (n[, P, P]) class ids, -1 unlabeled.
            split: (n,) codes 0 train .. 3 unlabeled (see SPLITS).
            group: (n,) parcel / polygon ids.
            xy: (n, 2) map coordinates, or None.
            cloud: (n, T[, P, P]) Sentinel-2 cloud level 0-31; required with keep_cloudy, else ignored.
            others: per extra modality name, {"x": (n, *Modality.sample_shape()) float in the
                modality's unit, "valid": x's shape without the band axis, "date": (n, T_m) or
                (T_m,) when temporal}. Every modality given to the writer must be there.
            tile: index into the writer's `tiles` of the tile these samples come from (required with tiles).
        Series shorter than n_time are padded with valid=False.
        """
        block = self._convert(x, valid, date, y, split, group, xy, cloud)
        block.update(self._convert_others(others or {}, block["split"].shape[0]))
        if self.tiles:
            if tile is None or not 0 <= tile < len(self.tiles):
                raise ValueError(f"a writer of {len(self.tiles)} tiles needs the tile index of every block, not {tile}")
            block["tile"] = np.full(block["split"].shape[0], tile, dtype=np.int16)
        self._summarise(block)
        self._buffer.append(block)
        self._buffered += block["split"].shape[0]
        if self._buffered >= self.chunk_samples:
            self._flush(final=False)

    def _convert(self, x, valid, date, y, split, group, xy, cloud) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        n, t, c = x.shape[:3]
        if c != len(self.band_names) or x.shape[3:] != self._spatial or t > self.n_time:
            raise ValueError(f"x has shape {x.shape}; expected (n, <= {self.n_time}, {len(self.band_names)}, *{self._spatial})")
        valid = np.asarray(valid, dtype=bool) & ~np.isnan(x).any(axis=2)
        date = np.broadcast_to(np.asarray(date, dtype=np.int32), (n, t))
        y = np.asarray(y, dtype=np.int16).reshape((n,) + self._spatial)
        split = np.asarray(split, dtype=np.int8).reshape(n)
        if y.size and (y.min() < -1 or y.max() >= len(self.class_names)):
            raise ValueError(f"class ids must lie in -1..{len(self.class_names) - 1}")
        if split.size and (split.min() < 0 or split.max() >= len(SPLITS)):
            raise ValueError("split codes must lie in 0..3")
        stored = _to_int16(x, SCALE)
        if not self.keep_cloudy:  # kept: the values under clouds stay for models that learn from them
            stored = np.where(np.expand_dims(valid, 2), stored, np.int16(0))  # (n, t, C[, P, P])
        if self.keep_cloudy:
            if cloud is None:
                raise ValueError("a keep_cloudy writer needs the cloud levels of every sample")
            cloud = np.asarray(cloud, dtype=np.uint8).reshape(valid.shape)
        pad = self.n_time - t
        if pad:
            stored = np.concatenate([stored, np.zeros((n, pad) + stored.shape[2:], np.int16)], axis=1)
            valid = np.concatenate([valid, np.zeros((n, pad) + valid.shape[2:], bool)], axis=1)
            last = date[:, -1:] if t else np.zeros((n, 1), np.int32)
            date = np.concatenate([date, np.repeat(last, pad, axis=1)], axis=1)
            if self.keep_cloudy:
                cloud = np.concatenate([cloud, np.zeros((n, pad) + cloud.shape[2:], np.uint8)], axis=1)
        xy = np.full((n, 2), np.nan) if xy is None else np.asarray(xy, dtype=np.float64).reshape(n, 2)
        block = {"x": stored, "valid": valid, "date": np.ascontiguousarray(date), "y": y, "split": split,
                 "group": np.asarray(group, dtype=np.int64).reshape(n), "xy": xy}
        if self.keep_cloudy:
            block["cloud"] = cloud
        if self.mode == "patch":
            block["y_tile"] = _classes_present(y, len(self.class_names))
        return block

    def _convert_others(self, others: Mapping[str, Mapping[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
        """Stored arrays of the extra modalities, keyed by variable name (s1_x, s1_valid, s1_date...)."""
        if set(others) != set(self.modalities):
            raise ValueError(f"modalities given {sorted(others)} differ from the writer's {sorted(self.modalities)}")
        block = {}
        for name, m in self.modalities.items():
            part = others[name]
            x = np.asarray(part["x"], dtype=np.float32)
            if x.shape != (n, *m.sample_shape()):
                raise ValueError(f"{name} x has shape {x.shape}; expected {(n, *m.sample_shape())}")
            band_axis = 2 if m.temporal else 1
            valid = np.asarray(part["valid"], dtype=bool) & ~np.isnan(x).any(axis=band_axis)
            stored = np.where(np.expand_dims(valid, band_axis), _to_int16(x, m.scale), np.int16(0))
            block[f"{m.prefix}_x"], block[f"{m.prefix}_valid"] = stored, valid
            if m.temporal:
                block[f"{m.prefix}_date"] = np.ascontiguousarray(
                    np.broadcast_to(np.asarray(part["date"], dtype=np.int32), (n, m.n_time)))
        return block

    def _summarise(self, block: dict[str, np.ndarray]) -> None:
        x, valid, split, y = block["x"], block["valid"], block["split"], block["y"]
        for name in block:
            if name not in ("xy", "y_tile"):  # y_tile derives from y
                self._hash.update(np.ascontiguousarray(block[name]).tobytes())
        bands_last = np.moveaxis(x, 2, -1)                         # (n, T[, P, P], C)
        obs = bands_last[valid].astype(np.float64) / SCALE          # (m, C) valid observations
        self._all_moments.update(obs)
        train = split == SPLIT_CODES["train"]
        if train.any():
            self._train_moments.update(bands_last[train][valid[train]].astype(np.float64) / SCALE)
        self._clear[S2] += (int(valid.sum()), valid.size)
        for name, m in self.modalities.items():
            self._summarise_modality(m, block, train)
        seen = valid.reshape(valid.shape[0], valid.shape[1], -1).any(axis=2)  # (n, T) any pixel clear
        self._dates_per_sample.append(seen.sum(axis=1).astype(np.int32))
        if seen.any():
            self._date_min = min(self._date_min, int(block["date"][seen].min()))
            self._date_max = max(self._date_max, int(block["date"][seen].max()))
        n_cls = len(self.class_names)
        for code in range(len(SPLITS)):
            in_split = split == code
            self._split_sizes[code] += int(in_split.sum())
            labels = y[in_split].ravel().astype(np.int64)
            self._class_counts[code] += np.bincount(np.where(labels < 0, n_cls, labels), minlength=n_cls + 1)

    def _summarise_modality(self, m: Modality, block: dict[str, np.ndarray], train: np.ndarray) -> None:
        x, valid = block[f"{m.prefix}_x"], block[f"{m.prefix}_valid"]
        band_axis = 2 if m.temporal else 1
        bands_last = np.moveaxis(x, band_axis, -1)               # (n, [T,] *footprint, C)
        train_moments, all_moments = self._moments[m.name]
        all_moments.update(bands_last[valid].astype(np.float64) / m.scale)
        if train.any():
            train_moments.update(bands_last[train][valid[train]].astype(np.float64) / m.scale)
        self._clear[m.name] += (int(valid.sum()), valid.size)

    def _flush(self, final: bool) -> None:
        if not self._buffer:
            return
        block = {k: np.concatenate([b[k] for b in self._buffer]) for k in self._buffer[0]}
        n = block["split"].shape[0]
        keep = n if final else (n // self.chunk_samples) * self.chunk_samples  # whole chunks only
        self._write({k: v[:keep] for k, v in block.items()})
        rest = {k: v[keep:] for k, v in block.items()}
        self._buffer = [rest] if n > keep else []
        self._buffered = n - keep

    def _dataset(self, block: dict[str, np.ndarray]) -> xr.Dataset:
        spatial = ("py", "px") if self.mode == "patch" else ()
        ds = xr.Dataset({
            "x": (("sample", "time", "band") + spatial, block["x"],
                  {"long_name": "surface reflectance x 10000", "scale_to_reflectance": 1 / SCALE}),
            "valid": (("sample", "time") + spatial, block["valid"], {"long_name": "clear observation"}),
            # no CF `units` on purpose: xarray would decode the ints into datetime64
            "date": (("sample", "time"), block["date"], {"long_name": "acquisition date, days since 1970-01-01"}),
            "y": (("sample",) + spatial, block["y"], {"long_name": "class id, -1 unlabeled"}),
            "split": (("sample",), block["split"],
                      {"flag_values": list(range(len(SPLITS))), "flag_meanings": " ".join(SPLITS)}),
            "group": (("sample",), block["group"], {"long_name": "parcel or polygon id"}),
            "xy": (("sample", "coord"), block["xy"], {"long_name": "map coordinates x, y", "crs": self.crs}),
        })
        if "cloud" in block:
            ds["cloud"] = (("sample", "time") + spatial, block["cloud"],
                           {"long_name": "Sentinel-2 cloud level 0 (clear) to 31", "source": self.cloud_source})
        if "y_tile" in block:
            ds["y_tile"] = (("sample", "class"), block["y_tile"], {"long_name": "classes present in the patch"})
        if "tile" in block:
            ds["tile"] = (("sample",), block["tile"], {"long_name": "index into the tiles attribute"})
        for m in self.modalities.values():
            dims = m.dims(self.mode == "patch")
            p = m.prefix
            ds[f"{p}_x"] = (dims["x"], block[f"{p}_x"], {"long_name": f"{m.name} {m.unit} x {m.scale:g}",
                                                           "scale_to_unit": 1 / m.scale})
            ds[f"{p}_valid"] = (dims["valid"], block[f"{p}_valid"], {"long_name": f"{m.name} clear observation"})
            if m.temporal:
                ds[f"{p}_date"] = (dims["date"], block[f"{p}_date"], {"long_name": f"{m.name} acquisition date, "
                                                                                  "days since 1970-01-01"})
        return ds

    def _write(self, block: dict[str, np.ndarray]) -> None:
        ds = self._dataset(block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # zarr v3 notes on string attrs
            if self._written == 0:
                encoding = {name: {"chunks": (self.chunk_samples,) + var.shape[1:]} for name, var in ds.data_vars.items()}
                ds.to_zarr(self._store, mode="w", encoding=encoding, consolidated=False)
            else:
                ds.to_zarr(self._store, append_dim="sample", consolidated=False)
        self._written += block["split"].shape[0]

    def close(self) -> Path:
        """Write the remaining samples, the attributes and dataset.yaml; move into place."""
        if self._closed:
            return self.path
        try:
            self._flush(final=True)
            if self._written == 0:
                raise DataContentError(f"no samples to write to {self.path}: check the inputs (labels, dates, area)")
            attrs = self._attrs()
            import zarr

            zarr.open_group(self._store, mode="r+").attrs.update(attrs)
            prepared = Prepared(self.path, xr.open_zarr(self._store, **_OPEN))
            dump_yaml(prepared.summary(), self._tmp / "dataset.yaml")
            dump_yaml(self.config, self._tmp / "config.yaml")
        except BaseException as exc:
            self._abort(type(exc), exc, exc.__traceback__)
            raise
        self._closed = True
        self._stack.close()
        return self.path

    def _attrs(self) -> dict:
        moments = self._train_moments if self._split_sizes[SPLIT_CODES["train"]] else self._all_moments
        if moments.count.min() == 0:
            raise DataContentError(f"no clear observation of band(s) {[b for b, n in zip(self.band_names, moments.count) if n == 0]}: every date is cloudy or masked")
        counts = {split: {name: int(n) for name, n in zip(self.class_names + ["unlabeled"], self._class_counts[code]) if n}
                  for code, split in enumerate(SPLITS) if self._split_sizes[code]}
        per_sample = np.concatenate(self._dates_per_sample)
        extra: dict = {"keep_cloudy": True, "cloud_source": self.cloud_source} if self.keep_cloudy else {}
        if self.modalities:
            extra["modalities"] = {name: self._modality_attrs(m) for name, m in self.modalities.items()}
        if self.tiles:
            extra["tiles"] = self.tiles
        return {
            "format_version": FORMAT_VERSION, "sitscli_version": __version__,
            "band_names": self.band_names, "class_names": self.class_names, "class_colors": self.class_colors,
            "class_codes": self.class_codes,
            "sensor": self.sensor, "source": self.source, "mode": self.mode, "patch_size": self.patch_size or 0,
            "crs": self.crs, "band_mean": [round(float(v), 6) for v in moments.mean],
            "band_std": [round(float(v), 6) for v in moments.std],
            "band_stats_from": "train" if moments is self._train_moments else "all",
            "fingerprint": self._hash.hexdigest(),
            "split_sizes": {s: int(n) for s, n in zip(SPLITS, self._split_sizes) if n},
            "class_counts": counts,
            "date_min": int(self._date_min) if per_sample.any() else None,
            "date_max": int(self._date_max) if per_sample.any() else None,
            "dates_per_sample": {"min": int(per_sample.min()), "median": float(np.median(per_sample)),
                                 "max": int(per_sample.max())},
            "clear_fraction": round(float(self._clear[S2][0] / max(self._clear[S2][1], 1)), 4),
            **extra,
        }

    def _modality_attrs(self, m: Modality) -> dict:
        train, every = self._moments[m.name]
        moments = train if self._split_sizes[SPLIT_CODES["train"]] and train.count.min() > 0 else every
        if moments.count.min() == 0:
            raise DataContentError(f"{m.name}: no clear observation of band(s) "
                                   f"{[b for b, n in zip(m.band_names, moments.count) if n == 0]} in the samples")
        clear, observed = self._clear[m.name]
        return {"prefix": m.prefix, "band_names": list(m.band_names), "n_time": m.n_time, "footprint": list(m.footprint),
                "resolution": m.resolution, "scale": m.scale, "unit": m.unit, "source": m.source,
                "band_mean": [round(float(v), 6) for v in moments.mean], "band_std": [round(float(v), 6) for v in moments.std],
                "band_stats_from": "train" if moments is train else "all",
                "clear_fraction": round(float(clear / max(observed, 1)), 4)}


def _to_int16(x: np.ndarray, scale: float) -> np.ndarray:
    """x * scale rounded and clipped into int16 (NaN -> 0)."""
    return np.clip(np.rint(np.nan_to_num(x) * scale), -32768, 32767).astype(np.int16)


def _classes_present(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) bool: class k labels at least one pixel of sample i (y (n, P, P), -1 unlabeled)."""
    flat = y.reshape(y.shape[0], -1)
    return (flat[:, :, None] == np.arange(n_classes)).any(axis=1)


class Prepared:
    """A lazily opened prepared dataset: nothing is read until asked for."""

    def __init__(self, path: Path, ds: xr.Dataset):
        self.path, self.ds = Path(path), ds
        a = ds.attrs
        self.band_names: list[str] = list(a["band_names"])
        self.class_names: list[str] = list(a["class_names"])
        self.class_colors: list[str] = list(a["class_colors"])
        self.class_codes: list[int] = [int(c) for c in a.get("class_codes", [])]  # absent before codes were kept
        self.mode: str = a["mode"]
        self.patch_size: int | None = int(a["patch_size"]) or None
        self.crs: str = a["crs"]
        self.fingerprint: str = a["fingerprint"]
        self.keep_cloudy: bool = bool(a.get("keep_cloudy", False))
        self.others: dict[str, dict] = dict(a.get("modalities", {}))  # extra sensors: name -> attrs
        self.tiles: list[dict] = list(a.get("tiles", []))  # several tiles: id, crs, transform, width, height each

    @property
    def modalities(self) -> tuple[str, ...]:
        """The sensors held: "s2" first, then the extra ones in stored order."""
        return (S2, *self.others)

    @property
    def n_samples(self) -> int:
        return self.ds.sizes["sample"]

    @property
    def n_time(self) -> int:
        return self.ds.sizes["time"]

    @property
    def chunk_samples(self) -> int:
        """Samples per zarr chunk: reading whole chunks decodes each chunk once."""
        return int(self.ds["x"].encoding.get("chunks", (self.n_samples,))[0])

    def variables(self, modalities: Sequence[str] = (S2,)) -> tuple[str, ...]:
        """Names of the stored variables that the given modalities need (cloud and y_tile when present)."""
        names = ["x", "valid", "date", "y", "split", "group", "xy"]
        names += [v for v in ("cloud", "y_tile") if v in self.ds.data_vars]
        for name in modalities:
            if name != S2:
                p = self.others[name]["prefix"]
                names += [v for v in (f"{p}_x", f"{p}_valid", f"{p}_date") if v in self.ds.data_vars]
        return tuple(names)

    def read(self, start: int, stop: int, modalities: Sequence[str] = (S2,)) -> dict[str, np.ndarray]:
        """Raw arrays of samples [start, stop): x int16 (n, T, C[, P, P]), valid, date, y, split, group, xy,
        (cloud, y_tile when stored) and the variables of the other `modalities` asked for (s1_x...)."""
        self.require(modalities)
        part = self.ds.isel(sample=slice(start, stop))
        try:
            return {name: part[name].values for name in self.variables(modalities)}
        except (RuntimeError, ValueError) as exc:   # what the codecs raise on a truncated or corrupt chunk
            raise DataFormatError(f"{self.path}: samples {start}-{min(stop, self.n_samples) - 1} cannot be read "
                                  f"({str(exc).splitlines()[0]}): the store is damaged (a truncated copy?); "
                                  "copy or prepare it again") from None

    def require(self, modalities: Sequence[str], who: str = "") -> None:
        """Raise a one-line error naming the sensors asked for that the dataset lacks."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            flags = " ".join(f"--{m} PATH" for m in missing)
            raise DataContentError(f"{self.path} has no {', '.join(missing)} data{' for ' + who if who else ''} "
                                   f"(it holds {', '.join(self.modalities)}): prepare it with `sits prepare s2 ... {flags}`")

    def _labeled(self) -> np.ndarray:
        """(N,) bool: the sample has a label (patch mode: at least one labelled pixel)."""
        if self.mode == "pixel":
            return self.ds["y"].values >= 0
        step = self.chunk_samples
        return np.concatenate([
            (self.ds["y"].isel(sample=slice(s, s + step)).values >= 0).reshape(-1, self.patch_size**2).any(axis=1)
            for s in range(0, self.n_samples, step)
        ])

    def indices(self, *splits: str, labeled_only: bool = False) -> np.ndarray:
        """Sorted sample indices in the given splits (all splits when none is given)."""
        unknown = [s for s in splits if s not in SPLIT_CODES]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}: choose from {SPLITS}")
        codes = [SPLIT_CODES[s] for s in (splits or SPLITS)]
        keep = np.isin(self.ds["split"].values, codes)
        if labeled_only:
            keep &= self._labeled()
        return np.flatnonzero(keep)

    def info(self) -> DataInfo:
        a = self.ds.attrs
        period = [a["date_min"], a["date_max"]] if a.get("date_min") is not None else []
        others = {name: {k: m[k] for k in ("band_names", "band_mean", "band_std", "resolution", "footprint", "unit")}
                  for name, m in self.others.items()}
        return DataInfo(band_names=self.band_names, band_mean=list(a["band_mean"]), band_std=list(a["band_std"]),
                        class_names=self.class_names, class_colors=self.class_colors, reference_date=a.get("date_min"),
                        class_codes=self.class_codes, train_period=period, modalities=others,
                        keep_cloudy=self.keep_cloudy)

    def summary(self) -> dict:
        """What `sits info` prints: sizes, dates, classes per split, band statistics."""
        a = self.ds.attrs
        date_min, date_max = a.get("date_min"), a.get("date_max")
        return {
            "path": str(self.path),
            "source": a["source"], "sensor": a["sensor"], "mode": self.mode, "patch_size": self.patch_size,
            "samples": self.n_samples, "time_steps": self.n_time,
            "splits": dict(a["split_sizes"]),
            "date_range": [iso(date_min), iso(date_max)] if date_min is not None else None,
            "dates_per_sample": dict(a["dates_per_sample"]),
            "bands": self.band_names,
            "band_stats": {"from_split": a["band_stats_from"],
                           "mean": dict(zip(self.band_names, a["band_mean"])),
                           "std": dict(zip(self.band_names, a["band_std"]))},
            "classes": [{"id": i, "name": n, "color": c, **({"code": self.class_codes[i]} if self.class_codes else {})}
                        for i, (n, c) in enumerate(zip(self.class_names, self.class_colors))],
            "class_counts": {s: dict(c) for s, c in a["class_counts"].items()},
            "crs": self.crs,
            **self._tile_summary(),
            **self._modality_summary(),
            "fingerprint": self.fingerprint,
            "sitscli_version": a["sitscli_version"],
        }

    def _tile_summary(self) -> dict:
        """Datasets of several tiles: each tile's id, CRS and number of samples."""
        if not self.tiles:
            return {}
        counts = np.bincount(self.ds["tile"].values, minlength=len(self.tiles))
        return {"tiles": [{"id": t["id"], "crs": t["crs"], "samples": int(n)} for t, n in zip(self.tiles, counts)]}

    def _modality_summary(self) -> dict:
        """Per sensor: dates, bands, resolution, clear fraction (only for multi-sensor or keep-cloudy stores)."""
        if not self.others and not self.keep_cloudy:
            return {}
        a = self.ds.attrs
        s2 = {"dates": self.n_time, "bands": self.band_names, "resolution": 10.0,
              "clear_fraction": a.get("clear_fraction"),
              "keep_cloudy": self.keep_cloudy}
        if self.keep_cloudy:
            s2["cloud_source"] = a.get("cloud_source", "")
        out = {"s2": s2}
        for name, m in self.others.items():
            entry = {"dates": m["n_time"], "bands": list(m["band_names"]), "resolution": m["resolution"],
                     "footprint": list(m["footprint"]), "unit": m["unit"], "clear_fraction": m["clear_fraction"],
                     "source": m["source"]}
            date_var = f"{m['prefix']}_date"
            if date_var in self.ds.data_vars and self.n_samples:
                first = self.ds[date_var].isel(sample=0).values
                entry["date_range"] = [iso(int(first.min())), iso(int(first.max()))]
            out[name] = entry
        return {"modalities": out}


def open_prepared(path) -> Prepared:
    """Open `NAME.sits` (the suffix may be left out) with one-line errors for what is not one."""
    p = Path(path)
    if not p.exists() and dataset_path(p).exists():
        p = dataset_path(p)
    require_exists(p, "prepared dataset")
    store = p / "data.zarr"
    if not store.is_dir():
        raise DataFormatError(f"{p} is not a prepared dataset (no data.zarr inside): make one with `sits prepare`")
    try:
        ds = xr.open_zarr(store, **_OPEN)
    except Exception as exc:  # zarr raises many types for a damaged store
        raise DataFormatError(f"cannot read {store} ({type(exc).__name__}): the store is damaged, prepare the dataset again") from None
    version = ds.attrs.get("format_version")
    if version is None or "band_names" not in ds.attrs:
        raise DataFormatError(f"{p} is not a finished sitscli dataset (no format attributes): prepare it again with `sits prepare`")
    if int(version) > FORMAT_VERSION:
        raise DataFormatError(f"{p} was written by sitscli {ds.attrs.get('sitscli_version')}, newer than this one "
                              f"({__version__}): upgrade sitscli to read it")
    missing = {"x", "valid", "date", "y", "split", "group", "xy"} - set(ds.data_vars)
    if missing:
        raise DataFormatError(f"{p} lacks variable(s) {sorted(missing)}: prepare the dataset again")
    return Prepared(p, ds)

