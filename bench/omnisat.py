"""OmniSat: what pre-training on three sensors gives a model that then sees Sentinel-2 alone.

    python bench/omnisat.py [--size 80] [--tile 8] [--patch 2] [--fractions 0.5,0.15,0.35] [--pretrain-epochs 8] [--eval-epochs 10]
                            [--scarce-epochs 30] [--pretrain-lr 1e-3] [--probe-lr 3e-3] [--finetune-lr 1e-3]
                            [--share 0.1] [--threads 2] [--paper-steps 2] [--workdir DIR]

The paper's protocol (Astruc et al. 2024, Tables 2-3) on the synthetic scene instead of TreeSatAI-TS:
1. `write_synthetic` (one agronomic year) seen by Sentinel-2, Sentinel-1 and a 1 m ortho, prepared
   in `--tile` x `--tile` tiles with the three sensors (splits by parcel: train / val / test); a copy
   keeps the labels of `--share` (10 %) of the train tiles, the others become unlabelled.
2. Pre-training (labels unused, train split; `sits pretrain --model omnisat`), reduced model SMALL:
   (a) `omnisat`: three sensors, contrastive + reconstruction + date filtering;
   (b) `s2_only_same_tokens`: Sentinel-2 alone, for 3 x the epochs, so that it sees as many tokens
       as (a) (three tokens per patch there, one here);
   ablations of (a): `no_contrastive`, `no_reconstruction`, `no_date_filtering`;
   (c) `none`: no pre-training (a randomly initialised encoder for probing, from scratch for fine-tuning).
3. For each, Sentinel-2-only evaluation (`--modalities s2`): linear probing (`sits probe`) and full
   fine-tuning (`sits finetune`), with 100 % and `--share` of the train labels; per-pixel classes of the
   patches (task dense); test-split macro-F1 and OA (pixels). Every arm has the same evaluation settings.
4. Throughput: pre-training tiles/s of (a) (from the engine's per-epoch training time), and of the
   paper's settings (d_model 256, 6 blocks, L-TAE 403 k) on --paper-steps batches of 4 tiles.

Prints one JSON document; `settings` records what was reduced from the paper (model width, epochs,
learning rates, one seed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sitscli.data.batch import collate
from sitscli.data.prepared import SPLIT_CODES, open_prepared
from sitscli.data.recipes.s2 import prepare_s2
from sitscli.data.recipes.sensors import SensorInputs
from sitscli.data.synthetic import write_synthetic
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.checkpoint import save_model
from sitscli.models import omnisat
from sitscli.models.registry import DataInfo
from sitscli.ssl.omnisat import OmniSatTask
from sitscli.workflows.finetune import finetune
from sitscli.workflows.pretrain import pretrain
from sitscli.workflows.probe import probe

# Reduced from DEFAULTS (d 256, 6 blocks, 16 heads, L-TAE [32, 128, 256] / [256, 512, 256]) for a 2-core CPU.
SMALL = {"d_model": 32, "depth": 2, "heads": 4, "ltae_in": [32, 32], "ltae_heads": 4, "ltae_d_k": 8,
         "ltae_mlp": [32, 32]}
PRETRAININGS = {   # name -> (modalities, pretext options, epoch multiplier)
    "omnisat": ("s2,s1,vhr", {}, 1),
    "s2_only_same_tokens": ("s2", {}, 3),
    "no_contrastive": ("s2,s1,vhr", {"contrastive": False}, 1),
    "no_reconstruction": ("s2,s1,vhr", {"reconstruction": False}, 1),
    "no_date_filtering": ("s2,s1,vhr", {"date_filter": False}, 1),
}
BATCH = 16


def log(message: str) -> None:
    print(f"[omnisat-bench] {message}", file=sys.stderr, flush=True)


def make_data(work: Path, args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The three-sensor tile dataset and its copy with `share` of the train tiles labelled."""
    scene = write_synthetic(work / "scene", size=args.size, seed=args.data_seed, years=1, layout="cog",
                            sensors=("s2", "s1", "vhr"))
    full = prepare_s2(scene.l2a, work / "tiles.sits", labels=scene.parcels, class_field=scene.class_field,
                      patch_size=args.tile, seed=args.data_seed, fractions=args.fractions,
                      sensors=SensorInputs(s1=scene.s1, vhr=scene.vhr))
    scarce = work / "scarce.sits"
    shutil.copytree(full, scarce)
    import zarr

    split = zarr.open_group(str(scarce / "data.zarr"), mode="r+")["split"]
    codes = split[:]
    train = np.flatnonzero(codes == SPLIT_CODES["train"])
    keep = np.random.default_rng(args.data_seed).choice(train, size=max(1, round(args.share * train.size)), replace=False)
    codes[np.setdiff1d(train, keep)] = SPLIT_CODES["unlabeled"]
    split[:] = codes
    counts = {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}
    return full, scarce, {"tiles_full_train": int(train.size), "tiles_scarce": counts}


def random_encoder_run(data: Path, out: Path, hparams: dict, seed: int) -> Path:
    """A 'pre-training' run holding a randomly initialised Sentinel-2 OmniSat (arm `none` of the probe)."""
    prepared = open_prepared(data)
    full = prepared.info()
    info = DataInfo(full.band_names, full.band_mean, full.band_std, reference_date=full.reference_date)
    torch.manual_seed(seed)
    model = omnisat.build(hparams, info)
    save_model(out, model, model_name="omnisat", hparams={**omnisat.DEFAULTS, **hparams}, info=info, task="pretrain",
               dataset_fingerprint=prepared.fingerprint, extra={"modalities": ["s2"], "pretext": "none"})
    return out


def evaluate_arm(name: str, sources: dict[str, dict], full: Path, scarce: Path, work: Path,
                 args: argparse.Namespace) -> dict:
    """Probe and fine-tune (`sources`: protocol -> from_run or model options) on Sentinel-2 alone with
    100 % and `share` of the labels -> test scores."""
    rows = {}
    for labels, data, epochs in (("100%", full, args.eval_epochs), (f"{round(100 * args.share)}%", scarce, args.scarce_epochs)):
        for protocol, run, lr in (("probe", probe, args.probe_lr), ("finetune", finetune, args.finetune_lr)):
            source = sources[protocol]
            started = time.perf_counter()
            result = run(out=work / f"{name}_{protocol}_{labels.rstrip('%')}", overwrite=True, data=str(data),
                         modalities="s2", epochs=epochs, lr=lr, batch_size=BATCH, device="cpu", seed=0, **source)
            report = result.report
            rows[f"{protocol}_{labels}"] = {"macro_f1": round(report["macro_f1"], 4), "oa": round(report["oa"], 4),
                                            "best_epoch": result.fit.best_epoch,
                                            "seconds": round(time.perf_counter() - started, 1)}
            log(f"{name} {protocol} {labels}: macro-F1 {report['macro_f1']:.4f}, OA {report['oa']:.4f}")
    return rows


def paper_throughput(data: Path, steps: int, patch: int) -> dict:
    """Pre-training tiles/s at the paper's settings (DEFAULTS) on batches of 4 tiles, three sensors."""
    prepared = open_prepared(data)
    full = prepared.info()
    info = DataInfo(full.band_names, full.band_mean, full.band_std, reference_date=full.reference_date,
                    modalities=full.modalities)
    dataset = SeriesDataset(prepared, splits=("train",), modalities=("s2", "s1", "vhr"))
    batch = collate([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model = omnisat.build({"patch": patch}, info)
    task, optimizer = OmniSatTask(), torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 1):                     # the first step warms up, untimed
        started = time.perf_counter()
        loss, _ = task.training_step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return {"tiles_per_s": round(4 * steps / sum(times[1:]), 3), "parameters": sum(p.numel() for p in model.parameters()),
            "batch": 4, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=80, help="synthetic scene side (S2 px)")
    parser.add_argument("--tile", type=int, default=8, help="tile side (S2 px): the prepared --patch-size")
    parser.add_argument("--patch", type=int, default=2, help="OmniSat patch side (S2 px)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--fractions", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 0.15, 0.35],
                        help="train,val,test shares of the parcels (a large test split: scores are per pixel of few tiles)")
    parser.add_argument("--share", type=float, default=0.1, help="share of the train tiles labelled in the scarce copy")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--eval-epochs", type=int, default=10, help="probe / fine-tuning epochs with all labels")
    parser.add_argument("--scarce-epochs", type=int, default=30, help="probe / fine-tuning epochs with few labels")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--probe-lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-steps", type=int, default=2, help="timed steps at the paper's settings (0: skip)")
    parser.add_argument("--workdir", default=None, help="keep data and runs here (default: temporary, removed)")
    args = parser.parse_args()
    hparams = {**SMALL, "patch": args.patch}
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sits_omnisat_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        full, scarce, counts = make_data(work, args)
        log(f"data ready in {time.perf_counter() - started:.0f} s: {counts}")
        pretrained, throughput = {}, {}
        for name, (modalities, pretext, factor) in PRETRAININGS.items():
            t0 = time.perf_counter()
            result = pretrain(out=work / f"pre_{name}", overwrite=True, data=str(full), model="omnisat", hparams=hparams,
                              pretext=pretext, modalities=modalities, epochs=args.pretrain_epochs * factor,
                              lr=args.pretrain_lr, batch_size=BATCH, device="cpu", seed=0)
            pretrained[name] = result.run_dir
            history = result.fit.history
            train_tiles = counts["tiles_full_train"]
            throughput[name] = round(train_tiles * len(history) / sum(row["time_s"] for row in history), 3)
            last = history[-1]
            log(f"pre-trained {name} in {time.perf_counter() - t0:.0f} s: "
                + ", ".join(f"{k} {last[k]:.3f}" for k in ("val_con", "val_rec") if k in last))
        results = {name: evaluate_arm(name, dict.fromkeys(("probe", "finetune"), {"from_run": str(run)}),
                                      full, scarce, work, args)
                   for name, run in pretrained.items()}
        # no pre-training: probe a randomly initialised encoder, fine-tune from scratch
        random_run = random_encoder_run(full, work / "pre_none", hparams, seed=0)
        results["none"] = evaluate_arm("none", {"probe": {"from_run": str(random_run)},
                                                "finetune": {"model": "omnisat", "hparams": hparams}},
                                       full, scarce, work, args)
        paper = paper_throughput(full, args.paper_steps, args.patch) if args.paper_steps else None
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    settings = {k: v for k, v in vars(args).items() if k != "workdir"} | {
        "model": hparams, "batch_size": BATCH, "seed": 0, "data": counts, "device": "cpu",
        "paper_settings": "d_model 256, 6 + 1 blocks, mlp_ratio 2, L-TAE [32,128,256]/[256,512,256]; pre-training Adam "
                          "1e-4 250 epochs, fine-tuning 2e-5; reduced here for a 2-core CPU",
        "total_s": round(time.perf_counter() - started, 1)}
    print(json.dumps({"benchmark": "omnisat", "settings": settings, "results": results,
                      "pretrain_tiles_per_s_cpu": throughput, "paper_settings_pretrain_cpu": paper}, indent=2))


if __name__ == "__main__":
    main()
