"""`sits predict-map INPUT --model RUN --out map.tif`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import (COG_OPTION, COMPRESS_OPTION, CONFIG_OPTION, JSON_OPTION, OVERWRITE_OPTION, RESUME_BLOCKS_OPTION, band_list)
from sitscli.core import config
from sitscli.core.dates import parse_date_range
from sitscli.core.errors import ConfigError
from sitscli.core.io import require_exists, require_input
from sitscli.core.progress import log


@app.command("predict-map")
def predict_map_command(
    sources: list[str] = typer.Argument(..., help="Sentinel-2 L2A folder (SAFE, Theia, per-band COGs), a GeoTIFF stack "
                                        "(local, URL or /vsis3/...), or a STAC ItemCollection/catalog (file or URL); "
                                        "several inputs: one map each into the --out folder, plus mosaic.vrt."),
    model: Path = typer.Option(..., "--model", "-m", help="Classifier run directory (from sits finetune)."),
    out: Path = typer.Option(..., "--out", "-o", help="Class map GeoTIFF to write (class codes or ids, colour table, "
                             "class names; MAP.qml and MAP.clr legends beside it); with several inputs or --tiles, "
                             "a folder: TILE.tif per tile and mosaic.vrt."),
    probabilities: Optional[Path] = typer.Option(None, "--probabilities", help="Also write one probability band per class."),
    confidence: Optional[Path] = typer.Option(None, "--confidence", help="Also write the largest class probability."),
    prob_dtype: Optional[str] = typer.Option(None, "--prob-dtype", help="uint8 (percent, scale 0.01; default) or float32."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band names of a stack that does not name them, e.g. B02,B03,B04."),
    aoi: Optional[str] = typer.Option(None, "--aoi", help="Map only LEFT,BOTTOM,RIGHT,TOP (raster CRS) or a vector file's extent."),
    dates: Optional[str] = typer.Option(None, "--dates", help="Use only acquisitions in START:END (YYYY-MM-DD, either end may be empty)."),
    dates_file: Optional[Path] = typer.Option(None, "--dates-file", help="Dates of a stack's bands, one ISO date a line."),
    tile: Optional[str] = typer.Option(None, "--tile", help="MGRS tile to map when the input holds several (31TCJ)."),
    tiles: Optional[str] = typer.Option(None, "--tiles", help="Tiles of a STAC input to map, one map each into the --out "
                                        "folder (T31TCJ,T31TDJ or all); finished tiles are skipped, partial ones resumed."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="STAC inputs: use items of at most this "
                                              "eo:cloud_cover percentage."),
    block: Optional[int] = typer.Option(None, "--block", help="Pixels per side of the blocks read at a time (default 512). "
                                        "Memory is about 3 x dates x bands x block^2 x 4 bytes."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Pixels per forward pass (default 2048)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    cog: Optional[bool] = COG_OPTION,
    colors: Optional[Path] = typer.Option(None, "--colors", help="Class colours for the map: CSV lines code_or_name,#rrggbb, "
                                          "a QGIS style (.qml) or a colour map (.clr); default: the run's colours."),
    compress: Optional[str] = COMPRESS_OPTION,
    resume: Optional[bool] = RESUME_BLOCKS_OPTION,
    overwrite: Optional[bool] = OVERWRITE_OPTION,
    s1: Optional[Path] = typer.Option(None, "--s1", help="Sentinel-1 backscatter folder, for a model trained with it (OmniSat)."),
    vhr: Optional[Path] = typer.Option(None, "--vhr", help="Very-high-resolution ortho image or folder of tiles, for a "
                                       "model trained with it."),
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Classify every pixel of an image time series with a fine-tuned run into a GeoTIFF map."""
    from sitscli.workflows.predict_map import DEFAULTS, predict_map, predict_tiles

    for source in sources:
        require_input(source, "input")
    flags = {
        "probabilities": probabilities, "confidence": confidence, "prob_dtype": prob_dtype,
        "bands": band_list(bands), "aoi": _aoi(aoi), "date_range": parse_date_range(dates), "dates_file": dates_file,
        "tile": tile, "max_cloud": max_cloud, "block": block, "batch_size": batch_size, "device": device, "cog": cog,
        "compress": compress, "colors": colors, "resume": resume, "overwrite": overwrite, "s1": s1, "vhr": vhr,
    }
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    tile_list = band_list(tiles)
    if len(sources) > 1 or tile_list:
        if tile:
            raise ConfigError("--tile picks the tile of one map; with several inputs use --tiles")
        options.pop("tile")
        summary = predict_tiles(sources, model=model, out_dir=out, tiles=tile_list, **options)
        if _is_main_rank():
            _report_tiles(summary, as_json)
        return
    summary = predict_map(sources[0], model=model, out=out, **options)
    if not _is_main_rank():
        return    # under torchrun rank 0 wrote the map and reports it
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    log(f"mapped {summary['pixels_mapped']} of {summary['pixels']} pixels ({summary['blocks']} blocks"
        + (f", {summary['blocks_resumed']} resumed" if summary["blocks_resumed"] else "") + ")")
    for kind, path in summary["outputs"].items():
        typer.echo(f"{kind}: {path}")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _report_tiles(summary: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for name, result in summary["tiles"].items():
        done = "already mapped" if result.get("skipped") else f"mapped {result['pixels_mapped']} of {result['pixels']} pixels"
        typer.echo(f"{name}: {result['outputs']['map']} ({done})")
    for mosaic in summary["mosaics"]:
        typer.echo(f"mosaic: {mosaic}")


def _aoi(text: str | None):
    """'left,bottom,right,top' -> a bbox tuple; anything else is a vector file path."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) == 4:
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--aoi {text!r}: give LEFT,BOTTOM,RIGHT,TOP as numbers, or a vector file") from None
    return require_exists(text, "--aoi vector file")
