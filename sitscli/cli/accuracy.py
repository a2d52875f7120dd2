"""`sits accuracy MAP --reference REF --out DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import CONFIG_OPTION
from sitscli.core import config
from sitscli.core.io import require_exists


@app.command("accuracy")
def accuracy_command(
    map_path: Path = typer.Argument(..., metavar="MAP", help="Class map: sits predict-map's map, or any one-band raster of integer class ids."),
    reference: Path = typer.Option(..., "--reference", "-r", help="Reference: points or polygons (gpkg, shp, geojson), "
                                   "a raster of class ids, or a prepared dataset NAME.sits (its test split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory to write: accuracy.md, accuracy.json, confusion.png."),
    field: Optional[str] = typer.Option(None, "--field", help="Class field of a vector reference: the map's class names, or integer ids."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Text file naming the map's class ids, one 'id,name' a line "
                                           "(for maps that do not name their classes)."),
    per_polygon: Optional[bool] = typer.Option(None, "--per-polygon/--per-pixel", help="Polygons: one sample per polygon "
                                               "(its majority map class) instead of one per pixel (default per pixel)."),
    block: Optional[int] = typer.Option(None, "--block", help="Map block side read at a time, in pixels (default 1024)."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="Replace an existing report directory."),
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Accuracy of a class map against reference samples, with area-adjusted estimates (Olofsson et al. 2014)."""
    from sitscli.workflows.accuracy import DEFAULTS, accuracy, fmt, json_ready, plus_minus

    require_exists(map_path, "map")
    flags = {"field": field, "classes": classes, "per_polygon": per_polygon, "block": block, "overwrite": overwrite}
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    report = accuracy(map_path, reference=reference, out=out, **options)
    if as_json:
        typer.echo(json.dumps(json_ready(report), indent=2, allow_nan=False))
        return
    typer.echo(f"overall accuracy: {plus_minus(report['overall_accuracy'], report['overall_accuracy_ci95'])} "
               f"({report['samples']:,} samples), kappa {fmt(report['kappa'])}")
    typer.echo(f"area-adjusted overall accuracy: {plus_minus(report['area_adjusted_overall_accuracy'], report['area_adjusted_overall_accuracy_ci95'])}")
    for kind, path in report["outputs"].items():
        typer.echo(f"{kind}: {path}")

