"""Write time and folder size of each modality of the synthetic multi-sensor scene.

    python bench/synthetic_sensors.py [--sizes 64,128] [--years 1] [--workdir DIR]

For each size (Sentinel-2 pixels a side), one agronomic year: Sentinel-2 (`write_synthetic`,
SAFE layout, parcels included), then Sentinel-1 (both orbits, one file per polarisation),
PlanetScope (the default calendar, a scene every 3 days) and the 1 m VHR ortho, each written on
its own from the same scene model and timed apart. Prints one JSON document: seconds, MB and
file count per modality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sitscli.data.synthetic import write_planetscope, write_s1, write_synthetic  # noqa: E402
from sitscli.data.synthetic.scene import SceneModel  # noqa: E402
from sitscli.data.synthetic.vhr import write_vhr  # noqa: E402


def folder_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"mb": round(sum(p.stat().st_size for p in files) / 1e6, 2), "files": len(files)}


def bench_size(size: int, years: int, workdir: Path) -> dict:
    out = {}
    start = time.perf_counter()
    scene = write_synthetic(workdir / f"s2_{size}", size=size, seed=0, years=years)
    out["s2"] = {"seconds": round(time.perf_counter() - start, 2), **folder_stats(scene.l2a)}
    model = SceneModel(size, size, years, 0, 0.3)
    writers = {"s1": lambda folder: write_s1(model, folder),
               "planetscope": lambda folder: write_planetscope(model, folder),
               "vhr": lambda folder: write_vhr(model, folder)}
    for name, write in writers.items():
        folder = workdir / f"{name}_{size}"
        start = time.perf_counter()
        write(folder)
        out[name] = {"seconds": round(time.perf_counter() - start, 2), **folder_stats(folder)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = {"years": args.years, "sizes": {int(s): bench_size(int(s), args.years, Path(tmp))
                                                 for s in args.sizes.split(",")}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
