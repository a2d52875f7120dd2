"""`sits smooth`: Bayesian smoothing of a class-probability raster (`sitscli.mapping.smooth`).

The input is the probability raster of `sits predict-map --probabilities`; the outputs are the
smoothed probabilities (same classes, same storage: uint8 percent or float32) and optionally the
class map of the smoothed probabilities (argmax, with class names and colours). The raster is
smoothed block by block, each block read with a halo of window // 2 pixels so that the result is
that of the whole image, through predict-map's block writer: `--resume` continues an interrupted
run, outputs appear under their names only when complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from sitscli import __version__
from sitscli.core.errors import CheckpointError, ConfigError, DataContentError
from sitscli.core.io import check_output
from sitscli.core.progress import log
from sitscli.data.cube import Cube
from sitscli.data.readers import streaming_env
from sitscli.mapping.geotiff import RasterSpec, class_map_spec, default_colors
from sitscli.mapping.predict import MapTarget, class_ids, scaled, write_map
from sitscli.mapping.probabilities import DESCRIPTION_PREFIX, Passthrough, ProbabilityCube
from sitscli.mapping.smooth import (
    DEFAULT_NEIGH_FRACTION, DEFAULT_SMOOTHNESS, DEFAULT_WINDOW, bayes_smooth, halo, parse_smoothness,
)

DEFAULTS = {
    "class_map": None, "window": DEFAULT_WINDOW, "neigh_fraction": DEFAULT_NEIGH_FRACTION,
    "smoothness": DEFAULT_SMOOTHNESS, "block": 512, "cog": True, "compress": "deflate", "resume": False,
    "overwrite": False,
}


def smooth(probabilities: str | Path, *, out: str | Path, class_map: str | Path | None = None,
           window: int = DEFAULT_WINDOW, neigh_fraction: float = DEFAULT_NEIGH_FRACTION,
           smoothness: float | str | list = DEFAULT_SMOOTHNESS, block: int = 512, cog: bool = True,
           compress: str = "deflate", resume: bool = False, overwrite: bool = False,
           after_block: Callable[[int], None] | None = None) -> dict:
    """Smooth the class-probability raster `probabilities` into `out` (and the class map `class_map`).

    Args:
        window: odd neighbourhood side >= 3; neigh_fraction: in (0, 1]; smoothness: sigma^2 > 0,
            one number or one per class ("10,20,..." or a list), see `sitscli.mapping.smooth`.
        block: pixels per side smoothed at a time (plus the halo); memory grows with block^2.
        after_block: called with the number of finished blocks (tests inject faults with it).
    Returns:
        a summary: outputs, classes, blocks, blocks resumed, pixels, pixels smoothed, parameters.
    """
    outputs = _check_outputs(out, class_map, overwrite)
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"--window {window}: give an odd number of pixels >= 3 (sits uses 9)")
    if not 0 < neigh_fraction <= 1:
        raise ConfigError(f"--neigh-fraction {neigh_fraction}: give a fraction in (0, 1] (sits uses 0.5)")
    if block < 16:
        raise ConfigError("--block must be at least 16 pixels")
    source = ProbabilityCube(probabilities)
    sigma2 = parse_smoothness(smoothness, source.num_classes)
    if source.count_valid(block) == 0:
        raise DataContentError(f"{source.path} holds no probabilities (every pixel is nodata): nothing to smooth")
    log(f"smoothing {source.grid.width} x {source.grid.height} pixels, {source.num_classes} classes "
        f"(window {window}, neigh_fraction {neigh_fraction:g}, smoothness {_text(sigma2)})")
    cube = SmoothedCube(source, window=window, neigh_fraction=neigh_fraction, smoothness=sigma2)
    parameters = {"window": window, "neigh_fraction": neigh_fraction, "smoothness": sigma2.tolist()}
    targets = _targets(outputs, source, parameters)
    with streaming_env():
        summary = write_map(cube, Passthrough(), targets, block=block, resume=resume, cog=cog, compress=compress,
                            fingerprint={**source.identity(), **parameters}, after_block=after_block,
                            label="smooth")
    return {"outputs": {k: str(v) for k, v in outputs.items()}, "classes": source.class_names,
            "blocks": summary["blocks"], "blocks_resumed": summary["blocks_resumed"], "pixels": summary["pixels"],
            "pixels_smoothed": summary["pixels_mapped"], **parameters}


class SmoothedCube(Cube):
    """The smoothed probabilities of a `ProbabilityCube`, computed window by window.

    `read(window)` smooths the window grown by `halo(window_size)` pixels on each side and keeps
    its centre: values (1, K, h, w) probabilities (0 where no data), valid (1, h, w).
    """

    def __init__(self, source: ProbabilityCube, *, window: int, neigh_fraction: float, smoothness: np.ndarray):
        self.source, self.window, self.neigh_fraction, self.smoothness = source, window, neigh_fraction, smoothness
        self.dates, self.band_names, self.grid = source.dates, source.band_names, source.grid
        self.layout, self.tile = "smoothed probabilities", None

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = halo(self.window)
        grown = Window(window.col_off - r, window.row_off - r, window.width + 2 * r, window.height + 2 * r)
        probs = bayes_smooth(self.source.read_probabilities(grown), window=self.window,
                             neigh_fraction=self.neigh_fraction, smoothness=self.smoothness)
        centre = probs[:, r:r + int(window.height), r:r + int(window.width)]
        valid = ~np.isnan(centre[0])
        return np.nan_to_num(centre)[None], valid[None]


def _check_outputs(out, class_map, overwrite: bool) -> dict[str, Path]:
    outputs = {"probabilities": Path(out)}
    if class_map is not None:
        outputs["map"] = Path(class_map)
        if outputs["map"].resolve() == outputs["probabilities"].resolve():
            raise ConfigError("--out and --class-map must be different files")
    for path in outputs.values():
        check_output(path, overwrite)
    return outputs


def _targets(outputs: dict[str, Path], source: ProbabilityCube, parameters: dict) -> list[MapTarget]:
    provenance = {k: v for k, v in source.tags.items() if k.startswith("SITS_")}
    smoothness = ",".join(f"{v:g}" for v in parameters["smoothness"])
    provenance.update({"SITS_SMOOTHED_FROM": str(source.path), "SITSCLI_VERSION": __version__,
                       "SITS_SMOOTHING": f"bayes window={parameters['window']} "
                                         f"neigh_fraction={parameters['neigh_fraction']:g} smoothness={smoothness}"})
    is_float = np.dtype(source.dtype).kind == "f"
    nodata = float("nan") if is_float else (source.nodata if source.nodata is not None else np.iinfo(source.dtype).max)
    spec = RasterSpec(count=source.num_classes, dtype=source.dtype, nodata=nodata, scale=source.scale, tags=provenance,
                      descriptions=[DESCRIPTION_PREFIX + n for n in source.class_names])
    targets = [MapTarget(outputs["probabilities"], spec, scaled(spec))]
    if "map" in outputs:
        class_spec = class_map_spec(source.class_names, _class_colors(source), tags=provenance,
                                    class_codes=source.class_codes())
        targets.append(MapTarget(outputs["map"], class_spec, class_ids(class_spec)))
    return targets


def _class_colors(source: ProbabilityCube) -> list[str]:
    """The classes' colours: from the raster's tags, else from the run that made it (predict-map
    records it in SITS_RUN), else a fixed palette."""
    colors = source.class_colors()
    if colors is None and source.tags.get("SITS_RUN"):
        from sitscli.engine.checkpoint import read_card

        try:
            info = read_card(Path(source.tags["SITS_RUN"])).info
        except (OSError, CheckpointError):
            info = None  # the run has moved or gone: fall back on the palette
        if info is not None and list(info.class_names) == source.class_names and info.class_colors:
            colors = list(info.class_colors)
    return colors or default_colors(source.class_names)


def _text(values: np.ndarray) -> str:
    return f"{values[0]:g}" if np.all(values == values[0]) else ",".join(f"{v:g}" for v in values)
