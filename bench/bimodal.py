"""Bi-modal BERT against the ResMLP contrastive baseline and from scratch, under a random search of
the base models, with few labels; plus the pretext ablations. The comparison of Patnala et al. 2025
(Figures 11-13: win ratio and mean gain of BERT over ResMLP per base model; Table 2: ablations).

    python bench/bimodal.py [--size 64] [--configs 3] [--pretrain-epochs 10] [--epochs 15]
                            [--hidden 32] [--layers 2] [--pixels-per-parcel 5] [--seed 0] > bimodal.json

Steps:
1. `write_synthetic` (one agronomic year, Sentinel-2 + daily PlanetScope as DENETHOR's) and
   `sits prepare s2 --planetscope --keep-cloudy` in pixel mode (`--max-per-polygon` pixels a parcel).
2. Pre-training on the train split (labels ignored) through `workflows.pretrain`: bimodal-bert with
   every loss, without the seasonal loss, without the cloud loss, with 1 PlanetScope step instead of
   3; resmlp-contrastive. Same width for all (`--hidden`), same epochs.
3. Few labels: `--pixels-per-parcel` labelled pixels of each train and val parcel; the test split
   is kept whole.
4. For each base model (lstm, inceptiontime, transformer), `--configs` hyper-parameter draws of a
   seeded numpy random search over the paper's ranges (LSTM: hidden, 2-6 layers, lr; InceptionTime:
   2/4/8 modules, filters, kernel, lr; Transformer: d_model, heads, 2-6 layers, lr). Each draw is
   trained on the frozen per-date representation of every pre-trained encoder (the `ENCODER+BASE`
   model of `sitscli.models.stacked`, whose base part is what `sits finetune --from RUN --model BASE
   --mode frozen` trains; the frozen features are computed once per encoder instead of every epoch,
   the same numbers since the encoder runs in eval mode) and on the Sentinel-2 bands from scratch.
   The epoch with the best validation OA is kept and scored on the test split.

JSON: per base model and arm the test OA of each draw; `comparison`: for BERT against ResMLP and
against scratch, the win ratio (share of draws where BERT's test OA is higher; ties count half)
and the mean gain (BERT OA - other OA, percentage points); `ablations`: mean test OA of each BERT
variant over every draw and base model, and its difference with the full pretext.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from sitscli.data.batch import collate
from sitscli.data.prepared import open_prepared
from sitscli.data.synthetic import write_synthetic
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.checkpoint import load_model
from sitscli.engine.metrics import classification_report, predict_labels
from sitscli.engine.trainer import TrainConfig, fit, seed_everything
from sitscli.models import registry
from sitscli.models.stacked import feature_info
from sitscli.workflows.finetune import ClassificationTask
from sitscli.workflows.prepare import prepare
from sitscli.workflows.pretrain import pretrain

BASE_MODELS = ("lstm", "inceptiontime", "transformer")
BERT_VARIANTS = {"bert": {}, "bert_no_season": {"season_loss": False}, "bert_no_cloud": {"cloud_loss": False},
                 "bert_ps_steps_1": {"ps_steps": 1}}


def draw_config(base: str, rng: np.random.Generator) -> dict:
    """One random-search draw: hyper-parameters of `base` and the learning rate (log-uniform 1e-4..1e-2)."""
    lr = float(10 ** rng.uniform(-4, -2))
    if base == "lstm":
        h = {"hidden": int(rng.choice([32, 64, 128])), "layers": int(rng.integers(2, 7))}
    elif base == "inceptiontime":
        k = int(rng.choice([5, 11, 21]))
        h = {"depth": int(rng.choice([2, 4, 8])), "filters": int(rng.choice([16, 32, 64])),
             "kernels": [k, max(1, k // 2) | 1, max(1, k // 4) | 1]}
    else:
        d = int(rng.choice([32, 64, 128]))
        h = {"d_model": d, "heads": int(rng.choice([1, 2, 4])), "layers": int(rng.integers(2, 7)), "d_inner": 4 * d}
    return {"hparams": h, "lr": round(lr, 6)}


class Arrays(Dataset):
    """Pixel samples from arrays: values (N, T, C), dates (N, T), valid (N, T), y (N,)."""

    def __init__(self, values, dates, valid, y):
        self.values, self.dates, self.valid, self.y = values, dates, valid, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"values": self.values[i], "dates": self.dates[i], "valid": self.valid[i], "y": self.y[i]}


def few_labels(dataset: SeriesDataset, group: np.ndarray, per_parcel: int, seed: int) -> Subset:
    """At most `per_parcel` random samples of each parcel of `dataset` (group: every sample's parcel id)."""
    groups = group[dataset.indices]
    kept, seen = [], {}
    for i in np.random.default_rng(seed).permutation(len(dataset)):
        seen[groups[i]] = seen.get(groups[i], 0) + 1
        if seen[groups[i]] <= per_parcel:
            kept.append(int(i))
    return Subset(dataset, sorted(kept))


@torch.no_grad()
def representation(encoder, dataset: Dataset, batch_size: int = 256) -> Arrays:
    """The frozen per-date outputs of `encoder` (None: the raw bands) for every sample of `dataset`."""
    parts = {"values": [], "dates": [], "valid": [], "y": []}
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        values, valid = (batch["values"], batch["valid"]) if encoder is None else encoder.represent_series(batch)
        for key, value in (("values", values), ("dates", batch["dates"]), ("valid", valid), ("y", batch["y"])):
            parts[key].append(value.numpy())
    return Arrays(*(np.concatenate(parts[k]) for k in ("values", "dates", "valid", "y")))


def train_base(base: str, config: dict, info, sets: dict[str, Arrays], epochs: int, seed: int, run_dir: Path) -> dict:
    """Train one base model on arrays; -> val OA of the kept epoch, test OA, seconds."""
    seed_everything(seed)
    model = registry.get(base).build(dict(config["hparams"]), info)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=config["lr"], optimizer="adam", weight_decay=1e-6,
                      schedule="constant", warmup_epochs=0.0, grad_clip=None, patience=None, monitor="val_oa",
                      monitor_mode="max", device="cpu", seed=seed, log_every_s=1e9)
    started = time.perf_counter()
    result = fit(model, ClassificationTask(), sets["train"], sets["val"], collate, cfg, run_dir)
    y_true, y_pred = predict_labels(model, sets["test"], collate, device=torch.device("cpu"))
    return {"val_oa": round(result.best_metric, 4),
            "test_oa": round(classification_report(y_true, y_pred, info.class_names)["oa"], 4),
            "seconds": round(time.perf_counter() - started, 1)}


def versus(ours: list[float], theirs: list[float]) -> dict:
    """Win ratio (ties half) and mean gain in percentage points of `ours` over `theirs`, draw by draw."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs))
    return {"win_ratio": round(wins / len(ours), 3),
            "mean_gain_pp": round(100 * statistics.fmean(a - b for a, b in zip(ours, theirs)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=3, help="random-search draws per base model")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=15, help="base-model training epochs")
    parser.add_argument("--hidden", type=int, default=32, help="representation width (paper: 256)")
    parser.add_argument("--layers", type=int, default=2, help="bimodal-bert depth (paper: 16 / 32)")
    parser.add_argument("--max-per-polygon", type=int, default=15)
    parser.add_argument("--pixels-per-parcel", type=int, default=5, help="labelled pixels per train/val parcel")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_bimodal_"))

    scene = write_synthetic(work / "scene", size=args.size, seed=args.seed, years=1, sensors=("s2", "planetscope"),
                            ps_every=1, overwrite=True)
    data = prepare("s2", {"folder": str(scene.l2a), "labels": str(scene.parcels), "class_field": scene.class_field,
                          "out": str(work / "mm.sits"), "max_per_polygon": args.max_per_polygon,
                          "planetscope": str(scene.planetscope), "keep_cloudy": True, "overwrite": True}).path
    prepared = open_prepared(data)
    bert = {"hidden": args.hidden, "layers": args.layers, "heads": 4, "ffn": 4 * args.hidden}
    common = {"data": data, "epochs": args.pretrain_epochs, "lr": 2e-3, "seed": args.seed, "device": "cpu",
              "overwrite": True}
    runs, pretraining = {}, {}
    for name, pretext in {**BERT_VARIANTS, "resmlp": None}.items():
        t0 = time.perf_counter()
        if pretext is None:
            result = pretrain(out=work / name, model="resmlp-contrastive", batch_size=128,
                              hparams={"width": args.hidden, "projection": args.hidden}, **common)
        else:
            result = pretrain(out=work / name, model="bimodal-bert", batch_size=64, hparams=bert, pretext=pretext,
                              **common)
        runs[name] = result.run_dir
        last = result.fit.history[-1]
        pretraining[name] = {"seconds": round(time.perf_counter() - t0, 1),
                             **{k: round(v, 4) for k, v in last.items() if k.startswith(("train_", "val_"))}}
        print(f"pre-trained {name} in {pretraining[name]['seconds']} s", file=sys.stderr)

    group = prepared.ds["group"].values
    samples = {split: SeriesDataset(prepared, splits=(split,), labeled_only=True) for split in ("train", "val", "test")}
    for split in ("train", "val"):
        samples[split] = few_labels(samples[split], group, args.pixels_per_parcel, args.seed)
    arms = {"scratch": None, **{name: load_model(run)[0].encoder.eval() for name, run in runs.items()}}
    features = {arm: {split: representation(encoder, samples[split]) for split in samples} for arm, encoder in arms.items()}
    infos = {arm: prepared.info() if encoder is None else feature_info(encoder.width, prepared.info())
             for arm, encoder in arms.items()}

    rng = np.random.default_rng(args.seed)
    results = {}
    for base in BASE_MODELS:
        results[base] = []
        for draw in range(args.configs):
            config = draw_config(base, rng)
            scores = {}
            for arm in arms:
                with tempfile.TemporaryDirectory(dir=work) as run_dir:
                    scores[arm] = train_base(base, config, infos[arm], features[arm], args.epochs, args.seed,
                                             Path(run_dir))
            print(f"{base} draw {draw}: " + ", ".join(f"{a} {s['test_oa']:.3f}" for a, s in scores.items()),
                  file=sys.stderr)
            results[base].append({"config": config, **scores})

    def oas(base: str, arm: str) -> list[float]:
        return [r[arm]["test_oa"] for r in results[base]]

    comparison = {base: {"bert_vs_resmlp": versus(oas(base, "bert"), oas(base, "resmlp")),
                         "bert_vs_scratch": versus(oas(base, "bert"), oas(base, "scratch")),
                         "resmlp_vs_scratch": versus(oas(base, "resmlp"), oas(base, "scratch")),
                         "mean_test_oa": {arm: round(statistics.fmean(oas(base, arm)), 4) for arm in arms}}
                  for base in BASE_MODELS}
    every = {arm: [oa for base in BASE_MODELS for oa in oas(base, arm)] for arm in arms}
    full = statistics.fmean(every["bert"])
    ablations = {name: {"mean_test_oa": round(statistics.fmean(every[name]), 4),
                        "minus_full_pp": round(100 * (statistics.fmean(every[name]) - full), 2)}
                 for name in BERT_VARIANTS}
    summary = prepared.summary()
    print(json.dumps({
        "settings": {"size": args.size, "years": 1, "sensors": ["s2", "planetscope (daily)"], "seed": args.seed,
                     "samples": summary["samples"], "splits": summary["splits"], "dates": summary["time_steps"],
                     "labelled": {k: len(v) for k, v in samples.items()}, "pixels_per_parcel": args.pixels_per_parcel,
                     "bimodal_bert": bert, "resmlp_width": args.hidden, "pretrain_epochs": args.pretrain_epochs,
                     "base_epochs": args.epochs, "configs_per_base_model": args.configs,
                     "reduced_from_paper": "width 256 -> --hidden, depth 16/32 -> --layers, 100 -> --pretrain-epochs "
                                           "epochs, one seed, synthetic scene", "torch_threads": args.threads},
        "pretraining": pretraining,
        "comparison": comparison,
        "ablations": ablations,
        "draws": results,
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
