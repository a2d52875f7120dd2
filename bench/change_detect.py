"""Change-detection AUC of ALISE (per date encoding) vs the gap-filling baseline, and peak memory on a large pair.

    python bench/change_detect.py [--size 256] [--epochs 20] [--seeds 0,1,2] [--positions absolute,season]
                                  [--rss-size 2048] [--rss-seconds 240] [--device cpu] [--workdir DIR]

1. Accuracy, per seed: a two-year synthetic folder (`write_synthetic`, data seed = seed, agronomic
   years from October 2021; parcels change crop by rotation, `changes.csv`). Year 1 is series A,
   year 2 series B; the reference is the parcels with change = (class_y1 != class_y2). A small ALISE
   is pre-trained for --epochs on 32 x 32 patches of the two-year series (training seed = seed, the
   model's pre-training defaults, Table I) once per date encoding of --positions ("absolute": the
   paper's days since the reference date; "season": days since 1 October), then `change_detect`
   scores A vs B with each, and with the GF baseline; ROC AUC of every arm (Dumeur et al. 2024
   report 0.91 vs 0.88 on RotCrop). The JSON gives per-seed AUCs, mean and sample std (ddof 1) per
   arm, and ALISE - GF per encoding. With --cosine each ALISE model is also scored with
   `--distance cosine` (arm alise_ENCODING_cosine).
2. Memory: the first seed's two years are tiled to --rss-size x --rss-size pixel GeoTIFF stacks
   (int16, at most --rss-dates dates each, to keep the files a few GB), and each method runs in a
   fresh subprocess (the first seed's first encoding for ALISE) that reports its wall time and
   peak RSS (/proc VmHWM), GDAL's cache capped. With --rss-seconds a method stops before its next
   block once that many seconds have passed: blocks done / total, peak RSS so far, and the full
   time extrapolated from the blocks done (peak memory follows --block, not the raster size).

CPU note: ALISE inference costs about (P / (P - overlap))^2 x 2 series encodings per pixel; on 2
loaded CPU cores the 2048 x 2048 pair took 7 to 25 minutes (extrapolated), so CPU runs use e.g.
`--size 128 --epochs 15 --rss-size 2048 --rss-dates 6 --rss-seconds 240`. Prints one JSON document.
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
# the bench's names of the date encodings -> ALISE's `positions` hyper-parameter
ENCODINGS = {"absolute": "reference", "season": "season"}
# GDAL's block cache defaults to 5 % of the RAM and fills with decoded tiles as the raster grows; it
# is capped here so that the peak RSS shows this code's memory (flat in the raster size).
GDAL_CACHE_MB = 128

# Runs change_detect in a fresh process; with a time cap, the blocks are counted and the run stops
# before the next block once the cap has passed (the partial output is discarded by write_blocks).
RUN = r"""
import json, sys, time
import sitscli.workflows.change_detect as workflow

def peak_mb():  # VmHWM: this process's peak RSS (getrusage's maxrss keeps the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return round(int(line.split()[1]) / 1024, 1)

class TimeUp(Exception):
    pass

args, cap = json.loads(sys.argv[1]), float(sys.argv[2])
blocks = {"done": 0, "total": 0}
write_blocks = workflow.write_blocks

def capped_write_blocks(grid, path, spec, compute, *, block, **kw):
    blocks["total"] = -(-grid.height // block) * -(-grid.width // block)
    def counted(window):
        if cap and time.perf_counter() - start > cap:
            raise TimeUp
        out = compute(window)
        blocks["done"] += 1
        return out
    return write_blocks(grid, path, spec, counted, block=block, **kw)

workflow.write_blocks = capped_write_blocks
import_rss = peak_mb()
start = time.perf_counter()
try:
    scored = workflow.change_detect(args.pop("a"), args.pop("b"), **args)["pixels_scored"]
except TimeUp:
    scored = None
seconds = time.perf_counter() - start
print(json.dumps({"seconds": round(seconds, 1), "peak_rss_mb": peak_mb(), "rss_after_imports_mb": import_rss,
                  "blocks_done": blocks["done"], "blocks_total": blocks["total"], "finished": scored is not None,
                  "extrapolated_seconds": round(seconds * blocks["total"] / max(1, blocks["done"]), 1),
                  "pixels_scored": scored}))
"""


def scene_and_reference(work: Path, size: int, seed: int):
    """The two-year synthetic folder of `seed`, its reference polygons (change 0/1) and the two years."""
    import geopandas as gpd

    from sitscli.core.dates import parse_date
    from sitscli.data.synthetic import write_synthetic

    scene = write_synthetic(work / "synthetic", size=size, layout="cog", years=2, seed=seed)
    parcels = gpd.read_file(scene.parcels)
    parcels["change"] = (parcels["class_y1"] != parcels["class_y2"]).astype(int)
    reference = work / "reference.gpkg"
    parcels.to_file(reference)
    years = [(parse_date(a), parse_date(b)) for a, b in scene.years]
    return scene, parcels, reference, years


def one_seed(work: Path, size: int, epochs: int, device: str, seed: int, encodings: list[str],
             cosine: bool) -> tuple[dict, dict]:
    """AUC of ALISE per encoding (eq. 12, and with `cosine` 1 - cosine similarity too) and of GF on one
    seed's scene -> ({arm: auc}, setup and timings)."""
    from sitscli.data.readers import open_source
    from sitscli.data.recipes.s2 import prepare_cube
    from sitscli.workflows.change_detect import change_detect
    from sitscli.workflows.pretrain import pretrain

    start = time.perf_counter()
    scene, parcels, reference, years = scene_and_reference(work, size, seed)
    setup = {"dates": int(len(scene.dates)), "parcels": int(len(parcels)), "years": scene.years,
             "changed_parcels": int(parcels["change"].sum()),
             "synthetic_seconds": round(time.perf_counter() - start, 1)}
    prepared = prepare_cube(open_source(scene.l2a), work / "patches.sits", labels=scene.parcels,
                            class_field=scene.class_field, patch_size=32)

    def score(arm: str, method: str, model: Path, distance: str = "mse") -> float:
        start = time.perf_counter()
        a, b = (open_source(scene.l2a, date_range=r) for r in years)
        summary = change_detect(a, b, model=model, method=method, distance=distance, out=work / f"{arm}.tif",
                                reference=reference, device=device)
        setup[f"{arm}_seconds"] = round(time.perf_counter() - start, 1)
        return round(summary["auc"], 4)

    auc = {}
    for name in encodings:
        start = time.perf_counter()
        pretrain(out=work / f"alise_{name}", data=prepared, model="alise", pretext=PRETEXT, epochs=epochs,
                 hparams={**HPARAMS, "positions": ENCODINGS[name]}, device=device, seed=seed, log_every_s=60.0)
        setup[f"pretrain_{name}_seconds"] = round(time.perf_counter() - start, 1)
        auc[f"alise_{name}"] = score(f"alise_{name}", "alise", work / f"alise_{name}")
        if cosine:
            auc[f"alise_{name}_cosine"] = score(f"alise_{name}_cosine", "alise", work / f"alise_{name}", "cosine")
    auc["gapfill"] = score("gapfill", "gapfill", work / f"alise_{encodings[0]}")   # the run only fixes the bands
    return auc, setup


def summarise(values: list[float]) -> dict:
    return {"per_seed": values, "mean": round(float(np.mean(values)), 4),
            "std": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None}


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


def memory(work: Path, model: Path, l2a: Path, years, rss_size: int, max_dates: int, device: str,
           seconds: float) -> dict:
    start = time.perf_counter()
    a, b = tiled_stacks(work, l2a, years, rss_size, max_dates)
    result = {"size": rss_size, "dates_per_year": max_dates, "gdal_cachemax_mb": GDAL_CACHE_MB,
              "time_cap_seconds": seconds or None, "write_stacks_seconds": round(time.perf_counter() - start, 1)}
    for method in ("alise", "gapfill"):
        args = {"a": str(a), "b": str(b), "model": str(model), "method": method,
                "out": str(work / f"rss_{method}.tif"), "device": device, "overwrite": True}
        proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(args), str(seconds)], capture_output=True,
                              text=True, env={**os.environ, "GDAL_CACHEMAX": str(GDAL_CACHE_MB)})
        if proc.returncode:
            result[method] = {"error": proc.stderr.strip().splitlines()[-1]}
        else:
            result[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas, e.g. 0,1,2") from None


def encoding_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in ENCODINGS]
    if unknown or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct encodings among {', '.join(ENCODINGS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic area for the AUC, px")
    parser.add_argument("--epochs", type=int, default=20, help="ALISE pre-training epochs")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="data and training seeds, e.g. 0,1,2")
    parser.add_argument("--positions", type=encoding_list, default=list(ENCODINGS),
                        help="ALISE date encodings, among absolute,season")
    parser.add_argument("--rss-size", type=int, default=2048, help="side of the pair for peak memory, px (0: skip)")
    parser.add_argument("--rss-dates", type=int, default=24, help="dates per year in the memory pair")
    parser.add_argument("--rss-seconds", type=float, default=0.0,
                        help="stop each memory run before its next block after this many seconds (0: no cap)")
    parser.add_argument("--cosine", action="store_true",
                        help="also score each ALISE model with change-detect --distance cosine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        per_seed, setups = {}, {}
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            work.mkdir()
            per_seed[seed], setups[seed] = one_seed(work, args.size, args.epochs, args.device, seed, args.positions,
                                                     args.cosine)
            print(json.dumps({"seed": seed, "auc": per_seed[seed]}), file=sys.stderr, flush=True)
        arms = list(per_seed[args.seeds[0]])
        gains = {arm[len("alise_"):]: [round(per_seed[s][arm] - per_seed[s]["gapfill"], 4) for s in args.seeds]
                 for arm in arms if arm.startswith("alise_")}
        report = {"benchmark": "change-detect", "device": args.device, "seeds": args.seeds,
                  "auc": {arm: summarise([per_seed[s][arm] for s in args.seeds]) for arm in arms},
                  "alise_minus_gapfill": {name: summarise(gain) for name, gain in gains.items()},
                  "paper_auc_rotcrop": {"alise": 0.91, "gapfill": 0.88},
                  "setup": {"size": args.size, "epochs": args.epochs, "hparams": HPARAMS, "pretext": PRETEXT,
                            "per_seed": setups}}
        if args.rss_size:
            first = Path(tmp) / f"seed{args.seeds[0]}"
            report["peak_memory"] = memory(first, first / f"alise_{args.positions[0]}", first / "synthetic" / "l2a",
                                           setups[args.seeds[0]]["years"], args.rss_size, args.rss_dates, args.device,
                                           args.rss_seconds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
