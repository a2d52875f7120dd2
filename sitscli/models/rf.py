"""Random forest on linearly gap-filled series: the operational land-cover baseline.

The classifier of the French national land-cover chain iota2 (Inglada et al. 2017, "Operational
high resolution land cover map production at the country scale using satellite image time
series", Remote Sensing 9(1):95) and the baseline of Bellet et al. 2024: each pixel's clear
observations are linearly interpolated onto one regular grid of dates, the bands x dates are
flattened into one feature vector, and a random forest (Breiman 2001, scikit-learn) classifies it.

The forest is fitted by scikit-learn (`fit_random_forest`, the registry's `direct_fit`), then
exported to tensors, so the model saves as safetensors (never pickle): per tree, the children,
split feature, threshold and leaf class probabilities, padded to the largest tree's node count.
It predicts through `forward(batch)` like every other model (`sits predict-map`, evaluation), by
one of two engines giving the same probabilities:
- on CPU, scikit-learn's own `predict_proba` on a forest rebuilt from those arrays
  (`sklearn_forest`: each tree's `Tree` set from plain node and value arrays through the state
  protocol scikit-learn's own copies use; no pickle is read). Its compiled traversal is about 50x
  faster than the torch one on CPU (bench/rf_inference.py);
- elsewhere (CUDA, MPS), a vectorised traversal of all trees at once in torch, on the device.

Resolved ambiguities (each a choice, written down):
- Grid: days of year 0, 10, ..., 360 (37 dates, the 10-day step of iota2 and of Bellet et al.), the
  same for every year; before the first / after the last clear date the nearest one is repeated;
  a pixel with no clear date gets zeros.
- Features: raw reflectance 0-1 (trees are insensitive to scaling, so no standardisation).
- Forest size: 100 trees of depth at most 25: Pelletier et al. 2016 ("Assessing the robustness of
  Random Forests to map land cover with high resolution satellite image time series over large
  areas", RSE 187) found accuracy saturates at about 100 trees and a maximum depth of 25, the
  setting iota2 uses. Other options are scikit-learn's defaults (sqrt(features) per split).
- Prediction: the mean of the trees' leaf class frequencies, as scikit-learn's predict_proba;
  `forward` returns its log (floored at 1e-12).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.progress import log
from sitscli.data.batch import collate
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.models.temporal import positions, regular_grid, resample_to_grid

DEFAULTS: dict[str, Any] = {
    "n_estimators": 100, "max_depth": 25,       # Pelletier et al. 2016
    "grid_len": 37, "grid_step": 10.0,          # days of year 0..360, every 10 days
    "n_jobs": -1,                               # scikit-learn fitting threads (-1 = all cores)
    # written by fit_random_forest, read by build to shape an empty forest before loading weights
    "n_trees": 0, "max_nodes": 1, "depth": 0,
}
CHUNK = 4096   # samples gap-filled at a time while collecting the training features


class ForestClassifier(nn.Module):
    """Batch -> log class probabilities (B, K): gap filling, then every tree traversed at once.

    Buffers (N trees, L nodes, K classes): left, right (N, L) int64 child ids (-1 at leaves),
    feature (N, L) int64, threshold (N, L) float32, value (N, L, K) float32 class probabilities.
    """

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        n, nodes, k = int(h["n_trees"]), max(1, int(h["max_nodes"])), info.num_classes
        self.depth = int(h["depth"])
        self.n_jobs = h["n_jobs"]
        self._forest = None   # the scikit-learn forest rebuilt from the buffers, made at the first CPU prediction
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_forest", None))
        self.register_buffer("grid", regular_grid(int(h["grid_len"]), float(h["grid_step"])), persistent=False)
        self.register_buffer("left", torch.full((n, nodes), -1, dtype=torch.int64))
        self.register_buffer("right", torch.full((n, nodes), -1, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros((n, nodes), dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros((n, nodes), dtype=torch.float32))
        self.register_buffer("value", torch.zeros((n, nodes, k), dtype=torch.float32))
        self.num_bands = info.num_bands
        self.hparams = dict(h)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, G x C) float32: reflectance gap-filled onto the grid, date-major (g0.c0, g0.c1, ...)."""
        days = positions(batch["dates"], "doy", None)                                   # (B, T)
        return resample_to_grid(batch["values"], days, batch["valid"], self.grid).flatten(1)

    def probabilities(self, x: Tensor, engine: str | None = None) -> Tensor:
        """x (B, F) features -> (B, K) float32 mean over trees of the leaf class frequencies.

        engine: "sklearn" (scikit-learn's predict_proba; the default on CPU) or "torch" (the
        traversal on x's device; the default elsewhere). Both give the same probabilities.
        """
        if self.left.shape[0] == 0:
            raise ConfigError("this random forest has no trees: fit it with sits finetune --model rf first")
        engine = engine or ("sklearn" if x.device.type == "cpu" else "torch")
        if engine == "sklearn":
            probs = self.sklearn_forest().predict_proba(x.detach().cpu().numpy())
            return torch.from_numpy(probs.astype(np.float32)).to(x.device)
        return self._traverse(x)

    def sklearn_forest(self):
        """The forest as a fitted scikit-learn RandomForestClassifier (built once, then cached)."""
        if self._forest is None:
            self._forest = sklearn_forest(self.left.cpu().numpy(), self.right.cpu().numpy(), self.feature.cpu().numpy(),
                                          self.threshold.cpu().numpy(), self.value.cpu().numpy(),
                                          n_features=self.grid.numel() * self.num_bands, depth=self.depth,
                                          n_jobs=self.n_jobs)
        return self._forest

    def _traverse(self, x: Tensor) -> Tensor:
        """Every tree walked at once, `depth` steps of gathers: (B, F) -> (B, K)."""
        b, n = x.shape[0], self.left.shape[0]
        trees = torch.arange(n, device=x.device).expand(b, n)                           # (B, N)
        node = torch.zeros((b, n), dtype=torch.int64, device=x.device)
        for _ in range(self.depth):
            feat, thr = self.feature[trees, node], self.threshold[trees, node]          # (B, N)
            go_left = x.gather(1, feat) <= thr
            child = torch.where(go_left, self.left[trees, node], self.right[trees, node])
            node = torch.where(child >= 0, child, node)                                  # leaves stay
        return self.value[trees, node].mean(1)                                           # (B, K)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.probabilities(self.features(batch)).clamp_min(1e-12).log()


def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    """An empty forest of the shape in `hparams` (n_trees, max_nodes, depth), for loading weights."""
    h = {**DEFAULTS, **hparams}
    if info.num_classes < 2:
        raise ConfigError("rf is a supervised classifier: it needs a dataset with at least 2 classes")
    return ForestClassifier(info, h)


def training_features(train_set, module: ForestClassifier) -> tuple[np.ndarray, np.ndarray]:
    """All labelled samples of `train_set` (a sequence of sample dicts) -> X (N, F) float32, y (N,)."""
    xs, ys = [], []
    for start in range(0, len(train_set), CHUNK):
        samples = [train_set[i] for i in range(start, min(start + CHUNK, len(train_set)))]
        samples = [s for s in samples if int(s["y"]) >= 0]
        if samples:
            batch = collate(samples, compact=True)
            xs.append(module.features(batch).numpy())
            ys.append(batch["y"].numpy())
    if not xs:
        raise DataContentError("the training split has no labelled sample: the random forest has nothing to learn")
    return np.concatenate(xs), np.concatenate(ys)


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold. scikit-learn tests float32 features x against
    float64 thresholds; for a float32 x, x <= t exactly when x <= float32_floor(t), so the torch
    traversal runs in float32 (half the memory, and devices without float64 such as MPS)."""
    rounded = threshold.astype(np.float32)
    return np.where(rounded > threshold, np.nextafter(rounded, np.float32(-np.inf)), rounded)


def export_forest(forest, module: ForestClassifier, num_classes: int) -> None:
    """Copy the trees of a fitted sklearn RandomForestClassifier into the module's buffers (resized),
    its classes mapped to columns 0..K-1 of `value`."""
    trees = [est.tree_ for est in forest.estimators_]
    nodes = max(t.node_count for t in trees)
    n = len(trees)
    left = np.full((n, nodes), -1, dtype=np.int64)
    right = np.full((n, nodes), -1, dtype=np.int64)
    feature = np.zeros((n, nodes), dtype=np.int64)
    threshold = np.zeros((n, nodes), dtype=np.float32)
    value = np.zeros((n, nodes, num_classes), dtype=np.float32)
    classes = forest.classes_.astype(np.int64)   # the labels present in training, a subset of 0..K-1
    for i, t in enumerate(trees):
        c = t.node_count
        left[i, :c], right[i, :c] = t.children_left, t.children_right
        feature[i, :c] = np.maximum(t.feature, 0)   # leaves hold -2; never read, kept a valid index
        threshold[i, :c] = float32_floor(t.threshold)
        counts = t.value[:, 0, :]                   # (c, classes present): counts or fractions
        value[i, :c][:, classes] = counts / counts.sum(1, keepdims=True)
    module.left, module.right = torch.from_numpy(left), torch.from_numpy(right)
    module.feature, module.threshold = torch.from_numpy(feature), torch.from_numpy(threshold)
    module.value = torch.from_numpy(value)
    module.depth = max(int(est.get_depth()) for est in forest.estimators_)
    module._forest = None


def sklearn_forest(left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray, value: np.ndarray,
                   *, n_features: int, depth: int, n_jobs: int | None):
    """A fitted RandomForestClassifier rebuilt from the exported arrays (see `ForestClassifier`).

    Each tree's `sklearn.tree._tree.Tree` receives plain arrays through `__setstate__`: its node
    records (children, split feature and threshold; leaves marked as scikit-learn marks them) and
    its leaf class fractions. Impurities and sample counts are not stored; prediction never reads
    them. Classes are 0..K-1 (columns of `value`), so `predict_proba` has the torch path's columns.
    Thresholds are the float32-floored ones (`float32_floor`), which split float32 features as the
    originals did.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import NODE_DTYPE, TREE_LEAF, TREE_UNDEFINED, Tree

    k = value.shape[2]
    classes = np.arange(k)
    estimators = []
    for i in range(left.shape[0]):
        # padding after a tree's own nodes: every node but the root is the child of exactly one node
        count = 1 + int((left[i] >= 0).sum() + (right[i] >= 0).sum())
        nodes = np.zeros(count, dtype=NODE_DTYPE)
        leaf = left[i, :count] == TREE_LEAF
        nodes["left_child"], nodes["right_child"] = left[i, :count], right[i, :count]
        nodes["feature"] = np.where(leaf, TREE_UNDEFINED, feature[i, :count])
        nodes["threshold"] = np.where(leaf, TREE_UNDEFINED, threshold[i, :count].astype(np.float64))
        tree = Tree(n_features, np.array([k], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": depth, "node_count": count, "nodes": nodes,
                           "values": np.ascontiguousarray(value[i, :count, None, :], dtype=np.float64)})
        estimator = DecisionTreeClassifier(max_depth=depth)
        estimator.tree_, estimator.classes_, estimator.n_classes_ = tree, classes, k
        estimator.n_outputs_, estimator.n_features_in_ = 1, n_features
        estimators.append(estimator)
    forest = RandomForestClassifier(n_estimators=len(estimators), n_jobs=n_jobs)
    forest.estimators_, forest.classes_, forest.n_classes_ = estimators, classes, k
    forest.n_outputs_, forest.n_features_in_ = 1, n_features
    return forest


def fit_random_forest(train_set, hparams: dict[str, Any], info: DataInfo, seed: int) -> nn.Module:
    """Fit the forest on `train_set` and return it as a `ForestClassifier`.

    `hparams` is completed in place with n_trees, max_nodes and depth (also `module.hparams`):
    save those hparams with the weights so `build` can shape the module again when loading.
    """
    from sklearn.ensemble import RandomForestClassifier   # here: the registry imports this module at every lookup

    h = {**DEFAULTS, **hparams}
    module = ForestClassifier(info, h)
    x, y = training_features(train_set, module)
    log(f"rf: fitting {h['n_estimators']} trees on {len(y)} samples x {x.shape[1]} features")
    forest = RandomForestClassifier(n_estimators=int(h["n_estimators"]), max_depth=h["max_depth"],
                                    n_jobs=h["n_jobs"], random_state=seed)
    forest.fit(x, y)
    export_forest(forest, module, info.num_classes)
    fitted = {"n_trees": module.left.shape[0], "max_nodes": module.left.shape[1], "depth": module.depth}
    hparams.update(fitted)
    module.hparams.update(fitted)
    return module


register(ModelSpec(
    name="rf",
    build=build,
    defaults=DEFAULTS,
    compact=True,
    day_of_year=True,
    description="random forest on series linearly gap-filled every 10 days (iota2 / Pelletier et al. 2016 baseline)",
    direct_fit=fit_random_forest,
))
