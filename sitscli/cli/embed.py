"""`sits embed INPUT --model RUN --out emb.tif`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import COG_OPTION, CONFIG_OPTION, JSON_OPTION, band_list
from sitscli.core import config
from sitscli.core.io import require_input


@app.command("embed")
def embed_command(
    source: str = typer.Argument(..., help="Sentinel-2 L2A folder or a GeoTIFF stack."),
    model: Path = typer.Option(..., "--model", "-m", help="ALISE run (pre-training or fine-tuned)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: a float32 GeoTIFF of n_q x d_model bands, or a zarr store."),
    format: Optional[str] = typer.Option(None, "--format", help="gtiff (default) or zarr (for many bands on large areas)."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Patch side in pixels, a multiple of 8 (default 64)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Pixels shared by neighbouring patches, blended (default 16)."),
    block: Optional[int] = typer.Option(None, "--block", help="Block side computed at a time, a multiple of 8 (default 256). "
                                        "Memory is about n_q x d_model x block^2 x 4 bytes."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per forward pass (default 8)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band names of a stack that does not name them."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    cog: Optional[bool] = COG_OPTION,
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="Replace an existing output."),
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the aligned representation (ALISE's Y) of every pixel of an image time series."""
    from sitscli.workflows.embed import DEFAULTS, embed

    require_input(source, "input")
    flags = {"format": format, "patch": patch, "overlap": overlap, "block": block, "batch_size": batch_size,
             "device": device, "cog": cog, "overwrite": overwrite,
             "bands": band_list(bands)}
    options = config.resolve(DEFAULTS, config.load_yaml(config_file) if config_file else {}, flags)
    summary = embed(source, model=model, out=out, **options)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{summary['bands']} bands ({summary['n_q']} queries x {summary['d_model']} channels), "
               f"{summary['pixels_mapped']} of {summary['pixels']} pixels: {summary['output']}")
