"""Random forest inference: scikit-learn's predict_proba vs the torch traversal, same forest.

    python bench/rf_inference.py [--samples 50000] [--train 20000] [--trees 100] [--depth 25] [--device cpu]

A forest at the model's defaults (100 trees, depth <= 25, Pelletier et al. 2016) is fitted by
scikit-learn on synthetic features of the model's size (37 grid dates x 10 bands), exported into a
`ForestClassifier` as `sits finetune --model rf` does, and `--samples` feature rows are classified
by both engines of `ForestClassifier.probabilities`: "sklearn" (the forest rebuilt from the
exported arrays, scikit-learn's compiled traversal, CPU) and "torch" (all trees walked at once in
torch on `--device`). Runs alternate A B A B (`--repeats` pairs) so that load on a shared machine
hits both alike; each engine's samples/s is its median. Only the trees are timed: the gap filling
before them is the same torch code for both. Prints one JSON document, with the largest absolute
difference between the two engines' probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from sitscli.engine.device import resolve_device
from sitscli.models import rf
from sitscli.models.registry import DataInfo

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
NUM_CLASSES = 10


def synthetic_features(n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, F) float32 features in 0-0.5 and (n,) labels from a noisy function of a few of them, so
    that the trees grow deep as on real data."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.5, size=(n, n_features)).astype(np.float32)
    score = x[:, :20] @ rng.normal(size=(20, NUM_CLASSES)) + rng.normal(scale=0.5, size=(n, NUM_CLASSES))
    return x, score.argmax(1)


def fitted_forest(args, info: DataInfo) -> rf.ForestClassifier:
    from sklearn.ensemble import RandomForestClassifier

    module = rf.build({}, info)
    n_features = module.grid.numel() * len(BANDS)
    x, y = synthetic_features(args.train, n_features, seed=0)
    forest = RandomForestClassifier(n_estimators=args.trees, max_depth=args.depth, n_jobs=-1, random_state=0).fit(x, y)
    rf.export_forest(forest, module, NUM_CLASSES)
    return module


def timed(module: rf.ForestClassifier, x: torch.Tensor, engine: str, device: torch.device) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        probs = module.probabilities(x, engine=engine)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, probs.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--train", type=int, default=20_000, help="training samples of the forest")
    parser.add_argument("--trees", type=int, default=rf.DEFAULTS["n_estimators"])
    parser.add_argument("--depth", type=int, default=rf.DEFAULTS["max_depth"])
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs timed")
    parser.add_argument("--device", default="cpu", help="where the torch engine runs (sklearn always on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = DataInfo(BANDS, [0.2] * len(BANDS), [0.1] * len(BANDS), [f"class {k}" for k in range(NUM_CLASSES)])
    module = fitted_forest(args, info)
    x_cpu, _ = synthetic_features(args.samples, module.grid.numel() * len(BANDS), seed=1)
    x_cpu = torch.from_numpy(x_cpu)
    module, x_device = module.to(device), x_cpu.to(device)
    module.sklearn_forest()                      # rebuilt once, as in a map run; not timed
    times: dict[str, list[float]] = {"sklearn": [], "torch": []}
    outputs = {}
    for _ in range(args.repeats):
        for engine in ("sklearn", "torch"):
            seconds, outputs[engine] = timed(module, x_cpu if engine == "sklearn" else x_device, engine, device)
            times[engine].append(seconds)
    rate = {engine: args.samples / float(np.median(t)) for engine, t in times.items()}
    print(json.dumps({
        "samples": args.samples, "trees": int(module.left.shape[0]), "max_nodes": int(module.left.shape[1]),
        "depth": module.depth, "features": int(x_cpu.shape[1]), "classes": NUM_CLASSES,
        "torch_device": str(device),
        "sklearn_samples_per_s": round(rate["sklearn"], 1), "torch_samples_per_s": round(rate["torch"], 1),
        "sklearn_over_torch": round(rate["sklearn"] / rate["torch"], 2),
        "seconds": {engine: [round(t, 3) for t in ts] for engine, ts in times.items()},
        "max_abs_difference": float((outputs["sklearn"] - outputs["torch"]).abs().max()),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0], "platform": platform.platform(),
    }, indent=1))


if __name__ == "__main__":
    main()
