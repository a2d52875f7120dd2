"""smooth and uncertainty throughput and memory on a generated class-probability raster.

    python bench/smooth.py [--size 2048] [--rss-sizes 1024,2048] [--classes 10] [--window 9]
                           [--block 512] [--workdir DIR]

1. Writes uint8-percent probability rasters (as predict-map writes them: one band per class named
   'probability CLASS', scale 0.01, nodata 255) of `--size` and of each `--rss-sizes` square:
   square parcels of 32 pixels, each won by one class, with 10 % salt-and-pepper pixels won by
   another. Not timed.
2. Runs `smooth` (`--window`, the defaults otherwise, with the class map) and `uncertainty`
   (entropy, 100 suggested samples) on each in a fresh subprocess: wall time after the imports,
   pixels/s, and peak RSS (getrusage), which must not grow with the raster (both hold a block and
   one read ahead, never the raster).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
from sitscli.workflows.smooth import smooth
from sitscli.workflows.uncertainty import uncertainty_map
start = time.perf_counter()
if args["command"] == "smooth":
    summary = smooth(args["probs"], out=args["out"], class_map=args["out"] + ".map.tif", window=args["window"],
                     block=args["block"], overwrite=True)
else:
    summary = uncertainty_map(args["probs"], out=args["out"], suggest=100, block=args["block"], overwrite=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": round(seconds, 2), "pixels": summary["pixels"],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def write_probabilities(path: Path, size: int, classes: int, seed: int = 0) -> Path:
    """A size x size uint8-percent probability raster of square parcels with salt-and-pepper noise."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    parcel_class = rng.integers(0, classes, (size // 32 + 1, size // 32 + 1))
    profile = {"driver": "GTiff", "width": size, "height": size, "count": classes, "dtype": "uint8", "nodata": 255,
               "crs": CRS.from_epsg(32631), "transform": from_origin(300000, 5000000, 10, 10), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "interleave": "pixel"}
    with rasterio.open(path, "w", **profile) as ds:
        ds.descriptions = tuple(f"probability class{k}" for k in range(classes))
        ds.scales = (0.01,) * classes
        for row in range(0, size, 512):
            h = min(512, size - row)
            rows = np.arange(row, row + h)[:, None] // 32
            winner = np.broadcast_to(parcel_class[rows, np.arange(size)[None] // 32], (h, size)).copy()
            noisy = rng.random((h, size)) < 0.1
            winner[noisy] = (winner[noisy] + rng.integers(1, classes, noisy.sum())) % classes
            rest = (100 - 60) // (classes - 1)
            data = np.full((classes, h, size), rest, dtype=np.uint8)
            np.put_along_axis(data, winner[None], 100 - rest * (classes - 1), axis=0)
            ds.write(data, window=Window(0, row, size, h))
    return path


def run(command: str, probs: Path, out: Path, args) -> dict:
    job = {"command": command, "probs": str(probs), "out": str(out), "window": args.window, "block": args.block}
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(job)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["pixels_per_s"] = round(result["pixels"] / max(result["seconds"], 1e-9))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rss-sizes", default="1024,2048")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sizes = sorted({args.size, *(int(s) for s in args.rss_sizes.split(",") if s)})
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = {}
        for size in sizes:
            probs = write_probabilities(Path(tmp) / f"probs_{size}.tif", size, args.classes)
            results[size] = {command: run(command, probs, Path(tmp) / f"{command}_{size}.tif", args)
                             for command in ("smooth", "uncertainty")}
    print(json.dumps({"classes": args.classes, "window": args.window, "block": args.block,
                      "results": {str(k): v for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
