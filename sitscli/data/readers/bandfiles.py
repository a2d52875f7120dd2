"""The generic layout: one GeoTIFF per date per variable, with an optional cloud-mask variable.

    ROOT/ndvi/20150711T100008_NDVI.tif        ROOT/cloud_mask/20150711T100008_CLM.tif
    (or all files in ROOT itself: ROOT/20150711_B02.tif, ROOT/20150711_CLM.tif ...)

A file's acquisition is the timestamp in its name (YYYYMMDD, optionally THHMMSS), else its
ACQUISITION_DATETIME tag; its variable is the rest of the name ('NDVI', 'B02'), else its folder's
name. Files of one timestamp form one acquisition. The mask variable (CLM, MASK, CLOUD_MASK by
default, or `mask=`) marks clouds with any non-zero value; an SCL variable is read as Sen2Cor
classes. Values are used as stored (NDVI stays -1..1), except integer Sentinel-2 band files
(B02 ...), which are reflectance x 10000 as in every L2A product. The mask also gives the cloud
level: SCL classes as in `common.cloud_level`, any other mask 31 where non-zero.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sitscli.core.dates import parse_date
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.core.progress import log
from sitscli.data.readers.common import Acquisition, BandFile, CloudFile, MaskFile, canonical_band, open_raster

RASTER_SUFFIXES = (".tif", ".tiff")
TIMESTAMP = re.compile(r"(?<!\d)(\d{8})(T\d{6})?(?!\d)")
MASK_NAMES = ("CLM", "MASK", "CLOUD_MASK", "CLOUDMASK", "CLOUDS", "SCL")
S2_BAND = re.compile(r"B\d\d|B8A")


def _rasters(root: Path) -> list[Path]:
    """GeoTIFFs in `root` and its direct sub-folders."""
    if not root.is_dir():
        return []
    return sorted(p for pattern in ("*", "*/*") for p in root.glob(pattern) if p.suffix.lower() in RASTER_SUFFIXES)


def matches(root: Path) -> bool:
    return any(TIMESTAMP.search(p.stem) for p in _rasters(root))


def _stamp_and_variable(file: Path, root: Path) -> tuple[str, str] | None:
    """('20150711T100008', 'NDVI') for ROOT/ndvi/20150711T100008_NDVI.tif; None for a file without a
    date (a reference map lying beside the series)."""
    match = TIMESTAMP.search(file.stem)
    if match:
        stamp = match[1] + (match[2] or "")
        rest = (file.stem[:match.start()] + "_" + file.stem[match.end():]).strip("_-. ")
    else:
        with open_raster(str(file)) as ds:
            when = ds.tags().get("ACQUISITION_DATETIME")
        if not when:
            return None
        stamp, rest = re.sub(r"[-:]", "", when)[:15], file.stem
    variable = rest or (file.parent.name if file.parent != root else "")
    if not variable:
        raise DataFormatError(f"cannot tell which variable {file} holds: name it like 20150711_NDVI.tif or put it in a folder named after it")
    return stamp, canonical_band(variable)


def _is_mask(variable: str, folder: str, mask: str | None) -> bool:
    if mask is not None:
        return mask.upper() in (variable, folder.upper())
    return variable in MASK_NAMES or folder.upper() in MASK_NAMES


def _scale(variable: str, file: Path) -> float:
    if not S2_BAND.fullmatch(variable):
        return 1.0
    with open_raster(str(file)) as ds:
        return 1e-4 if np.issubdtype(np.dtype(ds.dtypes[0]), np.integer) else 1.0


def scan(root: Path, mask: str | None, valid_scl: tuple[int, ...]) -> list[Acquisition]:
    use_mask = not (mask is not None and mask.lower() == "none")
    by_stamp: dict[str, dict[str, Path]] = {}
    mask_files: dict[str, tuple[str, Path]] = {}
    undated = []
    for file in _rasters(root):
        named = _stamp_and_variable(file, root)
        if named is None:
            undated.append(file.name)
            continue
        stamp, variable = named
        if _is_mask(variable, file.parent.name, mask if use_mask else None):
            if use_mask:
                mask_files[stamp] = (variable, file)
            continue
        by_stamp.setdefault(stamp, {})[variable] = file
    if undated:
        log(f"{root}: {len(undated)} file(s) without a date in the name or an ACQUISITION_DATETIME tag left out: "
            + ", ".join(undated[:5]) + (" ..." if len(undated) > 5 else ""))
    if mask is not None and use_mask and not mask_files:
        raise ConfigError(f"no mask variable {mask!r} in {root} (pass the name of its files or folder, or 'none')")
    scales = {}
    acquisitions = []
    for stamp, files in sorted(by_stamp.items()):
        if mask_files and stamp not in mask_files:
            raise DataFormatError(f"acquisition {stamp} in {root} has no cloud mask file (add it, or pass mask='none')")
        masks, cloud = (), None
        if stamp in mask_files:
            variable, file = mask_files[stamp]
            masks = (MaskFile(str(file), tuple(valid_scl) if variable == "SCL" else None),)
            cloud = CloudFile(str(file), "scl" if variable == "SCL" else "binary")
        bands = {}
        for variable, file in files.items():
            scale = scales.setdefault(variable, _scale(variable, file))
            bands[variable] = BandFile(str(file), scale=scale)
        acquisitions.append(Acquisition(
            date=parse_date(stamp[:8], f"date of {stamp}"), stamp=stamp, product=stamp, tile=None, bands=bands,
            reference=str(next(iter(files.values()))), masks=masks, cloud=cloud,
        ))
    return acquisitions
