"""`sits predict-map`: a classifier run applied to every pixel of an image time series.

The input's dates need not be the training dates: the model reads each pixel's dates. Patch models
(OmniSat) classify the input cut into their training tiles; a multi-sensor model maps from
Sentinel-2 alone, or with the other sensors it knows given as `s1` (a Sentinel-1 folder) and `vhr`
(an ortho image or folder of tiles), read on the Sentinel-2 grid under each block.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from sitscli import __version__
from sitscli.core.dates import iso
from sitscli.core.errors import CheckpointError, ConfigError
from sitscli.core.io import check_output, gdal_path, is_remote, lock_output, require_input
from sitscli.core.legend import apply_color_file, default_colors, pixel_values
from sitscli.core.progress import log
from sitscli.data.readers.common import normalise_tile
from sitscli.data.cube import Cube
from sitscli.engine.checkpoint import ModelCard, check_bands, check_modalities, input_options, load_model
from sitscli.engine.device import resolve_device
from sitscli.engine.distributed import DistContext, gather, process_group
from sitscli.data.readers import streaming_env
from sitscli.mapping.blocks import BlockProgress, partial_path
from sitscli.mapping.geotiff import COMPRESSIONS, RasterSpec, class_map_spec, legend_tags
from sitscli.mapping.predict import MapTarget, PatchClassifier, PixelClassifier, class_ids, scaled, write_map
from sitscli.models import registry

# Probabilities are stored as uint8 percent by default (value 0-100, GDAL scale 0.01, nodata 255):
# a quarter of float32's size for a K-band raster, and 1 % steps are finer than any map's accuracy.
# `prob_dtype="float32"` keeps full precision (nodata NaN).
PROB_DTYPES = ("uint8", "float32")
PERCENT = 0.01

DEFAULTS = {
    "probabilities": None, "confidence": None, "prob_dtype": "uint8", "bands": None, "aoi": None,
    "date_range": None, "dates_file": None, "tile": None, "max_cloud": None, "block": 512, "batch_size": 2048,
    "device": "auto", "cog": True, "compress": "deflate", "colors": None, "resume": False, "overwrite": False,
    "s1": None, "vhr": None,
}
DEFAULT_TILE = 32  # S2 pixels per tile side for a patch model whose run does not record its training tile


def predict_map(source: str | Path | Cube, *, model: str | Path, out: str | Path,
                probabilities: str | Path | None = None, confidence: str | Path | None = None,
                prob_dtype: str = "uint8", bands: list[str] | None = None, aoi=None,
                date_range: tuple[int, int] | None = None, dates_file: str | Path | None = None,
                tile: str | None = None, max_cloud: float | None = None, block: int = 512,
                batch_size: int = 2048, device: str = "auto", cog: bool = True,
                compress: str = "deflate", colors: str | Path | None = None, resume: bool = False,
                overwrite: bool = False, s1: str | Path | None = None,
                vhr: str | Path | None = None, after_block: Callable[[int], None] | None = None,
                after_publish: Callable[[Path], None] | None = None, ctx: DistContext | None = None) -> dict:
    """Map `source` (an L2A folder, a GeoTIFF stack, a STAC document, or an opened `Cube`) with the
    classifier `model`. A stack or STAC document may be a URL or GDAL virtual path; `tile` and
    `max_cloud` choose the items of a STAC document (see `open_source`).

    Writes `out` (the class codes of the run, or class ids 0..K-1 when it has none; colour table,
    class names, .qml and .clr legends), and optionally `probabilities` (one band per class) and
    `confidence` (the largest probability); COGs unless `cog` is False. `colors` is a colour file
    (`sitscli.core.legend.read_color_file`) replacing the run's class colours. Returns a summary.
    Every option, the model and the input are checked before the first byte is written.

    Under torchrun (WORLD_SIZE > 1; gloo on CPU, NCCL on GPUs) the ranks share the blocks of the map
    and rank 0 writes it (see `write_map`); `ctx` is a process group set up by the caller.
    """
    with process_group(device, ctx) as ctx:
        if prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"--prob-dtype {prob_dtype!r}: choose one of {', '.join(PROB_DTYPES)}")
        if compress not in COMPRESSIONS:
            raise ConfigError(f"--compress {compress!r}: choose one of {', '.join(COMPRESSIONS)}")
        if block < 16 or batch_size < 1:
            raise ConfigError("--block must be at least 16 pixels and --batch-size at least 1")
        torch_device = ctx.device if ctx is not None else resolve_device(device)
        outputs = _check_outputs(out, probabilities, confidence, overwrite, resume)
        net, card = load_model(Path(model), torch_device)
        spec = _classifier_spec(card, net)
        given = {"s1": s1, "vhr": vhr}
        check_modalities(card, ("s2", *(m for m, path in given.items() if path is not None)))
        with streaming_env():  # remote sources are opened with the retries of the streaming settings
            cube = _open(source, card, bands=bands, aoi=aoi, date_range=date_range, dates_file=dates_file, tile=tile,
                         max_cloud=max_cloud)
        log(f"mapping {cube.grid.width} x {cube.grid.height} pixels, {len(cube.dates)} dates "
            f"({iso(cube.dates[0])} to {iso(cube.dates[-1])}) with {card.model_name} on {torch_device}")
        warn_outside_training(cube.dates, card, spec)
        if spec.input == "patch":
            patch = int(card.extra.get("patch_size") or DEFAULT_TILE)
            block = max(patch, block // patch * patch)  # blocks on the tile grid, so tiles line up across blocks
            classifier = PatchClassifier(net, card.info.num_classes, tile=patch, batch_size=max(1, batch_size // patch**2),
                                         device=torch_device, others=_other_sensors(card, cube, given))
        else:
            _refuse_others(card, given)
            classifier = PixelClassifier(net, card.info.num_classes, compact=spec.compact, max_len=spec.max_len,
                                         batch_size=batch_size, device=torch_device)
        class_colors = list(card.info.class_colors) or default_colors(card.info.class_names)
        if colors is not None:
            class_colors = apply_color_file(colors, card.info.class_names, card.info.class_codes, class_colors)
        targets = _targets(outputs, card, cube, prob_dtype, class_colors)
        with streaming_env():
            summary = write_map(cube, classifier, targets, block=block, resume=resume, cog=cog, compress=compress,
                                fingerprint=_fingerprint(source, card, cube, given), after_block=after_block,
                                after_publish=after_publish, ctx=ctx)
        return {**summary, "outputs": {k: str(v) for k, v in outputs.items()}, "classes": card.info.class_names,
                "class_values": pixel_values(card.info.num_classes, card.info.class_codes),
                "model": card.model_name, "dates": len(cube.dates)}


MOSAIC = "mosaic"   # OUT_DIR/mosaic.vrt (or mosaic_EPSG_32631.vrt ... when the tiles span several CRS)


def predict_tiles(sources: list, *, model: str | Path, out_dir: str | Path, tiles: list[str] | None = None,
                  overwrite: bool = False, **options) -> dict:
    """Map several inputs, or several tiles of one STAC document, into `out_dir`/NAME.tif each plus a
    VRT mosaic (`out_dir`/mosaic.vrt).

    NAME is 'T31TCJ' for a tile of `tiles`, else the input's name (folder, file stem). A tile whose map
    is there (and no partial map beside it) is skipped, a partial one is resumed, unless `overwrite`:
    so a job killed at any point, or a SLURM array with one tile per task, is completed by running the
    same command again. `tiles`: MGRS tiles of a single STAC source, or ['all'] for every tile in it.
    Other options are `predict_map`'s (per-tile probability and confidence rasters are not offered).
    Returns {tile name: summary (or {'skipped': True})}, 'mosaics': the VRT paths}.
    """
    if options.get("probabilities") or options.get("confidence"):
        raise ConfigError("--probabilities and --confidence take one input: map tiles one at a time to get them")
    options.pop("resume", None)        # decided per tile: a partial map is always continued
    out_dir = Path(out_dir)
    if out_dir.suffix.lower() in (".tif", ".tiff"):
        raise ConfigError(f"--out {out_dir}: with several inputs or --tiles, --out is a folder (one map per tile "
                          "and mosaic.vrt go there)")
    jobs = _tile_jobs(sources, tiles)
    with process_group(options.get("device", "auto")) as ctx:
        results = {name: _map_tile(name, source, tile, model=model, out=out_dir / f"{name}.tif",
                                   overwrite=overwrite, ctx=ctx, **options) for name, source, tile in jobs}
    if ctx is not None and not ctx.is_main:
        return {"tiles": results, "mosaics": []}
    maps = [out_dir / f"{name}.tif" for name, _, _ in jobs]
    return {"tiles": results, "mosaics": [str(p) for p in write_mosaics(maps, out_dir)]}


def _map_tile(name: str, source, tile: str | None, *, model, out: Path, overwrite: bool,
              ctx: DistContext | None, **options) -> dict:
    """One tile's map: skipped when finished, resumed when partial (rank 0 decides for every rank)."""
    unfinished = BlockProgress.sidecar(partial_path(out)).is_file()
    finished = out.exists() and not unfinished and not overwrite
    if ctx is not None:   # the ranks must agree, and rank 0 may already be writing the tile's files
        unfinished, finished = gather((unfinished, finished), ctx)[0]
    if finished:
        log(f"{name}: already mapped ({out}): skipped (pass --overwrite to map it again)")
        return {"skipped": True, "outputs": {"map": str(out)}}
    log(f"{name}: mapping {source}" + (f" tile {tile}" if tile else ""))
    return predict_map(source, model=model, out=out, tile=tile, resume=unfinished and not overwrite,
                       overwrite=overwrite, ctx=ctx, **options)


def _tile_jobs(sources: list, tiles: list[str] | None) -> list[tuple[str, object, str | None]]:
    """(output name, source, tile or None) of every map to make."""
    if tiles:
        if len(sources) != 1:
            raise ConfigError("--tiles picks tiles of one STAC catalog: give a single input with it")
        source = require_input(sources[0], "input")
        if [t.lower() for t in tiles] == ["all"]:
            from sitscli.data.readers import stac

            if not stac.is_stac(source):
                raise ConfigError("--tiles all lists the tiles of a STAC catalog; the input is not one")
            tiles = stac.tiles(source)
        names = [f"T{normalise_tile(t)}" for t in tiles]
        jobs = [(name, source, name) for name in names]
    else:
        jobs = [(_input_stem(s), s, None) for s in sources]
    names = [name for name, _, _ in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"several inputs would write the same map ({', '.join(repeated)}.tif): give each tile "
                          "its own folder name, or list each tile once")
    return jobs


def _input_stem(source) -> str:
    """The map name of an input: its tile when it is a cube that knows it, else its folder or file name."""
    if isinstance(source, Cube):
        if not source.tile:
            raise ConfigError("an in-memory cube without a tile cannot name its map")
        return f"T{source.tile}"
    name = str(source).rstrip("/").rsplit("/", 1)[-1]
    return name.split(".")[0] if "." in name and not name.startswith(".") else name


def write_mosaics(maps: list[Path], out_dir: Path) -> list[Path]:
    """mosaic.vrt over the maps that exist, or one mosaic_<CRS>.vrt per CRS when they span several."""
    from sitscli.mapping.mosaic import group_by_crs, write_vrt

    existing = [m for m in maps if m.exists()]
    if not existing:
        return []
    groups = group_by_crs(existing)
    if len(groups) == 1:
        return [write_vrt(existing, out_dir / f"{MOSAIC}.vrt")]
    return [write_vrt(group, out_dir / f"{MOSAIC}_{crs.replace(':', '_')}.vrt") for crs, group in groups.items()]


def warn_outside_training(dates: np.ndarray, card: ModelCard, spec: registry.ModelSpec) -> None:
    """Say how many input dates lie outside the period the classifier was trained on."""
    if not card.info.train_period:
        return  # a run from before the period was recorded
    first, last = card.info.train_period
    outside = int(((dates < first) | (dates > last)).sum())
    if outside == 0:
        return
    how = ("it reads dates as days of the year, so check that the input covers the same season"
           if spec.folds_years(card.hparams) else
           "the model never saw these positions in time, so expect less accurate classes")
    log(f"warning: {outside} of {len(dates)} input dates lie outside the training period {iso(first)} to {iso(last)}: {how}")


def _check_outputs(out, probabilities, confidence, overwrite: bool, resume: bool) -> dict[str, Path]:
    """The outputs, locked; an existing one is refused unless --overwrite, or --resume of a job
    that was interrupted while it put its outputs in place (its progress sidecar is still there)."""
    given = {"map": out, "probabilities": probabilities, "confidence": confidence}
    outputs = {k: Path(v) for k, v in given.items() if v is not None}
    resolved = [p.resolve() for p in outputs.values()]
    if len(set(resolved)) < len(resolved):
        raise ConfigError("--out, --probabilities and --confidence must be different files")
    for path in outputs.values():
        lock_output(path)
    unfinished = resume and BlockProgress.sidecar(partial_path(outputs["map"])).is_file()
    for path in outputs.values():
        check_output(path, overwrite or unfinished)
    return outputs


def _classifier_spec(card: ModelCard, net) -> registry.ModelSpec:
    if card.info.num_classes == 0:
        raise CheckpointError(f"{card.run_dir} is a pre-training run (no classes): fine-tune it first "
                              f"(sits finetune --from {card.run_dir}) and map with the fine-tuned run")
    if getattr(net, "multilabel", False):
        raise CheckpointError(f"{card.run_dir} classifies whole tiles (several classes each), not pixels: fine-tune "
                              f"a per-patch classifier to map (--hparam task=dense)")
    return registry.get(card.model_name)


def _other_sensors(card: ModelCard, cube: Cube, given: dict) -> dict[str, Cube]:
    """The other sensors given, opened on the Sentinel-2 grid, keyed by batch prefix; refused when the
    model has no encoder for one, or when the VHR image cannot be brought to the model's resolution."""
    known = card.info.modalities
    unknown = [m for m, path in given.items() if path is not None and m not in known]
    if unknown:
        raise ConfigError(f"model {card.run_dir} was trained without {', '.join(unknown)}: map without "
                          + " ".join(f"--{m}" for m in unknown))
    others: dict[str, Cube] = {}
    if given["s1"] is not None:
        from sitscli.data.readers import open_s1

        others["s1"] = open_s1(Path(given["s1"]), cube.grid, date_range=(int(cube.dates.min()), int(cube.dates.max())))
    if given["vhr"] is not None:
        from sitscli.data.readers import open_vhr

        attrs = known["vhr"]   # read at the model's resolution and bands, whatever the image's own
        others["vhr"] = open_vhr(Path(given["vhr"]), cube.grid, bands=list(attrs["band_names"]),
                                 resolution=float(attrs["resolution"]))
    fed = card.extra.get("modalities")
    if fed and set(fed) - {"s2", *others}:
        log(f"the model was fine-tuned with {', '.join(fed)}; mapping with {', '.join(['s2', *others])}")
    return others


def _refuse_others(card: ModelCard, given: dict) -> None:
    """Pixel models read Sentinel-2 only."""
    extra = [m for m, path in given.items() if path is not None]
    if extra:
        raise ConfigError(f"model {card.model_name} maps from Sentinel-2 alone: leave out "
                          + " ".join(f"--{m}" for m in extra))


def _open(source, card: ModelCard, *, bands, aoi, date_range, dates_file, tile=None, max_cloud=None) -> Cube:
    """Open the source and check it holds the model's bands, in the model's order."""
    if isinstance(source, Cube):
        cube = source
    else:
        from sitscli.data.readers import open_source

        # Without --bands the reader is asked for the model's bands, in the model's order; --bands
        # names the bands of a stack that does not name them itself (a subset is taken below).
        cube = open_source(require_input(source, "input"), bands=bands or list(card.info.band_names), aoi=aoi,
                           date_range=date_range, dates_file=Path(dates_file) if dates_file else None, tile=tile,
                           max_cloud=max_cloud, **input_options(card))
    if list(cube.band_names) != list(card.info.band_names):
        lacking = [b for b in card.info.band_names if b not in cube.band_names]
        if lacking:
            check_bands(card, list(cube.band_names))  # raises, naming what is missing
        cube = BandSubset(cube, list(card.info.band_names))
    return cube


class BandSubset(Cube):
    """The model's bands, in the model's order, of a cube that has more (or the same, reordered)."""

    def __init__(self, cube: Cube, band_names: list[str]):
        self.cube, self.band_names = cube, band_names
        self.index = np.array([list(cube.band_names).index(b) for b in band_names])
        self.dates, self.grid, self.layout, self.tile = cube.dates, cube.grid, cube.layout, cube.tile

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, valid = self.cube.read(window, times)
        return values[:, self.index], valid

    def read_valid(self, window: Window | None = None, times: np.ndarray | None = None) -> np.ndarray:
        return self.cube.read_valid(window, times)


def _targets(outputs: dict[str, Path], card: ModelCard, cube: Cube, prob_dtype: str,
             class_colors: list[str]) -> list[MapTarget]:
    names, codes = list(card.info.class_names), list(card.info.class_codes)
    provenance = {"SITS_MODEL": card.model_name, "SITS_RUN": str(card.run_dir), "SITSCLI_VERSION": __version__,
                  "SITS_DATES": f"{iso(cube.dates[0])}/{iso(cube.dates[-1])} ({len(cube.dates)} dates)"}
    class_spec = class_map_spec(names, class_colors, tags=provenance, class_codes=codes)
    targets = [MapTarget(outputs["map"], class_spec, class_ids(class_spec))]
    is_float = prob_dtype == "float32"
    nodata, scale = (float("nan"), None) if is_float else (255, PERCENT)
    if "probabilities" in outputs:
        # the legend in the tags too, so that commands reading probabilities (smooth, uncertainty)
        # write class maps with the same codes, names and colours
        spec = RasterSpec(count=len(names), dtype=prob_dtype, nodata=nodata, scale=scale,
                          tags={**provenance, **legend_tags(names, class_colors, codes)},
                          descriptions=[f"probability {n}" for n in names])
        targets.append(MapTarget(outputs["probabilities"], spec, scaled(spec)))
    if "confidence" in outputs:
        spec = RasterSpec(count=1, dtype=prob_dtype, nodata=nodata, scale=scale, tags=provenance,
                          descriptions=["confidence (largest class probability)"])
        targets.append(MapTarget(outputs["confidence"], spec, scaled(spec, lambda p: p.max(axis=0, keepdims=True))))
    return targets


def _input_name(source) -> str:
    if isinstance(source, Cube):
        return repr(type(source).__name__)
    return gdal_path(source) if is_remote(source) else str(Path(source).resolve())


def _fingerprint(source, card: ModelCard, cube: Cube, given: dict) -> dict:
    """What must not change between a run and its --resume."""
    grid = cube.grid
    others = {m: str(Path(path).resolve()) for m, path in given.items() if path is not None}
    return ({"sensors": others} if others else {}) | {
        "input": _input_name(source),
        "model": str(Path(card.run_dir).resolve()) + "@" + str(card.weights_sha256),
        "grid": [grid.crs.to_string() if grid.crs else "", list(grid.transform)[:6], grid.height, grid.width],
        "dates": [int(d) for d in cube.dates],
        "bands": list(cube.band_names),
    }

