"""bench/class_structure.py: the pair scores tell clustered classes from overlapping ones (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._bench import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("class_structure")


def two_classes(gap: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """400 points in 8-D: the classes apart by `gap` along axis 0, a wide within-class spread along axis 1."""
    is_first = np.arange(400) < 200
    x = rng.normal(0, 1, (400, 8))
    x[:, 0] += np.where(is_first, gap, 0.0)
    x[:, 1] *= 4.0                       # the largest variation is not the class
    return x, is_first


def test_distinct_classes_cluster_without_labels(bench):
    x, is_first = two_classes(gap=12.0, rng=np.random.default_rng(0))
    scores = bench.pair_scores(x, is_first)
    assert scores["kmeans_ari"] > 0.9 and scores["logreg_cv_acc"] > 0.98


def test_overlapping_classes_need_labels(bench):
    """One std apart, under a 4x wider within-class spread: 2-means splits the spread, not the
    classes, while labels still find the boundary."""
    x, is_first = two_classes(gap=2.0, rng=np.random.default_rng(0))
    scores = bench.pair_scores(x, is_first)
    assert abs(scores["kmeans_ari"]) < 0.1 and scores["logreg_cv_acc"] > 0.8


def test_pairs_option_checks_class_names(bench):
    assert bench.class_pairs(None, ["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert bench.class_pairs("c/a", ["a", "b", "c"]) == [("c", "a")]
    with pytest.raises(SystemExit, match="not a pair of the classes"):
        bench.class_pairs("a/z", ["a", "b", "c"])
