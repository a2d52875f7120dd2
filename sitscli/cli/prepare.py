"""`sits prepare SOURCE ...`: one sub-command per source over `workflows.prepare.prepare`.

Every option defaults to None ("not given") so that `--config FILE.yaml` and the source's
defaults apply; the workflow resolves them and checks what is required.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from sitscli.cli.app import app
from sitscli.cli.common import JSON_OPTION
from sitscli.core.errors import ConfigError


class _SourceGroup(TyperGroup):
    """Sub-commands in pipeline order; an unknown source is a one-line `ConfigError`, not a usage dump."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise ConfigError(f"unknown source {name!r}: choose one of {', '.join(self.commands)} (see sits prepare --help)")
        return super().resolve_command(ctx, args)


prepare_app = typer.Typer(
    cls=_SourceGroup, no_args_is_help=True, rich_markup_mode="rich",
    help="Make a prepared dataset (NAME.sits) from Sentinel-2 L2A + labels, a benchmark, a table; or write demo L2A data.",
)
app.add_typer(prepare_app, name="prepare")

_OUT = typer.Option(None, "--out", "-o", help="The NAME.sits dataset to write.")
_SEED = typer.Option(None, "--seed", help="Random seed of sampling and splits (default 0).")
_OVERWRITE = typer.Option(None, "--overwrite/--no-overwrite", help="Replace an existing output.")
_CONFIG = typer.Option(None, "--config", help="YAML file of options (keys as the long flags with _); flags win. "
                       "A dataset's config.yaml prepares it again.")
_COLORS = typer.Option(None, "--colors", help="Class colours: CSV lines code_or_name,#rrggbb, a QGIS style (.qml) "
                       "or a colour map (.clr); default: land-cover colours from the class names.")
_FRACTIONS = typer.Option(None, "--fractions", help="Train,val,test shares of the groups (default 0.7,0.15,0.15).")


def _run(source: str, flags: dict[str, Any], config_file: Optional[Path], as_json: bool) -> None:
    from sitscli.workflows.prepare import prepare

    result = prepare(source, flags, config_file)
    if as_json:
        typer.echo(json.dumps({"path": str(result.path), "kind": result.kind, "summary": result.summary}, indent=2))
        return
    for line in (_l2a_lines if result.kind == "l2a" else _dataset_lines)(result.path, result.summary):
        typer.echo(line)


def _dataset_lines(path: Path, s: dict) -> list[str]:
    splits = ", ".join(f"{name} {n}" for name, n in s["splits"].items())
    names = [f"{c['code']} {c['name']}" if "code" in c else c["name"] for c in s["classes"]]
    lines = [f"dataset: {path} ({s['mode']}, {s['samples']} samples, {s['time_steps']} dates, {len(s['bands'])} bands)",
             f"samples per split: {splits}",
             f"classes ({len(names)}): {', '.join(names)}"]
    others = [f"{name} ({m['dates']} dates, {len(m['bands'])} bands, {m['resolution']:g} m)"
              for name, m in s.get("modalities", {}).items() if name != "s2"]
    if others:
        lines.append(f"other sensors: {'; '.join(others)}")
    if s.get("tiles"):
        lines.append(f"tiles ({len(s['tiles'])}): " + ", ".join(f"{t['id']} {t['samples']}" for t in s["tiles"]))
    return lines


def _l2a_lines(path: Path, s: dict) -> list[str]:
    return [f"L2A folder: {s['l2a']} ({s['layout']}, tile {s['tile']}, {s['crs']}, {s['dates']} dates, "
            f"{len(s['years'])} agronomic year(s) from {s['years'][0][0]})",
            f"labels: {s['labels']} (class field {s['class_field']} for the first year; {len(s['classes'])} classes)",
            f"changed parcels: {s['changes']}",
            *[f"{name}: {s[name]}" for name in ("s1", "planetscope", "vhr") if name in s],
            f"next: sits prepare s2 {s['l2a']} --labels {s['labels']} --class-field {s['class_field']} "
            f"--dates {s['years'][0][0]}:{s['years'][0][1]} --out {path.name}.sits"]


@prepare_app.command("s2")
def prepare_s2_command(
    folder: Optional[list[str]] = typer.Argument(None, help="Sentinel-2 L2A folder: SAFE (or .SAFE.zip), Theia, per-band "
                                                 "COGs, a stack (local, URL or /vsis3/...), or a STAC ItemCollection/catalog "
                                                 "(file or URL). Several, or a catalog of several tiles: one dataset of all tiles."),
    out: Optional[Path] = _OUT,
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="Vector labels (GeoPackage, shapefile, GeoJSON)."),
    class_field: Optional[str] = typer.Option(None, "--class-field", "-c", help="Attribute holding the class name."),
    color_field: Optional[str] = typer.Option(None, "--color-field", help="Attribute holding a #rrggbb colour per class."),
    code_field: Optional[str] = typer.Option(None, "--code-field", help="Attribute holding each class's code (e.g. LULC_ID): "
                                             "maps store these codes instead of ids 0..K-1."),
    colors: Optional[Path] = _COLORS,
    bands: Optional[str] = typer.Option(None, "--bands", help="Bands to keep, e.g. B02,B03,B04,B08 (default: the 10 bands B02-B12 without B09/B10)."),
    aoi: Optional[str] = typer.Option(None, "--aoi", help="LEFT,BOTTOM,RIGHT,TOP (raster CRS) or a vector file whose extent is used."),
    dates: Optional[str] = typer.Option(None, "--dates", help="Acquisitions in START:END (YYYY-MM-DD, either end may be empty)."),
    tile: Optional[str] = typer.Option(None, "--tile", help="MGRS tile(s) to read when the folder holds several (31TCJ, "
                                       "or T31TCJ,T31TDJ; default: every tile of a STAC catalog)."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="STAC sources: keep items of at most this "
                                              "eo:cloud_cover percentage."),
    valid_scl: Optional[str] = typer.Option(None, "--valid-scl", help="SCL classes counted clear (default 4,5,6,7; add 11 for snow)."),
    buffer: Optional[float] = typer.Option(None, "--buffer", help="Metres to shrink (negative) or grow polygons by before sampling (default 0)."),
    max_per_polygon: Optional[int] = typer.Option(None, "--max-per-polygon", help="Pixels drawn per polygon (default 200; 0 = all)."),
    unlabeled: Optional[int] = typer.Option(None, "--unlabeled", help="Pixels drawn outside every polygon, for pretraining (default 0)."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size", help="Cut P x P patches with per-pixel labels instead of pixels."),
    s1: Optional[Path] = typer.Option(None, "--s1", help="Sentinel-1 backscatter folder (GeoTIFFs per date, VV/VH, "
                                      "linear or dB): its series under each sample."),
    s1_orbit: Optional[str] = typer.Option(None, "--s1-orbit", help="both (default), ascending or descending."),
    s1_units: Optional[str] = typer.Option(None, "--s1-units", help="auto (default: dB when mostly negative), linear or db."),
    planetscope: Optional[Path] = typer.Option(None, "--planetscope", help="PlanetScope PSScene folder (SR + UDM2): "
                                               "the 3 x 3 block of 3 m pixels under each Sentinel-2 pixel."),
    vhr: Optional[Path] = typer.Option(None, "--vhr", help="Very-high-resolution ortho image or folder of tiles: "
                                       "the chip under each sample."),
    vhr_bands: Optional[str] = typer.Option(None, "--vhr-bands", help="VHR band names when the file does not name "
                                            "them, e.g. R,G,B,NIR."),
    vhr_resolution: Optional[float] = typer.Option(None, "--vhr-resolution", help="Metres per VHR pixel to resample "
                                                   "to (default: the image's own; 10 m must be a multiple)."),
    keep_cloudy: Optional[bool] = typer.Option(None, "--keep-cloudy/--no-keep-cloudy", help="Keep Sentinel-2 values "
                                               "under clouds, with a cloud level 0-31 per observation."),
    fractions: Optional[str] = _FRACTIONS,
    seed: Optional[int] = _SEED,
    overwrite: Optional[bool] = _OVERWRITE,
    config_file: Optional[Path] = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """Sentinel-2 L2A time series + vector labels (+ Sentinel-1, PlanetScope, VHR) -> pixel (or patch) samples
    with train/val/test splits."""
    folder = (folder[0] if len(folder) == 1 else folder) if folder else None  # one source stays one value
    _run("s2", {"folder": folder, "out": out, "labels": labels, "class_field": class_field, "color_field": color_field,
                "code_field": code_field, "colors": colors,
                "bands": bands, "aoi": aoi, "dates": dates, "tile": tile, "max_cloud": max_cloud, "valid_scl": valid_scl, "buffer": buffer,
                "max_per_polygon": max_per_polygon, "unlabeled": unlabeled, "patch_size": patch_size,
                "s1": s1, "s1_orbit": s1_orbit, "s1_units": s1_units, "planetscope": planetscope, "vhr": vhr,
                "vhr_bands": vhr_bands, "vhr_resolution": vhr_resolution, "keep_cloudy": keep_cloudy,
                "fractions": fractions, "seed": seed, "overwrite": overwrite}, config_file, as_json)


@prepare_app.command("timesen2crop")
def prepare_timesen2crop_command(
    root: Optional[Path] = typer.Argument(None, help="TimeSen2Crop root: one folder per tile with dates.csv and class folders."),
    out: Optional[Path] = _OUT,
    val_tiles: Optional[str] = typer.Option(None, "--val-tiles", help="Validation tiles (default 33TVN)."),
    test_tiles: Optional[str] = typer.Option(None, "--test-tiles", help="Test tiles (default 33UVP); the others train."),
    seed: Optional[int] = _SEED,
    overwrite: Optional[bool] = _OVERWRITE,
    config_file: Optional[Path] = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """The TimeSen2Crop benchmark (per-tile CSV series) -> a prepared dataset, split by tile."""
    _run("timesen2crop", {"root": root, "out": out, "val_tiles": val_tiles, "test_tiles": test_tiles, "seed": seed,
                          "overwrite": overwrite}, config_file, as_json)


@prepare_app.command("sitsbert-csv")
def prepare_sitsbert_csv_command(
    train: Optional[Path] = typer.Argument(None, help="Training CSV: band-major values, then DOYs, then the label."),
    out: Optional[Path] = _OUT,
    val: Optional[Path] = typer.Option(None, "--val", help="Validation CSV (default: split from the training file)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test CSV."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="Unlabelled pre-training CSV (no label column)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band names of the columns (default the 10 SITS-BERT bands)."),
    year: Optional[int] = typer.Option(None, "--year", help="Calendar year the day-of-year columns fall in (default 2019)."),
    seed: Optional[int] = _SEED,
    overwrite: Optional[bool] = _OVERWRITE,
    config_file: Optional[Path] = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """SITS-BERT CSV files (one pixel a row) -> a prepared dataset."""
    _run("sitsbert-csv", {"train": train, "out": out, "val": val, "test": test, "unlabeled": unlabeled, "bands": bands,
                          "year": year, "seed": seed, "overwrite": overwrite}, config_file, as_json)


@prepare_app.command("table")
def prepare_table_command(
    csv: Optional[Path] = typer.Argument(None, help="CSV of samples: one row per sample and date (long) or per sample (wide)."),
    out: Optional[Path] = _OUT,
    layout: Optional[str] = typer.Option(None, "--layout", help="auto (default), long or wide."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Sample id column (default: guessed)."),
    date_col: Optional[str] = typer.Option(None, "--date-col", help="Date column (default: guessed)."),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Label column (default: guessed)."),
    band_cols: Optional[str] = typer.Option(None, "--band-cols", help="Band columns (long) or band names (wide), comma-separated (default: every band found)."),
    lon_col: Optional[str] = typer.Option(None, "--lon-col", help="Longitude column."),
    lat_col: Optional[str] = typer.Option(None, "--lat-col", help="Latitude column."),
    code_col: Optional[str] = typer.Option(None, "--code-col", "--code-field", help="Column of class codes (one per class): "
                                           "maps store these codes instead of ids 0..K-1."),
    colors: Optional[Path] = _COLORS,
    fractions: Optional[str] = _FRACTIONS,
    seed: Optional[int] = _SEED,
    overwrite: Optional[bool] = _OVERWRITE,
    config_file: Optional[Path] = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """A table of samples (sits in R, GEE exports) -> a prepared dataset."""
    _run("table", {"csv": csv, "out": out, "layout": layout, "id_col": id_col, "date_col": date_col,
                   "label_col": label_col, "band_cols": band_cols, "lon_col": lon_col, "lat_col": lat_col,
                   "code_col": code_col, "colors": colors,
                   "fractions": fractions, "seed": seed, "overwrite": overwrite}, config_file, as_json)


@prepare_app.command("synthetic")
def prepare_synthetic_command(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to create: l2a/, parcels.gpkg, changes.csv."),
    layout: Optional[str] = typer.Option(None, "--layout", help="safe (default), cog or theia."),
    size: Optional[int] = typer.Option(None, "--size", help="Pixels per side, 10 m each (default 256)."),
    seed: Optional[int] = _SEED,
    difficulty: Optional[float] = typer.Option(None, "--difficulty", help="0 (easy) to 1 (classes overlap); default 0.3."),
    years: Optional[int] = typer.Option(None, "--years", help="Agronomic years from October 2021 (default 2)."),
    zipped: Optional[bool] = typer.Option(None, "--zipped/--no-zipped", help="Write .SAFE.zip archives (safe layout)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Force the processing baseline, e.g. 02.14 or 04.00 "
                                           "(default: the baseline of each date)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes rendering dates in parallel "
                                          "(default 1; the bytes are the same)."),
    sensors: Optional[str] = typer.Option(None, "--sensors", help="s2 plus any of s1, planetscope, vhr, e.g. "
                                          "s2,s1,planetscope,vhr: the same parcels seen by each (default s2)."),
    overwrite: Optional[bool] = _OVERWRITE,
    config_file: Optional[Path] = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write synthetic Sentinel-2 L2A demo data: a farmed area with clouds, its parcels and crop changes."""
    _run("synthetic", {"out": out, "layout": layout, "size": size, "seed": seed, "difficulty": difficulty,
                       "years": years, "zipped": zipped, "baseline": baseline, "workers": workers, "sensors": sensors,
                       "overwrite": overwrite},
         config_file, as_json)
