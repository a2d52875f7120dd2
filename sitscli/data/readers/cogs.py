"""Per-band Cloud Optimized GeoTIFF folders, as downloaded from STAC catalogs.

One folder per acquisition holding a file per band, named by ESA code (`B02.tif`) or STAC common
name (`blue.tif`), `SCL.tif` optional. The date comes from a STAC item JSON in the folder
(`properties.datetime`), else from the folder name (`20200815`, `2020-08-15`).

Scaling, most specific first: the item's `raster:bands` scale/offset for the asset (value =
DN * scale + offset, Earth Search v1), else DN / 10000 with BOA_ADD_OFFSET -1000 when the item says
processing baseline >= 04.00 (catalogs that serve the ESA DNs unchanged, e.g. Planetary Computer),
else DN / 10000. DN 0 is no data (the ESA L2A convention, which the COG conversions keep).
Cloud levels come from SCL when the folder has it (the fallback of `common.cloud_level`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sitscli.core.dates import parse_date
from sitscli.core.errors import DataFormatError
from sitscli.data.readers.common import (
    COMMON_NAMES, MGRS_TILE, Acquisition, BandFile, CloudFile, MaskFile, canonical_band, normalise_tile,
)

RASTER_SUFFIXES = (".tif", ".tiff")
FOLDER_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:T(\d{6}))?")
BASELINE_OFFSET = -1000.0  # BOA_ADD_OFFSET of processing baseline 04.00 and later, in DN


def _band_of(file: Path) -> str | None:
    """The band a file holds, from its name ('B8A.tif', 'nir08.tif', 'SCL.tif'), or None."""
    return band_of_name(file.stem)


def band_of_name(stem: str) -> str | None:
    """The band a file stem or STAC asset key names ('B8A', 'nir08', 'SCL', 'scl'), or None."""
    if stem.lower() in COMMON_NAMES or re.fullmatch(r"B0?\d{1,2}A?", stem, re.IGNORECASE) or stem.upper() == "SCL":
        return canonical_band(stem)
    return None


def _band_files(folder: Path) -> dict[str, Path]:
    return {band: f for f in sorted(folder.iterdir()) if f.suffix.lower() in RASTER_SUFFIXES
            and (band := _band_of(f)) is not None}


def is_acquisition(folder: Path) -> bool:
    return folder.is_dir() and any(b.startswith("B") for b in _band_files(folder))


def find_acquisitions(root: Path) -> list[Path]:
    if is_acquisition(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_acquisition(p)) if root.is_dir() else []


def _stac_item(folder: Path) -> dict | None:
    for candidate in sorted(folder.glob("*.json")):
        try:
            item = json.loads(candidate.read_text())
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"cannot read STAC item {candidate}: {exc} (fix or remove the file)") from exc
        if isinstance(item, dict) and isinstance(item.get("properties"), dict):
            return item
    return None


def _when(folder: Path, item: dict | None) -> tuple[int, str]:
    """(days since epoch, sort stamp) from the STAC item, else from the folder name."""
    when = (item or {}).get("properties", {}).get("datetime") or (item or {}).get("properties", {}).get("start_datetime")
    if when:
        return parse_date(when[:10], f"datetime of {folder}"), when
    match = FOLDER_DATE.search(folder.name)
    if not match:
        raise DataFormatError(f"cannot tell the date of {folder}: no STAC item JSON and no date in the folder name "
                              "(name it e.g. 20200815 or add the item JSON)")
    return parse_date("".join(match.groups()[:3])), f"{''.join(match.groups()[:3])}T{match[4] or ''}"


def tile_of(props: dict, name: str) -> str | None:
    """The MGRS tile of a STAC item's properties (`s2:mgrs_tile`, or the `mgrs:` extension), else of `name`."""
    if props.get("s2:mgrs_tile"):
        return normalise_tile(props["s2:mgrs_tile"])
    if all(k in props for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
    match = MGRS_TILE.search(name)
    return match[1] if match else None


def _scaling(item: dict | None, file: Path) -> tuple[float, float]:
    """(scale, offset in DN) of one band file: value = (DN + offset) * scale."""
    assets = (item or {}).get("assets", {})
    asset = next((a for a in assets.values() if str(a.get("href", "")).rsplit("/", 1)[-1] == file.name), {})
    return asset_scaling(asset, (item or {}).get("properties", {}))


def asset_scaling(asset: dict, props: dict) -> tuple[float, float]:
    """(scale, offset in DN) of one STAC band asset (a dict) of an item with properties `props`."""
    if asset.get("raster:bands"):
        raster = asset["raster:bands"][0]
        scale = float(raster.get("scale", 1.0))
        return scale, float(raster.get("offset", 0.0)) / scale
    baseline = str(props.get("s2:processing_baseline", "0"))
    offset = BASELINE_OFFSET if _version(baseline) >= (4, 0) else 0.0
    return 1e-4, offset


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


def scan(root: Path, valid_scl: tuple[int, ...]) -> list[Acquisition]:
    acquisitions = []
    for folder in find_acquisitions(root):
        item = _stac_item(folder)
        date, stamp = _when(folder, item)
        files = _band_files(folder)
        bands = {}
        for band, file in files.items():
            if band != "SCL":
                scale, offset = _scaling(item, file)
                bands[band] = BandFile(str(file), scale=scale, offset=offset, nodata=0)
        # The grid: a 10 m band when there is one, else whatever band comes first.
        reference = next((str(files[b]) for b in ("B02", "B03", "B04", "B08") if b in files), str(next(iter(files.values()))))
        masks = (MaskFile(str(files["SCL"]), tuple(valid_scl)),) if "SCL" in files else ()
        cloud = CloudFile(str(files["SCL"]), "scl") if "SCL" in files else None
        acquisitions.append(Acquisition(date=date, stamp=stamp, product=folder.name, tile=tile_of((item or {}).get("properties", {}), folder.name),
                                        bands=bands, reference=reference, masks=masks, cloud=cloud))
    return acquisitions
