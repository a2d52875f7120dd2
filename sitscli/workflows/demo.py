"""`sits demo`: the whole pipeline on embedded synthetic data, into one output folder.

    synthetic L2A folder (SAFE, two agronomic years, clouds) + parcels
      -> prepare (year 1, pixel mode, with an unlabelled pool)
      -> pretrain SITS-BERT (contamination pretext) -> finetune -> predict-map (year 1)
      -> prepare (both years, patch mode) -> pretrain ALISE -> change-detect (year 1 vs year 2)
      -> quicklook PNGs and report.md / report.json

Every step calls the same workflow function as its command, so the demo is also an end-to-end test.
Model sizes and epochs are cut down so the whole run takes a few minutes on 2 CPU cores; they are
listed in `DEMO_SETTINGS` and saved with the report (the papers' full settings are the commands'
defaults).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from sitscli.core.dates import to_days
from sitscli.core.io import atomic_output, check_output
from sitscli.core.progress import log
from sitscli.engine.device import resolve_device

# Cut-down settings for a few minutes on 2 CPU cores (the commands' defaults are the papers').
DEMO_SETTINGS: dict[str, Any] = {
    "scene": {"size": 160, "years": 2, "difficulty": 0.3, "layout": "safe"},
    "prepare": {"max_per_polygon": 25},
    # The paper's 10-epoch warm-up (TRAINING in models/sitsbert.py) would outlast a short run: 1 epoch here.
    "sitsbert": {"hparams": {"hidden": 64, "layers": 2, "heads": 4}, "batch_size": 128,
                 "pretrain": {"epochs": 5, "lr": 1e-3, "warmup_epochs": 1.0, "min_lr": 1e-4},
                 "finetune": {"epochs": 10, "lr": 5e-4}},
    "alise": {"patch_size": 32, "epochs": 3, "batch_size": 4,
              "hparams": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "n_q": 4, "d_emb": 32,
                          "unet_widths": [16, 16, 32, 32], "crop": 32, "run_length": 40}},
}


def run_demo(out: str | Path, *, seed: int = 0, device: str = "auto", overwrite: bool = False,
             change: bool = True) -> dict[str, Any]:
    """Run every step into `out`; returns the report (also written as report.json and report.md)."""
    resolve_device(device)          # a wrong --device stops the demo before it writes anything
    out = check_output(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        return _run_steps(out, seed=seed, device=device, change=change)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)   # a demo is not resumable: nothing half-made stays
        raise


def _run_steps(out: Path, *, seed: int, device: str, change: bool) -> dict[str, Any]:
    from sitscli.data.recipes.s2 import prepare_s2
    from sitscli.data.synthetic import write_synthetic
    from sitscli.workflows.finetune import finetune
    from sitscli.workflows.predict_map import predict_map
    from sitscli.workflows.pretrain import pretrain

    s = DEMO_SETTINGS
    steps = 7 if change else 5
    report: dict[str, Any] = {"settings": s, "seed": seed, "timings_s": {}}
    clock = _Clock(report["timings_s"], steps)

    with clock("synthetic Sentinel-2 L2A folder and parcels"):
        scene = write_synthetic(out / "data", seed=seed, **s["scene"])
    year1 = _date_range(scene.years[0])
    labels, field1 = scene.parcels, "class_y1"

    with clock("prepare year 1 (pixel mode)"):
        dataset = prepare_s2(scene.l2a, out / "year1.sits", labels=labels, class_field=field1, date_range=year1,
                             seed=seed, **s["prepare"])
    b = s["sitsbert"]
    common = {"device": device, "seed": seed, "batch_size": b["batch_size"]}
    with clock("pretrain SITS-BERT (contamination pretext)"):
        pre = pretrain(out=out / "sitsbert-pretrain", data=str(dataset), model="sitsbert", hparams=b["hparams"],
                       **b["pretrain"], **common)
    with clock("finetune SITS-BERT on the labelled parcels"):
        tuned = finetune(out=out / "sitsbert-finetune", data=str(dataset), from_run=str(pre.run_dir), mode="full",
                         **b["finetune"], **common)
    report["classification"] = _headline(tuned.report)
    with clock("predict-map year 1"):
        mapped = predict_map(scene.l2a, model=tuned.run_dir, out=out / "landcover.tif",
                             confidence=out / "confidence.tif", date_range=year1, device=device)
    report["map"] = {k: mapped[k] for k in ("outputs", "pixels", "pixels_mapped")}
    report["map"]["agreement_with_parcels"] = _quicklook(out, Path(mapped["outputs"]["map"]), labels, field1)

    if change:
        report["change"] = _change_steps(out, scene, clock, seed=seed, device=device)
    _write_report(out, report)
    log(f"demo finished in {sum(report['timings_s'].values()):.0f} s: see {out / 'report.md'}")
    return report


def _change_steps(out: Path, scene, clock: "_Clock", *, seed: int, device: str) -> dict[str, Any]:
    """ALISE pre-trained on both years' patches, then year 1 vs year 2 change detection."""
    from sitscli.data.recipes.s2 import prepare_s2
    from sitscli.workflows.change_detect import change_detect
    from sitscli.workflows.pretrain import pretrain

    a = DEMO_SETTINGS["alise"]
    with clock("prepare both years (patch mode) and pretrain ALISE"):
        patches = prepare_s2(scene.l2a, out / "patches.sits", labels=scene.parcels, class_field="class_y1",
                             patch_size=a["patch_size"], seed=seed)
        run = pretrain(out=out / "alise-pretrain", data=str(patches), model="alise", hparams=a["hparams"],
                       epochs=a["epochs"], batch_size=a["batch_size"], device=device, seed=seed)
    with clock("change-detect year 1 vs year 2 (ALISE and gap-filling baseline)"):
        first, second = (_date_range(y) for y in scene.years)
        reference = _change_reference(out, scene)
        results = {}
        for method in ("alise", "gapfill"):
            results[method] = change_detect(
                scene.l2a, scene.l2a, model=run.run_dir if method == "alise" else None, method=method,
                date_range_a=first, date_range_b=second, out=out / f"change_{method}.tif", patch=a["patch_size"],
                threshold="otsu", binary_out=out / f"change_{method}_binary.tif", reference=reference,
                reference_field="changed", roc_out=out / f"roc_{method}.png", device=device)
    return {m: {"auc": None if r.get("auc") is None else round(float(r["auc"]), 4), "threshold": r.get("threshold"),
                "outputs": r.get("outputs")} for m, r in results.items()}


def _change_reference(out: Path, scene) -> Path:
    """Parcels with a 0/1 `changed` field (class of year 1 differs from year 2)."""
    import geopandas as gpd

    parcels = gpd.read_file(scene.parcels)
    parcels["changed"] = (parcels["class_y1"] != parcels["class_y2"]).astype(int)
    path = out / "data" / "change_reference.gpkg"
    parcels[["parcel_id", "changed", "geometry"]].to_file(path, driver="GPKG")
    return path


def _date_range(year: tuple[str, str]) -> tuple[int, int]:
    first, last = to_days([year[0], year[1]])
    return int(first), int(last)


def _headline(report: dict) -> dict[str, float]:
    return {k: round(float(report[k]), 4) for k in ("oa", "kappa", "aa", "macro_f1") if k in report}


def _quicklook(out: Path, map_path: Path, labels: Path, field: str) -> float:
    """PNG of the map beside the parcels' true classes; returns their pixel agreement (all parcels)."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from rasterio import features

    from sitscli.mapping.geotiff import read_class_names

    with rasterio.open(map_path) as src:
        predicted, nodata, transform, shape = src.read(1), src.nodata, src.transform, src.shape
        colors = [tuple(c / 255 for c in src.colormap(1)[i][:3]) for i in range(len(read_class_names(map_path)))]
    names = read_class_names(map_path)
    parcels = gpd.read_file(labels)
    ids = {name: i for i, name in enumerate(names)}
    truth = features.rasterize(
        ((g, ids.get(c, 255)) for g, c in zip(parcels.geometry, parcels[field])),
        out_shape=shape, transform=transform, fill=255, dtype="uint8")
    known = (truth != 255) & (predicted != nodata)
    agreement = float((truth[known] == predicted[known]).mean()) if known.any() else float("nan")

    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    for ax, image, title in ((axes[0], predicted, "predicted (SITS-BERT)"), (axes[1], truth, f"parcels ({field})")):
        ax.imshow(np.ma.masked_where((image == 255) | (image == nodata), image), cmap=cmap,
                  vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8)
    fig.suptitle(f"pixel agreement with the parcels: {agreement:.1%}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_output(out / "quicklook.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return round(agreement, 4)


def _write_report(out: Path, report: dict) -> None:
    with atomic_output(out / "report.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    lines = ["# sits demo", "", "Synthetic Sentinel-2 L2A, two agronomic years; every step of the pipeline.", "",
             "## Land cover (SITS-BERT, pre-trained then fine-tuned)", ""]
    lines += [f"- {k}: {v}" for k, v in report["classification"].items()]
    lines += [f"- pixel agreement of the map with the parcels: {report['map']['agreement_with_parcels']}",
              "", "Map: `landcover.tif`, confidence: `confidence.tif`, quicklook: `quicklook.png`."]
    if "change" in report:
        lines += ["", "## Change year 1 -> year 2", ""]
        lines += [f"- {m}: ROC AUC {r.get('auc')}" for m, r in report["change"].items()]
        a = report["settings"]["alise"]
        lines += ["", f"ALISE is pre-trained here for {a['epochs']} epochs on a few {a['patch_size']} px patches, "
                  "to keep the demo short (the paper: 260 epochs). `bench/change_detect.py` measures it at a larger "
                  "scale against the gap-filling baseline (see bench/README.md)."]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v:.1f}" for k, v in report["timings_s"].items()]
    with atomic_output(out / "report.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


class _Clock:
    """Announces each step ("[2/7] ...") and records its duration."""

    def __init__(self, timings: dict[str, float], steps: int):
        self.timings, self.steps, self.done = timings, steps, 0

    def __call__(self, title: str) -> "_Clock":
        self.title = title
        return self

    def __enter__(self) -> None:
        self.done += 1
        log(f"[{self.done}/{self.steps}] {self.title}")
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.title] = round(time.perf_counter() - self.start, 1)
