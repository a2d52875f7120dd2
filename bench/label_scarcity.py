"""SITS-BERT with few labels: pre-trained on unlabelled pixels, then fine-tuned, against from scratch.

    python bench/label_scarcity.py [--size 256] [--parcels-per-class 10] [--seeds 0,1,2]
                                   [--pretrain-epochs N] [--finetune-epochs N] [--small] [--device auto]

The SITS-BERT paper's central claim: self-supervised pre-training on unlabelled pixels raises the
accuracy reached with few labels. Steps:
1. `write_synthetic` (one agronomic year) and `prepare_s2` in pixel mode with an unlabelled pool
   of pixels drawn outside the parcels (`--unlabeled`).
   The synthetic parcels tile the whole scene, so that pool is empty there: the unlabelled pixels
   come from step 2 instead.
2. A reduced copy of the dataset (`reduce_labels`): in the train split only `--parcels-per-class`
   parcels of each class keep labels, on `--labelled-pixels` of their pixels; in the val split at
   most `--val-parcels-per-class` (the epoch is chosen on few labels too, as it would be in
   practice); every other train or val pixel becomes an unlabelled one (split `unlabeled`, class
   -1), so `--pixels-per-parcel` sets the size of the pre-training pool. The test split is untouched.
3. `pretrain` SITS-BERT once on the train + unlabeled splits (labels ignored), then for each seed
   `finetune` the pre-trained encoder and train the same classifier from scratch, with the same
   fine-tuning settings (batch size, learning rate: the model's; epochs: the paper's 100 from the
   pre-trained encoder and 300 from scratch, or `--finetune-epochs` for both, so that only the
   initial weights differ).

Prints one JSON document: mean/std test OA and macro-F1 of each arm over seeds, the gain, and
the settings (what was reduced from the paper's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sitscli.data.prepared import SPLIT_CODES, PreparedWriter, open_prepared
from sitscli.data.recipes.s2 import prepare_s2
from sitscli.data.synthetic import write_synthetic
from sitscli.engine.device import resolve_device
from sitscli.workflows.finetune import finetune
from sitscli.workflows.pretrain import pretrain

SMALL = {"hidden": 64, "layers": 2, "heads": 4}     # reduced from the reference 256 / 3 / 8
SCALE = 10000.0                                      # stored int16 = reflectance x 10000


def keep_groups(group: np.ndarray, y: np.ndarray, in_split: np.ndarray, per_class: int,
                rng: np.random.Generator) -> np.ndarray:
    """Parcel ids to keep labelled: `per_class` parcels of each class drawn among those of the split."""
    ids, first = np.unique(group[in_split], return_index=True)
    classes = y[in_split][first]
    kept = [rng.permutation(ids[classes == k])[:per_class] for k in np.unique(classes)]
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


def first_pixels(group: np.ndarray, per_group: int) -> np.ndarray:
    """(N,) bool: the first `per_group` samples of each group (pixels come in random order within it)."""
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], group[order], side="left")
    keep = np.zeros(group.size, bool)
    keep[order] = np.arange(group.size) - starts < per_group
    return keep


def reduce_labels(source: Path, out: Path, *, train_per_class: int, val_per_class: int, pixels_per_parcel: int,
                  seed: int) -> dict:
    """Copy `source` to `out` with only a few labelled parcels per class in train and val (at most
    `pixels_per_parcel` labelled pixels each); the other train/val pixels become unlabelled
    (split 3, class -1). Returns labelled counts."""
    prepared = open_prepared(source)
    data = prepared.read(0, prepared.n_samples)
    rng = np.random.default_rng(seed)
    split, y, group = data["split"].astype(np.int8), data["y"].astype(np.int16), data["group"]
    few_pixels = first_pixels(group, pixels_per_parcel)
    for name, per_class in (("train", train_per_class), ("val", val_per_class)):
        in_split = split == SPLIT_CODES[name]
        kept = np.isin(group, keep_groups(group, y, in_split, per_class, rng)) & few_pixels
        demoted = in_split & ~kept
        split = np.where(demoted, np.int8(SPLIT_CODES["unlabeled"]), split)
        y = np.where(demoted, np.int16(-1), y)
    a = prepared.ds.attrs
    with PreparedWriter(out, n_time=prepared.n_time, band_names=prepared.band_names, class_names=prepared.class_names,
                        class_colors=prepared.class_colors, class_codes=prepared.class_codes, sensor=a["sensor"], source=f"label-scarce copy of {source}",
                        mode="pixel", crs=prepared.crs, overwrite=True) as writer:
        writer.append(x=data["x"] / SCALE, valid=data["valid"], date=data["date"], y=y, split=split, group=group,
                      xy=data["xy"])
    return {name: {"pixels": int(((split == code) & (y >= 0)).sum()),
                   "parcels": int(np.unique(group[(split == code) & (y >= 0)]).size)}
            for name, code in SPLIT_CODES.items() if name != "unlabeled"} | {
        "unlabeled_pixels": int((split == SPLIT_CODES["unlabeled"]).sum())}


def make_dataset(work: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    scene = write_synthetic(work / "synthetic", size=args.size, seed=args.data_seed, years=1,
                            difficulty=args.difficulty, layout="cog", workers=2)
    full = prepare_s2(scene.l2a, work / "full.sits", labels=scene.parcels, class_field=scene.class_field,
                      max_per_polygon=args.pixels_per_parcel, unlabeled=args.unlabeled, seed=args.data_seed)
    counts = reduce_labels(full, work / "scarce.sits", train_per_class=args.parcels_per_class,
                           val_per_class=args.val_parcels_per_class, pixels_per_parcel=args.labelled_pixels,
                           seed=args.data_seed)
    return work / "scarce.sits", counts


def stop_if_interrupted(result, what: str) -> None:
    """SIGTERM/SIGUSR1 stopped the run (the engine saved a resumable state): stop the benchmark."""
    if result.fit.interrupted:
        raise SystemExit(f"interrupted during {what}")


def score(rows: list[dict]) -> dict:
    return {key: {"mean": round(statistics.fmean(r[key] for r in rows), 4),
                  "std": round(statistics.pstdev([r[key] for r in rows]), 4), "per_seed": [round(r[key], 4) for r in rows]}
            for key in ("oa", "macro_f1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="synthetic scene side (px)")
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--pixels-per-parcel", type=int, default=40, help="pixels drawn per parcel (labelled or not)")
    parser.add_argument("--labelled-pixels", type=int, default=10, help="labelled pixels of each kept parcel")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="pixels drawn outside the parcels (none there in the synthetic scene: it is all parcels)")
    parser.add_argument("--parcels-per-class", type=int, default=10)
    parser.add_argument("--val-parcels-per-class", type=int, default=3)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the paper's (100)")
    parser.add_argument("--pretrain-lr", type=float, default=None, help="default: the paper's (1e-4)")
    parser.add_argument("--pretrain-warmup", type=float, default=None, help="warm-up epochs; default: the paper's (10)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="default: the paper's (100)")
    parser.add_argument("--small", action="store_true", help=f"SITS-BERT hidden/layers/heads {SMALL}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=None, help="keep data and runs here (default: temporary, removed)")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sits_scarcity_"))
    work.mkdir(parents=True, exist_ok=True)
    hparams = SMALL if args.small else None
    try:
        data, counts = make_dataset(work, args)
        start = time.perf_counter()
        pre = pretrain(out=work / "pretrain", overwrite=True, data=str(data), model="sitsbert", hparams=hparams,
                       epochs=args.pretrain_epochs, lr=args.pretrain_lr, warmup_epochs=args.pretrain_warmup,
                       device=args.device, seed=0)
        pretrain_s = time.perf_counter() - start
        stop_if_interrupted(pre, "pre-training")
        arms: dict[str, list[dict]] = {"pretrained": [], "scratch": []}
        for seed in args.seeds:
            for arm in arms:
                print(f"[label_scarcity] {arm} seed {seed}", file=sys.stderr, flush=True)
                source = {"from_run": str(pre.run_dir)} if arm == "pretrained" else {"model": "sitsbert", "hparams": hparams}
                run = finetune(out=work / f"{arm}_seed{seed}", overwrite=True, data=str(data), seed=seed,
                               epochs=args.finetune_epochs, device=args.device, **source)
                stop_if_interrupted(run, f"{arm} seed {seed}")
                arms[arm].append({"oa": run.report["oa"], "macro_f1": run.report["macro_f1"]})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results = {arm: score(rows) for arm, rows in arms.items()}
    gain = {key: round(results["pretrained"][key]["mean"] - results["scratch"][key]["mean"], 4) for key in ("oa", "macro_f1")}
    print(f"pretrained: {results['pretrained']}\nscratch: {results['scratch']}\ngain: {gain}", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k != "workdir"} | {
        "hparams": hparams or "paper (hidden 256, 3 layers, 8 heads)", "labelled": counts,
        "pretrain_history_best_epoch": pre.fit.best_epoch, "pretrain_s": round(pretrain_s, 1),
        "device": str(resolve_device(args.device))}
    print(json.dumps({"benchmark": "label_scarcity", "model": "sitsbert", "settings": settings, "results": results,
                      "gain_pretrained_minus_scratch": gain}, indent=2))


if __name__ == "__main__":
    main()
