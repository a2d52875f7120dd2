"""`sits prepare SOURCE`: resolve options (defaults < --config file < flags), run one recipe.

Each source has a table of defaults, which are also the keys a `--config` YAML may set. The
resolved options are saved as `config.yaml` inside the dataset; giving that file back as
`--config` prepares the same dataset again (inputs and output included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sitscli.core.config import check_unique, load_yaml, resolve
from sitscli.core.dates import parse_date_range
from sitscli.core.errors import ConfigError
from sitscli.core.io import check_output, gdal_path, is_remote, require_exists
from sitscli.data.recipes.s2 import DEFAULT_FRACTIONS, DEFAULT_MAX_PER_POLYGON

_FRACTIONS = ",".join(str(f) for f in DEFAULT_FRACTIONS)

# Option defaults per source; None marks "not given" (or, for INPUTS below, "required").
DEFAULTS: dict[str, dict[str, Any]] = {
    "s2": {
        "folder": None, "out": None, "labels": None, "class_field": None, "color_field": None, "code_field": None,
        "colors": None,
        "bands": None, "aoi": None, "dates": None, "tile": None, "max_cloud": None, "valid_scl": "4,5,6,7",
        "buffer": 0.0, "max_per_polygon": DEFAULT_MAX_PER_POLYGON, "unlabeled": 0, "patch_size": None,
        "fractions": _FRACTIONS, "seed": 0, "overwrite": False,
        # other sensors as extra modalities of the same samples (DESIGN.md, "Several sensors")
        "s1": None, "s1_orbit": "both", "s1_units": "auto", "planetscope": None, "vhr": None, "vhr_bands": None,
        "vhr_resolution": None, "keep_cloudy": False,
    },
    "timesen2crop": {
        # the common TimeSen2Crop split (Weikmann et al. 2021): 33TVN validation, 33UVP test, the rest train
        "root": None, "out": None, "val_tiles": "33TVN", "test_tiles": "33UVP", "seed": 0, "overwrite": False,
    },
    "sitsbert-csv": {
        "train": None, "out": None, "val": None, "test": None, "unlabeled": None, "bands": None, "year": None,
        "seed": 0, "overwrite": False,
    },
    "table": {
        "csv": None, "out": None, "layout": "auto", "id_col": None, "date_col": None, "label_col": None,
        "band_cols": None, "lon_col": None, "lat_col": None, "code_col": None, "colors": None, "fractions": _FRACTIONS,
        "seed": 0, "overwrite": False,
    },
    "synthetic": {
        "out": None, "layout": "safe", "size": 256, "seed": 0, "difficulty": 0.3, "years": 2, "zipped": False,
        "baseline": None, "workers": 1, "sensors": "s2", "overwrite": False,
    },
}
# What each source cannot do without (the first is the positional argument of `sits prepare SOURCE`).
REQUIRED: dict[str, tuple[str, ...]] = {
    "s2": ("folder", "labels", "class_field", "out"),
    "timesen2crop": ("root", "out"),
    "sitsbert-csv": ("out",),       # a train file, an unlabeled one, or both (checked by the recipe)
    "table": ("csv", "out"),
    "synthetic": ("out",),
}
SOURCES = tuple(DEFAULTS)


@dataclass
class PrepareResult:
    """What `sits prepare` made: a dataset (with its summary) or, for `synthetic`, an L2A folder."""

    path: Path
    kind: str                       # "dataset" | "l2a"
    summary: dict[str, Any]


def resolve_options(source: str, flags: Mapping[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """Defaults < config file < flags (None = not given); required options checked."""
    if source not in DEFAULTS:
        raise ConfigError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    file_values = dict(load_yaml(config_file)) if config_file else {}
    saved = file_values.pop("source", source)  # a dataset's config.yaml records its source
    if saved != source:
        raise ConfigError(f"{config_file} holds options of `sits prepare {saved}`, not {source}: "
                          f"use `sits prepare {saved} --config {config_file}`")
    options = resolve(DEFAULTS[source], file_values, flags)
    missing = [name for name in REQUIRED[source] if options.get(name) in (None, "")]
    if missing:
        names = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"prepare {source}: {names} required (give it on the command line or in --config)")
    return options


def prepare(source: str, flags: Mapping[str, Any], config_file: str | Path | None = None) -> PrepareResult:
    """Run `sits prepare SOURCE` with the given flags; returns the output and its summary."""
    from sitscli.data.readers import streaming_env  # rasterio: not for the table sources' start-up

    options = resolve_options(source, flags, config_file)
    check_output(output_path(source, options["out"]), bool(options["overwrite"]))  # locked before any reading
    with streaming_env():  # rasters are read block by block: keep GDAL's cache from growing with them
        return _RUNNERS[source](options)


def output_path(source: str, out) -> Path:
    """Where `sits prepare SOURCE --out OUT` writes: OUT.sits for a dataset, OUT for synthetic L2A."""
    from sitscli.data.prepared import dataset_path

    out = Path(out).expanduser()
    return out if source == "synthetic" else dataset_path(out)


# ------------------------------------------------------------------------ option parsing

def _names(value) -> list[str] | None:
    """"B02,B03" or [B02, B03] -> ["B02", "B03"]; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()] or None


def _numbers(value, kind: type, what: str) -> tuple:
    try:
        return tuple(kind(v) for v in (_names(value) or []))
    except ValueError:
        raise ConfigError(f"{what} {value!r}: give numbers separated by commas") from None


def _aoi(value):
    """'left,bottom,right,top' (raster CRS) or a vector file whose bounds are used."""
    if value is None:
        return None
    parts = _names(value) or []
    if len(parts) == 4:
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            pass
    return require_exists(str(value), "--aoi vector file")


def _choice(value, allowed: tuple[str, ...], what: str) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"{what} {value!r}: choose one of {', '.join(allowed)}")
    return text


def _positive(value, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise ConfigError(f"{what} {value!r}: give a positive number of metres, e.g. 1.0")
    return number


def _path(value) -> Path | None:
    return None if value is None else Path(value).expanduser()


def _raster_input(value) -> Path | str:
    """A local source as a Path, a URL or GDAL virtual path as the string GDAL opens (never through Path())."""
    return gdal_path(value) if is_remote(value) else Path(value).expanduser()


def _saved(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as saved with the output: input and output paths made absolute."""
    return {k: [_absolute(v) for v in value] if isinstance(value, list) else _absolute(value) for k, value in options.items()}


def _absolute(value):
    return str(Path(value).expanduser().resolve()) if isinstance(value, Path) else value


# ------------------------------------------------------------------------------ runners

def _run_s2(o: dict) -> PrepareResult:
    from sitscli.data.recipes.s2 import prepare_s2
    from sitscli.data.recipes.sensors import SensorInputs

    o = {**o, **{k: _path(o[k]) for k in ("out", "labels", "colors", "s1", "planetscope", "vhr")}}
    # one source stays one value (config.yaml as before); several make one dataset of all their tiles
    folders = [_raster_input(f) for f in (o["folder"] if isinstance(o["folder"], (list, tuple)) else [o["folder"]])]
    o["folder"] = folders[0] if len(folders) == 1 else folders
    sensors = SensorInputs(
        s1=o["s1"], s1_orbit=_choice(o["s1_orbit"], ("both", "ascending", "descending"), "--s1-orbit"),
        s1_units=_choice(o["s1_units"], ("auto", "linear", "db"), "--s1-units"), planetscope=o["planetscope"],
        vhr=o["vhr"], vhr_bands=tuple(_names(o["vhr_bands"]) or ()) or None,
        vhr_resolution=_positive(o["vhr_resolution"], "--vhr-resolution"))
    check_unique(_names(o["bands"]) or [], "--bands")
    path = prepare_s2(
        o["folder"], o["out"], labels=o["labels"], class_field=o["class_field"], color_field=o["color_field"],
        code_field=o["code_field"], colors=o["colors"],
        bands=_names(o["bands"]), aoi=_aoi(o["aoi"]), date_range=parse_date_range(o["dates"]), tile=_names(o["tile"]),
        max_cloud=None if o["max_cloud"] is None else float(o["max_cloud"]),
        valid_scl=_numbers(o["valid_scl"], int, "--valid-scl"), buffer=float(o["buffer"]),
        max_per_polygon=int(o["max_per_polygon"]), unlabeled=int(o["unlabeled"]),
        patch_size=None if o["patch_size"] is None else int(o["patch_size"]),
        fractions=_numbers(o["fractions"], float, "--fractions"), seed=int(o["seed"]), overwrite=bool(o["overwrite"]),
        config={"source": "s2", **_saved(o)}, sensors=sensors, keep_cloudy=bool(o["keep_cloudy"]),
    )
    return _dataset_result(path)


def _run_timesen2crop(o: dict) -> PrepareResult:
    from sitscli.data.recipes.timesen2crop import prepare_timesen2crop

    o = {**o, "root": _path(o["root"]), "out": _path(o["out"])}
    path = prepare_timesen2crop(o["root"], o["out"], val_tiles=tuple(_names(o["val_tiles"]) or ()),
                                test_tiles=tuple(_names(o["test_tiles"]) or ()), seed=int(o["seed"]),
                                overwrite=bool(o["overwrite"]), config={"source": "timesen2crop", **_saved(o)})
    return _dataset_result(path)


def _run_sitsbert_csv(o: dict) -> PrepareResult:
    from sitscli.data.recipes.sitsbert_csv import prepare_sitsbert_csv

    o = {**o, **{k: _path(o[k]) for k in ("train", "out", "val", "test", "unlabeled")}}
    extra = {"bands": tuple(_names(o["bands"]))} if o["bands"] else {}
    if o["year"] is not None:
        extra["year"] = int(o["year"])
    path = prepare_sitsbert_csv(o["train"], o["out"], val=o["val"], test=o["test"], unlabeled=o["unlabeled"],
                                seed=int(o["seed"]), overwrite=bool(o["overwrite"]),
                                config={"source": "sitsbert-csv", **_saved(o)}, **extra)
    return _dataset_result(path)


def _run_table(o: dict) -> PrepareResult:
    from sitscli.data.recipes.table import prepare_table

    o = {**o, "csv": _path(o["csv"]), "out": _path(o["out"]), "colors": _path(o["colors"])}
    path = prepare_table(o["csv"], o["out"], layout=o["layout"], id_col=o["id_col"], date_col=o["date_col"],
                         label_col=o["label_col"], band_cols=_names(o["band_cols"]), lon_col=o["lon_col"],
                         lat_col=o["lat_col"], code_col=o["code_col"], colors=o["colors"], fractions=_numbers(o["fractions"], float, "--fractions"),
                         seed=int(o["seed"]), overwrite=bool(o["overwrite"]), config={"source": "table", **_saved(o)})
    return _dataset_result(path)


def _run_synthetic(o: dict) -> PrepareResult:
    from sitscli.data.synthetic import write_synthetic

    scene = write_synthetic(_path(o["out"]), size=int(o["size"]), seed=int(o["seed"]), layout=o["layout"],
                            years=int(o["years"]), difficulty=float(o["difficulty"]), zipped=bool(o["zipped"]),
                            baseline=o["baseline"], workers=int(o["workers"]), sensors=_names(o["sensors"]) or (),
                            overwrite=bool(o["overwrite"]))
    summary = {
        "l2a": str(scene.l2a), "labels": str(scene.parcels), "class_field": scene.class_field, "changes": str(scene.changes),
        "layout": scene.layout, "tile": scene.tile, "crs": scene.crs, "dates": len(scene.dates),
        "classes": list(scene.class_names), "years": [list(y) for y in scene.years], "sensors": list(scene.sensors),
        **{name: str(getattr(scene, name)) for name in ("s1", "planetscope", "vhr") if getattr(scene, name) is not None},
    }
    return PrepareResult(Path(scene.root), "l2a", summary)


def _dataset_result(path: Path) -> PrepareResult:
    from sitscli.data.prepared import open_prepared

    return PrepareResult(Path(path), "dataset", open_prepared(path).summary())


_RUNNERS: dict[str, Callable[[dict], PrepareResult]] = {
    "s2": _run_s2, "timesen2crop": _run_timesen2crop, "sitsbert-csv": _run_sitsbert_csv,
    "table": _run_table, "synthetic": _run_synthetic,
}
