"""SITS-BERT and ALISE with few labels: pre-trained on unlabelled data, then tuned, against from scratch and a random forest.

    python bench/label_scarcity.py --workdir DIR [--dataset synthetic|slovenia] [--size 512] [--levels 5,10,20,50] [--seeds 0,1,2]
        [--arms sitsbert_full,sitsbert_lora,sitsbert_frozen,sitsbert_scratch,rf,alise_probe,alise_full,alise_scratch] [--small]
        [--pretrain-epochs N] [--pretrain-patience N] [--pretrain-min-delta F] [--finetune-epochs N] [--scratch-epochs N]
        [--finetune-patience N] [--min-steps-per-epoch N] [--min-total-steps N] [--labelled-pixels N] [--class-weights none|balanced]
        [--finetune-monitor val_oa|val_loss] [--patch-size 64] [--alise-pretrain-epochs N] [--alise-pretrain-patience N] [--alise-pretrain-min-delta F]
        [--alise-batch-size N] [--alise-lr LR] [--threads N] [--report-only]

The SITS-BERT paper's central claim: self-supervised pre-training on unlabelled pixels raises the
accuracy reached with few labels; ALISE (Dumeur et al. 2024, a patch model) makes the same claim
with its linear probe. Steps:
1. The scene prepared in pixel mode by `prepare_s2` (`full.sits`), once (`--dataset`):
   - synthetic: `write_synthetic` (one agronomic year), `--pixels-per-parcel` pixels of each
     parcel. The parcels tile the whole scene, so there is no pool of pixels outside them
     (`--unlabeled`): the unlabelled pixels are the train and val pixels, labels dropped.
   - slovenia: the real Sentinel-2 NDVI scene of `--real-root` (100 x 101 px, 67 dates in
     2015-2017, real clouds; `lulc.gpkg`, 5 classes of LULC_NAME, 84 named polygons of which 78
     cover a pixel centre): every pixel of every polygon, and every pixel outside them in the
     pool. Polygons are few (2 to 22 per class in the train split at `--data-seed 0`), so the
     levels are polygons per class, 1, 2, 3, 5 by default; a class with fewer train polygons
     than the level keeps them all (the `labelled` counts per class say so).
2. `pool.sits`: a copy of it in which every train and val pixel is unlabelled (split `unlabeled`,
   class -1), the test split untouched; SITS-BERT is pre-trained once on it (labels ignored, the
   pretext loss watched on 3 % of the pool), to convergence: `--pretrain-epochs` caps the epochs
   and `--pretrain-patience` stops when the pretext validation loss no longer improves. The test
   pixels stay out of the pool (`pretrain` never reads the test split), so the test scores are
   of pixels no stage has seen; on Slovenia the pool is the other 85 % of the scene.
3. For each level (labelled parcels per class) and seed, a reduced copy (`reduce_labels`): in the
   train split only `level` parcels of each class, drawn with the seed, keep labels, on
   `--labelled-pixels` of their pixels (drawn at random in the parcel); in the val split at most
   `--val-parcels-per-class` (the epoch is chosen on few labels too, as it would be in practice);
   every other train/val pixel is unlabelled. The test split is untouched. Each arm trains on it
   with that seed:
   - sitsbert_full: every weight of the pre-trained encoder and the new head trains;
   - sitsbert_lora: LoRA adapters on the frozen pre-trained encoder (the model's LoRA lr) + the head;
   - sitsbert_frozen: the head only, on the frozen pre-trained encoder (a linear probe of its features);
   - sitsbert_scratch: the same classifier from random weights;
   - rf: the random forest baseline (iota2 / Pelletier et al. 2016).
   Fine-tuning settings are the model's (batch size, learning rate); epochs: the paper's 100 from
   the pre-trained encoder and 300 from scratch, or `--finetune-epochs` / `--scratch-epochs`.
4. ALISE arms (`--dataset synthetic` only): the same synthetic folder, written once, is also cut
   into `--patch-size` patches (`patches.sits`, `prepare_s2` in patch mode, same data seed). ALISE
   is pre-trained once on its train, val-watched and unlabelled patches, labels ignored (prepare
   gives each patch the split of the polygon covering most of it; test patches are never read, but
   test parcels' imagery may lie, unlabelled, in the others: the pixel pool leaves test pixels out
   entirely), to convergence: `--alise-pretrain-epochs` caps the epochs (the paper: 260) and
   `--alise-pretrain-patience` stops when its pretext validation loss no longer improves; the rest
   is the paper's optimisation; resumed like SITS-BERT's. For each level and seed, the patch copy
   (`patches.sits` beside `data.sits`, `patch_copy`) labels exactly the labelled pixels of the
   pixel copy, found by their coordinates: the same drawn parcels, the same `--labelled-pixels`
   pixels of each, the same val pixels and the same test pixels (`--pixels-per-parcel` of each
   test parcel); every other pixel of a label raster is -1. A patch holding labelled pixels of
   several splits is stored once per split, each copy labelled with that split's pixels only, so
   the splits follow full.sits's parcels whatever the patch majorities (prepare_s2 splits the
   polygons alike in both modes for one seed, but in patch mode labels a parcel only in patches of
   its split: on a 64 px scene, 111 of full.sits's 170 test pixels were unlabelled there). Arms:
   - alise_probe: the linear probe of workflows/probe.py (frozen encoder + one linear layer on each
     pixel's n_q x d_model vector, Adam 1e-4, ReduceLROnPlateau, early-stopping patience 25);
   - alise_full: every weight of the pre-trained ALISE and the linear layer trains;
   - alise_scratch: the same classifier from random weights.
   Optimisation: the engine's defaults (ALISE's module gives none for fine-tuning), batches of
   `--alise-batch-size` patches, full and scratch at `--alise-lr`; the fine-tuning flags apply as
   to the SITS-BERT arms (`--finetune-epochs` to probe and full, `--scratch-epochs` to scratch,
   `--finetune-patience`, `--min-steps-per-epoch`, `--min-total-steps`, `--class-weights`,
   `--finetune-monitor`) and, given, override the probe's settings. What is scored: `finetune`'s
   test metrics count every labelled pixel of the test patches (the loss and the metrics leave -1
   out), so an ALISE arm's test OA is over the very pixels a pixel arm's is, and the two are
   comparable; `val_oa`, which picks the epoch, weights patches (see workflows/finetune.py).
   `--small` shrinks ALISE to ALISE_SMALL.

Everything lives in `--workdir`: the scene and datasets are made once, a finished run (its
`model.yaml`) is skipped, so a killed benchmark continues where it stopped (an interrupted
pre-training resumes from its last epoch). `--report-only` rebuilds the table from the finished runs.

Prints one JSON document (also written to WORKDIR/report.json): per arm and level the mean/std
test OA and macro-F1 over seeds, the gain of each pre-trained arm over its model's scratch arm
(sitsbert_scratch, alise_scratch), both pre-trainings' final pretext losses (`pretraining`,
`pretraining_alise`), and the settings (what was reduced from the paper's).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import scipy.stats
import torch

from sitscli.data.prepared import SPLIT_CODES, PreparedWriter, open_prepared
from sitscli.data.recipes.s2 import prepare_s2
from sitscli.data.readers import open_source
from sitscli.data.synthetic import L2A_FOLDER, PARCELS_FILE, class_field, write_synthetic
from sitscli.engine.checkpoint import CARD
from sitscli.engine.device import resolve_device
from sitscli.workflows.finetune import finetune
from sitscli.workflows.pretrain import RESUME, pretrain
from sitscli.workflows.probe import probe

SMALL = {"hidden": 64, "layers": 2, "heads": 4}     # reduced from the reference 256 / 3 / 8
# ALISE for a CPU run: bench/change_detect.py's small model and pretext (paper: Tables I, VIII, IX)
ALISE_SMALL = {"d_model": 32, "layers": 1, "heads": 4, "d_ff": 64, "unet_widths": [16, 16, 32, 32], "n_q": 8,
               "d_emb": 64, "run_length": 30, "crop": 32}
SCALE = 10000.0                                      # stored int16 = reflectance x 10000
# arm -> (starts from the pre-trained encoder, finetune options); an arm's model is its name's
# first part (rf aside): sitsbert arms train on the pixel copies, alise arms on the patch copies
ARMS: dict[str, tuple[bool, dict]] = {
    "sitsbert_full": (True, {"mode": "full"}),
    "sitsbert_lora": (True, {"mode": "lora"}),
    "sitsbert_frozen": (True, {"mode": "frozen"}),
    "sitsbert_scratch": (False, {"model": "sitsbert"}),
    "rf": (False, {"model": "rf"}),
    "alise_probe": (True, {}),                   # sits probe: PROBE_SETTINGS of workflows/probe.py
    "alise_full": (True, {"mode": "full"}),
    "alise_scratch": (False, {"model": "alise"}),
}
PRETRAINED_ARMS = [arm for arm, (pretrained, _) in ARMS.items() if pretrained]
ALISE_ARMS = [arm for arm in ARMS if arm.startswith("alise_")]
# settings a resumed benchmark may change: which runs to make and where; the others must match the saved ones
FREE_ON_RESUME = ("arms", "levels", "seeds", "threads", "device")
# and, until the pre-training has finished, its stopping rule (as `sits pretrain --resume` allows)
PRETRAIN_STOPPING = {"pretrain": ("pretrain_epochs", "pretrain_patience", "pretrain_min_delta"),
                     "alise_pretrain": ("alise_pretrain_epochs", "alise_pretrain_patience", "alise_pretrain_min_delta")}
# settings of the ALISE arms only: a workdir saved before them holds no ALISE run to disagree with
ALISE_SETTINGS = ("patch_size", "alise_pretrain_epochs", "alise_pretrain_patience", "alise_pretrain_min_delta",
                  "alise_batch_size", "alise_lr", "alise_hparams")
# ALISE's patches: 64 x 64, the paper's pre-training crops (Table I)
PATCH_SIZE = 64
SLOVENIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "slovenia-s2-ndvi"
# defaults of the options that depend on the scene: the synthetic one has hundreds of parcels per
# class, Slovenia 2 to 22 train polygons per class and 1 to 5 val polygons, of very unequal sizes
# (1 to 3,424 px): up to 20 labelled pixels of each kept polygon
DATASET_DEFAULTS = {
    "synthetic": {"levels": [5, 10, 20, 50], "val_parcels_per_class": 3, "labelled_pixels": 10, "arms": list(ARMS)},
    "slovenia": {"levels": [1, 2, 3, 5], "val_parcels_per_class": 1, "labelled_pixels": 20,
                 "arms": [arm for arm in ARMS if arm not in ALISE_ARMS]},
}


def keep_groups(group: np.ndarray, y: np.ndarray, in_split: np.ndarray, per_class: int,
                rng: np.random.Generator) -> np.ndarray:
    """Parcel ids to keep labelled: `per_class` parcels of each class drawn among those of the split."""
    ids, first = np.unique(group[in_split], return_index=True)
    classes = y[in_split][first]
    kept = [rng.permutation(ids[classes == k])[:per_class] for k in np.unique(classes)]
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


def some_pixels(group: np.ndarray, per_group: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: `per_group` samples of each group drawn at random (all of a smaller group).
    Not the first ones: prepare stores a polygon's pixels in raster order, its top rows first."""
    order = np.lexsort((rng.random(group.size), group))    # by group, at random within each
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
    few_pixels = some_pixels(group, pixels_per_parcel, np.random.default_rng([seed, 1]))
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
    return label_counts(split, y, group, prepared.class_names)


def label_counts(split: np.ndarray, y: np.ndarray, group: np.ndarray, class_names: list[str]) -> dict:
    """Labelled pixels and parcels of each split, in all and per class; the unlabelled pixels."""
    counts: dict = {}
    for name, code in SPLIT_CODES.items():
        if name == "unlabeled":
            continue
        labelled = (split == code) & (y >= 0)
        counts[name] = {"pixels": int(labelled.sum()), "parcels": int(np.unique(group[labelled]).size),
                        "parcels_per_class": {c: int(np.unique(group[labelled & (y == k)]).size)
                                              for k, c in enumerate(class_names)},
                        "pixels_per_class": {c: int((labelled & (y == k)).sum()) for k, c in enumerate(class_names)}}
    return counts | {"unlabeled_pixels": int((split == SPLIT_CODES["unlabeled"]).sum())}


def stop_if_interrupted(result, what: str) -> None:
    """SIGTERM/SIGUSR1 stopped the run (the engine saved a resumable state): stop the benchmark."""
    if result.fit.interrupted:
        raise SystemExit(f"interrupted during {what}")


def make_scene(work: Path, args: argparse.Namespace) -> tuple[Path, Path, str]:
    """The synthetic folder, written once (`synthetic/written` when complete; a workdir made before
    that marker has its `full.sits`): (L2A folder, parcels file, class field). Both the pixel and the
    patch preparations read it."""
    root = work / "synthetic"
    if not (root / "written").is_file() and not (work / "full.sits").exists():
        write_synthetic(root, size=args.size, seed=args.data_seed, years=1, difficulty=args.difficulty, layout="cog",
                        workers=args.threads, overwrite=True)
        (root / "written").touch()
    return root / L2A_FOLDER, root / PARCELS_FILE, class_field(0)


def make_full(work: Path, args: argparse.Namespace) -> Path:
    """The scene prepared in pixel mode, made once (`full.sits` exists when complete), and its
    labelled counts (`full.json`)."""
    full = work / "full.sits"
    if not full.exists():
        if args.dataset == "slovenia":
            prepare_slovenia(Path(args.real_root), full, seed=args.data_seed)
        else:
            l2a, parcels, field = make_scene(work, args)
            prepare_s2(l2a, full, labels=parcels, class_field=field, max_per_polygon=args.pixels_per_parcel,
                       unlabeled=args.unlabeled, seed=args.data_seed)
    counts = work / "full.json"
    if not counts.is_file():
        prepared = open_prepared(full)
        data = prepared.read(0, prepared.n_samples)
        counts.write_text(json.dumps(label_counts(data["split"], data["y"], data["group"], prepared.class_names)))
    return full


def make_patches(work: Path, args: argparse.Namespace) -> Path:
    """The same synthetic folder cut into `--patch-size` patches (`patches.sits`), made once: what
    ALISE pre-trains on (labels ignored)."""
    patches = work / "patches.sits"
    if not patches.exists():
        l2a, parcels, field = make_scene(work, args)
        prepare_s2(l2a, patches, labels=parcels, class_field=field, patch_size=args.patch_size, seed=args.data_seed)
    return patches


def pixel_places(xy: np.ndarray, patch_xy: np.ndarray, transform,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where pixels lie among patches: (patch index (n,), row (n,), col (n,) within it) of the pixel
    centres `xy` (n, 2), from the patch centres `patch_xy` (m, 2) that prepare stores and the grid's
    affine `transform`. A pixel of no stored patch is an error."""
    to_grid = ~transform
    col, row = (np.floor(v).astype(np.int64) for v in to_grid * (xy[:, 0], xy[:, 1]))
    patch_col, patch_row = (np.rint(v - size / 2).astype(np.int64) for v in to_grid * (patch_xy[:, 0], patch_xy[:, 1]))
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(patch_row, patch_col))}
    origins = zip((row // size * size).tolist(), (col // size * size).tolist())
    found = np.array([index.get(origin, -1) for origin in origins], dtype=np.int64)
    if (found < 0).any():
        raise SystemExit(f"{int((found < 0).sum())} labelled pixels lie in no stored patch: prepare the patches again")
    return found, row % size, col % size


def patch_copy(patches: Path, pixels: Path, out: Path, transform) -> dict:
    """The patches of `patches` labelled exactly as the pixel copy `pixels`: for each split, the
    patches holding one of its labelled pixels, with those pixels labelled and every other pixel of
    the label raster -1. A patch holding pixels of several splits is stored once per split (its
    imagery is seen, unlabelled, by the other splits, as prepare's patches already are). Unlabelled
    patches are left out: fine-tuning reads labelled patches only. Returns labelled pixels per split."""
    source, labels = open_prepared(patches), open_prepared(pixels)
    px = labels.read(0, labels.n_samples)
    size = source.patch_size
    places = pixel_places(px["xy"], source.ds["xy"].values, transform, size)
    y = np.full((3, source.n_samples, size, size), -1, np.int16)      # (train/val/test, patches, P, P)
    counts = {}
    for name in ("train", "val", "test"):
        labelled = (px["split"] == SPLIT_CODES[name]) & (px["y"] >= 0)
        patch, row, col = (v[labelled] for v in places)
        y[SPLIT_CODES[name], patch, row, col] = px["y"][labelled]
        counts[name] = {"pixels": int(labelled.sum()), "patches": int(np.unique(patch).size)}
    holds = (y >= 0).any(axis=(2, 3))                                    # (3, patches)
    a = source.ds.attrs
    with PreparedWriter(out, n_time=source.n_time, band_names=source.band_names, class_names=source.class_names,
                        class_colors=source.class_colors, class_codes=source.class_codes, sensor=a["sensor"],
                        source=f"patches of {patches} labelled as {pixels}", mode="patch", patch_size=size,
                        crs=source.crs, overwrite=True) as writer:
        for start in range(0, source.n_samples, source.chunk_samples):     # one read per stored chunk
            stop = min(start + source.chunk_samples, source.n_samples)
            data = source.read(start, stop)
            for code in range(3):
                take = np.flatnonzero(holds[code, start:stop])
                if take.size:
                    writer.append(x=data["x"][take].astype(np.float32) / SCALE, valid=data["valid"][take],
                                  date=data["date"][take], y=y[code, start + take],
                                  split=np.full(take.size, code, np.int8), group=data["group"][take],
                                  xy=data["xy"][take])
    return counts


def grid_transform(work: Path):
    """The affine transform of the synthetic scene's grid (patch copies place pixels with it)."""
    return open_source(work / "synthetic" / L2A_FOLDER).grid.transform


def prepare_slovenia(root: Path, out: Path, *, seed: int) -> Path:
    """Every pixel of the Slovenia scene: all of each polygon (labelled) and all outside them (the pool)."""
    with rasterio.open(root / "lulc_reference.tif") as grid:
        every_pixel = grid.width * grid.height
    return prepare_s2(root, out, labels=root / "lulc.gpkg", class_field="LULC_NAME", max_per_polygon=None,
                      unlabeled=every_pixel, seed=seed)


def reduced_copy(full: Path, out: Path, *, train_per_class: int, val_per_class: int, args: argparse.Namespace,
                 seed: int) -> dict:
    """`reduce_labels` once: the labelled counts, read back when the copy was already made."""
    counts = out.with_suffix(".json")
    if not counts.is_file():
        made = reduce_labels(full, out, train_per_class=train_per_class, val_per_class=val_per_class,
                             pixels_per_parcel=args.labelled_pixels, seed=seed)
        counts.write_text(json.dumps(made))
    return json.loads(counts.read_text())


def run_pretraining(run_dir: Path, **options) -> Path:
    """A model pre-trained (`pretrain` options) until its pretext loss stops improving; resumed if interrupted."""
    if (run_dir / CARD).is_file():
        return run_dir
    print(f"[label_scarcity] pre-training {options['model']}", file=sys.stderr, flush=True)
    if (run_dir / RESUME).is_dir():
        result = pretrain(resume=run_dir, **options)
    else:
        result = pretrain(out=run_dir, overwrite=True, **options)
    stop_if_interrupted(result, "pre-training")
    return run_dir


def pretrained_runs(work: Path, args: argparse.Namespace, full: Path, hparams: dict | None,
                    alise_hparams: dict | None) -> dict[str, Path]:
    """model -> its pre-trained run, for the models of the pre-trained arms asked for: SITS-BERT on
    `pool.sits`, ALISE on the train, val and unlabelled patches of `patches.sits` (labels ignored)."""
    models = {model_of(arm) for arm in args.arms if arm in PRETRAINED_ARMS}
    runs = {}
    if "sitsbert" in models:
        pool = work / "pool.sits"
        # no val split left: the pretext loss is watched on 3 % of the pool (pretrain's val_fraction)
        reduced_copy(full, pool, train_per_class=0, val_per_class=0, args=args, seed=args.data_seed)
        runs["sitsbert"] = run_pretraining(
            work / "pretrain", data=str(pool), model="sitsbert", hparams=hparams, epochs=args.pretrain_epochs,
            patience=args.pretrain_patience, min_delta=args.pretrain_min_delta, lr=args.pretrain_lr,
            warmup_epochs=args.pretrain_warmup, device=args.device, seed=0)
    if "alise" in models:
        # the paper's optimisation (TRAINING["pretrain"] of models/alise.py); its val patches watch the loss
        runs["alise"] = run_pretraining(
            work / "alise_pretrain", data=str(make_patches(work, args)), model="alise", hparams=alise_hparams,
            epochs=args.alise_pretrain_epochs, patience=args.alise_pretrain_patience,
            min_delta=args.alise_pretrain_min_delta, device=args.device, seed=0)
    return runs


def model_of(arm: str) -> str:
    """The model an arm trains: sitsbert, alise or rf."""
    return arm.split("_")[0]


def pretraining_summary(run_dir: Path) -> dict | None:
    """Epochs run, the best and the final pretext losses of the pre-training (None before it finished)."""
    if not (run_dir / CARD).is_file():
        return None
    history = json.loads((run_dir / "history.json").read_text())
    last = history["epochs"][-1]
    return {"epochs_run": len(history["epochs"]), "stopped_early": history["stopped_early"],
            "best_epoch": history["best_epoch"], "best_val_loss": round(history["best_metric"], 5),
            "final_train_loss": round(last["train_loss"], 5), "final_val_loss": round(last["val_loss"], 5),
            "seconds": round(sum(row["time_s"] for row in history["epochs"]), 1)}


def level_dir(work: Path, level: int, seed: int) -> Path:
    return work / "runs" / f"parcels{level:03d}_seed{seed}"


def train_arm(arm: str, out: Path, data: Path, pretrained_run: Path | None, seed: int,
              args: argparse.Namespace, hparams: dict | None) -> None:
    """One finished run of `arm` in `out` (started again from the beginning if it was cut); `hparams`
    those of the arm's model from scratch."""
    pretrained, options = ARMS[arm]
    if arm == "rf":
        options = {**options, "hparams": {"n_jobs": args.threads}}
    else:
        options = {**options, "patience": args.finetune_patience, "min_steps_per_epoch": args.min_steps_per_epoch,
                   "min_total_steps": args.min_total_steps,
                   "class_weights": args.class_weights, "monitor": args.finetune_monitor,
                   "monitor_mode": "max" if args.finetune_monitor == "val_oa" else "min"}
        options |= ({"from_run": str(pretrained_run), "epochs": args.finetune_epochs} if pretrained else
                    {"hparams": hparams, "epochs": args.scratch_epochs})
    if arm == "sitsbert_lora":
        options["lr"] = args.lora_lr
    if arm in ALISE_ARMS:
        options["batch_size"] = args.alise_batch_size
    if arm in ("alise_full", "alise_scratch"):
        options["lr"] = args.alise_lr
    print(f"[label_scarcity] {out.parent.name} {arm}", file=sys.stderr, flush=True)
    # the probe's settings are defaults under these flags: only those given (not None) override them
    train = probe if arm == "alise_probe" else finetune
    run = train(out=out, overwrite=True, data=str(data), seed=seed, device=args.device, **options)
    stop_if_interrupted(run, f"{arm} in {out.parent.name}")


def run_all(work: Path, args: argparse.Namespace, hparams: dict | None, alise_hparams: dict | None) -> None:
    """Every (level, seed, arm) run not finished yet; the pre-trainings the pre-trained arms need."""
    full = make_full(work, args)
    pretrained = pretrained_runs(work, args, full, hparams, alise_hparams)
    with_patches = any(arm in ALISE_ARMS for arm in args.arms)
    patches, transform = (make_patches(work, args), grid_transform(work)) if with_patches else (None, None)
    for level in args.levels:
        for seed in args.seeds:
            folder = level_dir(work, level, seed)
            folder.mkdir(parents=True, exist_ok=True)
            reduced_copy(full, folder / "data.sits", train_per_class=level, val_per_class=args.val_parcels_per_class,
                         args=args, seed=seed)
            if with_patches and not (folder / "patches.json").is_file():
                made = patch_copy(patches, folder / "data.sits", folder / "patches.sits", transform)
                (folder / "patches.json").write_text(json.dumps(made))
            for arm in args.arms:
                if not (folder / arm / CARD).is_file():
                    alise = arm in ALISE_ARMS
                    train_arm(arm, folder / arm, folder / ("patches.sits" if alise else "data.sits"),
                              pretrained.get(model_of(arm)), seed, args, alise_hparams if alise else hparams)


def finished_runs(work: Path) -> dict[str, dict[int, list[dict]]]:
    """arm -> level -> [{seed, oa, macro_f1, best_epoch}] of every finished run in the workdir."""
    found: dict[str, dict[int, list[dict]]] = {}
    for card in sorted((work / "runs").glob(f"parcels*_seed*/*/{CARD}")):
        run_dir = card.parent
        level, seed = (int(part) for part in run_dir.parent.name.removeprefix("parcels").split("_seed"))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = run_dir / "history.json"
        best_epoch = json.loads(history.read_text())["best_epoch"] if history.is_file() else None
        found.setdefault(run_dir.name, {}).setdefault(level, []).append(
            {"seed": seed, "oa": metrics["oa"], "macro_f1": metrics["macro_f1"], "best_epoch": best_epoch})
    return found


def score(rows: list[dict]) -> dict:
    """Mean/std (population) over seeds of test OA and macro-F1, with the per-seed values."""
    scores = {key: {"mean": round(statistics.fmean(r[key] for r in rows), 4),
                    "std": round(statistics.pstdev([r[key] for r in rows]), 4)} for key in ("oa", "macro_f1")}
    return scores | {"seeds": [r["seed"] for r in rows], "oa_per_seed": [round(r["oa"], 4) for r in rows],
                     "best_epoch_per_seed": [r["best_epoch"] for r in rows]}


def paired_gain(differences: list[float]) -> dict:
    """Mean of per-seed differences (pre-trained - scratch), their sample std, the 95 % t interval of
    the mean (None from a single seed) and how many seeds gained: a gain is clear when the interval
    stays above 0."""
    mean = statistics.fmean(differences)
    summary = {"mean": round(mean, 4), "per_seed": [round(d, 4) for d in differences],
               "seeds_gaining": sum(d > 0 for d in differences), "std": None, "ci95": None}
    if len(differences) > 1:
        std = statistics.stdev(differences)
        half = scipy.stats.t.ppf(0.975, len(differences) - 1) * std / math.sqrt(len(differences))
        summary |= {"std": round(std, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}
    return summary


def gains(runs: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, dict]]:
    """OA / macro-F1 of each pre-trained arm minus its model's scratch arm, paired by seed (the seed
    draws the labelled parcels), per level, over the seeds both finished."""
    out: dict[str, dict[int, dict]] = {}
    for arm in PRETRAINED_ARMS:
        for level, rows in sorted(runs.get(arm, {}).items()):
            scratch = {r["seed"]: r for r in runs.get(f"{model_of(arm)}_scratch", {}).get(level, [])}
            paired = sorted(((r, scratch[r["seed"]]) for r in rows if r["seed"] in scratch), key=lambda p: p[0]["seed"])
            if paired:
                out.setdefault(arm, {})[level] = {
                    key: paired_gain([r[key] - s[key] for r, s in paired]) for key in ("oa", "macro_f1")
                } | {"seeds": [r["seed"] for r, _ in paired]}
    return out


def report(work: Path) -> dict:
    """The table of every finished run in the workdir (arms and levels in order)."""
    runs = finished_runs(work)
    results = {arm: {level: score(sorted(rows, key=lambda r: r["seed"])) for level, rows in sorted(runs[arm].items())}
               for arm in ARMS if arm in runs}
    settings_file = work / "settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings["labelled"] = {path.parent.name: json.loads(path.read_text())
                            for path in sorted((work / "runs").glob("*/data.json"))}
    settings["labelled_patches"] = {path.parent.name: json.loads(path.read_text())
                                    for path in sorted((work / "runs").glob("*/patches.json"))}
    full_counts = work / "full.json"
    document = {"benchmark": "label_scarcity", "model": "sitsbert", "dataset": settings.get("dataset", "synthetic"),
                "labelled_in_full_dataset": json.loads(full_counts.read_text()) if full_counts.is_file() else None,
                "settings": settings,
                "pretraining": pretraining_summary(work / "pretrain"),
                "pretraining_alise": pretraining_summary(work / "alise_pretrain"), "results": results,
                "gain_pretrained_minus_scratch": gains(runs)}
    (work / "report.json").write_text(json.dumps(document, indent=2))
    return document


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def arm_list(text: str) -> list[str]:
    arms = text.split(",")
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown)}: choose among {', '.join(ARMS)}")
    return arms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASET_DEFAULTS), default="synthetic",
                        help="the synthetic scene, or the real Slovenia NDVI scene of --real-root")
    parser.add_argument("--real-root", default=str(SLOVENIA), help="the slovenia-s2-ndvi folder")
    parser.add_argument("--size", type=int, default=256, help="synthetic scene side (px)")
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--pixels-per-parcel", type=int, default=40,
                        help="synthetic: pixels drawn per parcel, labelled or not (slovenia: all of them)")
    parser.add_argument("--labelled-pixels", type=int, default=None,
                        help="labelled pixels of each kept parcel (default: synthetic 10, slovenia 20)")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="pixels drawn outside the parcels (none there in the synthetic scene: it is all parcels)")
    parser.add_argument("--levels", type=int_list, default=None,
                        help="labelled parcels per class (default: synthetic 5,10,20,50, slovenia 1,2,3,5)")
    parser.add_argument("--val-parcels-per-class", type=int, default=None, help="default: synthetic 3, slovenia 1")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--arms", type=arm_list, default=None,
                        help=f"among {', '.join(ARMS)} (default: all; slovenia: all but the ALISE ones)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="cap; default: the paper's (100)")
    parser.add_argument("--pretrain-patience", type=int, default=None,
                        help="stop when the pretext validation loss has not improved for N epochs (default: the paper's, none)")
    parser.add_argument("--pretrain-min-delta", type=float, default=0.0,
                        help="progress of the pretext loss = a fall by more than this share since the last progress "
                             "(0.01 = 1 %%); --pretrain-patience epochs without progress stop the pre-training")
    parser.add_argument("--pretrain-lr", type=float, default=None, help="default: the paper's (1e-4)")
    parser.add_argument("--pretrain-warmup", type=float, default=None, help="warm-up epochs; default: the paper's (0)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="from the pre-trained encoder; default: the paper's (100)")
    parser.add_argument("--scratch-epochs", type=int, default=None, help="from scratch; default: the paper's (300)")
    parser.add_argument("--finetune-patience", type=int, default=None, help="early stopping on val OA; default: the paper's (none)")
    parser.add_argument("--min-steps-per-epoch", type=int, default=None,
                        help="smaller batches (not below 32) on few labels, for every SITS-BERT arm (default: the model's batch size)")
    parser.add_argument("--min-total-steps", type=int, default=None,
                        help="at least this many optimizer steps for every SITS-BERT arm: epochs raised on few labels "
                             "(default: the epochs as they are)")
    parser.add_argument("--finetune-monitor", choices=["val_oa", "val_loss"], default="val_oa",
                        help="SITS-BERT arms: the epoch kept (default: the best val OA, finetune's); val_loss (with "
                             "--class-weights balanced, a class-balanced loss) where a few-polygon val split is so "
                             "unbalanced that predicting its largest class wins on OA")
    parser.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                        help="SITS-BERT arms' loss weights (balanced: n / (K n_k) over the labelled train pixels); "
                             "the random forest has none")
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA adapters' lr; default: the model's (1e-5)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE,
                        help=f"ALISE arms: patch side in px (default {PATCH_SIZE}, the paper's crops)")
    parser.add_argument("--alise-pretrain-epochs", type=int, default=None, help="ALISE cap; default: the paper's (260)")
    parser.add_argument("--alise-pretrain-patience", type=int, default=None,
                        help="stop ALISE's pre-training when its pretext validation loss has not improved for N "
                             "epochs (default: the paper's, none)")
    parser.add_argument("--alise-pretrain-min-delta", type=float, default=0.0,
                        help="as --pretrain-min-delta, for ALISE's pre-training")
    parser.add_argument("--alise-batch-size", type=int, default=None,
                        help="ALISE arms' fine-tuning batch, in patches (default: the engine's 128; a copy holds few "
                             "labelled patches, and --min-steps-per-epoch does not shrink a batch below 32)")
    parser.add_argument("--alise-lr", type=float, default=None,
                        help="alise_full and alise_scratch's lr (default: the engine's 1e-4; the probe keeps its own)")
    parser.add_argument("--small", action="store_true",
                        help=f"SITS-BERT hidden/layers/heads {SMALL}; ALISE {ALISE_SMALL}")
    parser.add_argument("--threads", type=int, default=1, help="torch and random-forest threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=None,
                        help="keep data and runs here, to resume or report (default: temporary, removed)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the JSON table from the workdir's finished runs")
    args = parser.parse_args(argv)
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dataset == "slovenia" and any(arm in ALISE_ARMS for arm in args.arms):
        parser.error("the ALISE arms need --dataset synthetic (its patches are cut from the synthetic folder)")
    if args.report_only and not (args.workdir and Path(args.workdir, "runs").is_dir()):
        parser.error("--report-only needs --workdir: a folder holding the runs of an earlier benchmark")
    return args


def check_same_settings(saved: Path, settings: dict, free: tuple[str, ...]) -> None:
    """A resumed benchmark keeps the data and training settings of its finished runs (but `free`)."""
    if not saved.is_file():
        return
    # workdirs made before these options had their defaults
    before = {"dataset": "synthetic", "class_weights": "none", "finetune_monitor": "val_oa",
              "min_total_steps": None, "pretrain_min_delta": 0.0, "alise_pretrain_min_delta": 0.0} | {
        key: settings[key] for key in ALISE_SETTINGS if key in settings} | json.loads(saved.read_text())
    changed = [f"{key} was {before.get(key)!r}, now {value!r}" for key, value in json.loads(json.dumps(settings)).items()
               if key not in free and before.get(key) != value]
    if changed:
        raise SystemExit(f"the workdir holds runs made with other settings ({'; '.join(changed)}): use another --workdir")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sits_scarcity_"))
    if not args.report_only:
        torch.set_num_threads(args.threads)
        work.mkdir(parents=True, exist_ok=True)
        hparams, alise_hparams = (SMALL, ALISE_SMALL) if args.small else (None, None)
        unused = ("workdir", "report_only") + (("real_root",) if args.dataset == "synthetic" else ())
        settings = {k: v for k, v in vars(args).items() if k not in unused} | {
            "hparams": hparams or "paper (hidden 256, 3 layers, 8 heads)",
            "alise_hparams": alise_hparams or "paper (Tables I, VIII, IX)", "device": str(resolve_device(args.device))}
        unfinished = [key for run, keys in PRETRAIN_STOPPING.items() if not (work / run / CARD).is_file() for key in keys]
        check_same_settings(work / "settings.json", settings, FREE_ON_RESUME + tuple(unfinished))
        (work / "settings.json").write_text(json.dumps(settings, indent=1))
        try:
            run_all(work, args, hparams, alise_hparams)
        finally:
            print(json.dumps(report(work), indent=2))
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        return
    print(json.dumps(report(work), indent=2))


if __name__ == "__main__":
    main()
