"""What several command modules share: parsing of list and key=value options, the end of a training run,
options that every raster command takes."""

from __future__ import annotations

import typer
import yaml

from sitscli.core.errors import ConfigError
from sitscli.core.progress import log
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE


# Every command writing rasters: COGs by default (sitscli.mapping.geotiff.finish).
COG_OPTION = typer.Option(None, "--cog/--no-cog", help="Write Cloud Optimized GeoTIFFs with overviews (default; "
                          "--no-cog: plain tiled GeoTIFFs).")
COMPRESS_OPTION = typer.Option(None, "--compress", help="deflate (default), zstd or lzw.")
RESUME_BLOCKS_OPTION = typer.Option(None, "--resume/--no-resume", help="Continue an interrupted run: finished blocks are kept.")
# Options of (nearly) every command.
OVERWRITE_OPTION = typer.Option(None, "--overwrite/--no-overwrite", help="Replace existing outputs.")
CONFIG_OPTION = typer.Option(None, "--config", help="YAML file of options; flags given here win.")
JSON_OPTION = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")


def band_list(text: str | None) -> list[str] | None:
    """Comma-separated names ("B02, B03,B04") -> a list; None or an empty text -> None."""
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


def key_values(items: list[str] | None, option: str) -> dict | None:
    """["hidden=32", "unet_widths=[32,32,64,64]"] -> {"hidden": 32, ...}; values read as YAML scalars
    or lists, so numbers, booleans and lists get their types. None when no item was given."""
    if not items:
        return None
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: write key=value, e.g. {option} hidden=128")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{option} {item!r}: the value is not a number, word or [list]") from None
    return parsed


def finish_run(result, command: str) -> None:
    """After training: on a graceful stop, say (one line, rank 0) how to resume and exit with
    INTERRUPTED_EXIT_CODE."""
    if result.interrupted:
        signal_name = result.fit.stopped_by or "a signal to another process of the job"
        log(f"stopped by {signal_name} in epoch {len(result.fit.history) + 1}: state saved; "
            f"continue with: sits {command} --resume {result.run_dir}")
        # SystemExit, not typer.Exit: click run with standalone_mode=False (app.main) returns the
        # code of a typer.Exit instead of exiting with it.
        raise SystemExit(INTERRUPTED_EXIT_CODE)
