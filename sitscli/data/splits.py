"""Train / validation / test splits by group (parcel, polygon): no group is ever cut in two.

Pixels of one parcel are strongly correlated; putting some in train and others in test inflates
accuracy. So splits are drawn over groups, stratified by class, with a seed.
"""

from __future__ import annotations

import numpy as np

from sitscli.core.errors import ConfigError, DataContentError

TRAIN, VAL, TEST, UNLABELED = 0, 1, 2, 3


def check_fractions(fractions) -> tuple[float, float, float]:
    """(train, val, test) fractions: three non-negative numbers summing to 1, train > 0."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {fractions}: give three numbers train,val,test >= 0 summing to 1, e.g. 0.7,0.15,0.15")
    return fr


def _counts_for_class(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """How many of `n` groups go to (train, val, test).

    Largest-remainder rounding of n * fractions; then a class with >= 3 groups gets at least one
    group in every split whose fraction is > 0, and any class keeps at least one group in train
    (a class never seen in training cannot be learnt; one missing from test only goes unmeasured).
    """
    wanted = np.asarray(fractions) * n
    counts = np.floor(wanted).astype(int)
    for i in np.argsort(-(wanted - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    minimum = np.array([1, 0, 0])
    if n >= 3:
        minimum[1:] = [1 if f > 0 else 0 for f in fractions[1:]]
    for i in (1, 2, 0):
        while counts[i] < minimum[i]:
            donor = int(np.argmax(counts - minimum))  # the split with most to spare
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_groups(group_ids: np.ndarray, group_labels: np.ndarray, fractions=(0.7, 0.15, 0.15),
                 seed: int = 0) -> dict[int, int]:
    """Assign each group a split code (0 train, 1 val, 2 test, 3 unlabeled).

    Args:
        group_ids: (N,) int group ids; repeats are allowed (e.g. one entry per sample) as long as
            every entry of a group carries the same label.
        group_labels: (N,) int class ids, -1 for unlabeled (those groups get code 3).
        fractions: train, val, test shares of each class's groups.
        seed: same seed, same inputs -> same splits.
    Returns:
        {group id: split code}; stratified by class, deterministic for a seed.
    """
    fractions = check_fractions(fractions)
    group_ids = np.asarray(group_ids, dtype=np.int64)
    group_labels = np.asarray(group_labels, dtype=np.int64)
    ids, first, inverse = np.unique(group_ids, return_index=True, return_inverse=True)
    labels = group_labels[first]
    if np.any(group_labels != labels[inverse]):
        bad = int(group_ids[np.flatnonzero(group_labels != labels[inverse])[0]])
        raise DataContentError(f"group {bad} holds samples of several classes: each polygon or parcel must have one class")
    rng = np.random.default_rng(seed)
    out = {int(g): UNLABELED for g in ids[labels < 0]}
    for cls in np.unique(labels[labels >= 0]):  # sorted, so the rng stream is reproducible
        members = rng.permutation(ids[labels == cls])
        n_train, n_val, _ = _counts_for_class(len(members), fractions)
        for code, part in zip((TRAIN, VAL, TEST), np.split(members, [n_train, n_train + n_val])):
            out.update({int(g): code for g in part})
    return out


def split_codes(group: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """(N,) int8 split code per sample from its group, via a mapping from `split_groups`."""
    ids = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    codes = np.fromiter(mapping.values(), dtype=np.int8, count=len(mapping))
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], np.asarray(group, dtype=np.int64))
    return codes[order][pos]
