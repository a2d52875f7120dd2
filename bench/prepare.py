"""Time and peak memory of `sits prepare s2` on synthetic L2A folders of growing area.

    python bench/prepare.py [--sizes 1024,2048] [--layout cog] [--labelled 50000] [--workdir DIR]
    python bench/prepare.py --sensors s2,s1,planetscope,vhr --sizes 128,256 --labelled 5000

For each size, a one-year synthetic folder (~60 dates, 12 bands written, the 10 default bands
read) is generated first in a subprocess (timed apart), then `prepare s2` runs in a fresh one that reports
its wall time and peak RSS (getrusage). The number of labelled pixels is held near --labelled by
setting --max-per-polygon from the parcel count, so a flat peak memory across sizes shows that
preparing reads by windows and does not hold the tile. With --sensors the synthetic scene also
carries Sentinel-1, PlanetScope and a VHR image, all given to `prepare s2`, and the store size of
each sensor's variables is reported. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREPARE = r"""
import json, resource, sys, time
from sitscli.workflows.prepare import prepare
from sitscli.data.prepared import open_prepared
import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = prepare("s2", json.loads(sys.argv[1]))
seconds = time.perf_counter() - start
summary = result.summary
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_after_imports_mb": round(import_rss / 1024, 1), "samples": summary["samples"],
                  "splits": summary["splits"], "time_steps": summary["time_steps"], "bands": len(summary["bands"])}))
"""


GENERATE = r"""
import json, sys
from sitscli.data.synthetic import write_synthetic
size, layout, workers, out, sensors = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
scene = write_synthetic(out, size=size, layout=layout, years=1, seed=0, overwrite=True, workers=workers,
                        sensors=tuple(sensors.split(",")))
print(json.dumps({"l2a": str(scene.l2a), "parcels": str(scene.parcels), "class_field": scene.class_field,
                  "dates": len(scene.dates), "s1": str(scene.s1) if scene.s1 else None,
                  "planetscope": str(scene.planetscope) if scene.planetscope else None,
                  "vhr": str(scene.vhr) if scene.vhr else None}))
"""


def _child(code: str, *args: str) -> dict:
    """Run a snippet in a fresh interpreter (its own peak RSS, nothing inherited from this one)."""
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def bench_size(size: int, layout: str, labelled: int, workdir: Path, workers: int, sensors: str) -> dict:
    import pyogrio

    start = time.perf_counter()
    scene = _child(GENERATE, str(size), layout, str(workers), str(workdir / f"synthetic_{size}"), sensors)
    generate = time.perf_counter() - start
    parcels = pyogrio.read_info(scene["parcels"])["features"]
    per_polygon = max(1, math.ceil(labelled / parcels))
    out = workdir / f"bench_{size}.sits"
    flags = {"folder": scene["l2a"], "labels": scene["parcels"], "class_field": scene["class_field"],
             "out": str(out), "max_per_polygon": per_polygon, "overwrite": True,
             **{name: scene[name] for name in ("s1", "planetscope", "vhr") if scene[name]}}
    prepared = _child(PREPARE, json.dumps(flags))
    return {"size_px": size, "area_km2": round((size * 10 / 1000) ** 2, 2), "layout": layout, "dates": scene["dates"],
            "parcels": parcels, "max_per_polygon": per_polygon, "generate_seconds": round(generate, 1),
            "prepare": prepared, "store_mb": store_sizes(out / "data.zarr")}


def store_sizes(store: Path) -> dict[str, float]:
    """MB on disk of each sensor's variables (Sentinel-2: the unprefixed ones)."""
    prefixes = {"s1_": "s1", "ps_": "planetscope", "vhr_": "vhr"}
    sizes: dict[str, float] = {}
    for var in (d for d in store.iterdir() if d.is_dir()):
        sensor = next((name for prefix, name in prefixes.items() if var.name.startswith(prefix)), "s2")
        nbytes = sum(f.stat().st_size for f in var.rglob("*") if f.is_file())
        sizes[sensor] = round(sizes.get(sensor, 0.0) + nbytes / 2**20, 2)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048", help="pixels per side, comma-separated")
    parser.add_argument("--layout", default="cog", choices=("safe", "cog", "theia"))
    parser.add_argument("--labelled", type=int, default=50_000, help="labelled pixels to sample (about)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes generating the data")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--sensors", default="s2", help="sensors of the synthetic scene, e.g. s2,s1,planetscope,vhr")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = [bench_size(size, args.layout, args.labelled, Path(tmp), args.workers, args.sensors) for size in sizes]
    peaks = [r["prepare"]["peak_rss_mb"] for r in results]
    print(json.dumps({"benchmark": "prepare s2", "sensors": args.sensors, "cpu_count": os.cpu_count(), "generate_workers": args.workers, "runs": results,
                      "peak_rss_ratio_largest_to_smallest": round(peaks[-1] / peaks[0], 3)}, indent=2))


if __name__ == "__main__":
    main()
