"""Change-detection AUC of ALISE vs the gap-filling baseline, and peak memory on a large pair.

    python bench/change_detect.py [--size 256] [--epochs 20] [--rss-size 2048] [--device cpu] [--workdir DIR]

1. Accuracy: a two-year synthetic folder (`write_synthetic`, agronomic years from October 2021;
   parcels change crop by rotation, `changes.csv`). Year 1 is series A, year 2 series B; the
   reference is the parcels with change = (class_y1 != class_y2). A small ALISE is pre-trained for
   --epochs on 32 x 32 patches of the two-year series, then `change_detect` scores A vs B with it
   and with the GF baseline; ROC AUC of both (Dumeur et al. 2024 report 0.91 vs 0.88 on RotCrop).
2. Memory: the two years are tiled to --rss-size x --rss-size pixel GeoTIFF stacks (int16, at most
   --rss-dates dates each, to keep the files a few GB), and each method runs in a fresh
   subprocess that reports its wall time and peak RSS (/proc VmHWM), GDAL's cache capped.

CPU note: ALISE inference costs about (P / (P - overlap))^2 x 2 series encodings per pixel; on 2 CPU
cores the 2048 x 2048 pair takes over an hour, so CPU runs use e.g. `--size 128 --epochs 15
--rss-size 512 --rss-dates 12` (peak memory follows --block, not the raster size). Prints one JSON
document.
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

HPARAMS = {"d_model": 32, "layers": 1, "heads": 4, "d_ff": 64, "unet_widths": [16, 16, 32, 32], "n_q": 8, "d_emb": 64}
PRETEXT = {"run_length": 30, "crop": 32}
# GDAL's block cache defaults to 5 % of the RAM and fills with decoded tiles as the raster grows; it
# is capped here so that the peak RSS shows this code's memory (flat in the raster size).
GDAL_CACHE_MB = 128

RUN = r"""
import json, sys, time
from sitscli.workflows.change_detect import change_detect

def peak_mb():  # VmHWM: this process's peak RSS (getrusage's maxrss keeps the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return round(int(line.split()[1]) / 1024, 1)

args = json.loads(sys.argv[1])
import_rss = peak_mb()
start = time.perf_counter()
summary = change_detect(args.pop("a"), args.pop("b"), **args)
print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_mb(),
                  "rss_after_imports_mb": import_rss, "pixels_scored": summary["pixels_scored"]}))
"""


def accuracy(work: Path, size: int, epochs: int, device: str, seed: int) -> tuple[dict, dict]:
    import geopandas as gpd

    from sitscli.core.dates import parse_date
    from sitscli.data.readers import open_source
    from sitscli.data.recipes.s2 import prepare_cube
    from sitscli.data.synthetic import write_synthetic
    from sitscli.workflows.change_detect import change_detect
    from sitscli.workflows.pretrain import pretrain

    start = time.perf_counter()
    scene = write_synthetic(work / "synthetic", size=size, layout="cog", years=2, seed=seed)
    made = time.perf_counter() - start
    parcels = gpd.read_file(scene.parcels)
    parcels["change"] = (parcels["class_y1"] != parcels["class_y2"]).astype(int)
    reference = work / "reference.gpkg"
    parcels.to_file(reference)
    years = [(parse_date(a), parse_date(b)) for a, b in scene.years]
    prepared = prepare_cube(open_source(scene.l2a), work / "patches.sits", labels=scene.parcels,
                            class_field=scene.class_field, patch_size=32)
    start = time.perf_counter()
    pretrain(out=work / "alise", data=prepared, model="alise", hparams=HPARAMS, pretext=PRETEXT, epochs=epochs,
             batch_size=8, lr=1e-3, device=device, seed=seed, patience=None, log_every_s=60.0)
    trained = time.perf_counter() - start
    results = {}
    for method in ("alise", "gapfill"):
        start = time.perf_counter()
        a, b = (open_source(scene.l2a, date_range=r) for r in years)
        summary = change_detect(a, b, model=work / "alise", method=method, out=work / f"{method}.tif",
                                reference=reference, device=device)
        results[method] = {"auc": round(summary["auc"], 4), "seconds": round(time.perf_counter() - start, 1)}
    setup = {"size": size, "dates": int(len(scene.dates)), "parcels": int(len(parcels)),
             "changed_parcels": int(parcels["change"].sum()), "epochs": epochs, "hparams": HPARAMS,
             "synthetic_seconds": round(made, 1), "pretrain_seconds": round(trained, 1), "years": scene.years}
    return results, setup


def tiled_stacks(work: Path, l2a: Path, years, rss_size: int, max_dates: int) -> list[Path]:
    """Each year's cube tiled to rss_size x rss_size as an int16 stack (x 10000, nodata -32768)."""
    import rasterio
    from affine import Affine

    from sitscli.core.dates import iso, parse_date
    from sitscli.data.readers import open_source

    paths = []
    for k, (first, last) in enumerate(years):
        cube = open_source(l2a, date_range=(parse_date(first), parse_date(last)))
        keep = np.linspace(0, len(cube.dates) - 1, min(max_dates, len(cube.dates))).round().astype(int)
        values, valid = cube.read(times=keep)                                   # (t, C, h, w)
        stored = np.where(valid[:, None], np.rint(values * 10000), -32768).astype(np.int16)
        reps = -(-rss_size // cube.grid.height), -(-rss_size // cube.grid.width)
        t, c = stored.shape[:2]
        g = cube.grid.transform
        path = work / f"year{k + 1}_{rss_size}.tif"
        profile = {"driver": "GTiff", "width": rss_size, "height": rss_size, "count": t * c, "dtype": "int16",
                   "nodata": -32768, "crs": cube.grid.crs, "transform": Affine(g.a, g.b, g.c, g.d, g.e, g.f),
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
                   "interleave": "band", "bigtiff": "yes"}
        with rasterio.open(path, "w", **profile) as ds:
            for i in range(t):
                for j in range(c):
                    ds.write(np.tile(stored[i, j], reps)[:rss_size, :rss_size], i * c + j + 1)
            ds.descriptions = tuple(f"{iso(cube.dates[i])} {b}" for i in keep for b in cube.band_names)
        paths.append(path)
    return paths


def memory(work: Path, l2a: Path, years, rss_size: int, max_dates: int, device: str) -> dict:
    start = time.perf_counter()
    a, b = tiled_stacks(work, l2a, years, rss_size, max_dates)
    result = {"size": rss_size, "dates_per_year": max_dates, "gdal_cachemax_mb": GDAL_CACHE_MB, "write_stacks_seconds": round(time.perf_counter() - start, 1)}
    for method in ("alise", "gapfill"):
        args = {"a": str(a), "b": str(b), "model": str(work / "alise"), "method": method,
                "out": str(work / f"rss_{method}.tif"), "device": device, "overwrite": True}
        proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True,
                              env={**os.environ, "GDAL_CACHEMAX": str(GDAL_CACHE_MB)})
        if proc.returncode:
            result[method] = {"error": proc.stderr.strip().splitlines()[-1]}
        else:
            result[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic area for the AUC, px")
    parser.add_argument("--epochs", type=int, default=20, help="ALISE pre-training epochs")
    parser.add_argument("--rss-size", type=int, default=2048, help="side of the pair for peak memory, px (0: skip)")
    parser.add_argument("--rss-dates", type=int, default=24, help="dates per year in the memory pair")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        auc, setup = accuracy(work, args.size, args.epochs, args.device, args.seed)
        report = {"benchmark": "change-detect", "device": args.device, "auc": auc,
                  "paper_auc_rotcrop": {"alise": 0.91, "gapfill": 0.88}, "setup": setup}
        if args.rss_size:
            report["peak_memory"] = memory(work, work / "synthetic" / "l2a", setup["years"], args.rss_size,
                                           args.rss_dates, args.device)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
