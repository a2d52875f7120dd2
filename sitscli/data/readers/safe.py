"""ESA SAFE Sentinel-2 L2A products (Sen2Cor), as directories or .SAFE.zip archives.

`S2B_MSIL2A_20200815T103629_N0214_R008_T31TCJ_20200815T134220.SAFE/GRANULE/L2A_*/IMG_DATA/R10m/
T31TCJ_20200815T103629_B02_10m.jp2`; each band is taken at the finest resolution the product holds
(B02 B03 B04 B08 10 m, B05 B06 B07 B8A B11 B12 SCL 20 m, B01 B09 60 m) and resampled to 10 m at read.
Reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE from MTD_MSIL2A.xml (the offset,
-1000, exists from processing baseline 04.00, 25 January 2022); DN 0 is no data.
Cloud levels come from the granule's cloud probability `QI_DATA/MSK_CLDPRB_20m.jp2` (0-100 %; the
2017-era `QI_DATA/*_CLD_20m.jp2`), else from SCL (the documented fallback of `common.cloud_level`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from sitscli.core.dates import to_days
from sitscli.core.errors import DataFormatError
from sitscli.data.readers.archive import ProductFiles
from sitscli.data.readers.common import (
    MGRS_TILE, Acquisition, BandFile, CloudFile, MaskFile, canonical_band, normalise_tile,
)

PRODUCT_NAME = re.compile(r"S2[A-D]_MSIL2A_(\d{8})T(\d{6})_N\d{4}_R\d{3}_T(\d{2}[A-Z]{3})_\d{8}T\d{6}")
# Band files in any granule: '.../IMG_DATA/R20m/T31TCJ_20200815T103629_B8A_20m.jp2' (also the
# 2017-era 'L2A_T31TCJ_..._B8A_20m.jp2').
BAND_FILE = re.compile(r"^(?P<granule>.*?)/IMG_DATA/R(?P<res>\d+)m/[^/]*_(?P<band>B\d\d|B8A|SCL)_\d+m\.jp2$", re.IGNORECASE)
# Cloud probability of a granule: 'GRANULE/L2A_.../QI_DATA/MSK_CLDPRB_20m.jp2' (and _60m), before
# PSD 14.5 (2018) 'QI_DATA/L2A_T31TCJ_..._CLD_20m.jp2'.
CLOUD_PROBABILITY = re.compile(r"^(?P<granule>.*?)/QI_DATA/(?:MSK_CLDPRB|[^/]*_CLD)_(?P<res>\d+)m\.jp2$", re.IGNORECASE)
# MTD band_id order (Sentinel-2 Products Specification Document): used when the MTD lists no
# Spectral_Information to map ids to bands.
BAND_ID_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
DEFAULT_QUANTIFICATION = 10000.0


def is_product(path: Path) -> bool:
    name = path.name.upper()
    if path.is_file():
        return name.endswith(".ZIP") and "MSIL2A" in name
    return name.endswith(".SAFE") or (path / "MTD_MSIL2A.xml").is_file()


def find_products(root: Path) -> list[Path]:
    """The products under `root` (or `root` itself when it is one)."""
    if is_product(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_product(p)) if root.is_dir() else []


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_scaling(xml: bytes, product: str) -> tuple[float, dict[str, float]]:
    """(BOA_QUANTIFICATION_VALUE, {band: BOA_ADD_OFFSET}) from MTD_MSIL2A.xml (offsets empty before 04.00)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DataFormatError(f"cannot parse MTD_MSIL2A.xml of {product}: {exc} (corrupt metadata: download the product again)") from exc
    quantification, offsets, band_ids = DEFAULT_QUANTIFICATION, {}, {}
    for element in root.iter():
        tag = _local(element.tag)
        if tag == "BOA_QUANTIFICATION_VALUE":
            quantification = float(element.text)
        elif tag == "BOA_ADD_OFFSET":
            offsets[int(element.get("band_id"))] = float(element.text)
        elif tag == "Spectral_Information" and element.get("physicalBand"):
            band_ids[int(element.get("bandId"))] = canonical_band(element.get("physicalBand"))
    names = band_ids or dict(enumerate(BAND_ID_ORDER))
    return quantification, {names[i]: offset for i, offset in offsets.items() if i in names}


def _sensing(files: ProductFiles, xml: bytes | None) -> tuple[str, str | None]:
    """(YYYYMMDDTHHMMSS sensing start, tile) from the product name, else from the metadata."""
    named = PRODUCT_NAME.search(files.name)
    if named:
        return f"{named[1]}T{named[2]}", named[3]
    if xml is not None:
        start = re.search(rb"<PRODUCT_START_TIME>(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", xml)
        if start:
            return "{}{}{}T{}{}{}".format(*(g.decode() for g in start.groups())), None
    raise DataFormatError(f"cannot tell the date of {files.path}: neither its name nor MTD_MSIL2A.xml gives it "
                          "(keep the original ESA product name)")


def scan(root: Path, valid_scl: tuple[int, ...]) -> list[Acquisition]:
    """One Acquisition per granule of every product under `root`."""
    acquisitions = []
    for path in find_products(root):
        files = ProductFiles(path)
        mtd = next((m for m in files.members if m.rsplit("/", 1)[-1] == "MTD_MSIL2A.xml"), None)
        xml = files.read_bytes(mtd) if mtd else None
        if xml is None:
            raise DataFormatError(f"product {files.name} has no MTD_MSIL2A.xml (incomplete product: download it again)")
        quantification, offsets = read_scaling(xml, files.name)
        stamp, named_tile = _sensing(files, xml)
        probabilities = _cloud_probabilities(files)
        for granule, bands in _granule_bands(files).items():
            if "SCL" not in bands:
                raise DataFormatError(f"product {files.name} has no SCL band (the scene classification is needed "
                                      "for the cloud mask): incomplete product, download it again")
            band_files = {
                band: BandFile(files.gdal_path(member), scale=1.0 / quantification, offset=offsets.get(band, 0.0), nodata=0)
                for band, (_, member) in bands.items() if band != "SCL"
            }
            _, finest = min(bands.values())  # the grid of the finest band (10 m) is the cube's grid
            scl = files.gdal_path(bands["SCL"][1])
            cloud = (CloudFile(files.gdal_path(probabilities[granule]), "probability") if granule in probabilities
                     else CloudFile(scl, "scl"))
            acquisitions.append(Acquisition(
                date=int(to_days([f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"])[0]), stamp=stamp,
                product=files.name, tile=normalise_tile(named_tile or _tile_of(granule)), bands=band_files,
                reference=files.gdal_path(finest), masks=(MaskFile(scl, tuple(valid_scl)),), cloud=cloud,
            ))
    return acquisitions


def _granule_bands(files: ProductFiles) -> dict[str, dict[str, tuple[int, str]]]:
    """{granule folder: {band: (resolution m, member)}}, each band at its finest resolution."""
    found: dict[str, dict[str, tuple[int, str]]] = {}
    for member in files.members:
        match = BAND_FILE.match(member)
        if match:
            band, res = canonical_band(match["band"]), int(match["res"])
            bands = found.setdefault(match["granule"], {})
            if band not in bands or res < bands[band][0]:
                bands[band] = (res, member)
    if not found:
        raise DataFormatError(f"product {files.name} holds no band image (GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2 ...): "
                              "incomplete product, download it again")
    return found


def _cloud_probabilities(files: ProductFiles) -> dict[str, str]:
    """{granule folder: member} of each granule's finest cloud probability raster."""
    found: dict[str, tuple[int, str]] = {}
    for member in files.members:
        match = CLOUD_PROBABILITY.match(member)
        if match and (match["granule"] not in found or int(match["res"]) < found[match["granule"]][0]):
            found[match["granule"]] = (int(match["res"]), member)
    return {granule: member for granule, (_, member) in found.items()}


def _tile_of(granule: str) -> str | None:
    match = MGRS_TILE.search(granule.rsplit("/", 1)[-1])
    return match[1] if match else None
