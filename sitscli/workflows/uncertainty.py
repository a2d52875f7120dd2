"""`sits uncertainty`: an uncertainty raster from a class-probability raster, and where to sample next.

The input is the probability raster of `sits predict-map --probabilities` (or of `sits smooth`);
the output is one band of uncertainty 0-1 (`sitscli.mapping.uncertainty`: entropy, margin or least
confidence), uint16 scaled by 1e-4 (nodata 65535) or float32 (nodata NaN). With `suggest` N, the N
most uncertain pixels at least `min_distance` apart are written as GeoPackage points, with their
uncertainty and two most likely classes, for an expert to label (active learning, as R sits
`sits_uncertainty_sampling`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sitscli import __version__
from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.io import atomic_output, check_output
from sitscli.core.progress import log
from sitscli.data.readers import streaming_env
from sitscli.mapping.geotiff import RasterSpec
from sitscli.mapping.predict import MapTarget, scaled, write_map
from sitscli.mapping.probabilities import Passthrough, ProbabilityCube
from sitscli.mapping.uncertainty import KINDS, Candidate, SampleSuggester, uncertainty

DTYPES = ("uint16", "float32")
# uint16 with a GDAL scale of 1e-4 keeps four decimals of a 0-1 measure in half the size of float32.
UINT16_SCALE = 1e-4
# R sits `sits_uncertainty_sampling` keeps suggested samples `sampling_window` = 10 pixels apart.
DEFAULT_MIN_DISTANCE_PIXELS = 10
SAMPLES_LAYER = "suggested_samples"
DEFAULTS = {"type": "entropy", "dtype": "uint16", "suggest": None, "min_distance": None, "suggest_out": None,
            "block": 512, "cog": True, "compress": "deflate", "resume": False, "overwrite": False}

DESCRIPTIONS = {
    "entropy": "uncertainty: entropy of the class probabilities / log K",
    "margin": "uncertainty: 1 - (p1 - p2), the margin of the two most likely classes",
    "least": "uncertainty: 1 - p1, least confidence",
}


def uncertainty_map(probabilities: str | Path, *, out: str | Path, type: str = "entropy", dtype: str = "uint16",
                    suggest: int | None = None, min_distance: float | None = None,
                    suggest_out: str | Path | None = None, block: int = 512, cog: bool = True,
                    compress: str = "deflate", resume: bool = False, overwrite: bool = False,
                    after_block: Callable[[int], None] | None = None) -> dict:
    """Write the uncertainty of the class-probability raster `probabilities` into `out`.

    Args:
        type: "entropy", "margin" or "least" (see `sitscli.mapping.uncertainty`).
        dtype: "uint16" (scale 1e-4, nodata 65535) or "float32" (nodata NaN).
        suggest: also write this many sample points at the most uncertain pixels to `suggest_out`
            (default OUT_samples.gpkg), at least `min_distance` apart (CRS units, metres on a
            projected grid; default 10 pixels, as R sits).
        resume: continue an interrupted run (not with `suggest`: the candidates of the blocks
            finished before would be missing).
        after_block: called with the number of finished blocks (tests inject faults with it).
    Returns:
        a summary: outputs, type, pixels, pixels with a value, blocks (resumed), mean uncertainty
        (None after a resume), samples written (None without `suggest`).
    """
    if type not in KINDS:
        raise ConfigError(f"--type {type!r}: choose one of {', '.join(KINDS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if block < 16:
        raise ConfigError("--block must be at least 16 pixels")
    if resume and suggest is not None:
        raise ConfigError("--resume cannot suggest samples (the blocks finished before would offer none): "
                          "rerun without --resume, or without --suggest")
    outputs = _check_outputs(out, suggest, min_distance, suggest_out, overwrite)
    source = ProbabilityCube(probabilities)
    valid = source.count_valid(block)
    if valid == 0:
        raise DataContentError(f"{source.path} holds no probabilities (every pixel is nodata): nothing to measure")
    suggester = None
    if suggest is not None:
        suggester = _suggester(source, suggest, min_distance, valid)
    spec = _spec(source, type, dtype)
    classifier = Collecting(type, suggester)
    target = MapTarget(outputs["uncertainty"], spec, scaled(spec, classifier.measure))
    log(f"{type} uncertainty of {source.grid.width} x {source.grid.height} pixels, {source.num_classes} classes")
    with streaming_env():
        summary = write_map(source, classifier, [target], block=block, resume=resume, cog=cog, compress=compress,
                            fingerprint={**source.identity(), "type": type}, after_block=after_block,
                            label="uncertainty")
    # the mean over this run's blocks only is no mean of the raster: none after a resume
    mean = None if summary["blocks_resumed"] else classifier.total / max(summary["pixels_mapped"], 1)
    result = {"type": type, "pixels": summary["pixels"], "pixels_measured": summary["pixels_mapped"],
              "blocks": summary["blocks"], "blocks_resumed": summary["blocks_resumed"], "mean_uncertainty": mean,
              "samples": None}
    if suggester is not None:
        try:
            result["samples"] = _write_samples(suggester.select(), source, outputs["samples"], overwrite)
        except BaseException:
            outputs["uncertainty"].unlink(missing_ok=True)  # no raster without the samples that were asked for
            raise
        if result["samples"] < suggest:
            log(f"only {result['samples']} of {suggest} samples fit {suggester.min_distance:g} apart: "
                "lower --min-distance for more")
    result["outputs"] = {k: str(v) for k, v in outputs.items()}
    return result


class Collecting(Passthrough):
    """`write_map`'s classifier: passes the probabilities on, adds up the uncertainty and shows each
    block to the sample suggester (with the pixel centres `write_map` gives)."""

    def __init__(self, kind: str, suggester: SampleSuggester | None):
        self.kind, self.suggester, self.total = kind, suggester, 0.0
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def measure(self, probs: np.ndarray) -> np.ndarray:
        """(K, h, w) -> (1, h, w) uncertainty; that of the block just classified is not computed again
        (`write_map` encodes the very array `predict_window` returned)."""
        if self.last is not None and self.last[0] is probs:
            return self.last[1][None]
        return uncertainty(probs, self.kind)[None]

    def predict_window(self, values, valid, dates, xy, window=None) -> np.ndarray:
        probs = super().predict_window(values, valid, dates, xy, window)
        unc = uncertainty(probs, self.kind)
        self.last = (probs, unc)
        self.total += float(np.nansum(unc, dtype=np.float64))
        if self.suggester is not None:
            self.suggester.add(unc, probs, xy)
        return probs


def _check_outputs(out, suggest, min_distance, suggest_out, overwrite: bool) -> dict[str, Path]:
    outputs = {"uncertainty": Path(out)}
    if suggest is None:
        if suggest_out is not None or min_distance is not None:
            raise ConfigError("--suggest-out and --min-distance go with --suggest N (the number of samples wanted)")
    else:
        if suggest < 1:
            raise ConfigError(f"--suggest {suggest}: give the number of samples wanted, at least 1")
        if min_distance is not None and min_distance < 0:
            raise ConfigError(f"--min-distance {min_distance}: give a distance >= 0 (CRS units, metres)")
        default = Path(out).with_name(Path(out).stem + "_samples.gpkg")
        outputs["samples"] = Path(suggest_out) if suggest_out is not None else default
        if outputs["samples"].suffix.lower() != ".gpkg":
            raise ConfigError(f"--suggest-out {outputs['samples']}: samples are written as a GeoPackage, "
                              "name it *.gpkg")
    for path in outputs.values():
        check_output(path, overwrite)
    return outputs


def _suggester(source: ProbabilityCube, n: int, min_distance: float | None, valid: int) -> SampleSuggester:
    if n > valid:
        raise ConfigError(f"--suggest {n}: {source.path} has only {valid} pixels with probabilities; "
                          "ask for fewer samples")
    if source.grid.crs is not None and source.grid.crs.is_geographic:
        raise ConfigError(f"{source.path} is in geographic coordinates: --min-distance needs a projected grid "
                          "(metres): reproject it, e.g. gdalwarp -t_srs EPSG:326xx")
    if min_distance is None:
        min_distance = DEFAULT_MIN_DISTANCE_PIXELS * abs(source.grid.transform.a)
    return SampleSuggester(n, min_distance, source.grid.transform)


def _spec(source: ProbabilityCube, kind: str, dtype: str) -> RasterSpec:
    tags = {k: v for k, v in source.tags.items() if k.startswith("SITS_")}
    tags.update({"SITS_UNCERTAINTY": kind, "SITS_UNCERTAINTY_OF": str(source.path), "SITSCLI_VERSION": __version__})
    if dtype == "float32":
        return RasterSpec(count=1, dtype="float32", nodata=float("nan"), descriptions=[DESCRIPTIONS[kind]], tags=tags)
    return RasterSpec(count=1, dtype="uint16", nodata=65535, scale=UINT16_SCALE, descriptions=[DESCRIPTIONS[kind]],
                      tags=tags)


def _write_samples(chosen: list[Candidate], source: ProbabilityCube, path: Path, overwrite: bool) -> int:
    """The chosen pixels as points (pixel centres) with their uncertainty and two best classes."""
    import geopandas as gpd

    names = source.class_names
    table = {
        "rank": list(range(1, len(chosen) + 1)),
        "uncertainty": [c.uncertainty for c in chosen],
        "class_1": [names[c.class_1] for c in chosen], "prob_1": [c.prob_1 for c in chosen],
        "class_2": [names[c.class_2] for c in chosen], "prob_2": [c.prob_2 for c in chosen],
        "row": [c.row for c in chosen], "col": [c.col for c in chosen],
    }
    points = gpd.GeoDataFrame(table, geometry=gpd.points_from_xy([c.x for c in chosen], [c.y for c in chosen]),
                              crs=source.grid.crs)
    with atomic_output(path, overwrite) as tmp:
        named = tmp.with_name(tmp.name + ".gpkg")  # GDAL wants a GeoPackage's name to end in .gpkg
        try:
            points.to_file(named, driver="GPKG", layer=SAMPLES_LAYER)
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)
    return len(chosen)
