"""GeoTIFF outputs of the mapping commands: class maps, probability / score rasters, COGs.

Every raster is tiled (512 x 512), compressed with a predictor (2 = horizontal differencing for
integers, 3 = floating point), BigTIFF when needed, and carries the input grid's CRS and transform.

A class map also carries what a GIS needs to show it as a legend without any styling by hand:
- the colour table inside the TIFF (`write_colormap`; QGIS opens a one-band paletted raster with
  its "Paletted/Unique values" renderer from it);
- the class names: as GDAL category names and a thematic raster attribute table (RAT) in the PAM
  sidecar `MAP.tif.aux.xml`, because the GeoTIFF driver has no place for them inside the TIFF
  and QGIS (3.30+) labels classes from the RAT / category names it finds there. They are also
  repeated inside the TIFF as tags (`CLASS_NAMES`, `CLASS_COLORS`, JSON lists) so a copy of the
  .tif alone still names its classes.

Writers used by resumable jobs open the file for each window (`write_window`): closing the
dataset after every window puts the tiles and the TIFF directory on disk, so a process killed at
any moment leaves a file whose finished windows can be trusted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from sitscli.core.errors import ConfigError
from sitscli.core.io import check_output, temporary_sibling
from sitscli.data.cube import Grid

TILE = 512
COMPRESSIONS = ("deflate", "zstd", "lzw")


@dataclass
class RasterSpec:
    """What one output raster holds.

    Attributes:
        count: number of bands.
        dtype: numpy dtype name ("uint8", "uint16", "float32", ...).
        nodata: value marking pixels without a result (NaN allowed for floats).
        descriptions: one name per band (shown by GDAL/QGIS as the band name).
        tags: dataset-level metadata written into the TIFF.
        scale: GDAL scale factor of every band (value * scale = physical value), e.g. 0.01 for
            probabilities stored as percent.
        class_names / class_colors: set for a class map (one band of class ids 0..K-1).
        overview_resampling: how COG overviews are built ("nearest" for classes, "average" otherwise).
    """

    count: int
    dtype: str
    nodata: float | int | None
    descriptions: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    scale: float | None = None
    class_names: list[str] | None = None
    class_colors: list[str] | None = None
    overview_resampling: str = "average"

    @property
    def is_class_map(self) -> bool:
        return self.class_names is not None


def class_id_type(num_classes: int) -> tuple[str, int]:
    """Smallest unsigned type holding ids 0..K-1 plus a nodata value (its largest value)."""
    return ("uint8", 255) if num_classes <= 255 else ("uint16", 65535)


def class_map_spec(class_names: Sequence[str], class_colors: Sequence[str] | None, tags: dict | None = None) -> RasterSpec:
    dtype, nodata = class_id_type(len(class_names))
    colors = list(class_colors or []) or default_colors(len(class_names))
    all_tags = {"CLASS_NAMES": json.dumps(list(class_names)), "CLASS_COLORS": json.dumps(colors), **(tags or {})}
    return RasterSpec(count=1, dtype=dtype, nodata=nodata, descriptions=["class"], tags=all_tags,
                      class_names=list(class_names), class_colors=colors, overview_resampling="nearest")


def default_colors(n: int) -> list[str]:
    """A fixed qualitative palette (matplotlib tab20, cycled) for runs that carry no class colours."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return ["#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in cmap(i % 20)[:3])) for i in range(n)]


def parse_color(text: str) -> tuple[int, int, int, int]:
    """'#rrggbb' (or '#rrggbbaa') -> (r, g, b, a)."""
    value = text.strip().lstrip("#")
    if len(value) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ConfigError(f"class colour {text!r} is not a '#rrggbb' colour: fix the class colours of the run")
    rgba = [int(value[i:i + 2], 16) for i in range(0, len(value), 2)]
    return tuple(rgba + [255] * (4 - len(rgba)))  # type: ignore[return-value]


def profile(grid: Grid, spec: RasterSpec, compress: str = "deflate") -> dict:
    """rasterio creation profile: tiled 512, compressed with the predictor that suits the type."""
    if compress not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compress!r}: choose one of {', '.join(COMPRESSIONS)}")
    is_float = np.dtype(spec.dtype).kind == "f"
    return {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": spec.count,
        "dtype": spec.dtype, "nodata": spec.nodata, "crs": grid.crs, "transform": grid.transform,
        "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": compress,
        "predictor": 3 if is_float else 2, "interleave": "pixel" if spec.count > 1 else "band",
        "bigtiff": "if_safer",
    }


def create(path: Path, grid: Grid, spec: RasterSpec, compress: str = "deflate") -> None:
    """Create an empty raster (every pixel nodata until written) with its names, tags and colours."""
    with rasterio.open(path, "w", **profile(grid, spec, compress)) as ds:
        ds.descriptions = tuple(spec.descriptions)
        if spec.tags:
            ds.update_tags(**spec.tags)
        if spec.scale is not None:
            ds.scales = (spec.scale,) * spec.count
        if spec.is_class_map:
            ds.write_colormap(1, colormap(spec))


def colormap(spec: RasterSpec) -> dict[int, tuple[int, int, int, int]]:
    """Class id -> RGBA, nodata transparent."""
    table = {i: parse_color(c) for i, c in enumerate(spec.class_colors or [])}
    table[int(spec.nodata)] = (0, 0, 0, 0)
    return table


def write_window(path: Path, window: Window, data: np.ndarray) -> None:
    """Write (count, h, w) into `window` of an existing raster and close it (data on disk)."""
    with rasterio.open(path, "r+") as ds:
        ds.write(data, window=window)


def finish(tmp: Path, final: Path, spec: RasterSpec, *, cog: bool = False, compress: str = "deflate") -> None:
    """Move a complete temporary raster to its final name (as a COG if asked) plus its sidecar.

    The COG is built from `tmp` into another temporary name, so the final name only ever holds a
    complete file.
    """
    if cog:
        cog_tmp = tmp.with_name(tmp.name + ".cog")
        rasterio.shutil.copy(tmp, cog_tmp, driver="COG", compress=compress, predictor="yes",
                             blocksize=TILE, overview_resampling=spec.overview_resampling, bigtiff="if_safer")
        os.replace(cog_tmp, tmp)
    sidecar = final.with_name(final.name + ".aux.xml")
    if spec.is_class_map:
        sidecar_tmp = tmp.with_name(tmp.name + ".aux.xml")
        sidecar_tmp.write_text(pam_categories(spec))
        os.replace(sidecar_tmp, sidecar)
    else:
        sidecar.unlink(missing_ok=True)  # a stale legend from an overwritten class map
    os.replace(tmp, final)


def write_raster(path: Path, data: np.ndarray, grid: Grid, spec: RasterSpec, *, overwrite: bool = False,
                 cog: bool = False, compress: str = "deflate") -> None:
    """Write a whole (count, H, W) array as one raster, atomically (for outputs that fit in memory)."""
    final = check_output(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        create(tmp, grid, spec, compress)
        write_window(tmp, Window(0, 0, grid.width, grid.height), data.astype(spec.dtype, copy=False))
        finish(tmp, final, spec, cog=cog, compress=compress)
    except BaseException:
        discard(tmp)
        raise


def discard(tmp: Path) -> None:
    """Remove a temporary raster and what `finish` may have left beside it."""
    for p in (tmp, tmp.with_name(tmp.name + ".cog"), tmp.with_name(tmp.name + ".aux.xml")):
        p.unlink(missing_ok=True)


def pam_categories(spec: RasterSpec) -> str:
    """GDAL PAM XML for band 1: category names and a thematic RAT (value, class name, RGBA).

    RAT field types: 0 integer, 2 string; usages: 5 MinMax (the pixel value), 2 Name, 6-9 R/G/B/A
    (GDAL's GDALRATFieldType / GDALRATFieldUsage enums).
    """
    names = spec.class_names or []
    fields = [("Value", 0, 5), ("Class_Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(n)}</Category>" for n in names]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    for i, (name, ftype, usage) in enumerate(fields):
        lines.append(f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{ftype}</Type><Usage>{usage}</Usage></FieldDefn>')
    for i, (name, color) in enumerate(zip(names, spec.class_colors or [])):
        r, g, b, a = parse_color(color)
        cells = "".join(f"<F>{v}</F>" for v in (i, escape(name), r, g, b, a))
        lines.append(f'      <Row index="{i}">{cells}</Row>')
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


def read_class_names(path: Path) -> list[str]:
    """Class names of a class map, position = class id: from the TIFF tags written by `class_map_spec`,
    else from the GDAL category names of band 1 in the PAM sidecar `MAP.tif.aux.xml` (as GDAL and
    QGIS write them for other class maps; ids without a category are empty strings); [] if neither."""
    with rasterio.open(path) as ds:
        names = json.loads(ds.tags().get("CLASS_NAMES", "[]"))
    return names or _pam_category_names(Path(path).with_name(Path(path).name + ".aux.xml"))


def _pam_category_names(sidecar: Path) -> list[str]:
    import xml.etree.ElementTree as ElementTree

    if not sidecar.is_file():
        return []
    try:
        root = ElementTree.parse(sidecar).getroot()
    except ElementTree.ParseError:
        return []  # a damaged sidecar only loses the legend, as in GDAL
    for band in root.iter("PAMRasterBand"):
        if band.get("band", "1") == "1":
            return [(c.text or "").strip() for c in band.iterfind("CategoryNames/Category")]
    return []
