"""Sentinel-2 L2A items of a STAC document: an ItemCollection (a search result saved as JSON), a
static catalog or collection (its items found recursively), or one item; a local file or a URL.

Each item is one acquisition whose assets are per-band COGs, keyed by ESA code or STAC common name
(`B02` / `blue` ... `SCL` / `scl`: the Earth Search and Planetary Computer conventions); the date is
`datetime` (or `start_datetime`), the tile `s2:mgrs_tile` (or the `mgrs:` extension), the cloud
cover `eo:cloud_cover`. Asset hrefs are resolved against the document (relative hrefs of a static
catalog) and read by GDAL by windows: `https://` through /vsicurl/, `s3://` through /vsis3/.
Scaling and masks follow the COG-folder reader (`cogs.asset_scaling`): an item is read exactly as
the same files downloaded into a COG folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sitscli.core.dates import parse_date
from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import gdal_path, is_remote
from sitscli.data.readers.cogs import asset_scaling, band_of_name, tile_of
from sitscli.data.readers.common import Acquisition, BandFile, CloudFile, MaskFile

STAC_TYPES = ("FeatureCollection", "Catalog", "Collection", "Feature")
VSICURL = "/vsicurl/"


def is_stac(path: Path | str) -> bool:
    """Whether `path` names a STAC JSON document (a .json URL, or a local .json file of a STAC type)."""
    text = os.fspath(path)
    if not text.lower().endswith(".json"):
        return False
    if is_remote(text):
        return True
    try:
        return Path(text).is_file() and json.loads(Path(text).read_text()).get("type") in STAC_TYPES
    except (OSError, ValueError, AttributeError):
        return False


def _href(path: Path | str) -> str:
    """What pystac reads: a URL (GDAL's /vsicurl/ prefix taken off) or a local absolute path."""
    text = os.fspath(path)
    if text.startswith(VSICURL):
        return text[len(VSICURL):]
    if text.startswith("/vsi"):
        raise ConfigError(f"{text}: give a STAC document as an https:// URL or a local file (GDAL virtual paths "
                          "name rasters, not catalogs)")
    return text if is_remote(text) else str(Path(text).resolve())


def read_items(path: Path | str) -> list:
    """The pystac Items of an ItemCollection, catalog, collection or item at `path`."""
    import pystac  # only STAC sources need it

    href = _href(path)
    try:
        document = pystac.StacIO.default().read_json(href)
        kind = document.get("type")
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(document, preserve_dict=False, root=None))
        stac = pystac.read_dict(document, href=href)
        if isinstance(stac, pystac.Item):
            return [stac]
        return list(stac.get_items(recursive=True))
    except (OSError, ValueError, pystac.STACError) as exc:   # urllib errors are OSErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(f"cannot read STAC document {href}: {reason} (check the file or URL; "
                              "it must be an ItemCollection, a catalog, a collection or an item)") from exc


def _asset_path(item, asset) -> str:
    href = asset.get_absolute_href() or asset.href
    return gdal_path(href)


def acquisition(item, valid_scl: tuple[int, ...]) -> Acquisition | None:
    """The acquisition of one Sentinel-2 item, or None when it has no band asset."""
    props = item.properties
    bands, scl = {}, None
    for key, asset in item.assets.items():
        band = band_of_name(key)
        if band is None:
            continue
        if band == "SCL":
            scl = _asset_path(item, asset)
        else:
            scale, offset = asset_scaling(asset.to_dict(), props)
            bands[band] = BandFile(_asset_path(item, asset), scale=scale, offset=offset, nodata=0)
    if not any(b.startswith("B") for b in bands):
        return None
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise DataFormatError(f"STAC item {item.id} has no datetime (nor start_datetime): fix the catalog")
    reference = next((bands[b].path for b in ("B02", "B03", "B04", "B08") if b in bands), next(iter(bands.values())).path)
    return Acquisition(date=parse_date(when[:10], f"datetime of item {item.id}"), stamp=when, product=item.id,
                       tile=tile_of(props, item.id), bands=bands, reference=reference,
                       masks=(MaskFile(scl, tuple(valid_scl)),) if scl else (),
                       cloud=CloudFile(scl, "scl") if scl else None)


def scan(path: Path | str, valid_scl: tuple[int, ...], max_cloud: float | None = None) -> list[Acquisition]:
    """The acquisitions of the document's Sentinel-2 items, those above `max_cloud` % cloud cover left out."""
    items = read_items(path)
    if max_cloud is not None:
        kept = [i for i in items if float(i.properties.get("eo:cloud_cover", 0.0)) <= max_cloud]
        if items and not kept:
            raise DataContentError(f"no item of {_href(path)} has at most {max_cloud:g} % cloud cover "
                                   "(eo:cloud_cover): raise --max-cloud")
        items = kept
    return [a for a in (acquisition(i, tuple(valid_scl)) for i in items) if a is not None]


def tiles(path: Path | str) -> list[str]:
    """The MGRS tiles the document's items cover, sorted."""
    return sorted({a.tile for a in scan(path, ()) if a.tile})
