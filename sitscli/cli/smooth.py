"""`sits smooth PROBS.tif --out SMOOTHED.tif [--class-map MAP.tif]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import COG_OPTION, COMPRESS_OPTION, CONFIG_OPTION, JSON_OPTION, OVERWRITE_OPTION, RESUME_BLOCKS_OPTION
from sitscli.core import config
from sitscli.core.io import require_exists
from sitscli.core.progress import log


@app.command("smooth")
def smooth_command(
    probabilities: Path = typer.Argument(..., help="Class-probability GeoTIFF (from sits predict-map --probabilities)."),
    out: Path = typer.Option(..., "--out", "-o", help="Smoothed probabilities to write (same classes and storage as the input)."),
    class_map: Optional[Path] = typer.Option(None, "--class-map", help="Also write the class map of the smoothed "
                                             "probabilities (class ids, colour table, class names)."),
    window: Optional[int] = typer.Option(None, "--window", help="Neighbourhood side in pixels, odd, >= 3 (default 9, as R sits)."),
    neigh_fraction: Optional[float] = typer.Option(None, "--neigh-fraction", help="Fraction of the neighbours, those most "
                                                   "confident in the class, that set its prior (default 0.5)."),
    smoothness: Optional[str] = typer.Option(None, "--smoothness", help="Prior variance of a pixel's logit: one number, or "
                                             "one per class as 10,20,... (default 20; larger smooths more)."),
    block: Optional[int] = typer.Option(None, "--block", help="Pixels per side smoothed at a time (default 512)."),
    cog: Optional[bool] = COG_OPTION,
    compress: Optional[str] = COMPRESS_OPTION,
    resume: Optional[bool] = RESUME_BLOCKS_OPTION,
    overwrite: Optional[bool] = OVERWRITE_OPTION,
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Bayesian smoothing of class probabilities: removes isolated pixels, keeps parcel borders."""
    from sitscli.workflows.smooth import DEFAULTS, smooth

    require_exists(probabilities, "probability raster")
    flags = {
        "class_map": class_map, "window": window, "neigh_fraction": neigh_fraction, "smoothness": smoothness,
        "block": block, "cog": cog, "compress": compress, "resume": resume, "overwrite": overwrite,
    }
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    summary = smooth(probabilities, out=out, **options)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    log(f"smoothed {summary['pixels_smoothed']} of {summary['pixels']} pixels ({summary['blocks']} blocks"
        + (f", {summary['blocks_resumed']} resumed" if summary["blocks_resumed"] else "") + ")")
    for kind, path in summary["outputs"].items():
        typer.echo(f"{kind}: {path}")
