"""Aligned representations and change scores over whole rasters, by overlapping patches.

Dumeur, Valero, Inglada 2024 (Section V-D): two image time series of the same area, each with its
own dates, are encoded into aligned representations Y (n_q x d_model per pixel, whatever the
dates); the change score of a pixel is the mean over the queries and channels of the squared
difference of its two Y (eq. 12). The GF baseline does the same on linearly gap-filled
reflectance (`sitscli.mapping.gapfill`).

How a raster larger than memory is encoded:
- A patch model sees P x P patches (P a multiple of 8). Patches lie on one lattice over the whole
  raster (stride P - overlap, the last row and column of patches flush with the border), so a
  pixel's result does not depend on the block being written.
- Patch borders see less spatial context; each patch's output is weighted by a linear ramp that
  falls towards its sides (`ramp`), and overlapping patches are averaged with these weights.
- Output blocks are computed one at a time; within a block, one row of patches is read at a time
  (dates x bands x P x (block + P) values per series), so memory follows the block, never the raster.
- A pixel with fewer than MIN_VALID_DATES valid dates in a series gets no result (nodata).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from torch import nn

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import atomic_output, check_output, temporary_sibling
from sitscli.core.progress import Progress, log
from sitscli.data.cube import Cube, Grid
from sitscli.engine.device import autocast
from sitscli.mapping import geotiff
from sitscli.mapping.gapfill import annual_grid, linear_gapfill
from sitscli.mapping.geotiff import RasterSpec

MIN_VALID_DATES = 2          # a pixel needs two valid dates in a series to be compared
MULTIPLE = 8                 # ALISE's three 2x downsamplings
GAPFILL_CHUNK = 16384        # pixels gap-filled at once: 73 grid days x C bands x 4 bytes each
NO_REFERENCE = 255
BINARY_CLASSES = (["no change", "change"], ["#d9d9d9", "#e31a1c"])

PatchFn = Callable[[list[tuple[np.ndarray, np.ndarray]]], np.ndarray]


# ------------------------------------------------------------------------------- grids

class OnGrid(Cube):
    """A cube resampled (nearest neighbour) onto another grid, window by window.

    Each window of the target grid reads the source window covering its bounds (plus a pixel),
    then warps values and validity onto the target window; target pixels outside the source are
    invalid.
    """

    def __init__(self, cube: Cube, grid: Grid):
        self.cube, self.grid = cube, grid
        self.dates, self.band_names, self.layout, self.tile = cube.dates, cube.band_names, cube.layout, cube.tile

    def _read(self, window: Window, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, c, h, w = len(times), len(self.band_names), int(window.height), int(window.width)
        values, valid = np.zeros((t * c, h, w), np.float32), np.zeros((t, h, w), np.uint8)
        source = self._source_window(window)
        if source is not None:
            src_values, src_valid = self.cube.read(source, times)
            common = {"src_transform": window_transform(source, self.cube.grid.transform), "src_crs": self.cube.grid.crs,
                      "dst_transform": window_transform(window, self.grid.transform), "dst_crs": self.grid.crs,
                      "resampling": Resampling.nearest}
            reproject(src_values.reshape(t * c, *src_values.shape[-2:]), values, **common)
            reproject(src_valid.astype(np.uint8), valid, **common)
        return values.reshape(t, c, h, w), valid.astype(bool)

    def _source_window(self, window: Window) -> Window | None:
        left, bottom, right, top = transform_bounds(self.grid.crs, self.cube.grid.crs,
                                                    *window_bounds(window, self.grid.transform), densify_pts=21)
        src = from_bounds(left, bottom, right, top, transform=self.cube.grid.transform)
        col0, row0 = max(0, int(np.floor(src.col_off)) - 1), max(0, int(np.floor(src.row_off)) - 1)
        col1 = min(self.cube.grid.width, int(np.ceil(src.col_off + src.width)) + 1)
        row1 = min(self.cube.grid.height, int(np.ceil(src.row_off + src.height)) + 1)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)


def overlaps(a: Grid, b: Grid) -> bool:
    """Whether grid b covers any part of grid a."""
    left, bottom, right, top = transform_bounds(b.crs, a.crs, *b.bounds, densify_pts=21)
    al, ab, ar, at = a.bounds
    return left < ar and right > al and bottom < at and top > ab


# ------------------------------------------------------------------------------- patches

def check_multiple(value: int, what: str) -> None:
    if value < MULTIPLE or value % MULTIPLE:
        raise ConfigError(f"{what} {value} must be a positive multiple of {MULTIPLE} (ALISE downsamples three times by 2): "
                          "e.g. 64 or 256")


def patch_origins(length: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of patches covering 0..length-1 along one axis: every `stride`, the last flush
    with the end (a single patch at 0 when the axis is shorter than a patch)."""
    if length <= patch:
        return np.zeros(1, dtype=np.int64)
    return np.unique(np.r_[np.arange(0, length - patch, stride), length - patch]).astype(np.int64)


def ramp(patch: int, overlap: int) -> np.ndarray:
    """(P,) blending weight along a patch side: rises linearly over `overlap` pixels from each end,
    1 inside; never 0, so a pixel seen by one patch only (at the raster border) keeps its value."""
    i = np.arange(patch, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, patch - i) / (overlap + 1)).astype(np.float32)


def blend_block(window: Window, cubes: Sequence[Cube], fn: PatchFn, channels: int, *, patch: int,
                overlap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Blend the per-patch outputs of `fn` over one block of the cubes' common grid.

    Args:
        window: the block, in the grid of every cube (all on one grid).
        cubes: the series fed to `fn`, each read as patches at the same places.
        fn: [(values (n, T_i, C, P, P), valid (n, T_i, P, P)) per cube] -> (n, channels, P, P) float32.
        channels: K, the number of output channels of `fn`.
    Returns:
        (K, h, w) float32 weighted average of the patches covering each pixel, and per cube the
        (h, w) number of valid dates of each pixel.
    """
    grid = cubes[0].grid
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    stride = patch - overlap
    rows = patch_origins(grid.height, patch, stride)
    cols = patch_origins(grid.width, patch, stride)
    rows = rows[(rows < r0 + h) & (rows + patch > r0)]
    cols = cols[(cols < c0 + w) & (cols + patch > c0)]
    ext_c0, ext_c1 = int(cols[0]), min(int(cols[-1]) + patch, grid.width)
    weight = np.outer(ramp(patch, overlap), ramp(patch, overlap))             # (P, P)
    acc = np.zeros((channels, h, w), np.float32)
    total = np.zeros((h, w), np.float32)
    counts = [np.zeros((h, w), np.int32) for _ in cubes]
    for row in rows:
        row = int(row)
        band = Window(ext_c0, row, ext_c1 - ext_c0, min(patch, grid.height - row))
        reads = [cube.read(band) for cube in cubes]                           # (T, C, ph, ew), (T, ph, ew)
        top, bottom = max(row, r0), min(row + patch, grid.height, r0 + h)     # block rows this patch row covers
        for count, (_, valid) in zip(counts, reads):
            count[top - r0:bottom - r0] = valid[:, top - row:bottom - row, c0 - ext_c0:c0 - ext_c0 + w].sum(0)
        out = fn([_cut_patches(values, valid, cols - ext_c0, patch) for values, valid in reads])  # (n, K, P, P)
        for k, col in enumerate(cols):
            col = int(col)
            left, right = max(col, c0), min(col + patch, grid.width, c0 + w)
            patch_part = (slice(top - row, bottom - row), slice(left - col, right - col))
            block_part = (slice(top - r0, bottom - r0), slice(left - c0, right - c0))
            acc[(slice(None), *block_part)] += out[k][(slice(None), *patch_part)] * weight[patch_part]
            total[block_part] += weight[patch_part]
    return acc / total, counts


def _cut_patches(values: np.ndarray, valid: np.ndarray, starts: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A row of patches from a strip: values (T, C, ph, ew), valid (T, ph, ew) -> (n, T, C, P, P),
    (n, T, P, P); parts beyond the raster are zero and invalid."""
    t, c, ph, ew = values.shape
    pv = np.zeros((len(starts), t, c, patch, patch), np.float32)
    pm = np.zeros((len(starts), t, patch, patch), bool)
    for k, s in enumerate(starts):
        width = min(patch, ew - int(s))
        pv[k, :, :, :ph, :width] = values[:, :, :, s:s + width]
        pm[k, :, :ph, :width] = valid[:, :, s:s + width]
    return pv, pm


class AlignedEncoder:
    """Y of patches from an encoder with aligned outputs (ALISE's `AliseEncoder`).

    `encode([values (n, T, C, P, P), valid (n, T, P, P)], dates (T,))` -> Y (n, n_q, d_model, P, P),
    `batch_size` patches per forward pass, bf16 autocast on CUDA.
    """

    def __init__(self, encoder: nn.Module, device: torch.device, batch_size: int = 8):
        self.encoder, self.device, self.batch_size = encoder, device, batch_size

    @property
    def n_q(self) -> int:
        return int(self.encoder.n_q)

    @property
    def d_model(self) -> int:
        return int(self.encoder.d_model)

    @torch.inference_mode()
    def encode(self, values: np.ndarray, valid: np.ndarray, dates: np.ndarray) -> torch.Tensor:
        parts = []
        for start in range(0, len(values), self.batch_size):
            v = torch.from_numpy(values[start:start + self.batch_size]).to(self.device)
            batch = {"values": v, "valid": torch.from_numpy(valid[start:start + self.batch_size]).to(self.device),
                     "dates": torch.as_tensor(dates, dtype=torch.int64, device=self.device).expand(len(v), -1)}
            with autocast(self.device):
                parts.append(self.encoder(batch).float())
        return torch.cat(parts)

    def distance_fn(self, dates_a: np.ndarray, dates_b: np.ndarray, distance: str = "mse") -> PatchFn:
        """Per patch pixel -> (n, 1, P, P): "mse" = eq. 12, the mean over queries and channels of
        (Y_A - Y_B)^2; "cosine" = 1 - cos(Y_A, Y_B) over the flattened n_q x d_model vectors."""
        def fn(pairs):
            (va, ma), (vb, mb) = pairs
            ya, yb = self.encode(va, ma, dates_a), self.encode(vb, mb, dates_b)   # (n, n_q, d_model, P, P)
            if distance == "cosine":
                score = 1 - F.cosine_similarity(ya.flatten(1, 2), yb.flatten(1, 2), dim=1)   # (n, P, P)
            else:
                score = ((ya - yb) ** 2).mean(dim=(1, 2))                                     # (n, P, P)
            return score.unsqueeze(1).cpu().numpy()
        return fn

    def embedding_fn(self, dates: np.ndarray) -> PatchFn:
        """Y flattened query-major -> (n, n_q * d_model, P, P)."""
        def fn(series):
            (values, valid), = series
            return self.encode(values, valid, dates).flatten(1, 2).cpu().numpy()
        return fn


def alise_distance(window: Window, a: Cube, b: Cube, encoder: AlignedEncoder, *, patch: int, overlap: int,
                   distance: str = "mse") -> np.ndarray:
    """(1, h, w) float32 distance ("mse": eq. 12, or "cosine") over a block, NaN where a series has
    < MIN_VALID_DATES dates."""
    distance, counts = blend_block(window, [a, b], encoder.distance_fn(a.dates, b.dates, distance), 1, patch=patch,
                                   overlap=overlap)
    return _nodata_where_short(distance, counts)


def alise_embedding(window: Window, cube: Cube, encoder: AlignedEncoder, *, patch: int, overlap: int) -> np.ndarray:
    """(n_q * d_model, h, w) float32 Y over a block, NaN where the series has < MIN_VALID_DATES dates."""
    y, counts = blend_block(window, [cube], encoder.embedding_fn(cube.dates), encoder.n_q * encoder.d_model,
                            patch=patch, overlap=overlap)
    return _nodata_where_short(y, counts)


def _nodata_where_short(out: np.ndarray, counts: list[np.ndarray]) -> np.ndarray:
    short = np.logical_or.reduce([c < MIN_VALID_DATES for c in counts])
    out[:, short] = np.nan
    return out


# ------------------------------------------------------------------------------- gap filling

def gapfill_distance(window: Window, a: Cube, b: Cube, anchor_doy: int) -> np.ndarray:
    """(1, h, w) float32 GF baseline over a block: mean over the 5-day grid and the bands of the squared
    difference of the two years' gap-filled reflectance; NaN where a series has < MIN_VALID_DATES dates."""
    h, w = int(window.height), int(window.width)
    (va, ma), (vb, mb) = a.read(window), b.read(window)
    grid_a, grid_b = annual_grid(a.dates, anchor_doy), annual_grid(b.dates, anchor_doy)
    pixels_a, pixels_b = _pixels(va, ma), _pixels(vb, mb)
    ok = np.flatnonzero((ma.sum(0) >= MIN_VALID_DATES).ravel() & (mb.sum(0) >= MIN_VALID_DATES).ravel())
    distance = np.full(h * w, np.nan, np.float32)
    for start in range(0, ok.size, GAPFILL_CHUNK):
        idx = ok[start:start + GAPFILL_CHUNK]
        fa = linear_gapfill(pixels_a[0][idx], a.dates, pixels_a[1][idx], grid_a)    # (n, G, C)
        fb = linear_gapfill(pixels_b[0][idx], b.dates, pixels_b[1][idx], grid_b)
        distance[idx] = ((fa - fb) ** 2).mean(axis=(1, 2))
    return distance.reshape(1, h, w)


def _pixels(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, C, h, w), (T, h, w) -> (h*w, T, C), (h*w, T)."""
    t, c, h, w = values.shape
    return values.reshape(t, c, h * w).transpose(2, 0, 1), valid.reshape(t, h * w).T


# ------------------------------------------------------------------------------- writing

def write_blocks(grid: Grid, path: Path, spec: RasterSpec, compute: Callable[[Window], np.ndarray], *, block: int,
                 overwrite: bool, label: str, cog: bool = True) -> int:
    """Write a GeoTIFF block by block from `compute(window) -> (count, h, w)` (NaN = nodata), atomically,
    made a COG at the end unless `cog` is False (see `geotiff.finish`).

    Tiles are block x block (band-interleaved when many bands), so each block fills whole tiles and
    nothing is rewritten. Returns the number of pixels with a result.
    """
    final = check_output(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    mapped = 0
    try:
        with _create(tmp, grid, spec, block) as ds, Progress(_n_blocks(grid, block), label) as bar:
            for window in _windows(grid, block):
                data = compute(window)
                mapped += int(np.isfinite(data[0]).sum())
                ds.write(_encode(data, spec), window=window)
                bar.advance()
        if mapped == 0:
            raise DataContentError(f"no pixel has {MIN_VALID_DATES} valid dates in the input(s): nothing to write "
                                   "(check the cloud masks, the dates or the area)")
        geotiff.finish(tmp, final, spec, cog=cog)
    except BaseException:
        geotiff.discard(tmp)
        raise
    return mapped


def _create(path: Path, grid: Grid, spec: RasterSpec, block: int):
    profile = geotiff.profile(grid, spec)
    if block % 16 == 0:  # GeoTIFF tiles are multiples of 16
        profile.update(blockxsize=block, blockysize=block)
    if spec.count > 4:
        profile["interleave"] = "band"
    ds = rasterio.open(path, "w", **profile)
    ds.descriptions = tuple(spec.descriptions)
    if spec.tags:
        ds.update_tags(**spec.tags)
    if spec.is_class_map:
        ds.write_colormap(1, geotiff.colormap(spec))
    return ds


def _encode(data: np.ndarray, spec: RasterSpec) -> np.ndarray:
    if np.dtype(spec.dtype).kind == "f":
        return data.astype(spec.dtype, copy=False)
    return np.where(np.isnan(data), spec.nodata, data).astype(spec.dtype)


def _windows(grid: Grid, block: int):
    for row in range(0, grid.height, block):
        for col in range(0, grid.width, block):
            yield Window(col, row, min(block, grid.width - col), min(block, grid.height - row))


def _n_blocks(grid: Grid, block: int) -> int:
    return -(-grid.height // block) * -(-grid.width // block)


def write_zarr(grid: Grid, path: Path, descriptions: list[str], compute: Callable[[Window], np.ndarray], *,
               block: int, overwrite: bool, tags: dict[str, str]) -> int:
    """Write `compute(window) -> (K, h, w)` into a zarr store readable by xarray, atomically.

    The store holds `embedding (band, y, x)` float32 (NaN = nodata) chunked block x block, the
    pixel-centre coordinates `x`, `y`, and attrs `crs` (WKT), `transform` (6 affine coefficients,
    GDAL order a, b, c, d, e, f), `band_names` and the provenance tags.
    """
    import zarr

    mapped = 0
    with atomic_output(path, overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        k = len(descriptions)
        emb = root.create_array("embedding", shape=(k, grid.height, grid.width), chunks=(min(k, 64), block, block),
                                dtype="float32", fill_value=np.nan, dimension_names=["band", "y", "x"])
        t = grid.transform
        root.create_array("x", data=(t.c + t.a * (np.arange(grid.width) + 0.5)).astype(np.float64), dimension_names=["x"])
        root.create_array("y", data=(t.f + t.e * (np.arange(grid.height) + 0.5)).astype(np.float64), dimension_names=["y"])
        root.attrs.update({"crs": grid.crs.to_wkt() if grid.crs else "", "transform": list(t)[:6],
                           "band_names": descriptions, **tags})
        with Progress(_n_blocks(grid, block), "embed") as bar:
            for window in _windows(grid, block):
                data = compute(window)
                mapped += int(np.isfinite(data[0]).sum())
                r, c = int(window.row_off), int(window.col_off)
                emb[:, r:r + data.shape[1], c:c + data.shape[2]] = data
                bar.advance()
        if mapped == 0:
            raise DataContentError(f"no pixel has {MIN_VALID_DATES} valid dates in the input: nothing to write "
                                   "(check the cloud masks, the dates or the area)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # zarr v3: consolidated metadata is an extension
            zarr.consolidate_metadata(str(tmp))
    return mapped


# ------------------------------------------------------------------------------- thresholds, reference

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the finite `values`: the histogram cut that maximises the between-class variance."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise DataContentError("no finite value to threshold")
    hist, edges = np.histogram(finite, bins=bins)
    return otsu_from_histogram(hist, edges)


def otsu_from_histogram(hist: np.ndarray, edges: np.ndarray) -> float:
    """Otsu on a histogram: (bins,) counts and (bins + 1,) edges -> the upper edge of the lower class."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1e-12)
    m1 = ((hist * centres).sum() - s0) / np.maximum(w1, 1e-12)
    between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (m0 - m1) ** 2, -1.0)
    return float(edges[int(np.argmax(between)) + 1])


def raster_otsu(path: Path, block: int, bins: int = 256) -> float:
    """Otsu's threshold over a one-band float raster read by windows (two passes: range, histogram)."""
    with rasterio.open(path) as ds:
        grid = Grid(ds.crs, ds.transform, ds.height, ds.width)
        low, high = np.inf, -np.inf
        for window in _windows(grid, block):
            data = ds.read(1, window=window)
            data = data[np.isfinite(data)]
            if data.size:
                low, high = min(low, float(data.min())), max(high, float(data.max()))
        if not np.isfinite(low):
            raise DataContentError(f"{path} has no value to threshold")
        hist = np.zeros(bins, np.int64)
        edges = np.linspace(low, high if high > low else low + 1e-12, bins + 1)
        for window in _windows(grid, block):
            data = ds.read(1, window=window)
            hist += np.histogram(data[np.isfinite(data)], bins=edges)[0]
    return otsu_from_histogram(hist, edges)


def binary_map(distance_path: Path, threshold: float, *, grid: Grid, block: int, out: Path, overwrite: bool,
               tags: dict[str, str], cog: bool = True) -> float:
    """Write the change map (uint8: 1 change where distance > threshold, 0 no change, 255 nodata) with a
    legend; returns the changed fraction of the pixels with a distance."""
    spec = geotiff.class_map_spec(*BINARY_CLASSES, tags={**tags, "SITS_THRESHOLD": repr(float(threshold))})
    counts = np.zeros(2, np.int64)

    def compute(window: Window) -> np.ndarray:
        with rasterio.open(distance_path) as ds:
            distance = ds.read(1, window=window)
        out_block = np.where(np.isfinite(distance), (distance > threshold).astype(np.float32), np.nan)
        counts[:] += [(out_block == 0).sum(), (out_block == 1).sum()]
        return out_block[None]

    write_blocks(grid, out, spec, compute, block=block, overwrite=overwrite, label="binary map", cog=cog)
    return float(counts[1] / max(1, counts.sum()))


class Reference:
    """Reference change labels on a grid: a raster of 0/1 (other values: no reference) or polygons
    with a 0/1 `field`; `read(window)` -> (h, w) uint8 0, 1 or NO_REFERENCE."""

    def __init__(self, path: Path, grid: Grid, field: str = "change"):
        self.path, self.grid, self.field = Path(path), grid, field
        self.polygons = None
        try:
            with rasterio.open(self.path) as ds:
                self.is_raster = ds.count >= 1
        except rasterio.errors.RasterioIOError:
            self.is_raster = False
        if not self.is_raster:
            self.polygons = self._read_polygons()

    def _read_polygons(self):
        import geopandas as gpd

        try:
            frame = gpd.read_file(self.path)
        except Exception as exc:  # pyogrio/fiona raise many types for an unreadable file
            raise DataFormatError(f"reference {self.path} is neither a raster nor a vector file ({exc})") from None
        if self.field not in frame.columns:
            raise ConfigError(f"reference {self.path} has no field {self.field!r} (fields: "
                              f"{', '.join(c for c in frame.columns if c != 'geometry')}): give --reference-field")
        if frame.crs is None:
            raise DataFormatError(f"reference {self.path} has no CRS: set it (e.g. ogr2ogr -a_srs)")
        frame = frame.to_crs(self.grid.crs)
        values = frame[self.field]
        if values.dtype == bool or values.dtype.kind in "iuf":
            frame = frame.assign(_label=values.astype(float))
        else:
            lowered = values.astype(str).str.lower()
            frame = frame.assign(_label=np.where(lowered.isin(["1", "true", "yes", "change", "changed"]), 1.0, 0.0))
        return frame[frame["_label"].isin([0.0, 1.0])]

    def read(self, window: Window) -> np.ndarray:
        if self.is_raster:
            return self._read_raster(window)
        from rasterio.features import rasterize
        from shapely.geometry import box

        h, w = int(window.height), int(window.width)
        part = self.polygons.iloc[self.polygons.sindex.query(box(*window_bounds(window, self.grid.transform)))]
        if part.empty:
            return np.full((h, w), NO_REFERENCE, np.uint8)
        return rasterize(zip(part.geometry, part["_label"].astype(np.uint8)), out_shape=(h, w), fill=NO_REFERENCE,
                         transform=window_transform(window, self.grid.transform), dtype="uint8")

    def _read_raster(self, window: Window) -> np.ndarray:
        with rasterio.open(self.path) as ds:
            same = Grid(ds.crs, ds.transform, ds.height, ds.width).same_as(self.grid)
            if same:
                data = ds.read(1, window=window, masked=True)
            else:
                with WarpedVRT(ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                               height=self.grid.height, resampling=Resampling.nearest) as vrt:
                    data = vrt.read(1, window=window, masked=True)
        filled = data.filled(NO_REFERENCE) if np.ma.isMaskedArray(data) else data
        return np.where(np.isin(filled, (0, 1)), filled, NO_REFERENCE).astype(np.uint8)


def scores_and_labels(distance_path: Path, reference: Reference, *, block: int,
                      max_pixels: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Distances and 0/1 reference of the pixels that have both, every k-th pixel when there are
    more than `max_pixels` (a regular subsample keeps memory bounded on a whole tile)."""
    grid = reference.grid
    step = max(1, int(np.ceil(grid.height * grid.width / max_pixels)))
    scores, labels = [], []
    with rasterio.open(distance_path) as ds:
        for window in _windows(grid, block):
            distance = ds.read(1, window=window).ravel()
            label = reference.read(window).ravel()
            flat = (np.arange(int(window.height))[:, None] + int(window.row_off)) * grid.width \
                + np.arange(int(window.width))[None, :] + int(window.col_off)
            keep = np.isfinite(distance) & (label != NO_REFERENCE) & (flat.ravel() % step == 0)
            scores.append(distance[keep])
            labels.append(label[keep])
    if step > 1:
        log(f"ROC on every {step}th pixel ({grid.height * grid.width // step:,} of {grid.height * grid.width:,})")
    return np.concatenate(scores), np.concatenate(labels)


def roc(scores: np.ndarray, labels: np.ndarray, png: Path | None, *, overwrite: bool, title: str) -> float:
    """ROC AUC of `scores` against 0/1 `labels` (sklearn); the curve as a PNG when `png` is given."""
    from sklearn.metrics import roc_auc_score, roc_curve

    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        kind = "no pixel" if not present else f"only {'change' if 1 in present else 'no-change'} pixels"
        raise DataContentError(f"the reference has {kind} where the change score is defined: the ROC needs both "
                               "changed and unchanged pixels (check its values are 0/1 and that it covers the area)")
    auc = float(roc_auc_score(labels, scores))
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fpr, tpr, _ = roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right")
        fig.tight_layout()
        with atomic_output(png, overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return auc

