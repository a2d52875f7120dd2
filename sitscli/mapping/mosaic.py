"""A VRT mosaic of per-tile maps: one virtual raster over the tiles of one CRS, read by GDAL/QGIS
as a single map without copying a pixel (what `gdalbuildvrt` makes; written here without the GDAL
Python bindings, which the toolkit does not need otherwise).

Each tile is a `ComplexSource` with its NODATA, so where neighbouring Sentinel-2 tiles overlap
(MGRS tiles overlap by about 4.9 km) the no-data pixels of a later tile do not hide an earlier
one's classes; tiles are placed in the order given (later ones on top where both have data).
The colour table and the tags (legend, provenance) are those of the first tile; file names are
relative to the VRT, so the folder can be moved as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import rasterio

from sitscli.core.errors import DataFormatError
from sitscli.core.io import write_text_atomic

# numpy dtype -> GDAL data type name (those the map writers use)
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
              "float32": "Float32", "float64": "Float64"}


def group_by_crs(maps: list[Path]) -> dict[str, list[Path]]:
    """Maps grouped by CRS ('EPSG:32631' ...), in the order given: a VRT holds one CRS."""
    groups: dict[str, list[Path]] = {}
    for path in maps:
        with rasterio.open(path) as ds:
            groups.setdefault(ds.crs.to_string() if ds.crs else "", []).append(path)
    return groups


def write_vrt(maps: list[Path], out: Path) -> Path:
    """Write `out` (.vrt) mosaicking `maps` (same CRS, pixel size and pixel grid, same bands and type)."""
    infos = []
    for path in maps:
        with rasterio.open(path) as ds:
            infos.append({"path": path, "crs": ds.crs, "transform": ds.transform, "width": ds.width,
                          "height": ds.height, "count": ds.count, "dtypes": ds.dtypes, "nodata": ds.nodata,
                          "block": ds.block_shapes[0], "tags": ds.tags(),
                          "colormap": _colormap(ds), "descriptions": ds.descriptions})
    first = infos[0]
    res = (first["transform"].a, first["transform"].e)
    for info in infos[1:]:
        if info["crs"] != first["crs"] or (info["transform"].a, info["transform"].e) != res \
                or info["count"] != first["count"] or info["dtypes"] != first["dtypes"]:
            raise DataFormatError(f"cannot mosaic {info['path'].name} with {first['path'].name}: CRS, pixel size, "
                                  "bands or data type differ (map each group of same-CRS tiles into its own mosaic)")
    left = min(i["transform"].c for i in infos)
    top = max(i["transform"].f for i in infos)
    right = max(i["transform"].c + i["width"] * res[0] for i in infos)
    bottom = min(i["transform"].f + i["height"] * res[1] for i in infos)
    width, height = round((right - left) / res[0]), round((bottom - top) / res[1])
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(first["crs"].to_wkt())}</SRS>',
             f"  <GeoTransform>{left!r}, {res[0]!r}, 0.0, {top!r}, 0.0, {res[1]!r}</GeoTransform>",
             _metadata(first["tags"], "  ")]
    for band in range(1, first["count"] + 1):
        lines += _band(band, infos, left, top, res, out.parent)
    lines += ["</VRTDataset>", ""]
    write_text_atomic(out, "\n".join(line for line in lines if line))
    return out


def _colormap(ds) -> dict | None:
    try:
        return ds.colormap(1)
    except ValueError:  # no colour table
        return None


def _metadata(tags: dict, indent: str) -> str:
    if not tags:
        return ""
    items = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in tags.items())
    return f"{indent}<Metadata>{items}</Metadata>"


def _band(band: int, infos: list[dict], left: float, top: float, res: tuple[float, float], folder: Path) -> list[str]:
    first = infos[0]
    dtype = GDAL_TYPES[first["dtypes"][band - 1]]
    nodata = first["nodata"]
    lines = [f'  <VRTRasterBand dataType="{dtype}" band="{band}">']
    if first["descriptions"][band - 1]:
        lines.append(f"    <Description>{escape(first['descriptions'][band - 1])}</Description>")
    if nodata is not None:
        lines.append(f"    <NoDataValue>{_number(nodata)}</NoDataValue>")
    if band == 1 and first["colormap"]:
        lines.append("    <ColorInterp>Palette</ColorInterp>")
        lines.append("    <ColorTable>" + "".join(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
                                                    for _, (r, g, b, a) in sorted(first["colormap"].items())) + "</ColorTable>")
    for info in infos:
        t = info["transform"]
        col, row = (t.c - left) / res[0], (t.f - top) / res[1]
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise DataFormatError(f"{info['path'].name} is not on the pixel grid of {first['path'].name} "
                                  "(origins differ by a fraction of a pixel): resample it onto the same grid first")
        name = os.path.relpath(info["path"], folder)
        block_y, block_x = info["block"]
        lines += [
            "    <ComplexSource>",
            f'      <SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>',
            f"      <SourceBand>{band}</SourceBand>",
            f'      <SourceProperties RasterXSize="{info["width"]}" RasterYSize="{info["height"]}" DataType="{dtype}" '
            f'BlockXSize="{block_x}" BlockYSize="{block_y}"/>',
            f'      <SrcRect xOff="0" yOff="0" xSize="{info["width"]}" ySize="{info["height"]}"/>',
            f'      <DstRect xOff="{round(col)}" yOff="{round(row)}" xSize="{info["width"]}" ySize="{info["height"]}"/>',
            f"      <NODATA>{_number(nodata)}</NODATA>" if nodata is not None else "",
            "    </ComplexSource>",
        ]
    lines.append("  </VRTRasterBand>")
    return lines


def _number(value: float) -> str:
    return "nan" if value != value else (str(int(value)) if float(value).is_integer() else repr(float(value)))
