"""Do a pre-trained encoder's representations separate the classes before any label is seen?

    PYTHONPATH=. python bench/class_structure.py PRETRAIN_RUN DATA.sits [--split test] [--pairs a/b,c/d]

Why pre-training can or cannot pay with few labels (issue 11): unlabelled series help a classifier
where the classes form distinct groups in the representation, so that a few labels only have to
name them; they cannot help where two classes differ by less than each varies within itself, as the
boundary between them is then seen only through labels. For every pair of classes (or those given),
on the labelled pixels of `--split`, with the pixel encoder of PRETRAIN_RUN (a `sits pretrain` run of
a pixel model: its `encoder.represent`) and with the same encoder at its random initialisation:

- `kmeans_ari`: adjusted Rand index between 2-means clusters of the standardised representations and
  the two classes, no label used: near 1, the unlabelled data already split the pair; near 0, they
  do not (the largest variation within the pair is not the class).
- `logreg_cv_acc`: 5-fold accuracy of a logistic regression on the same representations with every
  label: how separable the pair is once labels say where the boundary lies.

Prints one JSON document, pairs sorted from the least to the most clustered by the pre-trained encoder;
a pair with fewer than 5 pixels of a class is named under `pairs_with_too_few_pixels` instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler

from sitscli.core.errors import SitsError
from sitscli.data.batch import collate
from sitscli.data.torchdata import SeriesDataset, make_loader
from sitscli.engine.checkpoint import load_model
from sitscli.models import registry

BATCH = 512


def pair_scores(features: np.ndarray, is_first: np.ndarray, seed: int = 0) -> dict[str, float]:
    """features (N, D) of the pixels of two classes, is_first (N,) bool -> kmeans_ari, logreg_cv_acc."""
    x = StandardScaler().fit_transform(features)
    clusters = KMeans(2, n_init=10, random_state=seed).fit_predict(x)
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), x, is_first, cv=5).mean()
    return {"kmeans_ari": round(float(adjusted_rand_score(is_first, clusters)), 3),
            "logreg_cv_acc": round(float(accuracy), 3)}


def representations(run: Path, data: Path, split: str, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """-> {"pretrained", "random"}: (N, D) representations of the split's labelled pixels; y (N,); class names."""
    model, card = load_model(run)
    if not hasattr(getattr(model, "encoder", None), "represent"):
        raise SystemExit(f"{run} holds a {card.model_name} model without a pixel encoder: give a `sits pretrain` run "
                         "of a pixel model (sitsbert)")
    torch.manual_seed(seed)
    encoders = {"pretrained": model.encoder, "random": registry.get(card.model_name).build(card.hparams, card.info).encoder.eval()}
    dataset = SeriesDataset(str(data), splits=(split,), labeled_only=True)
    if len(dataset) == 0:
        raise SystemExit(f"{data} has no labelled pixel in its {split} split: choose another --split")
    found: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    labels = []
    with torch.no_grad():
        for batch in make_loader(dataset, BATCH, collate_fn=partial(collate, compact=True)):
            for name, encoder in encoders.items():
                found[name].append(encoder.represent(batch).numpy())       # (B, D)
            labels.append(batch["y"].numpy())
    return {name: np.concatenate(parts) for name, parts in found.items()}, np.concatenate(labels), dataset.prepared.class_names


def class_pairs(text: str | None, names: list[str]) -> list[tuple[str, str]]:
    if text is None:
        return list(itertools.combinations(names, 2))
    pairs = [tuple(item.split("/")) for item in text.split(",")]
    wrong = [item for item in pairs if len(item) != 2 or not set(item) <= set(names)]
    if wrong:
        raise SystemExit(f"--pairs: {', '.join('/'.join(p) for p in wrong)} not a pair of the classes {', '.join(names)}")
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `sits pretrain` run folder")
    parser.add_argument("data", type=Path, help="a prepared dataset (NAME.sits) with labelled pixels")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--pairs", default=None, help="class pairs a/b,c/d (default: every pair)")
    parser.add_argument("--seed", type=int, default=0, help="of the random encoder and of 2-means")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        features, y, names = representations(args.run, args.data, args.split, args.seed)
    except SitsError as exc:      # a missing or wrong run or dataset: its one line, no traceback
        raise SystemExit(str(exc)) from None
    results, too_few = {}, []
    for first, second in class_pairs(args.pairs, names):
        both = (y == names.index(first)) | (y == names.index(second))
        is_first = y[both] == names.index(first)
        if min(is_first.sum(), (~is_first).sum()) < 5:     # too few pixels of a class for 5 folds
            too_few.append(f"{first}/{second}")
            continue
        results[f"{first}/{second}"] = {name: pair_scores(f[both], is_first, args.seed) for name, f in features.items()}
    ordered = dict(sorted(results.items(), key=lambda item: item[1]["pretrained"]["kmeans_ari"]))
    print(json.dumps({"benchmark": "class_structure", "run": str(args.run), "data": str(args.data),
                      "split": args.split, "pairs": ordered, "pairs_with_too_few_pixels": too_few}, indent=1))


if __name__ == "__main__":
    main()
