"""SITS-BERT training throughput through the real engine (`sitscli.engine.trainer.fit`).

    python bench/train_speed.py [--device auto] [--samples 25600] [--hidden 256 --layers 3 --heads 8]

Two measurements, each `fit` for two epochs over a synthetic in-memory dataset, the first epoch
being warm-up (allocator, kernels, autotuning) and the second the one timed (its `time_s` in the
engine's history: training steps, batch collation and host-to-device copies, not validation):
- pretrain: the contamination pretext on the pre-training model, batch 256 (reference settings:
  hidden 256, 3 layers, 8 heads, series of at most 64 clear observations, Adam, clipping 5);
- finetune: the classifier (max pooling) with cross-entropy, forward + backward, batch 128.
Series have 24-64 clear observations of 10 bands (a batch pads to its longest). Prints one JSON
document: samples/s for each, with the settings and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sitscli.data.batch import collate
from sitscli.engine.device import resolve_device
from sitscli.engine.trainer import TrainConfig, fit, seed_everything
from sitscli.models import sitsbert
from sitscli.models.registry import DataInfo
from sitscli.ssl.contamination import ContaminationTask

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]   # the SITS-BERT CSV bands
NUM_CLASSES = 10


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


class ClassifyTask:
    """Cross-entropy on the classifier's logits (what fine-tuning optimises)."""

    def training_step(self, model, batch):
        return F.cross_entropy(model(batch).float(), batch["y"]), {}

    @torch.no_grad()
    def validation_step(self, model, batch):
        return {"loss": F.cross_entropy(model(batch).float(), batch["y"]).item()}


def measure(stage: str, dataset: Dataset, hparams: dict, device: str, batch_size: int, num_workers: int) -> dict:
    """Two epochs of `fit`; samples/s of the second."""
    seed_everything(0)
    classes = [f"c{k}" for k in range(NUM_CLASSES)] if stage == "finetune" else []
    info = DataInfo(BANDS, [0.25] * len(BANDS), [0.14] * len(BANDS), class_names=classes)
    model = sitsbert.build(hparams, info)
    task = ContaminationTask() if stage == "pretrain" else ClassifyTask()
    cfg = TrainConfig(**{**sitsbert.TRAINING[stage], "epochs": 2, "batch_size": batch_size, "warmup_epochs": 0.0,
                         "patience": None, "device": device, "num_workers": num_workers, "log_every_s": 1e9})
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, task, dataset, None, collate, cfg, Path(tmp))
    timed = result.history[-1]
    return {"samples_per_s": round(len(dataset) / timed["time_s"], 1), "epoch_seconds": timed["time_s"],
            "warmup_epoch_seconds": result.history[0]["time_s"], "batch_size": batch_size,
            "samples_per_epoch": len(dataset), "steps_per_epoch": -(-len(dataset) // batch_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per epoch (default: 25600 on a GPU, 2560 on a CPU)")
    parser.add_argument("--hidden", type=int, default=sitsbert.DEFAULTS["hidden"])
    parser.add_argument("--layers", type=int, default=sitsbert.DEFAULTS["layers"])
    parser.add_argument("--heads", type=int, default=sitsbert.DEFAULTS["heads"])
    parser.add_argument("--max-len", type=int, default=sitsbert.MAX_LEN)
    parser.add_argument("--pretrain-batch", type=int, default=sitsbert.TRAINING["pretrain"]["batch_size"])
    parser.add_argument("--finetune-batch", type=int, default=sitsbert.TRAINING["finetune"]["batch_size"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steadier figures on a loaded machine")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (engine option)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    samples = args.samples or (25600 if device.type == "cuda" else 2560)
    hparams = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads}
    reference = (hparams == {k: sitsbert.DEFAULTS[k] for k in hparams} and args.max_len == sitsbert.MAX_LEN
                 and args.pretrain_batch == 256 and args.finetune_batch == 128)
    dataset = SyntheticSeries(samples, args.max_len)
    started = time.perf_counter()
    report = {
        "benchmark": "sitsbert_train_speed",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16_autocast": device.type == "cuda",
        "model": {**hparams, "max_len": args.max_len, "bands": len(BANDS),
                  "parameters": sum(p.numel() for p in sitsbert.build(hparams, DataInfo(BANDS, [0.0] * 10, [1.0] * 10)).parameters())},
        "reference_settings": reference,
        "pretrain": measure("pretrain", dataset, hparams, args.device, args.pretrain_batch, args.num_workers),
        "finetune": measure("finetune", dataset, hparams, args.device, args.finetune_batch, args.num_workers),
    }
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["cpu_count"], report["load_average_1min_at_end"] = os.cpu_count(), round(os.getloadavg()[0], 2)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
