"""`sits uncertainty PROBS.tif --type entropy --out UNC.tif [--suggest N]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import COG_OPTION, COMPRESS_OPTION, CONFIG_OPTION, JSON_OPTION, OVERWRITE_OPTION
from sitscli.core import config
from sitscli.core.io import require_exists
from sitscli.core.progress import log


@app.command("uncertainty")
def uncertainty_command(
    probabilities: Path = typer.Argument(..., help="Class-probability GeoTIFF (from sits predict-map --probabilities or sits smooth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Uncertainty GeoTIFF to write (0 = certain, 1 = most uncertain)."),
    kind: Optional[str] = typer.Option(None, "--type", help="entropy (default: -sum p log p / log K), margin "
                                       "(1 - (p1 - p2)) or least (1 - p1)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="uint16 (scale 1e-4, nodata 65535; default) or float32 (nodata NaN)."),
    suggest: Optional[int] = typer.Option(None, "--suggest", help="Also suggest N sample locations at the most uncertain pixels."),
    min_distance: Optional[float] = typer.Option(None, "--min-distance", help="Least distance in metres (CRS units) between suggested "
                                                 "samples (default 10 pixels, as R sits)."),
    suggest_out: Optional[Path] = typer.Option(None, "--suggest-out", help="GeoPackage of the suggested points "
                                               "(default OUT_samples.gpkg)."),
    block: Optional[int] = typer.Option(None, "--block", help="Pixels per side read at a time (default 512)."),
    cog: Optional[bool] = COG_OPTION,
    compress: Optional[str] = COMPRESS_OPTION,
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue an interrupted run: finished "
                                          "blocks are kept (not with --suggest)."),
    overwrite: Optional[bool] = OVERWRITE_OPTION,
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Per-pixel uncertainty of class probabilities, and where to collect new samples."""
    from sitscli.workflows.uncertainty import DEFAULTS, uncertainty_map

    require_exists(probabilities, "probability raster")
    flags = {
        "type": kind, "dtype": dtype, "suggest": suggest, "min_distance": min_distance, "suggest_out": suggest_out,
        "block": block, "cog": cog, "compress": compress, "resume": resume, "overwrite": overwrite,
    }
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    summary = uncertainty_map(probabilities, out=out, **options)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    mean = summary["mean_uncertainty"]
    log(f"{summary['type']} uncertainty of {summary['pixels_measured']} of {summary['pixels']} pixels"
        + (f", mean {mean:.3f}" if mean is not None else f" ({summary['blocks_resumed']} blocks resumed)")
        + (f"; {summary['samples']} samples suggested" if summary["samples"] else ""))
    for name, path in summary["outputs"].items():
        typer.echo(f"{name}: {path}")
