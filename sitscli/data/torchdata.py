"""Torch datasets over a prepared dataset: in memory when it fits, streamed by zarr chunk when not.

`SeriesDataset` yields sample dicts in the format of `sitscli.data.batch` (values float32 0-1,
dates, valid, y, xy). When the selected samples fit `memory_budget` they are read once into RAM
(int16, as stored); otherwise samples are read from the store through a one-chunk cache and
`make_loader` iterates with `ChunkStream`, which visits chunks in a shuffled order and shuffles
within each chunk, so every zarr chunk is decoded once per epoch (per rank and worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, get_worker_info

from sitscli.data.batch import Sample, collate, compact_sample
from sitscli.data.modalities import S2
from sitscli.data.prepared import SCALE, Prepared, open_prepared

MEMORY_BUDGET = 2 << 30  # bytes of raw samples loaded when in_memory="auto"


class SeriesDataset(Dataset):
    """Samples of the given splits of a prepared dataset.

    Args:
        prepared: a `Prepared` or the path of a `.sits` directory.
        splits: split names to draw from ("train", "val", "test", "unlabeled").
        labeled_only: drop samples without a label (patch mode: without any labelled pixel).
        in_memory: True, False or "auto" (load when the selection fits `memory_budget`).
        compact: keep only clear observations (pixel mode; for models that see clear dates only).
        max_len: with `compact`, at most this many, evenly spaced (batch.compact_sample).
        modalities: the sensors to read ("s2" always; "s1", "planetscope", "vhr" when the dataset has them).
    Item i: values (T, C[, H, W]) float32 0-1, dates (T,) int32, valid (T[, H, W]) bool,
        y () or (H, W) int64, xy (2,) float64, index () int64 = the sample's row in the store; cloud
        (T[, H, W]) uint8 and y_tile (K,) bool when stored; per other sensor <prefix>_values (in its
        unit: dB for s1, reflectance 0-1 otherwise), <prefix>_valid, <prefix>_dates (time series).
    """

    def __init__(self, prepared: Prepared | str, splits=("train",), labeled_only: bool = False,
                 in_memory: bool | str = "auto", compact: bool = False, max_len: int | None = None,
                 memory_budget: int = MEMORY_BUDGET, modalities: tuple[str, ...] = (S2,)):
        prepared = prepared if isinstance(prepared, Prepared) else open_prepared(prepared)
        if compact and prepared.mode != "pixel":
            raise ValueError("compact series are for pixel samples only")
        prepared.require(modalities)
        self.path = prepared.path
        self.splits, self.compact, self.max_len = tuple(splits), compact, max_len
        self.modalities = tuple(dict.fromkeys((S2, *modalities)))
        self._others = {prepared.others[m]["prefix"]: float(prepared.others[m]["scale"]) for m in self.modalities[1:]}
        self.indices = prepared.indices(*self.splits, labeled_only=labeled_only)
        self.chunk_samples = prepared.chunk_samples
        if in_memory == "auto":
            in_memory = len(self.indices) * _bytes_per_sample(prepared, self.modalities) <= memory_budget
        self.in_memory = bool(in_memory)
        self._prepared: Prepared | None = prepared
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None  # (chunk id, raw arrays)
        self._data = self._load_all() if self.in_memory else None

    # the opened zarr store stays in the process that opened it; workers reopen by path
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_prepared"], state["_cache"] = None, None
        return state

    @property
    def prepared(self) -> Prepared:
        if self._prepared is None:
            self._prepared = open_prepared(self.path)
        return self._prepared

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        if self._data is not None:
            return self._sample(self._data, int(i), int(self.indices[i]))
        row = int(self.indices[i])
        chunk = self.chunk_data(row // self.chunk_samples)
        return self._sample(chunk, row % self.chunk_samples, row)

    def chunk_data(self, chunk: int) -> dict[str, np.ndarray]:
        """Raw arrays of one zarr chunk, kept until another chunk is asked for."""
        if self._cache is None or self._cache[0] != chunk:
            start = chunk * self.chunk_samples
            self._cache = (chunk, self.prepared.read(start, start + self.chunk_samples, self.modalities))
        return self._cache[1]

    def series_lengths(self) -> np.ndarray:
        """(len(self),) int64 clear observations of each sample (dates with any clear pixel for a
        patch), capped at `max_len` for compact series: the length `collate` pads a sample to.

        Counted from the `valid` array alone (in memory, or read from the store chunk by chunk),
        never by building the samples, so the engine's length bucketing costs one pass over `valid`.
        """
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._data is not None:
            counts = _clear_counts(self._data["valid"])
        else:
            stored = self.prepared.ds["valid"]
            parts = []
            for chunk, a, b in _chunk_runs(self.indices, self.chunk_samples):
                start = chunk * self.chunk_samples
                rows = self.indices[a:b] - start
                parts.append(_clear_counts(stored.isel(sample=slice(start, start + self.chunk_samples)).values[rows]))
            counts = np.concatenate(parts)
        return np.minimum(counts, self.max_len) if self.compact and self.max_len is not None else counts

    def _load_all(self) -> dict[str, np.ndarray]:
        """Raw arrays of the selected samples, read chunk by chunk (each chunk once)."""
        parts = []
        for chunk, a, b in _chunk_runs(self.indices, self.chunk_samples):
            raw = self.chunk_data(chunk)
            rows = self.indices[a:b] - chunk * self.chunk_samples
            parts.append({k: v[rows] for k, v in raw.items()})
        self._cache = None
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _sample(self, raw: dict[str, np.ndarray], j: int, row: int) -> Sample:
        sample = {
            "values": raw["x"][j].astype(np.float32) / SCALE,
            "dates": raw["date"][j].astype(np.int32),
            "valid": raw["valid"][j],
            "y": raw["y"][j].astype(np.int64),
            "xy": raw["xy"][j],
            "index": np.int64(row),
        }
        for name in ("cloud", "y_tile"):
            if name in raw:
                sample[name] = raw[name][j]
        for prefix, scale in self._others.items():
            sample[f"{prefix}_values"] = raw[f"{prefix}_x"][j].astype(np.float32) / scale
            sample[f"{prefix}_valid"] = raw[f"{prefix}_valid"][j]
            if f"{prefix}_date" in raw:
                sample[f"{prefix}_dates"] = raw[f"{prefix}_date"][j].astype(np.int32)
        return compact_sample(sample, self.max_len) if self.compact else sample


def _bytes_per_sample(prepared: Prepared, modalities: tuple[str, ...]) -> int:
    return sum(prepared.ds[v].dtype.itemsize * int(np.prod(prepared.ds[v].shape[1:], dtype=np.int64))
               for v in prepared.variables(modalities))


def _clear_counts(valid: np.ndarray) -> np.ndarray:
    """valid (n, T[, H, W]) -> (n,) int64 dates with a clear observation (any pixel of a patch)."""
    return valid.reshape(valid.shape[0], valid.shape[1], -1).any(axis=2).sum(axis=1).astype(np.int64)


def _chunk_runs(rows: np.ndarray, chunk_samples: int) -> Iterator[tuple[int, int, int]]:
    """(chunk id, start, stop): runs of consecutive positions of sorted `rows` in one chunk."""
    chunks = rows // chunk_samples
    starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]]) if len(rows) else np.zeros(0, dtype=int)
    for a, b in zip(starts, np.r_[starts[1:], len(rows)]):
        yield int(chunks[a]), int(a), int(b)


class ChunkStream(IterableDataset):
    """Iterate a streamed `SeriesDataset` chunk by chunk, sharded over ranks and loader workers.

    Each epoch builds one global order from (seed, epoch), the same on every rank: chunks in a
    shuffled order, samples shuffled within each chunk. The order is padded by wrapping to a
    multiple of `world_size` (as DistributedSampler does, so every rank sees the same number of
    samples and collective ops stay in step) and cut into contiguous blocks: one per rank, then one
    per worker. Contiguous blocks of a chunk-major order mean each process decodes only its own
    chunks, about once each per epoch.
    """

    def __init__(self, dataset: SeriesDataset, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch for a new order (loader workers copy the stream when they start)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.world_size)

    def epoch_order(self) -> np.ndarray:
        """Positions into `dataset.indices` of this rank, for this epoch (all workers together)."""
        groups = [np.arange(a, b) for _, a, b in _chunk_runs(self.dataset.indices, self.dataset.chunk_samples)]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            groups = [rng.permutation(groups[k]) for k in rng.permutation(len(groups))]
        order = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        per_rank = len(self)
        if len(order):
            order = np.resize(order, per_rank * self.world_size)  # wrap-around padding
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[Sample]:
        order = self.epoch_order()
        info = get_worker_info()
        if info is not None:
            order = np.array_split(order, info.num_workers)[info.id]
        for position in order:
            yield self.dataset[int(position)]


def make_loader(dataset: SeriesDataset, batch_size: int, shuffle: bool = False,
                collate_fn: Callable | None = collate, num_workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool = False) -> DataLoader:
    """A DataLoader that fits how `dataset` is held.

    In memory: a seeded RandomSampler, or a DistributedSampler when `world_size` > 1. Streamed: a
    `ChunkStream`. Call `set_epoch(loader, epoch)` before each epoch so the order changes.
    """
    common = dict(batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers, drop_last=drop_last)
    if not dataset.in_memory:
        return DataLoader(ChunkStream(dataset, shuffle, seed, rank, world_size), **common)
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = None
    return DataLoader(dataset, sampler=sampler, **common)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler or stream which epoch starts (no-op for a plain sequential loader)."""
    for target in (loader.sampler, loader.dataset):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
