"""Torch datasets: streamed and in-memory give the same samples; sharding covers every sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitscli.data.prepared import SPLITS as SPLITS_ALL, PreparedWriter
from sitscli.data.torchdata import ChunkStream, SeriesDataset, make_loader, set_epoch


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    """37 pixel samples over 5 chunks of 8, every split present, 7 dates of 2 bands."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("td") / "px"
    with PreparedWriter(path, n_time=7, band_names=["B04", "B08"], class_names=["a", "b"], sensor="s2",
                        source="test", chunk_samples=8) as w:
        for n in (10, 27):
            w.append(x=rng.uniform(0, 1, (n, 7, 2)), valid=rng.random((n, 7)) > 0.3,
                     date=np.arange(7) * 5 + 18000, y=rng.integers(-1, 2, n), split=rng.integers(0, 4, n),
                     group=np.arange(n), xy=rng.random((n, 2)))
    return w.path


def test_streamed_equals_in_memory(dataset_path):
    mem = SeriesDataset(dataset_path, splits=("train", "test"), in_memory=True)
    stream = SeriesDataset(dataset_path, splits=("train", "test"), in_memory=False)
    assert mem.in_memory and not stream.in_memory and len(mem) == len(stream) > 8
    for i in range(len(mem)):
        a, b = mem[i], stream[i]
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert mem[0]["values"].dtype == np.float32 and mem[0]["values"].shape == (7, 2)
    assert 0 <= mem[0]["values"].max() <= 1


def test_chunk_stream_visits_each_sample_once_and_chunks_in_runs(dataset_path):
    ds = SeriesDataset(dataset_path, splits=SPLITS_ALL, in_memory=False)
    stream = ChunkStream(ds, shuffle=True, seed=1)
    order = stream.epoch_order()
    assert sorted(order.tolist()) == list(range(len(ds)))
    chunks = ds.indices[order] // ds.chunk_samples
    assert np.count_nonzero(np.diff(chunks)) == len(np.unique(chunks)) - 1  # each chunk visited in one run
    stream.set_epoch(1)
    assert not np.array_equal(order, stream.epoch_order())
    rows = [int(s["index"]) for s in stream]
    assert sorted(rows) == sorted(ds.indices.tolist())


def test_ranks_shard_without_overlap_and_equal_length(dataset_path):
    ds = SeriesDataset(dataset_path, splits=SPLITS_ALL, in_memory=False)
    parts = [ChunkStream(ds, shuffle=True, seed=2, rank=r, world_size=3).epoch_order() for r in range(3)]
    assert len({len(p) for p in parts}) == 1 and sum(map(len, parts)) >= len(ds)
    union = np.concatenate(parts)
    assert set(union.tolist()) == set(range(len(ds)))
    assert len(union) - len(set(union.tolist())) == len(union) - len(ds)  # only the wrap-around repeats


def test_loader_batches_and_labeled_only(dataset_path):
    ds = SeriesDataset(dataset_path, splits=("train", "val"), labeled_only=True)
    assert ds.in_memory  # tiny: "auto" loads it
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0)
    set_epoch(loader, 0)
    batches = list(loader)
    assert sum(b["y"].shape[0] for b in batches) == len(ds)
    assert all((b["y"] >= 0).all() for b in batches)
    b = batches[0]
    assert b["values"].shape[1:] == (7, 2) and b["values"].dtype == torch.float32 and b["valid"].dtype == torch.bool


def test_streamed_loader_with_workers_covers_everything(dataset_path):
    ds = SeriesDataset(dataset_path, splits=SPLITS_ALL, in_memory=False)
    seen = []
    for batch in make_loader(ds, batch_size=5, shuffle=True, num_workers=2, seed=0,
                             collate_fn=lambda samples: [int(s["index"]) for s in samples]):
        seen += batch
    assert sorted(seen) == ds.indices.tolist()


def test_compact_keeps_only_clear_observations(dataset_path):
    ds = SeriesDataset(dataset_path, splits=SPLITS_ALL, compact=True, max_len=3)
    full = SeriesDataset(dataset_path, splits=SPLITS_ALL)
    for i in range(len(ds)):
        s = ds[i]
        assert s["valid"].all() and len(s["dates"]) == min(3, int(full[i]["valid"].sum()))
