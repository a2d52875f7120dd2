"""Theia / MAJA Sentinel-2 L2A products, as directories or zip archives.

`SENTINEL2A_20180105-105107-343_L2A_T31TCJ_C_V2-2/..._FRE_B2.tif` (or SRE_): int16 reflectance
x 10000, nodata -10000; B2 B3 B4 B8 at 10 m, B5 B6 B7 B8A B11 B12 at 20 m. Validity from
MASKS/..._CLM_R1.tif (cloud bits, 0 = clear) and _EDG_R1.tif (1 = outside the swath), both on the
10 m grid; the 20 m bands' own edges are caught by their -10000 no-data. Theia gives no cloud
probability: cloud levels come from the CLM bits (the fallback of `common.cloud_level`).
"""

from __future__ import annotations

import re
from pathlib import Path

from sitscli.core.dates import to_days
from sitscli.core.errors import ConfigError, DataFormatError
from sitscli.data.readers.archive import ProductFiles
from sitscli.data.readers.common import Acquisition, BandFile, CloudFile, MaskFile, canonical_band

PRODUCT_NAME = re.compile(r"SENTINEL2[A-D]_(\d{8})-(\d{6})-\d+_L2A_T(\d{2}[A-Z]{3})_")
NODATA = -10000
SCALE = 1e-4  # reflectance x 10000


def is_product(path: Path) -> bool:
    if not PRODUCT_NAME.match(path.name):
        return False
    return path.suffix.lower() == ".zip" if path.is_file() else any(path.glob("*_FRE_B2.tif")) or any(path.glob("*_SRE_B2.tif"))


def find_products(root: Path) -> list[Path]:
    if is_product(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_product(p)) if root.is_dir() else []


def scan(root: Path, product: str = "FRE") -> list[Acquisition]:
    """One Acquisition per product under `root`; `product` is FRE (flat reflectance, slope-corrected,
    MAJA's recommended default) or SRE (surface reflectance without the slope correction)."""
    kind = product.upper()
    if kind not in ("FRE", "SRE"):
        raise ConfigError(f"Theia reflectance {product!r}: choose FRE or SRE")
    band_file = re.compile(rf"_{kind}_(B\d+A?)\.tif$", re.IGNORECASE)
    acquisitions = []
    for path in find_products(root):
        files = ProductFiles(path)
        named = PRODUCT_NAME.match(path.name)
        bands = {}
        for member in files.members:
            match = band_file.search(member)
            if match:
                bands[canonical_band(match[1])] = BandFile(files.gdal_path(member), scale=SCALE, nodata=NODATA)
        masks = tuple(MaskFile(files.gdal_path(_mask_member(files, kind_))) for kind_ in ("CLM", "EDG"))
        if "B02" not in bands:
            raise DataFormatError(f"product {files.name} has no {kind}_B2 band (incomplete product, or read the other "
                                  "reflectance, FRE or SRE)")
        acquisitions.append(Acquisition(
            date=int(to_days([f"{named[1][:4]}-{named[1][4:6]}-{named[1][6:]}"])[0]), stamp=f"{named[1]}T{named[2]}",
            product=files.name, tile=named[3], bands=bands, reference=bands["B02"].path, masks=masks,
            cloud=CloudFile(masks[0].path, "clm_bits"),
        ))
    return acquisitions


def _mask_member(files: ProductFiles, kind: str) -> str:
    """The 10 m (R1) mask: CLM is 0 where clear (any cloud bit set = cloudy), EDG is 0 inside the swath."""
    member = next((m for m in files.members if m.upper().endswith(f"_{kind}_R1.TIF")), None)
    if member is None:
        raise DataFormatError(f"product {files.name} has no MASKS/*_{kind}_R1.tif (incomplete product: download it again)")
    return member
