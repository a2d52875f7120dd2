"""`sits change-detect A B --model RUN --out change.tif`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import COG_OPTION, CONFIG_OPTION, JSON_OPTION, OVERWRITE_OPTION, band_list
from sitscli.core import config
from sitscli.core.dates import parse_date_range
from sitscli.core.io import require_input
from sitscli.core.progress import log


@app.command("change-detect")
def change_detect_command(
    a: str = typer.Argument(..., help="Series A (e.g. year 1): an L2A folder or a GeoTIFF stack. The output is on its grid."),
    b: str = typer.Argument(..., help="Series B (e.g. year 2), same area; resampled onto A's grid when on another."),
    out: Path = typer.Option(..., "--out", "-o", help="Change score GeoTIFF to write (float32, NaN = no score)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="ALISE run (pre-training or fine-tuned); needed by --method alise."),
    method: Optional[str] = typer.Option(None, "--method", help="alise (default: distance of aligned representations) "
                                         "or gapfill (5-day linear gap filling baseline)."),
    distance: Optional[str] = typer.Option(None, "--distance", help="ALISE change score: cosine (default: 1 - cosine similarity; "
                                           "ignores the offset absolute dates add) or mse (the paper's eq. 12)."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Also write a binary change map: a score, or otsu."),
    binary_out: Optional[Path] = typer.Option(None, "--binary-out", help="Binary map path (default OUT_binary.tif)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="0/1 change raster, or polygons with a 0/1 field: ROC AUC."),
    reference_field: Optional[str] = typer.Option(None, "--reference-field", help="Field of the reference polygons (default change)."),
    roc_out: Optional[Path] = typer.Option(None, "--roc-out", help="ROC curve PNG (default OUT_roc.png)."),
    patch: Optional[int] = typer.Option(None, "--patch", help="ALISE patch side in pixels, a multiple of 8 (default 64)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Pixels shared by neighbouring patches, blended (default 16)."),
    block: Optional[int] = typer.Option(None, "--block", help="Block side computed at a time, a multiple of 8 (default 256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per forward pass (default 8)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band names of stacks that do not name them, e.g. B02,B03,B04."),
    dates_a: Optional[str] = typer.Option(None, "--dates-a", help="Read A only from START:END (YYYY-MM-DD; either end may be empty)."),
    dates_b: Optional[str] = typer.Option(None, "--dates-b", help="Read B only from START:END, e.g. the next year of the same folder."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    cog: Optional[bool] = COG_OPTION,
    overwrite: Optional[bool] = OVERWRITE_OPTION,
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Score change between two image time series of one area (any dates) into a GeoTIFF."""
    from sitscli.workflows.change_detect import DEFAULTS, change_detect

    require_input(a, "series A")
    require_input(b, "series B")
    flags = {
        "model": model, "method": method, "distance": distance, "threshold": threshold, "binary_out": binary_out, "reference": reference,
        "reference_field": reference_field, "roc_out": roc_out, "patch": patch, "overlap": overlap, "block": block,
        "batch_size": batch_size, "device": device, "cog": cog, "overwrite": overwrite,
        "date_range_a": parse_date_range(dates_a), "date_range_b": parse_date_range(dates_b),
        "bands": band_list(bands),
    }
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    summary = change_detect(a, b, out=out, **options)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    log(f"scored {summary['pixels_scored']} of {summary['pixels']} pixels ({summary['method']})")
    if summary["threshold"] is not None:
        typer.echo(f"threshold: {summary['threshold']:.6g} ({100 * summary['changed_fraction']:.1f} % changed)")
    if summary["auc"] is not None:
        typer.echo(f"ROC AUC: {summary['auc']:.4f}")
    for kind, path in summary["outputs"].items():
        typer.echo(f"{kind}: {path}")
