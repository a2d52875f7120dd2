"""`sits info PATH`: describe a prepared dataset, an L2A folder or stack, or a run directory.

Returns plain dicts (JSON-ready) with a "kind" key; the CLI renders them as tables or text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sitscli.core.dates import iso
from sitscli.core.errors import DataFormatError
from sitscli.core.io import require_exists

# Decimated validity read for the cloud fraction of each date: the masks (SCL at 20 m, CLM) at
# about 256 x 256 cover a whole 10980 px tile in seconds and give the fraction within ~0.5%.
CLOUD_SAMPLE_PIXELS = 256 * 256


def info(path: str | Path) -> dict[str, Any]:
    """What PATH is and holds: {"kind": "dataset" | "l2a" | "run", ...}."""
    path = Path(path).expanduser()
    if not path.exists() and Path(f"{path}.sits").exists():  # datasets may be named without .sits
        path = Path(f"{path}.sits")
    require_exists(path, "path")
    run_dir = _run_dir(path)
    if run_dir is not None:
        return run_info(run_dir)
    if _is_unfinished_run(path):
        return unfinished_run_info(path)
    if (path / "data.zarr").is_dir():
        return dataset_info(path)
    return l2a_info(path)


def _run_dir(path: Path) -> Path | None:
    """The run directory PATH is or lies in. The card's name is `engine.checkpoint.CARD`, spelled
    out here so that describing a dataset does not import torch."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "model.yaml").is_file() else None


def _is_unfinished_run(path: Path) -> bool:
    """A run directory without model.yaml: config.yaml, and resume/ once the engine saved a state.
    A prepared dataset also holds a config.yaml, but with its data.zarr."""
    return (path / "config.yaml").is_file() and not (path / "data.zarr").exists()


def unfinished_run_info(run_dir: Path) -> dict[str, Any]:
    """An interrupted run: its model, how far it got and the command that continues it."""
    import yaml

    try:
        options = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        options = {}
    options = options if isinstance(options, dict) else {}
    command = "pretrain" if "pretext" in options else "finetune"
    out = {"kind": "run", "status": "interrupted", "path": str(run_dir), "model": options.get("model"),
           "command": command, "epochs": options.get("epochs"), "continue": f"sits {command} --resume {run_dir}"}
    state = run_dir / "resume" / "state.json"
    if not state.is_file():
        out["progress"] = "stopped before its first save: --resume starts it from the beginning"
        return out
    try:
        saved = json.loads(state.read_text())
        out["epochs_done"] = int(saved["epoch"])
        out["progress"] = f"{saved['epoch']} of {options.get('epochs', '?')} epochs done" + (
            f", {saved['samples_done']} samples into epoch {saved['epoch'] + 1}" if saved.get("samples_done") else "")
    except (OSError, ValueError, KeyError, TypeError):
        out["progress"] = "its saved state is damaged: start it again without --resume"
    return out


def dataset_info(path: Path) -> dict[str, Any]:
    """Sizes, date range, dates per sample, class counts per split, band statistics."""
    from sitscli.data.prepared import open_prepared

    summary = open_prepared(path).summary()
    return {"kind": "dataset", **summary, "crs_name": _crs_name(summary["crs"])}


def _crs_name(wkt: str) -> str | None:
    """'EPSG:32631' for a WKT the EPSG database knows, else its name; None without a CRS."""
    if not wkt:
        return None
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    return crs.to_string() if crs.to_epsg() else crs.wkt.split('"')[1]


def l2a_info(path: Path) -> dict[str, Any]:
    """Layout, tile, CRS, size, bands and each date with its masked (cloud or no-data) fraction."""
    from sitscli.data.readers import LAYOUTS, detect_layout, open_source

    try:
        detect_layout(path)
    except DataFormatError:
        raise DataFormatError(f"{path} is not a prepared dataset (no data.zarr), a run directory (no model.yaml) nor "
                              f"Sentinel-2 data this tool reads ({', '.join(LAYOUTS)}): check the path") from None
    cube = open_source(path)
    summary = cube.describe()
    cloudy = cube.cloud_fractions(CLOUD_SAMPLE_PIXELS)
    products = summary.pop("products", {})
    summary["dates"] = [{"date": iso(d), "cloud_fraction": round(float(c), 4),
                         **({"products": products[iso(d)]} if iso(d) in products else {})}
                        for d, c in zip(cube.dates, cloudy)]
    summary["n_dates"] = len(cube.dates)
    summary["mean_cloud_fraction"] = round(float(np.mean(cloudy)), 4) if len(cloudy) else None
    return {"kind": "l2a", "path": str(path), **summary}


def run_info(run_dir: Path) -> dict[str, Any]:
    """Model, task, classes, bands, hyper-parameters (and metrics.json's top-level figures if any)."""
    from sitscli.engine.checkpoint import read_card, weights_status

    card = read_card(run_dir)
    out = {
        "kind": "run", "status": "finished", "path": str(run_dir), "model": card.model_name, "task": card.task,
        "classes": list(card.info.class_names), "bands": list(card.info.band_names),
        "hparams": card.hparams, "dataset_fingerprint": card.dataset_fingerprint,
        "sitscli_version": card.sitscli_version, "weights": weights_status(card),
    }
    if card.info.reference_date is not None:
        out["reference_date"] = iso(card.info.reference_date)
    if card.info.class_codes:
        out["class_codes"] = list(card.info.class_codes)     # the values its class maps store
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            raw = json.loads(metrics.read_text())
        except ValueError:
            raw = {}
        out["metrics"] = {k: v for k, v in raw.items() if isinstance(v, (int, float))} if isinstance(raw, dict) else {}
    return out
