"""Length bucketing (engine/sampling.py) and the engine sampler that uses it."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import Dataset, Subset

from sitscli.core.errors import ConfigError
from sitscli.data.prepared import PreparedWriter
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.sampling import bucketed_order, padding_fraction, series_lengths
from sitscli.engine.trainer import ResumableSampler


class Lengths(Dataset):
    """A dataset that only knows its series lengths: skewed, most series short, a few long."""

    def __init__(self, n: int, seed: int = 0):
        self.lengths = np.minimum(np.random.default_rng(seed).geometric(0.08, n), 64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        return i

    def series_lengths(self) -> np.ndarray:
        return self.lengths


def _sampler(data, *, rank=0, world_size=1, seed=3, epoch=0, batch=8, skip=0) -> ResumableSampler:
    sampler = ResumableSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.bucket(series_lengths(data), batch)
    sampler.set_epoch(epoch)
    sampler.skip = skip
    return sampler


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_index_once_an_epoch_across_ranks(world_size):
    data = Lengths(600)                     # 600 = a multiple of 1, 2, 3: no wrap-around padding
    shares = [list(_sampler(data, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1
    assert sorted(i for s in shares for i in s) == list(range(len(data)))


def test_ranks_get_equal_shares_when_the_size_does_not_divide():
    data = Lengths(601)
    shares = [list(_sampler(data, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 301
    assert set(shares[0]) | set(shares[1]) == set(range(601))     # one index repeated, as DistributedSampler pads


def test_bucketed_batches_have_less_padding_than_random_ones():
    data = Lengths(2000)
    lengths = data.series_lengths()
    random = ResumableSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    bucketed = _sampler(data, batch=16)
    assert padding_fraction(list(random), lengths, 16) > 0.4
    assert padding_fraction(list(bucketed), lengths, 16) < 0.15


def test_batches_partition_a_sorted_chunk():
    lengths = np.random.default_rng(1).integers(1, 65, 96)
    order = np.random.default_rng(2).permutation(96)
    out = bucketed_order(order, lengths, 8, np.random.default_rng(0), chunk_batches=6)   # two chunks of 48
    assert sorted(out.tolist()) == list(range(96))
    for chunk in (order[:48], order[48:]):
        batches = [b for b in out.reshape(-1, 8) if set(b) <= set(chunk)]
        assert len(batches) == 6                                    # no batch mixes the two chunks
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
        assert all(high <= low for (_, high), (low, _) in zip(spans, spans[1:]))   # neighbours in the sorted chunk


def test_the_short_batch_stays_last():
    lengths = np.arange(30)
    out = bucketed_order(np.arange(30)[::-1], lengths, 8, np.random.default_rng(0))
    assert sorted(out[-6:].tolist()) == list(range(24, 30))          # 30 = 3 x 8 + 6: the longest six, sorted last


def test_the_order_repeats_for_seed_and_epoch_and_changes_with_them():
    data = Lengths(500)
    first = list(_sampler(data, seed=3, epoch=2))
    assert first == list(_sampler(data, seed=3, epoch=2))
    assert first != list(_sampler(data, seed=3, epoch=3))
    assert first != list(_sampler(data, seed=4, epoch=2))


def test_skip_continues_the_same_order():
    data = Lengths(500)
    full = list(_sampler(data, epoch=1))
    rest = _sampler(data, epoch=1, skip=88)
    assert list(rest) == full[88:] and len(rest) == len(full) - 88


def test_lengths_through_subsets_and_a_dataset_without_them():
    data = Lengths(50)
    inner = Subset(Subset(data, list(range(10, 40))), [5, 0, 29])
    assert series_lengths(inner).tolist() == data.lengths[[15, 10, 39]].tolist()
    with pytest.raises(ConfigError, match="bucket_by_length"):
        series_lengths(Subset(list(range(5)), [0, 1]))


@pytest.mark.parametrize("in_memory", [True, False])
def test_series_dataset_lengths_are_the_compact_lengths(tmp_path, in_memory):
    rng = np.random.default_rng(0)
    n, t = 30, 12
    with PreparedWriter(tmp_path / "px", n_time=t, band_names=["B04", "B08"], class_names=["a"], sensor="s2",
                        source="test", chunk_samples=8) as writer:
        writer.append(x=rng.uniform(0, 1, (n, t, 2)), valid=rng.random((n, t)) < np.linspace(0.05, 1, n)[:, None],
                      date=np.arange(t) * 5 + 18000, y=np.zeros(n, int), split=rng.integers(0, 2, n),
                      group=np.arange(n), xy=rng.random((n, 2)))
    data = SeriesDataset(writer.path, splits=("train",), compact=True, max_len=8, in_memory=in_memory)
    lengths = data.series_lengths()
    assert lengths.tolist() == [len(data[i]["dates"]) for i in range(len(data))]
    assert lengths.max() == 8 and lengths.min() < 4
