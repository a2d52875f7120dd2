"""Classification scores and the report a fine-tuned run carries.

`predict_labels` runs a classifier over a Dataset and returns the labels and predictions of every
labelled sample (pixel models) or every labelled pixel (patch models); `classification_report`
scores them; `write_report` writes `metrics.json`, `per_class.csv` and `confusion.png`.

Scores: overall accuracy (OA), Cohen's kappa, average accuracy (AA, the mean of the per-class
recalls, as remote-sensing papers report it) and macro-F1 over the classes present in the
reference or the predictions (a class absent from both has no defined recall or F1).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sitscli.core.io import atomic_output

METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.png"


@torch.no_grad()
def predict_labels(model: nn.Module, dataset: Dataset, collate_fn: Callable, *, device: torch.device,
                   batch_size: int = 256, date_shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference and predicted class ids of every labelled sample or pixel of `dataset`.

    `model(batch)` gives logits (B, K) for pixel batches (y (B,)) or (B, K, H, W) for patch batches
    (y (B, H, W)); labels -1 are left out. `date_shift` moves every acquisition date by that many
    days (the date-shift robustness test). Returns y_true, y_pred: (n,) int64.
    """
    model.eval()
    trues, preds = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["dates"] = batch["dates"] + date_shift
        predicted = model(batch).argmax(1)                    # (B,) or (B, H, W)
        labelled = batch["y"] >= 0
        trues.append(batch["y"][labelled].cpu())
        preds.append(predicted[labelled].cpu())
    if not trues:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return torch.cat(trues).numpy().astype(np.int64), torch.cat(preds).numpy().astype(np.int64)


@torch.no_grad()
def predict_multilabel(model: nn.Module, dataset: Dataset, collate_fn: Callable, *, device: torch.device,
                       batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Classes present (`y_tile` (B, K)) and predicted (logit > 0, probability > 0.5) of every sample of
    `dataset`, for a multi-label classifier whose `model(batch)` gives logits (B, K). Returns (n, K) bool each."""
    model.eval()
    trues, preds = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        preds.append((model(batch) > 0).cpu())
        trues.append(batch["y_tile"].bool().cpu())
    if not trues:
        return np.zeros((0, 0), bool), np.zeros((0, 0), bool)
    return torch.cat(trues).numpy(), torch.cat(preds).numpy()


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Scores of multi-label predictions (n, K) bool against the classes present (n, K) bool.

    Returns {"multilabel": True, "samples", "oa" (share of right sample-class decisions), "weighted_f1"
    (per-class F1 weighted by support, TreeSatAI's headline score), "macro_f1", "micro_f1", "per_class"}.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    n = int(y_true.shape[0])
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    scores = {avg: float(f1_score(y_true, y_pred, average=avg, zero_division=0)) if n else float("nan")
              for avg in ("weighted", "macro", "micro")}
    return {
        "multilabel": True,
        "samples": n,
        "oa": float((y_true == y_pred).mean()) if n else float("nan"),
        "weighted_f1": scores["weighted"], "macro_f1": scores["macro"], "micro_f1": scores["micro"],
        "per_class": [{"class": i, "name": name, "precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(class_names)],
    }


def report_summary(report: dict) -> str:
    """One line of a report's scores (single-label or multi-label)."""
    if report.get("multilabel"):
        return (f"weighted-F1 {report['weighted_f1']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
                f"micro-F1 {report['micro_f1']:.4f}  label accuracy {report['oa']:.4f}")
    return (f"OA {report['oa']:.4f}  kappa {report['kappa']:.4f}  AA {report['aa']:.4f}  "
            f"macro-F1 {report['macro_f1']:.4f}")


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Scores of predictions against references (class ids 0..K-1, (n,) each).

    Returns {"samples", "oa", "kappa", "aa", "macro_f1", "per_class": [{"class", "name", "precision",
    "recall", "f1", "support"}], "confusion": K x K counts (rows = reference, columns = predicted)}.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    with warnings.catch_warnings():
        # scikit-learn warns "a single label was found" for a one-class dataset even with `labels`
        # given; the fine-tuning workflow says it in its own words
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        confusion = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    seen = (confusion.sum(0) + confusion.sum(1)) > 0                  # in the reference or the predictions
    present = confusion.sum(1) > 0                                    # in the reference
    n = int(confusion.sum())
    return {
        "samples": n,
        "oa": float(np.trace(confusion) / n) if n else float("nan"),
        # kappa is undefined (0/0) when reference and prediction are one same class: report 1.0 then
        "kappa": _kappa(y_true, y_pred) if n else float("nan"),
        "aa": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
        "per_class": [{"class": i, "name": name, "precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(class_names)],
        "confusion": confusion.tolist(),
    }


def _kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    if np.unique(np.concatenate([y_true, y_pred])).size == 1:
        return 1.0
    return float(cohen_kappa_score(y_true, y_pred))


def write_report(run_dir: Path, report: dict, class_names: list[str]) -> None:
    """RUN/metrics.json (the whole report), RUN/per_class.csv and RUN/confusion.png (single-label
    reports), each atomically."""
    run_dir = Path(run_dir)
    with atomic_output(run_dir / METRICS_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["class", "name", "precision", "recall", "f1", "support"])
    writer.writeheader()
    writer.writerows(report["per_class"])
    with atomic_output(run_dir / PER_CLASS_FILE, overwrite=True) as tmp:
        tmp.write_text(text.getvalue())
    if "confusion" not in report:   # multi-label: no confusion matrix
        return
    plot_confusion(np.asarray(report["confusion"]), class_names, run_dir / CONFUSION_FILE,
                   title=f"{report.get('split', 'test')}: OA {report['oa']:.3f}, kappa {report['kappa']:.3f}")


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the per-class recall on the diagonal); empty rows stay 0."""
    totals = confusion.sum(1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, float), where=totals > 0)


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "", *,
                   rows: str = "reference", columns: str = "predicted",
                   row_margin: tuple[str, np.ndarray] | None = None,
                   column_margins: Sequence[tuple[str, np.ndarray]] = ()) -> None:
    """Row-normalised confusion matrix (K, K) as a PNG, class names on both axes, counts in the cells.

    `rows` / `columns` name what the rows and columns hold. `row_margin` (title, values (K,)) adds a
    column of one figure per row at the right (e.g. the user's accuracy of each map class);
    each of `column_margins` a row of one figure per column at the bottom. NaN shows as "n/a".
    """
    import matplotlib

    matplotlib.use("Agg")  # batch jobs have no display
    import matplotlib.pyplot as plt

    k = len(class_names)
    extra_cols, extra_rows = int(row_margin is not None), len(column_margins)
    side = min(20.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2 + 0.6 * extra_cols, side + 0.4 * extra_rows))
    image = ax.imshow(row_normalised(confusion), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"share of the {rows} class")
    ax.set_xticks(range(k + extra_cols), list(class_names) + ([row_margin[0]] if row_margin else []),
                  rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k + extra_rows), list(class_names) + [name for name, _ in column_margins], fontsize=8)
    ax.set_xlabel(columns)
    ax.set_ylabel(rows)
    if k <= 25:  # beyond that the numbers no longer fit their cells
        shares = row_normalised(confusion)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if shares[i, j] > 0.5 else "black")
        margins = ([(i, k, v) for i, v in enumerate(row_margin[1])] if row_margin else []) + \
            [(k + r, j, v) for r, (_, values) in enumerate(column_margins) for j, v in enumerate(values)]
        for i, j, value in margins:
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=7)
    if extra_cols or extra_rows:  # the margins lie outside the image: widen the view and fence them off
        ax.set_xlim(-0.5, k - 0.5 + extra_cols)
        ax.set_ylim(k - 0.5 + extra_rows, -0.5)
        ax.axvline(k - 0.5, color="grey", lw=0.8)
        ax.axhline(k - 0.5, color="grey", lw=0.8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
