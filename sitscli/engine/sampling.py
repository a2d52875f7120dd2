"""Length bucketing: batches of series of similar length, in a random order.

`collate` pads a batch to its longest series, so a batch of random series spends much of its work
on padding (about a third of SITS-BERT's tokens on series of 24-64 clear observations). Sorting
the whole epoch by length would remove the padding but make every epoch the same, short-to-long.
The middle way used here (as in fairseq's and AllenNLP's bucket iterators): take the epoch's random
order, cut it into chunks of `CHUNK_BATCHES` batches, sort each chunk by length, cut it into
batches, and shuffle the order of the batches. A batch then holds series of similar length; which
series meet in a chunk, and the order in which batches come, stay random.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset

from sitscli.core.errors import ConfigError

# Batches per sorted chunk: a chunk of 50 random batches spans almost the whole length range, so
# neighbours after sorting differ by a few observations (padding fraction 0.30 -> 0.08 on series of
# 24-64 clear observations, bench/train_speed.py); more gains little and makes batches less random.
CHUNK_BATCHES = 50


def bucketed_order(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   chunk_batches: int = CHUNK_BATCHES) -> np.ndarray:
    """`order` rearranged so that consecutive runs of `batch_size` hold series of similar length.

    Args:
        order: (n,) dataset indices in a random order (the epoch's permutation of this rank).
        lengths: (N,) series length of every dataset index.
        batch_size: the loader's batch size; the order is cut into batches of this size.
        rng: draws the order of the batches (seed it from seed and epoch to repeat the epoch).
    Returns:
        (n,) the same indices: whole batches, each sorted by length within its chunk, in a shuffled
        order; the one short batch (n not a multiple of batch_size) stays last, so the loader's
        batches are exactly these.
    """
    order = np.asarray(order, dtype=np.int64)
    chunk = batch_size * chunk_batches
    sorted_chunks = [part[np.argsort(lengths[part], kind="stable")] for part in np.split(order, range(chunk, len(order), chunk))]
    flat = np.concatenate(sorted_chunks) if sorted_chunks else order
    full = len(flat) // batch_size * batch_size
    batches = flat[:full].reshape(-1, batch_size)                  # (n // batch_size, batch_size)
    return np.concatenate([batches[rng.permutation(len(batches))].ravel(), flat[full:]])


def padding_fraction(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> float:
    """Share of the padded tokens that are padding when `order` is cut into batches of `batch_size`
    and each batch is padded to its longest series."""
    batch_lengths = np.asarray(lengths)[np.asarray(order, dtype=np.int64)]
    padded = real = 0
    for start in range(0, len(batch_lengths), batch_size):
        part = batch_lengths[start:start + batch_size]
        padded += int(part.max(initial=0)) * len(part)
        real += int(part.sum())
    return 1.0 - real / padded if padded else 0.0


def series_lengths(dataset: Dataset) -> np.ndarray:
    """(len(dataset),) series length of each sample: the dataset's `series_lengths()`, through
    `Subset` wrappers (the held-out validation split of `workflows.pretrain.hold_out`...)."""
    if isinstance(dataset, Subset):
        return series_lengths(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if not hasattr(dataset, "series_lengths"):
        raise ConfigError(f"bucket_by_length needs a dataset that knows its series lengths; a {type(dataset).__name__} "
                          "does not: set bucket_by_length to false")
    return np.asarray(dataset.series_lengths(), dtype=np.int64)
