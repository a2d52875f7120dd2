"""Every classifier trained from scratch through `sits finetune` on one prepared dataset.

    python bench/compare.py DATA [--models a,b,c] [--seeds 0,1,2] [--epochs N] [--batch-size B]
                                 [--small] [--device auto] [--threads N] [--out DIR]

For each model and seed, `sitscli.workflows.finetune.finetune` trains the model with its paper
settings (its module's `TRAINING`, from scratch); `--epochs` and `--batch-size` override those
settings for every model (so that a CPU run is feasible), `--small` swaps in the reduced
hyper-parameters of SMALL_HPARAMS. Then the saved run is loaded back (`load_model`) and its
inference speed measured: test samples per second through a plain batched forward (the second of
two passes, the first warming up).

Prints one JSON document on stdout: per model the mean and standard deviation over seeds of the
test OA, macro-F1, training time (s, wall time of the `finetune` call: training, validation,
final evaluation and saving), inference samples/s, and the parameter count; what was reduced is
written under "settings". A readable table goes to stderr. A model that fails is reported with
its error and does not stop the others. A signal that stops a training (Ctrl-C, SIGTERM, SIGUSR1: a job's
wall time) ends the benchmark with the runs finished so far in the JSON, `interrupted` saying where,
and exit code 75. Patch models (alise) take another dataset kind and are
left out of the default list.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from sitscli.data.batch import collate
from sitscli.data.prepared import open_prepared
from sitscli.engine.checkpoint import load_model
from sitscli.engine.device import resolve_device
from sitscli.engine.metrics import predict_labels
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE
from sitscli.models import registry
from sitscli.workflows.finetune import finetune, report_split

# Reduced sizes for a quick CPU comparison (--small). Not the papers' settings: each keeps the
# architecture and shrinks its width (and the GP's inducing points and prediction draws).
SMALL_HPARAMS: dict[str, dict] = {
    "sitsbert": {"hidden": 64, "layers": 2, "heads": 4},
    "tempcnn": {"filters": 32, "dense": 64},
    "ltae": {"d_model": 64, "n_head": 8, "d_k": 8, "mlp": [64, 64], "decoder": [32]},
    "raw-ltae": {"d_model": 64, "n_head": 8, "d_k": 8, "mlp": [64, 64], "decoder": [32]},
    "mtan-ltae": {"d_model": 64, "n_head": 8, "d_k": 8, "mlp": [64, 64], "decoder": [32]},
    "lstm": {"hidden": 64},
    "inceptiontime": {"depth": 3, "filters": 16, "bottleneck": 16},
    "transformer": {"layers": 2, "d_inner": 128},
    "rf": {"n_estimators": 50},
    "mtan-svgp": {"inducing": 64, "mc_samples": 16},
    "gapfilled-svgp": {"inducing": 64, "mc_samples": 16},
    "mtan-mlp": {"mlp": [64, 64]},
}
INFERENCE_BATCH = 256


class Interrupted(Exception):
    """A signal stopped a training: `results` holds the summaries of what had finished before."""

    def __init__(self, message: str, results: dict | None = None):
        super().__init__(message)
        self.results = results or {}


def default_models() -> list[str]:
    """Every registered pixel classifier (patch models need a patch dataset)."""
    return [name for name in registry.available() if registry.get(name).input == "pixel"]


def train_once(data: str, model: str, seed: int, out: Path, *, epochs: int | None, batch_size: int | None,
               hparams: dict, device: str, eval_date_shift: list[int] | None = None) -> dict:
    """One `finetune` run from scratch -> its figures (OA, macro-F1, times, parameters)."""
    flags = {"data": data, "model": model, "seed": seed, "device": device, "hparams": hparams or None,
             "epochs": epochs, "batch_size": batch_size, "eval_date_shift": eval_date_shift}
    start = time.perf_counter()
    result = finetune(out=out, overwrite=True, **{k: v for k, v in flags.items() if v is not None})
    train_s = time.perf_counter() - start
    if result.fit.interrupted:   # Ctrl-C/SIGTERM/SIGUSR1: the engine saved a resumable state; stop the benchmark
        raise Interrupted(f"interrupted during {model} seed {seed}")
    report = result.report
    row = {"oa": report["oa"], "macro_f1": report["macro_f1"], "train_s": train_s,
           "best_epoch": result.fit.best_epoch, "split": report["split"]}
    if "date_shift" in report:
        row["date_shift"] = report["date_shift"]
    row.update(inference(result.run_dir, data, device))
    return row


def inference(run_dir: Path, data: str, device: str) -> dict:
    """Samples/s of the saved model over the report split (batched forward), and its size."""
    device = resolve_device(device)
    model, card = load_model(run_dir, device)
    prepared = open_prepared(data)
    _, dataset = report_split(prepared, registry.get(card.model_name), warn=False)
    timings = []
    for _ in range(2):           # the first pass warms up (allocator, kernels, lazy caches)
        start = time.perf_counter()
        predict_labels(model, dataset, collate, device=device, batch_size=INFERENCE_BATCH)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    stored = sum(b.numel() for b in model.buffers())
    return {"infer_samples_per_s": len(dataset) / timings[-1], "parameters": parameters, "buffers": stored}


def summarise(rows: list[dict]) -> dict:
    """Mean and population std over seeds of each figure; the errors, if any."""
    done = [r for r in rows if "error" not in r]
    summary: dict = {"runs": len(done)}
    for key in ("oa", "macro_f1", "train_s", "infer_samples_per_s"):
        values = [r[key] for r in done]
        if values:
            summary[key] = {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4)}
    if done:
        summary["parameters"] = done[0]["parameters"]
        summary["buffers"] = done[0]["buffers"]
        summary["best_epochs"] = [r["best_epoch"] for r in done]
    shifts = [r["date_shift"] for r in done if "date_shift" in r]
    if shifts:
        summary["date_shift_oa"] = {d: {"mean": round(statistics.fmean(s[d] for s in shifts), 4),
                                        "std": round(statistics.pstdev([s[d] for s in shifts]), 4)} for d in shifts[0]}
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        summary["errors"] = errors
    return summary


def run_all(data: str, models: list[str], seeds: list[int], out: Path, *, epochs: int | None, batch_size: int | None,
            small: bool, device: str, eval_date_shift: list[int] | None = None) -> dict:
    """Train every model with every seed -> {model: summary}."""
    results = {}
    for model in models:
        rows = []
        for seed in seeds:
            print(f"[compare] {model} seed {seed}", file=sys.stderr, flush=True)
            try:
                rows.append(train_once(data, model, seed, out / model / f"seed{seed}", epochs=epochs,
                                       batch_size=batch_size, hparams=SMALL_HPARAMS.get(model, {}) if small else {},
                                       device=device, eval_date_shift=eval_date_shift))
            except Interrupted as stop:   # keep what finished, the interrupted model's finished seeds too
                if rows:
                    results[model] = summarise(rows)
                raise Interrupted(str(stop), results) from None
            except Exception as exc:  # a benchmark reports a failing model and goes on with the others
                traceback.print_exc(file=sys.stderr)
                rows.append({"error": f"{type(exc).__name__}: {exc}"})
        results[model] = summarise(rows)
    return results


def print_table(results: dict) -> None:
    def cell(summary: dict, key: str, digits: int) -> str:
        if key not in summary:
            return "-"
        return f"{summary[key]['mean']:.{digits}f} ± {summary[key]['std']:.{digits}f}"

    header = f"{'model':<16}{'OA':>18}{'macro-F1':>18}{'train s':>18}{'infer samples/s':>22}{'params':>12}"
    print(header, file=sys.stderr)
    print("-" * len(header), file=sys.stderr)
    for model, s in results.items():
        if not s["runs"]:
            print(f"{model:<16}  FAILED: {s['errors'][0][:100]}", file=sys.stderr)
            continue
        print(f"{model:<16}{cell(s, 'oa', 4):>18}{cell(s, 'macro_f1', 4):>18}{cell(s, 'train_s', 1):>18}"
              f"{cell(s, 'infer_samples_per_s', 0):>22}{s['parameters']:>12,}", file=sys.stderr)


def settings(args: argparse.Namespace, models: list[str], data: str) -> dict:
    prepared = open_prepared(data)
    return {"data": data, "samples": prepared.n_samples, "splits": prepared.summary()["splits"],
            "time_steps": prepared.n_time, "models": models, "seeds": args.seeds,
            "epochs": args.epochs or "each model's paper setting", "batch_size": args.batch_size or "each model's paper setting",
            "hparams": {m: SMALL_HPARAMS.get(m, {}) for m in models} if args.small else "each model's paper defaults",
            "device": str(resolve_device(args.device)), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine()}


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a prepared dataset (NAME.sits) with train and test splits")
    parser.add_argument("--models", default=None, help="comma-separated models (default: every pixel classifier)")
    parser.add_argument("--seeds", type=parse_ints, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override every model's batch size")
    parser.add_argument("--small", action="store_true", help="reduced hyper-parameters (SMALL_HPARAMS)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steadier times on a shared machine")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else default_models()
    data = str(Path(open_prepared(args.data).path).resolve())
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sits_compare_"))
    interrupted = None
    try:
        results = run_all(data, models, args.seeds, out, epochs=args.epochs, batch_size=args.batch_size,
                          small=args.small, device=args.device)
    except Interrupted as stop:
        results, interrupted = stop.results, f"{stop}: the results are those finished before; --models gives the others"
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print_table(results)
    document = {"benchmark": "compare", "settings": settings(args, models, data), "results": results}
    print(json.dumps(document | ({"interrupted": interrupted} if interrupted else {}), indent=2))
    if interrupted:
        print(interrupted, file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
