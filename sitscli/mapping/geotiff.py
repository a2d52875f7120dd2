"""GeoTIFF outputs of the mapping commands: class maps, probability / score rasters, COGs.

Every raster is tiled (512 x 512), compressed with a predictor (2 = horizontal differencing for
integers, 3 = floating point), BigTIFF when needed, and carries the input grid's CRS and transform.
Finished rasters are Cloud Optimized GeoTIFFs by default (`finish(..., cog=True)`): the same 512
tiles, internal overviews down to one tile (built with "mode" for class maps, so an overview pixel
is the most frequent class, and "average" for scores and probabilities), the IFDs ahead of the
image data. `cog=False` keeps the plain tiled GeoTIFF.

A class map's pixel values are the class codes when the run has them (`DataInfo.class_codes`),
else the class ids 0..K-1; nodata is the largest value of the type (255 for uint8, 65535 for
uint16), which a code never is (codes are limited to 0..65534, and uint8 is chosen only when
every code is below 255). A class map also carries what a GIS needs to show it with its legend
without any styling by hand:
- the colour table inside the TIFF (`write_colormap`; QGIS opens a one-band paletted raster with
  its "Paletted/Unique values" renderer from it);
- the class names: as GDAL category names and a thematic raster attribute table (RAT) in the PAM
  sidecar `MAP.tif.aux.xml`, because the GeoTIFF driver has no place for them inside the TIFF
  and QGIS (3.30+) labels classes from the RAT / category names it finds there. They are also
  repeated inside the TIFF as tags (`CLASS_NAMES`, `CLASS_COLORS`, `CLASS_CODES`, JSON lists) so a
  copy of the .tif alone still names its classes (`read_legend`);
- `MAP.qml`, a QGIS style with the paletted renderer (value, colour, name per class), which QGIS
  loads as the layer's default style, and `MAP.clr`, the same legend as a colour map file.
The sidecars are written under temporary names and renamed just before the map itself.

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
from sitscli.core.legend import LEGEND_MARK, MAX_CODE, clr_text, default_colors, parse_color, pixel_values, qml_text
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
        class_names / class_colors: set for a class map (one band of class values).
        class_values: the pixel value of each class (its code, or its id 0..K-1 when None).
        overview_resampling: how COG overviews are built ("mode" for classes, "average" otherwise).
    """

    count: int
    dtype: str
    nodata: float | int | None
    descriptions: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    scale: float | None = None
    class_names: list[str] | None = None
    class_colors: list[str] | None = None
    class_values: list[int] | None = None
    overview_resampling: str = "average"

    @property
    def is_class_map(self) -> bool:
        return self.class_names is not None

    @property
    def values(self) -> list[int]:
        """The pixel value of each class."""
        return pixel_values(len(self.class_names or []), self.class_values)


def class_value_type(largest: int) -> tuple[str, int]:
    """Smallest unsigned type holding class values 0..largest plus a nodata value (its largest value)."""
    if largest < 255:
        return "uint8", 255
    if largest <= MAX_CODE:
        return "uint16", 65535
    raise ConfigError(f"class value {largest} does not fit a class map: class codes must be 0..{MAX_CODE}")


def legend_tags(class_names: Sequence[str], class_colors: Sequence[str],
                class_codes: Sequence[int] | None) -> dict[str, str]:
    """TIFF tags naming the classes (JSON lists), so a raster alone keeps its legend."""
    tags = {"CLASS_NAMES": json.dumps(list(class_names)), "CLASS_COLORS": json.dumps(list(class_colors))}
    if class_codes:
        tags["CLASS_CODES"] = json.dumps([int(c) for c in class_codes])
    return tags


def class_map_spec(class_names: Sequence[str], class_colors: Sequence[str] | None, tags: dict | None = None, *,
                   class_codes: Sequence[int] | None = None) -> RasterSpec:
    """A one-band class map: pixel values the codes (when given) or ids 0..K-1, nodata never a value."""
    values = pixel_values(len(class_names), class_codes)
    dtype, nodata = class_value_type(max(values, default=0))
    colors = list(class_colors or []) or default_colors(class_names)
    all_tags = {**legend_tags(class_names, colors, class_codes), **(tags or {})}
    return RasterSpec(count=1, dtype=dtype, nodata=nodata, descriptions=["class"], tags=all_tags,
                      class_names=list(class_names), class_colors=colors,
                      class_values=list(values) if class_codes else None, overview_resampling="mode")


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
    """Class value -> RGBA, nodata transparent."""
    table = {v: parse_color(c) for v, c in zip(spec.values, spec.class_colors or [])}
    table[int(spec.nodata)] = (0, 0, 0, 0)
    return table


def write_window(path: Path, window: Window, data: np.ndarray) -> None:
    """Write (count, h, w) into `window` of an existing raster and close it (data on disk)."""
    with rasterio.open(path, "r+") as ds:
        ds.write(data, window=window)


def finish(tmp: Path, final: Path, spec: RasterSpec, *, cog: bool = True, compress: str = "deflate") -> None:
    """Move a complete temporary raster to its final name, as a COG unless `cog` is False, with its
    sidecars (class maps: PAM legend, .qml, .clr; other rasters: stale sidecars removed).

    The COG is built from `tmp` into another temporary name and the sidecars are written under
    temporary names too; everything is renamed into place at the end, the raster last, so the final
    name only ever holds a complete file.
    """
    if cog:
        cog_tmp = tmp.with_name(tmp.name + ".cog")
        rasterio.shutil.copy(tmp, cog_tmp, driver="COG", compress=compress, predictor="yes", blocksize=TILE,
                             overview_resampling=spec.overview_resampling, bigtiff="if_safer", **_cog_interleave(spec))
        os.replace(cog_tmp, tmp)
    moves = []
    for suffix, text in _sidecars(spec).items():
        target = sidecar_path(final, suffix)
        if text is None:
            if suffix == ".aux.xml" or _written_by_us(target):
                target.unlink(missing_ok=True)  # a stale legend from an overwritten class map
            continue
        staged = sidecar_path(tmp, suffix)
        staged.write_text(text)
        moves.append((staged, target))
    for staged, target in moves:
        os.replace(staged, target)
    os.replace(tmp, final)


def _cog_interleave(spec: RasterSpec) -> dict[str, str]:
    """Band interleaving for many-band rasters (embeddings), as the plain writer does, where the COG
    driver has it (GDAL 3.11+); older GDALs write pixel-interleaved COGs."""
    gdal = tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2])
    return {"interleave": "band"} if spec.count > 4 and gdal >= (3, 11) else {}


SIDECARS = (".aux.xml", ".qml", ".clr")


def sidecar_path(raster: Path, suffix: str) -> Path:
    """MAP.tif.aux.xml (GDAL's PAM name), MAP.qml (QGIS's default style name) and MAP.clr."""
    return raster.with_name(raster.name + suffix) if suffix == ".aux.xml" else raster.with_suffix(suffix)


def _written_by_us(path: Path) -> bool:
    """A .qml / .clr that `finish` wrote (a user's own style for a score raster is left alone)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return LEGEND_MARK in f.read(512)
    except OSError:
        return False


def _sidecars(spec: RasterSpec) -> dict[str, str | None]:
    """Sidecar text by suffix; None = none for this raster."""
    if not spec.is_class_map:
        return dict.fromkeys(SIDECARS)
    names, colors, values = spec.class_names or [], spec.class_colors or [], spec.values
    return {".aux.xml": pam_categories(spec), ".qml": qml_text(values, names, colors),
            ".clr": clr_text(values, names, colors)}


def write_raster(path: Path, data: np.ndarray, grid: Grid, spec: RasterSpec, *, overwrite: bool = False,
                 cog: bool = True, compress: str = "deflate") -> None:
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
    for p in (tmp, tmp.with_name(tmp.name + ".cog"), *(sidecar_path(tmp, suffix) for suffix in SIDECARS)):
        p.unlink(missing_ok=True)


def pam_categories(spec: RasterSpec) -> str:
    """GDAL PAM XML for band 1: category names and a thematic RAT (value, class name, RGBA).

    Category names are indexed by pixel value (GDAL's rule), so with codes the list has a blank
    name for every value between them. RAT field types: 0 integer, 2 string; usages: 5 MinMax
    (the pixel value), 2 Name, 6-9 R/G/B/A (GDAL's GDALRATFieldType / GDALRATFieldUsage enums).
    """
    names, values = spec.class_names or [], spec.values
    by_value = dict(zip(values, names))
    fields = [("Value", 0, 5), ("Class_Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(by_value.get(v, ''))}</Category>" for v in range(max(values, default=-1) + 1)]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    for i, (name, ftype, usage) in enumerate(fields):
        lines.append(f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{ftype}</Type><Usage>{usage}</Usage></FieldDefn>')
    for row, (value, name, color) in enumerate(zip(values, names, spec.class_colors or [])):
        r, g, b, a = parse_color(color)
        cells = "".join(f"<F>{v}</F>" for v in (value, escape(name), r, g, b, a))
        lines.append(f'      <Row index="{row}">{cells}</Row>')
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


@dataclass
class RasterLegend:
    """The legend stored in a raster's tags: per class its pixel value, name and colour."""

    values: list[int]
    names: list[str]
    colors: list[str]
    codes: list[int] | None


def read_legend(path: Path) -> RasterLegend:
    """The classes stored in a class map (or a probability raster) by `legend_tags`."""
    with rasterio.open(path) as ds:
        tags = ds.tags()
    names = json.loads(tags.get("CLASS_NAMES", "[]"))
    codes = json.loads(tags["CLASS_CODES"]) if "CLASS_CODES" in tags else None
    colors = json.loads(tags.get("CLASS_COLORS", "[]")) or default_colors(names)
    return RasterLegend(pixel_values(len(names), codes), names, colors, codes)


def read_class_names(path: Path) -> list[str]:
    """Class names stored in a class map, in class-id order (the tags written by `class_map_spec`)."""
    return read_legend(path).names


def read_class_values(path: Path) -> dict[int, str]:
    """Pixel value -> class name of a class map: from sitscli's legend tags (the values are the class
    codes when the map carries them), else from the GDAL category names of band 1 in the PAM sidecar
    `MAP.tif.aux.xml` (as GDAL and QGIS write them for other class maps); {} if neither."""
    legend = read_legend(path)
    if legend.names:
        return dict(zip(legend.values, legend.names))
    sidecar = Path(path).with_name(Path(path).name + ".aux.xml")
    return {i: name for i, name in enumerate(_pam_category_names(sidecar)) if name}


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
