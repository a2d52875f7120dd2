"""SITS-BERT training throughput: the engine (`sitscli.engine.trainer.fit`) against the reference code's way.

    python bench/train_speed.py [--device auto] [--samples 25600] [--repeats 3] [--no-finetune] [--threads 1]

Two arms on the same synthetic in-memory series (10 bands, 24-64 clear observations), timed over one
epoch each and interleaved A B A B... (`--repeats` pairs) so that a change in the machine's load
falls on both; after one short warm-up of each arm (allocator, kernels, autotuning):
- reference: `reference_sitsbert.py`, a stand-in for the reference code's training loop (series
  padded to 64, contamination drawn per item in Python, attention written out with its dropout);
- engine: `fit` for one epoch at the model's `TRAINING` settings (length bucketing on), its
  `time_s` (training steps, batch collation, host-to-device copies; no validation).
Stages: pretrain (contamination pretext, batch 256, clipping 5) and, unless `--no-finetune`,
finetune (classifier, cross-entropy, batch 128). Per stage: median samples/s of each arm and
`engine_over_reference` (ratio of the medians). `padding_fraction`: the share of padded tokens of
the pre-training batches, padded to 64 (reference), random batches padded to their longest series,
and length-bucketed ones. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from reference_sitsbert import PaddedSeries, ReferenceSitsBert, reference_loss
from sitscli.core.dates import day_of_year
from sitscli.data.batch import collate
from sitscli.engine.device import resolve_device
from sitscli.engine.sampling import bucketed_order, padding_fraction
from sitscli.engine.trainer import TrainConfig, fit, seed_everything
from sitscli.models import sitsbert
from sitscli.models.registry import DataInfo
from sitscli.ssl.contamination import ContaminationTask

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]   # the SITS-BERT CSV bands
NUM_CLASSES = 10
WARMUP_STEPS = 2


class SyntheticSeries(Dataset):
    """n compact pixel series: values (L, 10) 0-1, dates (L,) in 2020, valid (L,) all True, L in 24..64."""

    def __init__(self, n: int, max_len: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(max(1, max_len * 3 // 8), max_len + 1, size=n)
        self.values = rng.uniform(0.0, 0.5, size=(n, max_len, len(BANDS))).astype(np.float32)
        start = int(np.datetime64("2020-01-01", "D").astype(np.int64))
        self.dates = (start + np.sort(rng.integers(0, 366, size=(n, max_len)), axis=1)).astype(np.int32)
        self.y = rng.integers(0, NUM_CLASSES, size=n)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        t = int(self.lengths[i])
        return {"values": self.values[i, :t], "dates": self.dates[i, :t], "valid": np.ones(t, bool),
                "y": np.int64(self.y[i]), "xy": np.zeros(2)}

    def series_lengths(self) -> np.ndarray:
        return self.lengths

    def padded(self, pretext: bool) -> PaddedSeries:
        """The same series as the reference code reads them (day of year, padded to 64)."""
        return PaddedSeries(self.values, day_of_year(self.dates), self.lengths, self.y, pretext)


class ClassifyTask:
    """Cross-entropy on the classifier's logits (what fine-tuning optimises)."""

    def training_step(self, model, batch):
        return F.cross_entropy(model(batch).float(), batch["y"]), {}

    @torch.no_grad()
    def validation_step(self, model, batch):
        return {"loss": F.cross_entropy(model(batch).float(), batch["y"]).item()}


def engine_epoch(stage: str, dataset: Dataset, hparams: dict, device: str, batch_size: int, num_workers: int) -> float:
    """Seconds of one epoch of `fit` at the model's TRAINING settings."""
    seed_everything(0)
    classes = [f"c{k}" for k in range(NUM_CLASSES)] if stage == "finetune" else []
    info = DataInfo(BANDS, [0.25] * len(BANDS), [0.14] * len(BANDS), class_names=classes)
    model = sitsbert.build(hparams, info)
    task = ContaminationTask() if stage == "pretrain" else ClassifyTask()
    cfg = TrainConfig(**{**sitsbert.TRAINING[stage], "epochs": 1, "batch_size": batch_size, "warmup_epochs": 0.0,
                         "patience": None, "device": device, "num_workers": num_workers, "log_every_s": 1e9})
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, task, dataset, None, collate, cfg, Path(tmp))
    return result.history[-1]["time_s"]


def reference_epoch(stage: str, dataset: SyntheticSeries, hparams: dict, device: torch.device, batch_size: int,
                    steps: int | None = None) -> float:
    """Seconds of one epoch (or `steps` steps) of the reference code's training loop."""
    seed_everything(0)
    model = ReferenceSitsBert(len(BANDS), hparams["hidden"], hparams["layers"], hparams["heads"],
                              num_classes=NUM_CLASSES if stage == "finetune" else 0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=sitsbert.TRAINING[stage]["lr"])
    clip = sitsbert.TRAINING[stage]["grad_clip"]
    loader = DataLoader(dataset.padded(pretext=stage == "pretrain"), batch_size=batch_size, shuffle=True)
    started = time.perf_counter()
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = reference_loss(model, {k: v.to(device) for k, v in batch.items()})
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        loss.item()                                     # the reference logs every step's loss
    return time.perf_counter() - started


def compare(stage: str, dataset: SyntheticSeries, hparams: dict, args, device: torch.device) -> dict:
    """Warm-up, then `repeats` x (reference epoch, engine epoch); medians and their ratio."""
    batch = args.pretrain_batch if stage == "pretrain" else args.finetune_batch
    reference_epoch(stage, dataset, hparams, device, batch, steps=WARMUP_STEPS)
    engine_epoch(stage, Subset(dataset, range(WARMUP_STEPS * batch)), hparams, args.device, batch, args.num_workers)
    seconds: dict[str, list[float]] = {"reference": [], "engine": []}
    for _ in range(args.repeats):
        seconds["reference"].append(round(reference_epoch(stage, dataset, hparams, device, batch), 3))
        seconds["engine"].append(round(engine_epoch(stage, dataset, hparams, args.device, batch, args.num_workers), 3))
    steps = -(-len(dataset) // batch)
    arms = {arm: {"samples_per_s": round(len(dataset) / statistics.median(s), 1), "epoch_seconds": s,
                  "seconds_per_step": round(statistics.median(s) / steps, 3)} for arm, s in seconds.items()}
    return {**arms, "engine_over_reference": round(arms["engine"]["samples_per_s"] / arms["reference"]["samples_per_s"], 3),
            "batch_size": batch, "samples_per_epoch": len(dataset), "steps_per_epoch": steps}


def padding_fractions(dataset: SyntheticSeries, batch: int, max_len: int) -> dict:
    """Share of padded tokens: reference (all to max_len), random batches, bucketed batches (engine)."""
    lengths = dataset.series_lengths()
    order = np.random.default_rng(0).permutation(len(lengths))
    bucketed = bucketed_order(order, lengths, batch, np.random.default_rng(1))
    return {"reference_padded_to_max_len": round(1 - lengths.mean() / max_len, 3),
            "random_batches": round(padding_fraction(order, lengths, batch), 3),
            "bucketed_batches": round(padding_fraction(bucketed, lengths, batch), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per epoch (default: 25600 on a GPU, 2560 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each arm, interleaved (median reported)")
    parser.add_argument("--no-finetune", action="store_true", help="time pre-training only")
    parser.add_argument("--hidden", type=int, default=sitsbert.DEFAULTS["hidden"])
    parser.add_argument("--layers", type=int, default=sitsbert.DEFAULTS["layers"])
    parser.add_argument("--heads", type=int, default=sitsbert.DEFAULTS["heads"])
    parser.add_argument("--pretrain-batch", type=int, default=sitsbert.TRAINING["pretrain"]["batch_size"])
    parser.add_argument("--finetune-batch", type=int, default=sitsbert.TRAINING["finetune"]["batch_size"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steadier figures on a loaded machine")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (engine option)")
    args = parser.parse_args()
    if args.repeats < 1 or (args.samples is not None and args.samples < 1):
        parser.error("--repeats and --samples must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    samples = args.samples or (25600 if device.type == "cuda" else 2560)
    hparams = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads}
    reference = (hparams == {k: sitsbert.DEFAULTS[k] for k in hparams}
                 and args.pretrain_batch == 256 and args.finetune_batch == 128)
    dataset = SyntheticSeries(samples, sitsbert.MAX_LEN)
    started = time.perf_counter()
    report = {
        "benchmark": "sitsbert_train_speed",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16_autocast_engine": device.type == "cuda",
        "model": {**hparams, "max_len": sitsbert.MAX_LEN, "bands": len(BANDS),
                  "attention_dropout": sitsbert.DEFAULTS["attention_dropout"],
                  "parameters": sum(p.numel() for p in sitsbert.build(hparams, DataInfo(BANDS, [0.0] * 10, [1.0] * 10)).parameters())},
        "reference_settings": reference,
        "repeats": args.repeats,
        "padding_fraction": padding_fractions(dataset, args.pretrain_batch, sitsbert.MAX_LEN),
        "pretrain": compare("pretrain", dataset, hparams, args, device),
    }
    if not args.no_finetune:
        report["finetune"] = compare("finetune", dataset, hparams, args, device)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["cpu_count"], report["load_average_1min_at_end"] = os.cpu_count(), round(os.getloadavg()[0], 2)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
