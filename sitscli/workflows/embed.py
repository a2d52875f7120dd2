"""`sits embed`: the aligned representation Y of an image time series, as a raster.

Y (n_q x d_model per pixel, Dumeur et al. 2024 eq. 1) has the same size whatever the dates of the
input, so embeddings of different years or orbits can be compared band by band. Bands are named
`qQQ_cCCC` (query QQ, channel CCC, 0-based), query-major as `AliseEncoder.represent`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sitscli import __version__
from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataContentError
from sitscli.core.io import check_output, require_input
from sitscli.core.progress import log
from sitscli.data.cube import Cube
from sitscli.engine.checkpoint import ModelCard, check_bands, input_options, load_model, read_card
from sitscli.engine.device import resolve_device
from sitscli.mapping.change import MIN_VALID_DATES, AlignedEncoder, alise_embedding, check_multiple, write_blocks, write_zarr
from sitscli.mapping.geotiff import RasterSpec
from sitscli.models import registry

FORMATS = ("gtiff", "zarr")
# Patches of 64 x 64 px: the pre-training crop of Table I; 16 px of overlap blended on each side.
DEFAULTS = {"format": "gtiff", "patch": 64, "overlap": 16, "block": 256, "batch_size": 8, "device": "auto",
            "bands": None, "cog": True, "overwrite": False}


def embed(source: str | Path | Cube, *, model: str | Path, out: str | Path, format: str = "gtiff", patch: int = 64,
          overlap: int = 16, block: int = 256, batch_size: int = 8, device: str = "auto",
          bands: list[str] | None = None, cog: bool = True, overwrite: bool = False) -> dict:
    """Write the aligned representation of `source` (an L2A folder, a stack or a `Cube`) with an ALISE run.

    Output: `out` as a float32 GeoTIFF of n_q x d_model bands on the input's grid (NaN where a pixel
    has fewer than MIN_VALID_DATES valid dates), or with format "zarr" an xarray-readable store
    (`embedding (band, y, x)`, CRS and transform in attrs). The GeoTIFF is a COG unless `cog` is
    False. Returns a summary for printing.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    check_patching(patch, overlap, block)
    out = check_output(out, overwrite)
    encoder, card = load_aligned(model, resolve_device(device), batch_size)
    warn_patch_size(patch, card)
    cube = open_series(source, list(card.info.band_names), bands=bands, what="input", card=card)
    names = [f"q{q:02d}_c{c:03d}" for q in range(encoder.n_q) for c in range(encoder.d_model)]
    tags = provenance(card, {"SITS_DATES": date_span(cube)})
    log(f"embedding {cube.grid.width} x {cube.grid.height} px, {len(cube.dates)} dates, into {len(names)} bands "
        f"({encoder.n_q} queries x {encoder.d_model} channels) with {card.run_dir}")

    def compute(window):
        return alise_embedding(window, cube, encoder, patch=patch, overlap=overlap)

    if format == "zarr":
        mapped = write_zarr(cube.grid, out, names, compute, block=block, overwrite=overwrite, tags=tags)
    else:
        spec = RasterSpec(count=len(names), dtype="float32", nodata=float("nan"), descriptions=names, tags=tags)
        mapped = write_blocks(cube.grid, out, spec, compute, block=block, overwrite=overwrite, label="embed", cog=cog)
    return {"output": str(out), "format": format, "bands": len(names), "n_q": encoder.n_q, "d_model": encoder.d_model,
            "pixels": cube.grid.height * cube.grid.width, "pixels_mapped": mapped, "dates": len(cube.dates)}


# ------------------------------------------------------------------------------- shared with change-detect

def check_patching(patch: int, overlap: int, block: int) -> None:
    check_multiple(patch, "--patch")
    check_multiple(block, "--block")
    if not 0 <= overlap <= patch // 2:
        raise ConfigError(f"--overlap {overlap}: give 0 to half the patch size ({patch // 2}) pixels, e.g. 16")


def warn_patch_size(patch: int, card: ModelCard) -> None:
    """Say so when --patch is not the crop the ALISE run was pre-trained on (ALISE's U-BARN sees its
    neighbourhood through the patch, so other sizes change the representations)."""
    crop = card.hparams.get("crop")
    if crop is not None and int(crop) != patch:
        log(f"warning: --patch {patch} differs from the pre-training crop of {card.run_dir} ({crop} px): "
            f"the representations (and change scores) may shift; give --patch {crop} unless memory forbids it")


def aligned_models() -> list[str]:
    """Registered models whose runs give per-pixel aligned representations of patches."""
    return [name for name in registry.available() if registry.get(name).input == "patch"]


def load_aligned(model: str | Path, device, batch_size: int) -> tuple[AlignedEncoder, ModelCard]:
    """The aligned encoder of a run (pre-training or fine-tuned), or one clear error for other models."""
    card = read_card(Path(model))
    spec = registry.get(card.model_name)
    if spec.input != "patch":
        raise ConfigError(f"{card.run_dir} is a {card.model_name} run, which gives no aligned representation: "
                          f"give a run of {', '.join(aligned_models()) or 'alise'} (sits pretrain --model alise)")
    net, card = load_model(Path(model), device)
    encoder = getattr(net, "encoder", net)
    if not hasattr(encoder, "represent"):
        raise ConfigError(f"{card.run_dir}: the {card.model_name} model has no aligned representation to map")
    return AlignedEncoder(encoder, device, batch_size), card


def open_series(source: str | Path | Cube, band_names: list[str] | None, *, bands: list[str] | None, what: str,
                card: ModelCard | None = None, date_range: tuple[int, int] | None = None) -> Cube:
    """Open a source with the wanted bands, in order; refuse one with fewer than MIN_VALID_DATES dates."""
    from sitscli.workflows.predict_map import BandSubset

    if isinstance(source, Cube):
        cube = source
    else:
        from sitscli.data.readers import open_source

        cube = open_source(require_input(source, what), bands=bands or band_names, date_range=date_range,
                           **(input_options(card) if card is not None else {}))
    if band_names is not None and list(cube.band_names) != list(band_names):
        lacking = [b for b in band_names if b not in cube.band_names]
        if lacking and card is not None:
            check_bands(card, list(cube.band_names))      # raises, naming what is missing
        if lacking:
            raise DataContentError(f"{what} lacks band(s) {', '.join(lacking)} that the other series has: "
                                   f"give both series the bands {', '.join(band_names)}")
        cube = BandSubset(cube, list(band_names))
    if len(cube.dates) < MIN_VALID_DATES:
        raise DataContentError(f"{what} has {len(cube.dates)} date(s): at least {MIN_VALID_DATES} are needed "
                               "to describe a series (add acquisitions or widen the date range)")
    return cube


def provenance(card: ModelCard | None, extra: dict[str, str]) -> dict[str, str]:
    tags = {"SITSCLI_VERSION": __version__, **extra}
    if card is not None:
        tags.update({"SITS_MODEL": card.model_name, "SITS_RUN": str(card.run_dir)})
    return tags


def date_span(cube: Cube) -> str:
    dates = np.asarray(cube.dates)
    return f"{iso(dates[0])}/{iso(dates[-1])} ({len(dates)} dates)"
