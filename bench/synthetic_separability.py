"""How well each sensor of the synthetic scene separates the class pairs Sentinel-2 confuses.

    python bench/synthetic_separability.py [--seeds 6] [--size 96] [--difficulty 0.3] [--workdir DIR]

Writes one-year synthetic scenes with Sentinel-2, Sentinel-1 and the VHR ortho (one per seed),
reads them back from the files and computes per-parcel features on each parcel's interior:
- s2: the mean reflectance of the clear pixels per date (dates where less than 30 % of the
  parcel is clear are filled by linear interpolation in time), resampled every 10 days;
- s1: the mean gamma0 in dB per pass and polarisation (both orbits);
- vhr: band means and standard deviations and the share of the NIR spectral power in period
  bands of 2-2.75, 2.75-3.5, 3.5-4.5, 4.5-6 and 6-9 m (an orientation-free row-spacing signature).
For each pair (winter_wheat/winter_barley, maize/soybean) a random forest (300 trees) is scored by
5-fold stratified cross-validation on the parcels of the pair, with the features of S2 alone, S2+S1
and S2+S1+VHR (and each other sensor alone). Prints one JSON document: balanced accuracy per
pair and feature set, and the parcel counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sitscli.core.dates import to_days  # noqa: E402
from sitscli.data.readers import open_source  # noqa: E402
from sitscli.data.synthetic import write_synthetic  # noqa: E402
from sitscli.data.synthetic.scene import SceneModel  # noqa: E402

PAIRS = (("winter_wheat", "winter_barley"), ("maize", "soybean"))
FEATURE_SETS = {"s2": ("s2",), "s1": ("s1",), "vhr": ("vhr",), "s2+s1": ("s2", "s1"), "s2+vhr": ("s2", "vhr"),
                "s2+s1+vhr": ("s2", "s1", "vhr")}
PERIOD_BANDS = ((2.0, 2.75), (2.75, 3.5), (3.5, 4.5), (4.5, 6.0), (6.0, 9.0))  # m


def interior(ids: np.ndarray, parcel: int, erosion: int) -> np.ndarray:
    mask = ndimage.binary_erosion(ids == parcel, iterations=erosion)
    return mask if mask.any() else ids == parcel


def s2_features(scene, ids: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    values, valid = open_source(scene.l2a).read()  # (T, C, H, W), (T, H, W)
    first, last = (int(to_days([day])[0]) for day in scene.years[0])
    grid = np.arange(first, last, 10)  # the same for every seed
    out = []
    for parcel in parcels:
        mask = interior(ids, parcel, 1)
        clear = valid[:, mask]  # (T, n)
        share = clear.mean(1)
        means = np.einsum("tcn,tn->tc", values[:, :, mask], clear) / np.maximum(clear.sum(1), 1)[:, None]
        keep = share >= 0.3
        out.append(np.concatenate([np.interp(grid, scene.dates[keep], means[keep, c]) for c in range(means.shape[1])]))
    return np.array(out)


def s1_features(scene, ids: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    files = sorted(scene.s1.rglob("*_VV.tif"), key=lambda p: p.name[7:22])
    columns = []
    for vv in files:
        for pol in ("VV", "VH"):
            with rasterio.open(vv.with_name(vv.name.replace("_VV.tif", f"_{pol}.tif"))) as src:
                data = src.read(1)
            data = np.where(data > 0, data, np.nan)
            columns.append([10 * np.log10(np.nanmean(data[interior(ids, p, 1)])) for p in parcels])
    features = np.array(columns).T  # (parcels, passes x 2)
    return np.where(np.isnan(features), np.nanmean(features, axis=0), features)  # a frame edge over a whole parcel


def vhr_features(scene, ids: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    with rasterio.open(scene.vhr) as src:
        image, resolution = src.read().astype(np.float32), src.res[0]
    zoom = int(round(10 / resolution))
    fine_ids = np.kron(ids, np.ones((zoom, zoom), ids.dtype))[: image.shape[1], : image.shape[2]]
    out = []
    for parcel in parcels:
        mask = interior(fine_ids, parcel, 3)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        nir, inside = image[3][window], mask[window]
        power = np.abs(np.fft.fft2(np.where(inside, nir - nir[inside].mean(), 0))) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(nir.shape[0], resolution), np.fft.fftfreq(nir.shape[1], resolution),
                             indexing="ij")
        period = 1 / np.maximum(np.hypot(fy, fx), 1e-9)
        total = max(power.sum(), 1e-9)  # a uniform parcel has no texture at all
        shares = [power[(period >= lo) & (period < hi)].sum() / total for lo, hi in PERIOD_BANDS]
        stats = [image[b][mask].mean() for b in range(4)] + [image[b][mask].std() for b in range(4)]
        out.append(stats + shares)
    return np.array(out)


def scene_features(seed: int, size: int, difficulty: float, workdir: Path) -> tuple[dict, np.ndarray]:
    scene = write_synthetic(workdir / f"seed{seed}", size=size, seed=seed, years=1, layout="cog", difficulty=difficulty,
                            sensors=("s2", "s1", "vhr"), overwrite=True)
    model = SceneModel(size, size, 1, seed, difficulty)
    ids, classes = model.land.ids, model.land.classes[:, 0]
    names = np.array(scene.class_names)[classes]
    wanted = np.flatnonzero(np.isin(names, [c for pair in PAIRS for c in pair]))
    features = {"s2": s2_features(scene, ids, wanted), "s1": s1_features(scene, ids, wanted),
                "vhr": vhr_features(scene, ids, wanted)}
    return features, names[wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        parts = [scene_features(seed, args.size, args.difficulty, Path(tmp)) for seed in range(args.seeds)]
    labels = np.concatenate([names for _, names in parts])
    features = {k: np.concatenate([f[k] for f, _ in parts]) for k in ("s2", "s1", "vhr")}
    result = {"size": args.size, "seeds": args.seeds, "difficulty": args.difficulty, "pairs": {}}
    for pair in PAIRS:
        rows = np.isin(labels, pair)
        y = (labels[rows] == pair[1]).astype(int)
        scores = {}
        for name, sensors in FEATURE_SETS.items():
            x = np.concatenate([features[s][rows] for s in sensors], axis=1)
            forest = RandomForestClassifier(300, random_state=0, n_jobs=1)
            folds = StratifiedKFold(5, shuffle=True, random_state=0)
            scores[name] = round(float(cross_val_score(forest, x, y, cv=folds, scoring="balanced_accuracy").mean()), 3)
        result["pairs"][f"{pair[0]} vs {pair[1]}"] = {"parcels": {c: int((labels == c).sum()) for c in pair},
                                                      "balanced_accuracy": scores}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
