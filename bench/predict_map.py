"""predict-map throughput and memory: a SITS-BERT classifier over a multiband GeoTIFF stack.

    python bench/predict_map.py [--size 2048] [--rss-sizes 2048,4096] [--dates 40] [--device auto] [--repeats 3]
                                [--hidden 256 --layers 3 --heads 8] [--workdir DIR]

1. Generates tiled, band-interleaved int16 stacks (reflectance x 10000, nodata 0 where "cloudy",
   ~20 % of the pixels of each date; band descriptions '2020-03-14 B02' that the stack reader
   reads) of `--size` and of each `--rss-sizes` square, 10 bands x `--dates` dates. Not timed.
2. Saves a SITS-BERT classifier (10 classes, random weights) with `save_model`.
3. Runs `predict_map` on each stack in a fresh subprocess: wall time (model loading included,
   Python imports not) and
   peak RSS (getrusage). Peak RSS must not grow with the raster: predict-map holds a block (and
   one read ahead), never the tile. Compare sizes of at least `--block` (smaller rasters have
   smaller blocks, hence a lower peak).
4. The bare forward pass: the same model over the same number of pixels, batches already built
   and on the device (from one window of the same stack, compacted as predict-map does, the same
   batch size), softmax included. The ratio predict-map / bare is the share of the model's own
   speed that the whole pipeline (reading, batching, writing) keeps; the target is >= 0.8.
   The two arms alternate (A B A B ..., `--repeats` pairs) so that a change of load on a shared
   machine hits both alike; the ratio reported is the median of the pairs' ratios.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
TILE_SIDE = 10980   # a Sentinel-2 tile at 10 m
NUM_CLASSES = 10
CLOUDY = 0.2

PREDICT = r"""
import json, resource, sys, time
import torch
from sitscli.workflows.predict_map import predict_map
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
start = time.perf_counter()   # after the imports: model loading, reading, inference, writing are timed
summary = predict_map(args["stack"], model=args["model"], out=args["out"], device=args["device"],
                      block=args["block"], batch_size=args["batch_size"], overwrite=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "pixels": summary["pixels"], "pixels_mapped": summary["pixels_mapped"]}))
"""


def write_stack(path: Path, size: int, dates: int, block: int = 512, seed: int = 0) -> Path:
    """A size x size stack of `dates` x 10 int16 bands, date-major, tiled, one band at a time."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    start = np.datetime64("2020-01-01")
    days = np.sort(rng.choice(366, size=dates, replace=False))
    profile = dict(driver="GTiff", width=size, height=size, count=dates * len(BANDS), dtype="int16", nodata=0,
                   crs=CRS.from_epsg(32631), transform=from_origin(300000, 5000000, 10, 10), tiled=True,
                   blockxsize=min(block, 512), blockysize=min(block, 512), interleave="band", BIGTIFF="YES")
    # a smooth field per band (cheap to make, not constant) and a cloud mask per date
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.float32) / (2 * size)      # (H, W) 0-1
    tmp = path.with_name(path.name + ".partial")
    with rasterio.open(tmp, "w", **profile) as ds:
        for t, day in enumerate(days):
            clear = rng.random((size, size), dtype=np.float32) >= CLOUDY
            for c, band in enumerate(BANDS):
                index = t * len(BANDS) + c + 1
                values = (300 + 3000 * ramp * (c + 1) / len(BANDS) + 200 * np.sin(day / 58.0 + c)).astype(np.int16)
                ds.write(np.where(clear, values, 0).astype(np.int16), index)
                ds.set_band_description(index, f"{start + day} {band}")
    tmp.rename(path)
    return path


def save_classifier(run_dir: Path, hparams: dict) -> None:
    import torch

    from sitscli.engine.checkpoint import save_model
    from sitscli.models import sitsbert
    from sitscli.models.registry import DataInfo

    torch.manual_seed(0)
    classes = [f"class{k}" for k in range(NUM_CLASSES)]
    info = DataInfo(BANDS, [0.15] * len(BANDS), [0.1] * len(BANDS), class_names=classes,
                    class_colors=[f"#{(37 * k) % 256:02x}{(91 * k) % 256:02x}{(151 * k) % 256:02x}" for k in range(NUM_CLASSES)])
    model = sitsbert.build(hparams, info)
    save_model(run_dir, model, model_name="sitsbert", hparams={**sitsbert.DEFAULTS, **hparams}, info=info, task="classify")


def run_predict_map(stack: Path, run_dir: Path, out: Path, device: str, block: int, batch_size: int,
                    threads: int | None) -> dict:
    args = {"stack": str(stack), "model": str(run_dir), "out": str(out), "device": device, "block": block,
            "batch_size": batch_size, "threads": threads}
    proc = subprocess.run([sys.executable, "-c", PREDICT, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"predict-map failed on {stack}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["pixels_per_s"] = round(result["pixels"] / result["seconds"], 1)
    return result


def bare_forward(stack: Path, run_dir: Path, device: str, pixels: int, batch_size: int, window: int = 256) -> dict:
    """Seconds for the model alone over `pixels` pixels, batches prepared beforehand on the device."""
    import torch
    from rasterio.windows import Window

    from sitscli.data.readers import open_source
    from sitscli.engine.checkpoint import load_model
    from sitscli.engine.device import autocast, resolve_device
    from sitscli.mapping.predict import pixel_centres, series_batch
    from sitscli.models import sitsbert

    torch_device = resolve_device(device)
    model, _ = load_model(run_dir, torch_device)
    cube = open_source(stack, bands=BANDS)
    win = Window(0, 0, min(window, cube.grid.width), min(window, cube.grid.height))
    values, valid = cube.read(win)                                           # (T, C, h, w), (T, h, w)
    t, c, h, w = values.shape
    series, masks = values.reshape(t, c, h * w).transpose(2, 0, 1), valid.reshape(t, h * w).T
    observed = np.flatnonzero(masks.any(axis=1))
    xy = pixel_centres(cube.grid.transform, win)
    batches = []
    for start in range(0, observed.size - batch_size + 1, batch_size):
        idx = observed[start:start + batch_size]
        batch = series_batch(series[idx], masks[idx], cube.dates, xy[idx], compact=True, max_len=sitsbert.MAX_LEN)
        batches.append({k: v.to(torch_device) for k, v in batch.items()})
    n_batches = -(-pixels // batch_size)

    @torch.inference_mode()
    def forward(batch):
        with autocast(torch_device):
            return model(batch).float().softmax(-1)

    for batch in batches[:3]:                                                # warm-up
        forward(batch)
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(n_batches):
        probs = forward(batches[i % len(batches)])
    probs.cpu()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "pixels": n_batches * batch_size,
            "pixels_per_s": round(n_batches * batch_size / seconds, 1), "series_length": int(batches[0]["values"].shape[1])}


def full_tile_extrapolation(pixels_per_s: float, peak_rss_mb: float) -> dict:
    """A whole Sentinel-2 tile (10980 x 10980 px) at the measured predict-map rate. Memory is that of
    the largest measured raster: predict-map holds a block and the one read ahead, never the tile,
    so its peak does not grow with the raster beyond a few blocks."""
    pixels = TILE_SIDE * TILE_SIDE
    return {"tile_side": TILE_SIDE, "pixels_per_s": round(pixels_per_s, 1),
            "hours": round(pixels / pixels_per_s / 3600, 2), "peak_rss_mb": peak_rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the raster timed against the bare forward")
    parser.add_argument("--rss-sizes", default="2048,4096", help="sides whose peak RSS is measured (comma-separated)")
    parser.add_argument("--dates", type=int, default=40)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--block", type=int, default=512, help="predict-map --block")
    parser.add_argument("--batch-size", type=int, default=2048, help="predict-map --batch-size (pixels per forward)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steadier figures on a loaded machine")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved (predict-map, bare forward) pairs")
    parser.add_argument("--workdir", type=Path, default=None, help="where stacks go (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from sitscli.engine.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    hparams = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads}
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    reduced = args.size < 2048 or args.dates < 40 or hparams != {"hidden": 256, "layers": 3, "heads": 8}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        run_dir = work / "run"
        save_classifier(run_dir, hparams)
        generate = {}
        stacks = {}
        for size in dict.fromkeys([args.size, *rss_sizes]):
            started = time.perf_counter()
            stacks[size] = write_stack(work / f"stack_{size}.tif", size, args.dates, args.block)
            generate[size] = round(time.perf_counter() - started, 1)
        pairs = []
        for _ in range(args.repeats):     # interleaved: predict-map, bare forward, predict-map, bare forward ...
            timed = run_predict_map(stacks[args.size], run_dir, work / f"map_{args.size}.tif", args.device,
                                    args.block, args.batch_size, args.threads)
            bare = bare_forward(stacks[args.size], run_dir, args.device, timed["pixels_mapped"], args.batch_size)
            pairs.append({"predict_map": timed, "bare_forward": bare,
                          "ratio": round(timed["pixels_per_s"] / bare["pixels_per_s"], 3)})
        runs = {size: run_predict_map(stacks[size], run_dir, work / f"map_{size}.tif", args.device, args.block,
                                      args.batch_size, args.threads) for size in stacks if size != args.size}
        runs[args.size] = pairs[0]["predict_map"]
    report = {
        "benchmark": "predict_map",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "reduced_configuration": reduced,
        "model": {"name": "sitsbert", **hparams, "classes": NUM_CLASSES, "bf16_autocast": device.type == "cuda"},
        "stack": {"size": args.size, "dates": args.dates, "bands": len(BANDS), "dtype": "int16", "cloudy_fraction": CLOUDY,
                  "tiled": min(args.block, 512), "interleave": "band", "generate_seconds": generate},
        "block": args.block, "batch_size": args.batch_size,
        "predict_map": timed,
        "bare_forward": bare,
        # pixels/s of predict-map (every pixel of the raster, model loading included) over the model
        # alone on the mapped (clear) pixels: the share of the model's speed the pipeline keeps;
        # the median over the interleaved pairs
        "ratio_to_bare_forward": float(np.median([p["ratio"] for p in pairs])),
        "pair_ratios": [p["ratio"] for p in pairs],
        "peak_rss_mb": {str(size): runs[size]["peak_rss_mb"] for size in rss_sizes},
        "runs": {str(size): runs[size] for size in runs},
        "full_tile_extrapolation": full_tile_extrapolation(float(np.median([p["predict_map"]["pixels_per_s"] for p in pairs])),
                                                           runs[max(rss_sizes)]["peak_rss_mb"]),
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
