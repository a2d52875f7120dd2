"""ALISE pre-training throughput, and linear-probe accuracy of ALISE vs SITS-BERT representations.

    python bench/alise.py [--batch-size 2] [--steps 3] [--warmup 1] [--size 160]
                          [--pretrain-epochs 5] [--probe-epochs 20] [--probe-lr 1e-2] [--device cpu] [--workdir DIR]

1. Throughput: ALISE at the paper's settings (`sitscli.models.alise.DEFAULTS`: d_model 64, n_q 10,
   Tables I / VIII / IX; 64 x 64 crops, runs of 60 dates, t_w 2) on random in-memory patch batches
   (values (B, 80, 10, 64, 64), valid, dates): forward + backward of `AliseTask.training_step` and
   an Adam step; the first --warmup steps are not timed. Reports patches/s.
2. Linear probing: one synthetic scene (year 1), prepared twice with the same seed so the polygon
   split is the same: pixels for SITS-BERT, 32 x 32 patches for ALISE. Each model (small, see
   SITSBERT / ALISE below) is pre-trained for --pretrain-epochs, then `probe` trains a linear layer
   on its frozen representation; OA / macro-F1 on the test split of each dataset.

Prints one JSON document; `settings` records what was reduced from the papers' setups.
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

from sitscli.core.dates import parse_date
from sitscli.data.prepared import SPLIT_CODES, open_prepared
from sitscli.data.recipes.s2 import prepare_s2
from sitscli.data.synthetic import write_synthetic
from sitscli.models import alise
from sitscli.models.registry import DataInfo
from sitscli.ssl.alise import AliseTask
from sitscli.workflows.pretrain import pretrain
from sitscli.workflows.probe import probe

SITSBERT = {"hidden": 64, "layers": 2, "heads": 4}          # reduced from the reference 256 / 3 / 8
ALISE = {"d_model": 32, "layers": 1, "heads": 4, "d_ff": 64, "unet_widths": [16, 16, 32, 32], "n_q": 8,
         "d_emb": 64}                                      # reduced from DEFAULTS (Tables I, VIII, IX)
ALISE_PRETEXT = {"run_length": 30, "crop": 32}             # reduced from 60 dates / 64 x 64 (Table I)
SERIES_LENGTH = 80                                         # dates in the throughput batches
BANDS = 10


def log(message: str) -> None:
    print(f"[alise-bench] {message}", file=sys.stderr, flush=True)


def random_batch(batch_size: int, size: int, device: torch.device, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """A patch batch: values (B, T, C, size, size) in 0-1, valid (B, T, size, size) ~80 % clear,
    dates (B, T) sorted days since 1970 over about a year."""
    b, t = batch_size, SERIES_LENGTH
    values = torch.rand(b, t, BANDS, size, size, generator=rng) * 0.5
    valid = torch.rand(b, t, size, size, generator=rng) < 0.8
    dates = 19000 + torch.sort(torch.randint(0, 365, (b, t), generator=rng), dim=1).values
    return {"values": values.to(device), "valid": valid.to(device), "dates": dates.to(device)}


def throughput(batch_size: int, steps: int, warmup: int, device: torch.device, seed: int) -> dict:
    """Patches/s of ALISE pre-training at the paper's settings on random batches."""
    torch.manual_seed(seed)
    info = DataInfo([f"B{i}" for i in range(BANDS)], [0.2] * BANDS, [0.1] * BANDS, reference_date=19000)
    model = alise.build({}, info).to(device).train()
    task = AliseTask.from_hparams({}, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(seed)
    size = alise.DEFAULTS["crop"]
    batches = [random_batch(batch_size, size, device, rng) for _ in range(2)]   # reused: data cost is not timed
    timed = 0.0
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = task.training_step(model, batches[step % 2])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            timed += time.perf_counter() - start
        log(f"throughput step {step + 1}/{warmup + steps}: {time.perf_counter() - start:.2f} s, loss {loss.item():.3f}")
    return {"patches_per_s": round(batch_size * steps / timed, 3), "seconds_per_step": round(timed / steps, 3),
            "batch_size": batch_size, "timed_steps": steps, "warmup_steps": warmup,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input": [batch_size, SERIES_LENGTH, BANDS, size, size],
            "hparams": {k: alise.DEFAULTS[k] for k in ("d_model", "n_q", "layers", "t_w", "run_length", "crop")}}


def test_counts(path: Path) -> dict:
    """Labelled test pixels, and the parcels (groups) and samples they come from."""
    prepared = open_prepared(path)
    split = prepared.ds["split"].values
    test = split == SPLIT_CODES["test"]
    y = prepared.ds["y"].values[test]
    labelled = (y >= 0).reshape(len(y), int(np.prod(y.shape[1:])))
    groups = prepared.ds["group"].values[test][labelled.any(axis=1)]
    return {"samples": int(test.sum()), "labelled_pixels": int(labelled.sum()), "groups": int(np.unique(groups).size)}


def probe_arm(work: Path, name: str, data: Path, model: str, hparams: dict, pretext: dict, args) -> dict:
    """Pre-train `model` on `data`, probe it; test OA / macro-F1 and timings."""
    start = time.perf_counter()
    pre = pretrain(out=work / f"{name}_pretrain", overwrite=True, data=str(data), model=model, hparams=hparams,
                   pretext=pretext or None, epochs=args.pretrain_epochs, warmup_epochs=args.pretrain_warmup, batch_size=args.pretrain_batch[name],
                   device=args.device, seed=args.seed, log_every_s=60.0)
    pretrain_s = time.perf_counter() - start
    start = time.perf_counter()
    run = probe(out=work / f"{name}_probe", overwrite=True, from_run=str(pre.run_dir), data=str(data),
                epochs=args.probe_epochs, lr=args.probe_lr, batch_size=args.probe_batch[name], device=args.device, seed=args.seed,
                log_every_s=60.0)
    report = run.report
    log(f"{name}: OA {report['oa']:.4f}, macro-F1 {report['macro_f1']:.4f}")
    return {"oa": round(report["oa"], 4), "macro_f1": round(report["macro_f1"], 4), "split": report.get("split"),
            "scored_pixels": report.get("samples"), "test": test_counts(data),
            "pretrain_s": round(pretrain_s, 1), "probe_s": round(time.perf_counter() - start, 1)}


def probing(work: Path, args) -> tuple[dict, dict]:
    start = time.perf_counter()
    scene = write_synthetic(work / "synthetic", size=args.size, seed=args.seed, years=1, layout="safe")
    first, last = scene.years[0]
    date_range = (parse_date(first), parse_date(last))
    common = {"labels": scene.parcels, "class_field": "class_y1", "date_range": date_range, "seed": args.seed}
    pixels = prepare_s2(scene.l2a, work / "pixels.sits", max_per_polygon=args.pixels_per_parcel, **common)
    patches = prepare_s2(scene.l2a, work / "patches.sits", patch_size=32, **common)
    data_s = time.perf_counter() - start
    results = {"sitsbert": probe_arm(work, "sitsbert", pixels, "sitsbert", SITSBERT, {}, args),
               "alise": probe_arm(work, "alise", patches, "alise", ALISE, ALISE_PRETEXT, args)}
    return results, {"data_s": round(data_s, 1), "year": [first, last]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="throughput batch (default 2 on CPU, 16 on GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed throughput steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed throughput steps first")
    parser.add_argument("--size", type=int, default=160, help="synthetic scene side (px)")
    parser.add_argument("--pixels-per-parcel", type=int, default=40)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--pretrain-warmup", type=float, default=0.0,
                        help="warm-up epochs (SITS-BERT's paper: 10, more than the few epochs run here)")
    parser.add_argument("--probe-epochs", type=int, default=20)
    parser.add_argument("--probe-lr", type=float, default=1e-2,
                        help="probe learning rate (protocol: 1e-4, too slow for the few epochs run here)")
    parser.add_argument("--skip-probe", action="store_true", help="throughput only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep data and runs here (default: temporary, removed)")
    args = parser.parse_args()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = args.batch_size or (16 if device.type == "cuda" else 2)
    args.pretrain_batch = {"sitsbert": 256, "alise": 8}
    args.probe_batch = {"sitsbert": 256, "alise": 8}
    report = {"benchmark": "alise", "device": str(device)}
    start = time.perf_counter()
    report["throughput"] = throughput(batch_size, args.steps, args.warmup, device, args.seed)
    report["throughput"]["seconds"] = round(time.perf_counter() - start, 1)
    if not args.skip_probe:
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sits_alise_"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            report["probe"], extra = probing(work, args)
        finally:
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    else:
        extra = {}
    report["settings"] = {k: v for k, v in vars(args).items() if k != "workdir"} | extra | {
        "sitsbert_hparams": SITSBERT, "alise_hparams": ALISE, "alise_pretext": ALISE_PRETEXT,
        "reductions": "probe arms: small models, few epochs (no warm-up, probe lr raised), small scene, patch 32 (paper: full models, "
                      "64 x 64 crops, runs of 60 dates, many epochs on large tiles); throughput at the paper's settings"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
