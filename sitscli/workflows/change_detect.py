"""`sits change-detect A B`: a per-pixel change score between two image time series of one area.

Methods (Dumeur, Valero, Inglada 2024, Section V-D):
- "alise": both series are encoded by an ALISE run into aligned representations Y_A, Y_B; the score
  is 1 - the cosine similarity of the two (default, ours), or the paper's mean over queries and
  channels of (Y_A - Y_B)^2 (eq. 12, `--distance mse`). The series may have any dates.
- "gapfill" (their GF baseline): each pixel's valid dates linearly interpolated on a 5-day grid over
  one year of each series (grids aligned by day of year), the same mean squared difference on the
  interpolated reflectance. Needs no model.
The paper reports a ROC AUC of 0.91 (ALISE) vs 0.88 (GF) on its RotCrop change-detection set.

Outputs: the score as a float32 GeoTIFF on A's grid (NaN where either series has fewer than 2 valid
dates), optionally a binary map at a threshold (a value, or Otsu's on the scores) and, against a
reference of 0/1 change, the ROC AUC and curve.
"""

from __future__ import annotations

from pathlib import Path

from sitscli.core.dates import day_of_year
from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.io import check_output, require_exists
from sitscli.core.progress import log
from sitscli.data.cube import Cube
from sitscli.engine.checkpoint import read_card
from sitscli.engine.device import resolve_device
from sitscli.mapping.change import (
    OnGrid, Reference, alise_distance, binary_map, gapfill_distance, overlaps, raster_otsu, roc, scores_and_labels,
    write_blocks,
)
from sitscli.mapping.geotiff import RasterSpec
from sitscli.workflows.embed import check_patching, date_span, load_aligned, open_series, provenance, warn_patch_size

METHODS = ("alise", "gapfill")
# "mse" is the paper's eq. 12. "cosine" ignores the offset the date encoding adds to every pixel's Y
# (most of eq. 12's score with absolute dates) and scores the direction only. Cosine is ALISE's
# default (a deviation from the paper, measured): bench/change_detect.py, 3 seeds, ROC AUC 0.889 +- 0.028
# with cosine vs 0.768 +- 0.148 with eq. 12, the gap-filling baseline 0.830 +- 0.127. Gap filling
# always scores with the mean squared difference (its "mse").
DISTANCES = ("mse", "cosine")
DEFAULT_DISTANCE = {"alise": "cosine", "gapfill": "mse"}
DEFAULTS = {"model": None, "method": "alise", "distance": None, "threshold": None, "binary_out": None, "reference": None,
            "reference_field": "change", "roc_out": None, "patch": 64, "overlap": 16, "block": 256,
            "batch_size": 8, "device": "auto", "bands": None, "date_range_a": None, "date_range_b": None,
            "cog": True, "overwrite": False}
# Otsu splits the score histogram in two; when change is rare (the usual case) the upper class is the
# change. More than half of the pixels above the threshold means the histogram had no such tail.
OTSU_MAJORITY = 0.5


def change_detect(a: str | Path | Cube, b: str | Path | Cube, *, out: str | Path, model: str | Path | None = None,
                  method: str = "alise", distance: str | None = None, threshold: float | str | None = None, binary_out: str | Path | None = None,
                  reference: str | Path | None = None, reference_field: str = "change", roc_out: str | Path | None = None,
                  patch: int = 64, overlap: int = 16, block: int = 256, batch_size: int = 8, device: str = "auto",
                  bands: list[str] | None = None, date_range_a: tuple[int, int] | None = None,
                  date_range_b: tuple[int, int] | None = None, cog: bool = True, overwrite: bool = False) -> dict:
    """Score change between series `a` and `b` (L2A folders, stacks or `Cube`s) into `out` on A's grid.

    Args:
        model: an ALISE run (pre-training or fine-tuned); required by method "alise". With "gapfill"
            it only fixes the bands.
        distance: ALISE's change score: "cosine" (1 - cosine similarity of the two Y, the default) or
            "mse" (eq. 12); gap filling takes "mse" only (None = the method's default).
        threshold: None, a score, or "otsu": also write the binary map `binary_out` (default
            OUT_binary.tif; uint8 1 change, 0 none, 255 nodata).
        reference: a raster of 0/1 change on any grid, or polygons with a 0/1 `reference_field`:
            ROC AUC over the pixels it labels, curve in `roc_out` (default OUT_roc.png).
        patch, overlap, block: ALISE patch side, blended overlap, and the block side computed at a
            time (multiples of 8; memory follows the block).
        bands: band names of stacks that do not name them.
        date_range_a, date_range_b: (first, last) days since 1970 read from each source, e.g. two
            agronomic years of one L2A folder given as both A and B.
        cog: write the rasters as COGs (see `sitscli.mapping.geotiff.finish`).
    Returns:
        a summary: outputs, pixels, pixels scored, threshold, changed fraction, auc.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    distance = distance or DEFAULT_DISTANCE[method]
    if distance not in DISTANCES:
        raise ConfigError(f"--distance {distance!r}: choose one of {', '.join(DISTANCES)}")
    if distance != "mse" and method != "alise":
        raise ConfigError(f"--distance {distance} scores ALISE representations: use it with --method alise")
    check_patching(patch, overlap, block)
    threshold = _parse_threshold(threshold)
    if binary_out is not None and threshold is None:
        raise ConfigError("--binary-out needs --threshold (a change score, or otsu)")
    outputs = _outputs(out, threshold is not None, binary_out, reference, roc_out, overwrite)
    if reference is not None:
        require_exists(reference, "--reference")
    encoder = card = None
    if method == "alise":
        if model is None:
            raise ConfigError("--method alise needs --model RUN (an ALISE run); --method gapfill needs none")
        encoder, card = load_aligned(model, resolve_device(device), batch_size)
        warn_patch_size(patch, card)
    elif model is not None:
        card = read_card(Path(model))
    band_names = list(card.info.band_names) if card is not None else None
    cube_a = open_series(a, band_names, bands=bands, what="series A", card=card, date_range=date_range_a)
    cube_b = open_series(b, list(cube_a.band_names), bands=bands, what="series B", card=card, date_range=date_range_b)
    cube_b = _on_grid_of(cube_a, cube_b)
    # read now: a missing --reference-field must stop the command before the first byte is written
    truth = Reference(Path(reference), cube_a.grid, reference_field) if reference is not None else None
    log(f"change-detect ({method}): A {date_span(cube_a)}, B {date_span(cube_b)}, "
        f"{cube_a.grid.width} x {cube_a.grid.height} px")
    tags = provenance(card, {"SITS_METHOD": method, "SITS_DISTANCE": distance, "SITS_DATES_A": date_span(cube_a),
                             "SITS_DATES_B": date_span(cube_b)})

    if method == "alise":
        def compute(window):
            return alise_distance(window, cube_a, cube_b, encoder, patch=patch, overlap=overlap, distance=distance)
        description = ("change score: mean squared difference of the aligned representations (eq. 12)" if distance == "mse"
                       else "change score: 1 - cosine similarity of the aligned representations")
    else:
        anchor = int(day_of_year(cube_a.dates[:1])[0]) - 1

        def compute(window):
            return gapfill_distance(window, cube_a, cube_b, anchor)
        description = "change score: mean squared difference of the 5-day gap-filled reflectance"
    spec = RasterSpec(count=1, dtype="float32", nodata=float("nan"), descriptions=[description], tags=tags)
    scored = write_blocks(cube_a.grid, outputs["score"], spec, compute, block=block, overwrite=overwrite,
                          label="change-detect", cog=cog)
    summary = {"method": method, "distance": distance, "pixels": cube_a.grid.height * cube_a.grid.width, "pixels_scored": scored,
               "dates_a": len(cube_a.dates), "dates_b": len(cube_b.dates), "threshold": None,
               "changed_fraction": None, "auc": None}
    if threshold is not None:
        value = raster_otsu(outputs["score"], block) if threshold == "otsu" else threshold
        log(f"threshold {value:.6g}" + (" (Otsu)" if threshold == "otsu" else ""))
        summary["threshold"] = value
        summary["changed_fraction"] = binary_map(outputs["score"], value, grid=cube_a.grid, block=block,
                                                 out=outputs["binary"], overwrite=overwrite, tags=tags, cog=cog)
        if threshold == "otsu" and summary["changed_fraction"] > OTSU_MAJORITY:
            log(f"warning: Otsu's threshold flags {100 * summary['changed_fraction']:.0f} % of the pixels as changed: "
                "the scores have no clear tail of change (different seasons or sensors in A and B?); "
                "check the score map and give --threshold VALUE")
    if reference is not None:
        scores, labels = scores_and_labels(outputs["score"], truth, block=block)
        summary["auc"] = roc(scores, labels, outputs["roc"], overwrite=overwrite, title=f"change-detect ({method})")
        summary["reference_pixels"] = int(labels.size)
        log(f"ROC AUC {summary['auc']:.3f} over {labels.size:,} reference pixels")
    summary["outputs"] = {k: str(v) for k, v in outputs.items()}
    return summary


def _parse_threshold(threshold) -> float | str | None:
    if threshold is None or threshold == "otsu":
        return threshold
    try:
        return float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"--threshold {threshold!r}: give a change score (a number) or 'otsu'") from None


def _outputs(out, binary: bool, binary_out, reference, roc_out, overwrite: bool) -> dict[str, Path]:
    """The output paths (binary map and ROC defaulting beside OUT), each refused if it exists."""
    out = Path(out)
    outputs = {"score": out}
    if binary:
        outputs["binary"] = Path(binary_out) if binary_out is not None else out.with_name(out.stem + "_binary.tif")
    if reference is not None:
        outputs["roc"] = Path(roc_out) if roc_out is not None else out.with_name(out.stem + "_roc.png")
    resolved = [p.resolve() for p in outputs.values()]
    if len(set(resolved)) < len(resolved):
        raise ConfigError("--out, --binary-out and --roc-out must be different files")
    for path in outputs.values():
        check_output(path, overwrite)
    return outputs


def _on_grid_of(a: Cube, b: Cube) -> Cube:
    """B itself when on A's grid, else B resampled onto it (nearest), said in the log."""
    if b.grid.same_as(a.grid):
        return b
    if not overlaps(a.grid, b.grid):
        raise DataContentError("series B does not overlap series A: give two series of the same area")
    log(f"series B is on another grid ({b.grid.crs.to_string()}, {b.grid.width} x {b.grid.height} px): "
        "resampling it onto A's grid (nearest neighbour)")
    return OnGrid(b, a.grid)
