"""Write rendered acquisitions in the L2A layouts of DESIGN.md: ESA SAFE, Theia/MAJA and per-band COGs.

Each writer takes one acquisition already rendered — reflectance (12, H, W) float32 on the 10 m
grid in `BANDS` order, its `Sky` and its 20 m SCL — and writes the files a real product of that
layout holds for these bands (the SAFE layout leaves out AOT, WVP, TCI and the QI masks but
MSK_CLDPRB, the cloud probability, which the COG layout carries as `CLD.tif`).
Nothing carries a timestamp, so the same seed writes the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from sitscli.data.synthetic.phenology import BANDS
from sitscli.data.synthetic.scene import CRS, RELATIVE_ORBIT, TILE, Acquisition, Sky, block_mean

RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
              "B8A": 20, "B09": 60, "B11": 20, "B12": 20}
QUANTIFICATION = 10000  # BOA_QUANTIFICATION_VALUE
BOA_ADD_OFFSET = -1000  # from processing baseline 04.00 on: reflectance = (DN + offset) / 10000
OFFSET_FROM = dt.date(2022, 1, 25)  # first day of baseline 04.00 products
JP2_OPTIONS = {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES"}  # lossless, as ESA
TIFF_OPTIONS = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
                "compress": "deflate", "predictor": 2}
# Absolute orbit of a reference pass of R051 per satellite (143 orbits every 10-day cycle).
REFERENCE_ORBIT = {"S2A": (dt.date(2021, 10, 8), 32920), "S2B": (dt.date(2021, 10, 3), 23839)}
SCL_NAMES = ("NO_DATA", "SATURATED_DEFECTIVE", "DARK_AREA_PIXELS", "CLOUD_SHADOWS", "VEGETATION",
             "NOT_VEGETATED", "WATER", "UNCLASSIFIED", "CLOUD_MEDIUM_PROBABILITY", "CLOUD_HIGH_PROBABILITY",
             "THIN_CIRRUS", "SNOW_ICE")


def processing_baseline(date: dt.date, forced: str | None = None) -> str:
    """Baseline a product of `date` carries in the ESA archive: 03.01 before 25 Jan 2022, then 04.00,
    and 05.09 from 6 Dec 2022 (the BOA offset rule is the same for 04.00 and later)."""
    if forced:
        return forced
    if date < OFFSET_FROM:
        return "03.01"
    return "04.00" if date < dt.date(2022, 12, 6) else "05.09"


def has_offset(baseline: str) -> bool:
    return float(baseline) >= 4.0


@dataclass(frozen=True)
class Naming:
    """Names and times of one product (sensing time ~10:50 UTC for R051, processed ~3 h later)."""

    acq: Acquisition
    baseline: str

    @property
    def sensing(self) -> dt.datetime:
        return dt.datetime.combine(self.acq.date, dt.time(10, 50, 19 + (self.acq.index * 7) % 23))

    @property
    def generation(self) -> dt.datetime:
        return self.sensing + dt.timedelta(hours=2, minutes=50 + self.acq.index % 9, seconds=self.acq.index % 60)

    @property
    def absolute_orbit(self) -> int:
        ref_date, ref_orbit = REFERENCE_ORBIT[self.acq.satellite]
        return ref_orbit + 143 * (self.acq.date - ref_date).days // 10

    @property
    def safe(self) -> str:
        n = "N" + self.baseline.replace(".", "")
        return (f"{self.acq.satellite}_MSIL2A_{self.sensing:%Y%m%dT%H%M%S}_{n}_R{RELATIVE_ORBIT:03d}_T{TILE}_"
                f"{self.generation:%Y%m%dT%H%M%S}.SAFE")

    @property
    def granule(self) -> str:
        datastrip = self.sensing + dt.timedelta(minutes=5, seconds=31)
        return f"L2A_T{TILE}_A{self.absolute_orbit:06d}_{datastrip:%Y%m%dT%H%M%S}"

    def band_file(self, band: str) -> str:
        """Path of a band inside the SAFE, e.g. GRANULE/L2A_.../IMG_DATA/R10m/T31TCJ_..._B02_10m.jp2."""
        res = 20 if band == "SCL" else RESOLUTION[band]
        return (f"GRANULE/{self.granule}/IMG_DATA/R{res}m/T{TILE}_{self.sensing:%Y%m%dT%H%M%S}_{band}_{res}m.jp2")

    @property
    def cloud_probability_file(self) -> str:
        """GRANULE/L2A_.../QI_DATA/MSK_CLDPRB_20m.jp2: Sen2Cor's cloud probability (0-100 %, 20 m)."""
        return f"GRANULE/{self.granule}/QI_DATA/MSK_CLDPRB_20m.jp2"

    @property
    def theia(self) -> str:
        sat = "SENTINEL2" + self.acq.satellite[-1]
        return f"{sat}_{self.sensing:%Y%m%d-%H%M%S}-{self.acq.index * 37 % 1000:03d}_L2A_T{TILE}_C_V2-2"

    @property
    def cog(self) -> str:
        return f"{self.acq.satellite}_{TILE}_{self.acq.date:%Y%m%d}_0_L2A"


def _grid(transform: Affine, res: int) -> Affine:
    return Affine(float(res), 0.0, transform.c, 0.0, -float(res), transform.f)


def raster_profile(options: dict, shape: tuple[int, int, int], dtype, transform: Affine, nodata=None) -> dict:
    """rasterio profile of a (bands, h, w) raster in the scene CRS; GTiff blocks shrink on small rasters."""
    profile = dict(options, width=shape[2], height=shape[1], count=shape[0], dtype=dtype, crs=CRS,
                   transform=transform, nodata=nodata)
    if options["driver"] == "GTiff" and min(shape[1:]) < 256:
        profile.update(blockxsize=128 if min(shape[1:]) >= 128 else 16,
                       blockysize=128 if min(shape[1:]) >= 128 else 16)
    return profile


def write_raster(path: Path, data: np.ndarray, transform: Affine, options: dict, nodata=None,
                  descriptions: tuple[str, ...] | None = None, **tags) -> None:
    """Write a 2-D array (or (bands, h, w)) with the CRS and the given creation options.

    `descriptions` names the bands (GDAL band descriptions); `tags` go to the dataset metadata.
    """
    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **raster_profile(options, data.shape, data.dtype, transform, nodata)) as dst:
        dst.write(data)
        for band, description in enumerate(descriptions or (), start=1):
            dst.set_band_description(band, description)
        if tags:
            dst.update_tags(**tags)


def digital_numbers(refl: np.ndarray, nodata: np.ndarray, offset: int) -> np.ndarray:
    """Reflectance -> uint16 DN = round(refl x 10000) - offset, 0 kept for no data (1..65534 otherwise)."""
    dn = np.clip(np.rint(refl * QUANTIFICATION) - offset, 1, 65534).astype(np.uint16)
    dn[..., nodata] = 0
    return dn


def at_resolution(refl: np.ndarray, nodata: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray]:
    """One band of the 10 m rendering aggregated to its native resolution, with its no-data mask."""
    factor = RESOLUTION[band] // 10
    values = block_mean(refl[BANDS.index(band)], factor)
    return values, block_mean(nodata.astype(np.float32), factor) >= 0.5


# Sen2Cor's cloud probability thresholds: 35 % and more is a medium-probability cloud, 65 % and
# more a high-probability one (L2A GIPP). The probability is mapped from the 20 m opacity so that
# these thresholds fall on the opacities at which the SCL flags medium (0.25) and high (0.6)
# clouds; thin cirrus (flagged at 0.015 of added reflectance) stays below the medium threshold.
CLOUD_PROBABILITY_OPACITY = ((0.0, 0.25, 0.6, 1.0), (0.0, 35.0, 65.0, 100.0))
CLOUD_PROBABILITY_CIRRUS = ((0.0, 0.015, 0.04), (0.0, 20.0, 30.0))


def cloud_probability(sky: Sky) -> np.ndarray:
    """(ceil(H/2), ceil(W/2)) uint8 cloud probability 0-100 % at 20 m (MSK_CLDPRB_20m), 0 outside the swath."""
    opacity, cirrus = block_mean(sky.opacity, 2), block_mean(sky.cirrus, 2)
    probability = np.maximum(np.interp(opacity, *CLOUD_PROBABILITY_OPACITY), np.interp(cirrus, *CLOUD_PROBABILITY_CIRRUS))
    probability[block_mean(sky.nodata.astype(np.float32), 2) >= 0.5] = 0
    return np.floor(probability).astype(np.uint8)  # floor: below an SCL threshold stays below its probability


def scl_percentages(scl: np.ndarray) -> dict[str, float]:
    counts = np.bincount(scl.ravel(), minlength=12) / scl.size * 100
    return {name: round(float(c), 6) for name, c in zip(SCL_NAMES, counts)}


# ----------------------------------------------------------------------------------------- SAFE
def _sub(parent: ET.Element, tag: str, text=None, **attrib) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        el.text = str(text)
    return el


def product_metadata(name: Naming, scl: np.ndarray) -> bytes:
    """MTD_MSIL2A.xml: the fields readers use, with the element names and nesting of PSD 14.9."""
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    ET.register_namespace("n1", ns)
    root = ET.Element(f"{{{ns}}}Level-2A_User_Product")
    general = _sub(root, f"{{{ns}}}General_Info")
    info = _sub(general, "Product_Info")
    start = f"{name.sensing:%Y-%m-%dT%H:%M:%S}.024Z"
    _sub(info, "PRODUCT_START_TIME", start)
    _sub(info, "PRODUCT_STOP_TIME", start)
    _sub(info, "PRODUCT_URI", name.safe)
    _sub(info, "PROCESSING_LEVEL", "Level-2A")
    _sub(info, "PRODUCT_TYPE", "S2MSI2A")
    _sub(info, "PROCESSING_BASELINE", name.baseline)
    _sub(info, "GENERATION_TIME", f"{name.generation:%Y-%m-%dT%H:%M:%S}.000000Z")
    take = _sub(info, "Datatake", datatakeIdentifier=f"G{name.acq.satellite}_{name.sensing:%Y%m%dT%H%M%S}_"
                f"{name.absolute_orbit:06d}_N{name.baseline}")
    _sub(take, "SPACECRAFT_NAME", f"Sentinel-2{name.acq.satellite[-1]}")
    _sub(take, "DATATAKE_TYPE", "INS-NOBS")
    _sub(take, "DATATAKE_SENSING_START", start)
    _sub(take, "SENSING_ORBIT_NUMBER", RELATIVE_ORBIT)
    _sub(take, "SENSING_ORBIT_DIRECTION", "DESCENDING")
    granules = _sub(_sub(info, "Product_Organisation"), "Granule_List")
    granule = _sub(granules, "Granule", granuleIdentifier=name.granule, imageFormat="JPEG2000")
    for band in [*RESOLUTION, "SCL"]:
        _sub(granule, "IMAGE_FILE", name.band_file(band).removesuffix(".jp2"))
    chars = _sub(general, "Product_Image_Characteristics")
    for text, index in (("NODATA", 0), ("SATURATED", 65535)):
        special = _sub(chars, "Special_Values")
        _sub(special, "SPECIAL_VALUE_TEXT", text)
        _sub(special, "SPECIAL_VALUE_INDEX", index)
    quant = _sub(chars, "QUANTIFICATION_VALUES_LIST")
    _sub(quant, "BOA_QUANTIFICATION_VALUE", QUANTIFICATION, unit="none")
    _sub(quant, "AOT_QUANTIFICATION_VALUE", "1000.0", unit="none")
    _sub(quant, "WVP_QUANTIFICATION_VALUE", "1000.0", unit="cm")
    physical = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    if has_offset(name.baseline):
        offsets = _sub(chars, "BOA_ADD_OFFSET_VALUES_LIST")
        for band_id in range(len(physical)):
            _sub(offsets, "BOA_ADD_OFFSET", BOA_ADD_OFFSET, band_id=band_id)
    spectral = _sub(chars, "Spectral_Information_List")
    for band_id, band in enumerate(physical):
        res = 60 if band == "B10" else RESOLUTION[band if band == "B8A" else f"B{int(band[1:]):02d}"]
        _sub(_sub(spectral, "Spectral_Information", bandId=band_id, physicalBand=band), "RESOLUTION", res)
    classes = _sub(chars, "Scene_Classification_List")
    for index, text in enumerate(SCL_NAMES):
        item = _sub(classes, "Scene_Classification_ID")
        _sub(item, "SCENE_CLASSIFICATION_TEXT", f"SC_{text}")
        _sub(item, "SCENE_CLASSIFICATION_INDEX", index)
    quality = _sub(root, f"{{{ns}}}Quality_Indicators_Info")
    pct = scl_percentages(scl)
    _sub(quality, "Cloud_Coverage_Assessment", _cloud_percentage(pct))
    content = _sub(quality, "Image_Content_QI")
    for text in SCL_NAMES:
        _sub(content, f"{text.removesuffix('_PIXELS')}_PIXEL_PERCENTAGE" if text in ("NO_DATA", "SATURATED_DEFECTIVE")
             else f"{text}_PERCENTAGE", pct[text])
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _cloud_percentage(pct: dict[str, float]) -> float:
    """Sen2Cor's cloud cover: medium + high probability clouds + thin cirrus, over the valid pixels."""
    cloudy = pct["CLOUD_MEDIUM_PROBABILITY"] + pct["CLOUD_HIGH_PROBABILITY"] + pct["THIN_CIRRUS"]
    valid = 100 - pct["NO_DATA"]
    return round(100 * cloudy / valid, 6) if valid > 0 else 100.0


def tile_metadata(name: Naming, transform: Affine, shape: tuple[int, int]) -> bytes:
    """GRANULE/*/MTD_TL.xml: tile id, sensing time and geocoding per resolution."""
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd"
    ET.register_namespace("n1", ns)
    root = ET.Element(f"{{{ns}}}Level-2A_Tile_ID")
    general = _sub(root, f"{{{ns}}}General_Info")
    _sub(general, "TILE_ID", f"S2{name.acq.satellite[-1]}_OPER_MSI_L2A_TL_{name.granule}_N{name.baseline}")
    _sub(general, "SENSING_TIME", f"{name.sensing:%Y-%m-%dT%H:%M:%S}.024Z")
    geocoding = _sub(_sub(root, f"{{{ns}}}Geometric_Info"), "Tile_Geocoding")
    _sub(geocoding, "HORIZONTAL_CS_NAME", "WGS84 / UTM zone 31N")
    _sub(geocoding, "HORIZONTAL_CS_CODE", CRS)
    for res in (10, 20, 60):
        size = _sub(geocoding, "Size", resolution=res)
        _sub(size, "NROWS", -(-shape[0] * 10 // res))
        _sub(size, "NCOLS", -(-shape[1] * 10 // res))
    for res in (10, 20, 60):
        pos = _sub(geocoding, "Geoposition", resolution=res)
        _sub(pos, "ULX", int(transform.c))
        _sub(pos, "ULY", int(transform.f))
        _sub(pos, "XDIM", res)
        _sub(pos, "YDIM", -res)
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def write_safe(folder: Path, acq: Acquisition, refl: np.ndarray, sky: Sky, scl: np.ndarray,
               transform: Affine, baseline: str | None, zipped: bool) -> str:
    """One `S2x_MSIL2A_..._T31TCJ_....SAFE` product (or `.SAFE.zip`); returns its file name."""
    name = Naming(acq, processing_baseline(acq.date, baseline))
    product = folder / name.safe
    offset = BOA_ADD_OFFSET if has_offset(name.baseline) else 0
    for band, res in RESOLUTION.items():
        values, nodata = at_resolution(refl, sky.nodata, band)
        write_raster(product / name.band_file(band), digital_numbers(values, nodata, offset),
                      _grid(transform, res), JP2_OPTIONS)
    write_raster(product / name.band_file("SCL"), scl, _grid(transform, 20), JP2_OPTIONS)
    write_raster(product / name.cloud_probability_file, cloud_probability(sky), _grid(transform, 20), JP2_OPTIONS)
    (product / "MTD_MSIL2A.xml").write_bytes(product_metadata(name, scl))
    (product / "GRANULE" / name.granule / "MTD_TL.xml").write_bytes(tile_metadata(name, transform, refl.shape[1:]))
    if not zipped:
        return name.safe
    _zip_dir(product, folder / f"{name.safe}.zip")
    shutil.rmtree(product)
    return f"{name.safe}.zip"


def _zip_dir(src: Path, dst: Path) -> None:
    """Zip `src` with its own name as the top folder, fixed member times so the bytes repeat."""
    with zipfile.ZipFile(dst, "w") as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{src.name}/{path.relative_to(src).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            # JP2 is already compressed: stored members are also read faster through /vsizip/.
            info.compress_type = zipfile.ZIP_STORED if path.suffix == ".jp2" else zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())


# ------------------------------------------------------------------------------------------ COG
COG_OPTIONS = {"driver": "COG", "compress": "deflate", "predictor": 2, "blocksize": 256}
# Earth Search v1 declares the ESA DN scaling per asset; from baseline 04.00 the offset is -0.1.
STAC_EXTENSIONS = ["https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                   "https://stac-extensions.github.io/eo/v1.1.0/schema.json"]


def write_cog(folder: Path, acq: Acquisition, refl: np.ndarray, sky: Sky, scl: np.ndarray,
              transform: Affine, baseline: str | None) -> str:
    """One STAC-style acquisition folder: B01.tif ... B12.tif, SCL.tif, CLD.tif (native resolutions) + item JSON.

    DNs are the ESA ones (offset included from baseline 04.00); the item's `raster:bands` gives
    scale and offset as Earth Search v1 does, so readers need not know the baseline rule.
    """
    name = Naming(acq, processing_baseline(acq.date, baseline))
    product = folder / name.cog
    offset = BOA_ADD_OFFSET if has_offset(name.baseline) else 0
    assets = {}
    for band, res in RESOLUTION.items():
        values, nodata = at_resolution(refl, sky.nodata, band)
        write_raster(product / f"{band}.tif", digital_numbers(values, nodata, offset), _grid(transform, res),
                      COG_OPTIONS, nodata=0)
        assets[band] = {"href": f"./{band}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "gsd": res, "raster:bands": [{"data_type": "uint16", "nodata": 0, "scale": 1 / QUANTIFICATION,
                                                      "offset": offset / QUANTIFICATION}]}
    write_raster(product / "SCL.tif", scl, _grid(transform, 20), COG_OPTIONS, nodata=0)
    assets["SCL"] = {"href": "./SCL.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "gsd": 20}
    # The cloud probability beside the bands (not listed in the item, which stays as catalogues serve it).
    write_raster(product / "CLD.tif", cloud_probability(sky), _grid(transform, 20), COG_OPTIONS)
    pct = scl_percentages(scl)
    item = {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": STAC_EXTENSIONS, "id": name.cog,
        "properties": {
            "datetime": f"{name.sensing:%Y-%m-%dT%H:%M:%S}.024000Z", "platform": f"sentinel-2{acq.satellite[-1].lower()}",
            "constellation": "sentinel-2", "eo:cloud_cover": _cloud_percentage(pct), "s2:mgrs_tile": TILE,
            "s2:processing_baseline": name.baseline, "s2:product_uri": name.safe, "sat:relative_orbit": RELATIVE_ORBIT,
            "proj:epsg": int(CRS.split(":")[1]),
        },
        "assets": assets,
    }
    (product / f"{name.cog}.json").write_text(json.dumps(item, indent=1) + "\n")
    return name.cog


# ---------------------------------------------------------------------------------------- Theia
THEIA_BANDS = {"B02": "B2", "B03": "B3", "B04": "B4", "B05": "B5", "B06": "B6", "B07": "B7", "B08": "B8",
               "B8A": "B8A", "B11": "B11", "B12": "B12"}  # MAJA delivers no B01/B09 surface reflectance
THEIA_NODATA = -10000
# MAJA CLM bits (Theia L2A format): 1 any cloud or shadow, 2 cloud (mono-temporal), 4 cloud
# (multi-temporal), 8 cirrus, 16 shadow from clouds, 32 shadow from clouds outside the image.
CLM_ANY, CLM_CLOUD, CLM_CIRRUS, CLM_SHADOW = 1, 2 | 4, 8, 16


def cloud_bits(sky: Sky) -> np.ndarray:
    """(H, W) uint8 MAJA cloud mask at 10 m (0 = clear) with the same thresholds as the SCL."""
    bits = np.zeros(sky.opacity.shape, np.uint8)
    bits |= np.where(sky.opacity >= 0.25, CLM_CLOUD, 0).astype(np.uint8)
    bits |= np.where(sky.cirrus >= 0.015, CLM_CIRRUS, 0).astype(np.uint8)
    bits |= np.where(sky.shadow >= 0.35, CLM_SHADOW, 0).astype(np.uint8)
    bits |= (bits > 0).astype(np.uint8) * CLM_ANY
    bits[sky.nodata] = 0
    return bits


def write_theia(folder: Path, acq: Acquisition, refl: np.ndarray, sky: Sky, transform: Affine) -> str:
    """One `SENTINEL2X_..._L2A_T31TCJ_C_V2-2/` product: FRE and SRE bands, MASKS/ CLM and EDG at R1/R2.

    FRE and SRE are the same here (the synthetic terrain is flat, so the slope correction is nil).
    """
    name = Naming(acq, processing_baseline(acq.date))
    product = folder / name.theia
    for band, code in THEIA_BANDS.items():
        values, nodata = at_resolution(refl, sky.nodata, band)
        data = np.clip(np.rint(values * QUANTIFICATION), -9999, 32767).astype(np.int16)
        data[nodata] = THEIA_NODATA
        for kind in ("FRE", "SRE"):
            write_raster(product / f"{name.theia}_{kind}_{code}.tif", data, _grid(transform, RESOLUTION[band]),
                          TIFF_OPTIONS, nodata=THEIA_NODATA)
    clm, edg = cloud_bits(sky), sky.nodata.astype(np.uint8)
    for level, factor in (("R1", 1), ("R2", 2)):
        coarse_clm = clm if factor == 1 else _any_bits(clm, factor)
        coarse_edg = edg if factor == 1 else (block_mean(edg.astype(np.float32), factor) > 0).astype(np.uint8)
        grid = _grid(transform, 10 * factor)
        write_raster(product / "MASKS" / f"{name.theia}_CLM_{level}.tif", coarse_clm, grid, TIFF_OPTIONS)
        write_raster(product / "MASKS" / f"{name.theia}_EDG_{level}.tif", coarse_edg, grid, TIFF_OPTIONS)
    return name.theia


def _any_bits(bits: np.ndarray, factor: int) -> np.ndarray:
    """OR of the bits over factor x factor blocks (a 20 m pixel is cloudy when any 10 m part is)."""
    h, w = bits.shape
    padded = np.pad(bits, ((0, -h % factor), (0, -w % factor)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=3), axis=1)
