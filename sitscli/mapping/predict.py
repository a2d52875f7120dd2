"""Windowed inference: a cube read block by block, each block's pixels classified in batches.

The pieces, from the inside out:
- `series_batch`: pixel series gathered from a window -> a batch in the `sitscli.data.batch`
  format, compacted to clear observations where the model wants it (vectorised, no per-pixel loop).
- `PixelClassifier`: one window (T, C, h, w) -> class probabilities (K, h, w), batched on the device,
  bf16 autocast on CUDA, batch halved on CUDA out-of-memory. For a model of compact series the
  window's pixels are batched in order of their number of clear dates (`by_series_length`) and the
  probabilities scattered back to their places: a batch pads to its longest series, so batches of
  similar series waste little work on padding.
- `prefetch`: a reader thread that reads the next windows while the current one is classified
  (a bounded queue: at most `depth` windows wait, so memory follows the block size, not the raster).
- `write_map`: runs the blocks into resumable partial rasters (`sitscli.mapping.blocks`) and
  renames them into place when every block is done.

- `PatchClassifier`: the same for a patch model (OmniSat, ALISE): the window cut into the model's
  tiles, each tile classified whole, with the other sensors (Sentinel-1, VHR) read under the window
  when the model uses them. Tiles do not overlap (no blending: OmniSat's patches are disjoint by
  design; an ALISE map shows its tile borders).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window
from torch import nn

from sitscli.core.errors import DataContentError, SitsError
from sitscli.core.progress import Progress, log
from sitscli.data.batch import Batch
from sitscli.data.cube import Cube
from sitscli.engine.device import autocast, free_cached_memory, is_out_of_memory
from sitscli.engine.distributed import DistContext, gather
from sitscli.engine.signals import INTERRUPTIONS, StopRequested
from sitscli.mapping import geotiff
from sitscli.mapping.blocks import BlockProgress, partial_path
from sitscli.mapping.geotiff import RasterSpec


def series_batch(values: np.ndarray, valid: np.ndarray, dates: np.ndarray, xy: np.ndarray, *,
                 compact: bool, max_len: int | None) -> Batch:
    """Pixel series -> a model batch, exactly as `collate([...], compact, max_len)` would build it.

    Args:
        values: (B, T, C) float32 reflectance 0-1; valid: (B, T) bool; dates: (T,) int days since
            1970-01-01 (one acquisition calendar for the window); xy: (B, 2) map coordinates.
        compact: keep only the clear observations of each pixel, in date order; when a pixel has
            more than `max_len`, an evenly spaced subset (as `batch.compact_sample` without rng).
    Returns:
        values (B, L, C) float32, dates (B, L) int64, valid (B, L) bool, y (B,) -1, xy (B, 2) float64.
    """
    b, t, _ = values.shape
    if not compact:
        return _as_batch(values, np.broadcast_to(dates, (b, t)), valid, xy)
    counts = valid.sum(axis=1)                                     # (B,)
    kept = counts if max_len is None else np.minimum(counts, max_len)
    length = max(1, int(kept.max(initial=0)))
    order = np.argsort(~valid, axis=1, kind="stable")              # (B, T) clear dates first, in date order
    slots = np.broadcast_to(np.arange(length), (b, length)).astype(np.float64)
    if max_len is not None and max_len > 1:
        over = counts > max_len                                    # evenly spaced picks, as np.linspace(0, n-1, max_len)
        slots = np.where(over[:, None], slots * ((counts - 1) / (max_len - 1))[:, None], slots)
    picks = np.minimum(np.rint(slots).astype(np.int64), t - 1)     # (B, L) positions in `order`
    time_idx = np.take_along_axis(order, picks, axis=1)           # (B, L) date indices
    keep = np.arange(length) < kept[:, None]                       # (B, L) False = padding
    out_values = values[np.arange(b)[:, None], time_idx] * keep[..., None]
    out_dates = dates[time_idx]
    last = np.where(kept > 0, out_dates[np.arange(b), np.maximum(kept - 1, 0)], 0)  # padding repeats the last date (as collate)
    out_dates = np.where(keep, out_dates, last[:, None])
    return _as_batch(out_values, out_dates, keep, xy)


def _as_batch(values: np.ndarray, dates: np.ndarray, valid: np.ndarray, xy: np.ndarray) -> Batch:
    return {
        "values": torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)),
        "dates": torch.from_numpy(np.ascontiguousarray(dates, dtype=np.int64)),
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
        "y": torch.full((len(values),), -1, dtype=torch.int64),
        "xy": torch.from_numpy(np.ascontiguousarray(xy, dtype=np.float64)),
    }


def by_series_length(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """pixels (N,) indices into valid (T, P) -> the same pixels ordered by their number of clear
    dates (stable, so equal counts keep raster order): batches cut from it hold similar lengths."""
    return pixels[np.argsort(valid[:, pixels].sum(axis=0), kind="stable")]


def pixel_centres(transform: Affine, window: Window) -> np.ndarray:
    """Map coordinates of the pixel centres of `window`, (h * w, 2) row-major."""
    rows, cols = np.mgrid[0:int(window.height), 0:int(window.width)]
    col = cols.ravel() + window.col_off + 0.5
    row = rows.ravel() + window.row_off + 0.5
    t = transform
    return np.stack([t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f], axis=1)


class PixelClassifier:
    """Classifies every pixel of a window with a pixel model (spec.input == "pixel").

    Args:
        model: a classifier whose forward(batch) returns logits (B, K), in eval mode.
        num_classes: K.
        compact, max_len: from the model's registry spec.
        batch_size: pixels per forward pass.
        device: where the model lives.
    """

    def __init__(self, model: nn.Module, num_classes: int, *, compact: bool, max_len: int | None,
                 batch_size: int, device: torch.device):
        self.model, self.num_classes = model, num_classes
        self.compact, self.max_len = compact, max_len
        self.batch_size, self.device = batch_size, device

    def predict_window(self, values: np.ndarray, valid: np.ndarray, dates: np.ndarray, xy: np.ndarray,
                       window: Window | None = None) -> np.ndarray:
        """values (T, C, h, w), valid (T, h, w), dates (T,), xy (h * w, 2) -> probabilities (K, h, w)
        float32, NaN where a pixel has no valid observation. `window` (where the block lies) is for
        classifiers that read more there (`PatchClassifier`); a pixel's series is all this one needs."""
        t, c, h, w = values.shape
        observed = np.flatnonzero(valid.any(axis=0).ravel())          # (N,) pixels with a clear date
        probs = np.full((h * w, self.num_classes), np.nan, dtype=np.float32)
        series = values.reshape(t, c, h * w)
        masks = valid.reshape(t, h * w)
        if self.compact:
            observed = by_series_length(observed, masks)
        start = 0
        while start < observed.size:
            idx = observed[start:start + self.batch_size]
            batch = series_batch(series[:, :, idx].transpose(2, 0, 1), masks[:, idx].T, dates, xy[idx],
                                 compact=self.compact, max_len=self.max_len)
            try:
                probs[idx] = self._probabilities(batch)                # scattered back to raster order
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(exc):
                    raise
                self._halve_batch()
                continue
            start += idx.size
        return probs.T.reshape(self.num_classes, h, w)

    @torch.inference_mode()
    def _probabilities(self, batch: Batch) -> np.ndarray:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with autocast(self.device):
            logits = self.model(batch)                                  # (B, K)
        return logits.float().softmax(dim=-1).cpu().numpy()

    def _halve_batch(self) -> None:
        free_cached_memory(self.device)
        if self.batch_size == 1:
            raise SitsError(f"{self.device} out of memory with a batch of one pixel: use a smaller model or --device cpu")
        self.batch_size //= 2
        log(f"{self.device} out of memory: batch size halved to {self.batch_size}, going on")


class PatchClassifier:
    """Classifies every pixel of a window with a patch model (spec.input == "patch").

    The window is padded (invalid) to whole tiles of `tile` x `tile` pixels and cut into them; a tile
    is one model sample: values (n, T, C, tile, tile) and, for each other sensor in `others`
    (batch prefix -> a cube on the same grid whose `read(window)` gives its block: `open_s1`,
    `open_vhr`), its block under the tile. The model's per-pixel logits (n, K, tile, tile) become
    probabilities, NaN where a pixel has no valid Sentinel-2 observation. Windows must start on the
    tile grid (blocks a multiple of `tile`) for tiles to line up across windows.
    """

    def __init__(self, model: nn.Module, num_classes: int, *, tile: int, batch_size: int, device: torch.device,
                 others: dict[str, Cube] | None = None):
        self.model, self.num_classes, self.tile = model, num_classes, tile
        self.batch_size, self.device, self.others = max(1, batch_size), device, dict(others or {})

    def predict_window(self, values: np.ndarray, valid: np.ndarray, dates: np.ndarray, xy: np.ndarray,
                       window: Window | None = None) -> np.ndarray:
        """values (T, C, h, w), valid (T, h, w), dates (T,), xy (h * w, 2) of `window` -> probabilities
        (K, h, w) float32, NaN where a pixel has no valid observation."""
        h, w = values.shape[-2:]
        tiles = {"values": _tiles(values, self.tile), "valid": _tiles(valid, self.tile)}   # (n, T, ..., tile, tile)
        n = tiles["values"].shape[0]
        tiles["dates"] = np.broadcast_to(dates, (n, len(dates)))
        for prefix, cube in self.others.items():
            if window is None:
                raise ValueError("PatchClassifier reads its other sensors under the window: give window=")
            other, other_valid = cube.read(window)
            factor = other.shape[-1] // w                             # fine pixels per Sentinel-2 pixel
            tiles[f"{prefix}_values"] = _tiles(other, self.tile * factor)
            tiles[f"{prefix}_valid"] = _tiles(other_valid, self.tile * factor)
            if getattr(cube, "dates", None) is not None and other.ndim == 4:   # a time series
                tiles[f"{prefix}_dates"] = np.broadcast_to(cube.dates, (n, len(cube.dates)))
        probs = np.concatenate([self._probabilities({k: v[i:i + self.batch_size] for k, v in tiles.items()})
                                for i in range(0, n, self.batch_size)])          # (n, K, tile, tile)
        probs = _untile(probs, -(-h // self.tile), -(-w // self.tile))[:, :h, :w]
        probs[:, ~valid.any(axis=0)] = np.nan
        return probs

    @torch.inference_mode()
    def _probabilities(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in arrays.items()}
        for key in [k for k in batch if k == "dates" or k.endswith("_dates")]:
            batch[key] = batch[key].long()                              # int64 days, as `collate` gives
        with autocast(self.device):
            logits = self.model(batch)                                  # (n, K, tile, tile)
        return logits.float().softmax(dim=1).cpu().numpy()


def _tiles(array: np.ndarray, tile: int) -> np.ndarray:
    """(..., h, w) -> (n, ..., tile, tile): zero-padded (False for masks) to whole tiles, row-major."""
    h, w = array.shape[-2:]
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.zeros(array.shape[:-2] + (rows * tile, cols * tile), dtype=array.dtype)
    padded[..., :h, :w] = array
    lead = array.ndim - 2
    split = padded.reshape(padded.shape[:-2] + (rows, tile, cols, tile))
    order = (lead, lead + 2, *range(lead), lead + 1, lead + 3)                 # rows, cols, lead..., tile, tile
    return split.transpose(order).reshape((rows * cols,) + array.shape[:-2] + (tile, tile))


def _untile(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, K, tile, tile) -> (K, rows * tile, cols * tile): the inverse of `_tiles`."""
    n, k, tile, _ = tiles.shape
    return tiles.reshape(rows, cols, k, tile, tile).transpose(2, 0, 3, 1, 4).reshape(k, rows * tile, cols * tile)


def prefetch(cube: Cube, blocks: list[tuple[int, Window]], depth: int = 1) -> Iterator[tuple[int, Window, np.ndarray, np.ndarray]]:
    """Yield (index, window, values, valid) read by a background thread, at most `depth` ahead.

    GDAL releases the GIL while it decodes, so reading the next window overlaps the model's work
    on the current one. A reader error is raised here, in the consumer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_all() -> None:
        try:
            for index, window in blocks:
                if not put((index, window, *cube.read(window))):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    reader = threading.Thread(target=read_all, name="sits-reader", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


@dataclass
class MapTarget:
    """One output raster of a map job: where it goes, what it holds, how probabilities become it.

    `encode(probs)` takes (K, h, w) float32 probabilities (NaN = no observation) and returns the
    (count, h, w) array to write, in `spec.dtype`, nodata where NaN.
    """

    path: Path
    spec: RasterSpec
    encode: Callable[[np.ndarray], np.ndarray]


def class_ids(spec: RasterSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities (K, h, w) -> (1, h, w) the most probable class's pixel value (its code, or its
    id), nodata where no observation."""
    lookup = np.asarray(spec.values, dtype=np.int64)

    def encode(probs: np.ndarray) -> np.ndarray:
        observed = ~np.isnan(probs[0])
        values = np.where(observed, lookup[np.nan_to_num(probs).argmax(axis=0)], spec.nodata)
        return values.astype(spec.dtype)[None]
    return encode


def scaled(spec: RasterSpec, reduce: Callable[[np.ndarray], np.ndarray] = lambda p: p) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities (or a reduction of them, e.g. the max) stored as `spec.dtype`: floats as they
    are, integers as round(p / scale) with nodata where NaN."""
    def encode(probs: np.ndarray) -> np.ndarray:
        out = reduce(probs)
        if np.dtype(spec.dtype).kind == "f":
            return out.astype(spec.dtype)
        return np.where(np.isnan(out), spec.nodata, np.rint(np.nan_to_num(out) / spec.scale)).astype(spec.dtype)
    return encode


def write_map(cube: Cube, classifier: PixelClassifier | PatchClassifier,
              targets: list[MapTarget], *, block: int,
              fingerprint: dict, resume: bool = False, cog: bool = True, compress: str = "deflate",
              after_block: Callable[[int], None] | None = None,
              after_publish: Callable[[Path], None] | None = None, label: str = "predict-map",
              ctx: DistContext | None = None) -> dict:
    """Classify `cube` block by block into `targets`, resumable, and move them into place.

    Each finished block is written to every partial raster (closed = on disk) before the progress
    sidecar records it, so a run killed at any moment (SIGTERM, SIGKILL, Ctrl-C) is continued by
    `resume=True` to the same map an uninterrupted run makes. The publication (one rename per
    output) is resumable too: the sidecar stays until every output is in place, and a resumed job
    whose blocks are all done publishes the outputs whose partial raster is still there (an output
    in place without its partial was published already). On any other error before publication
    the partial outputs are removed. `after_block(n_done)` and `after_publish(path)` are hooks for
    progress callbacks (tests inject faults with them); `label` names the job on
    the progress bar.

    Several processes (`ctx` of a torchrun job, any number of ranks): the blocks left to do are
    dealt round-robin to the ranks; at each step every rank reads and classifies its next block,
    and rank 0 gathers the encoded blocks and alone writes the partial rasters, the progress
    sidecar and the outputs. The files are those of one process, so a job resumes with any number
    of processes, and the map is the one a single process makes.

    Returns a summary: blocks, blocks skipped (resumed), pixels, pixels mapped.
    """
    ctx = ctx or DistContext(0, 1, 0, torch.device("cpu"))   # one process (its device is the classifier's business)
    blocks = list(enumerate(cube.windows(block)))
    partials = [partial_path(t.path) for t in targets]
    fingerprint = {**fingerprint, "block": block, "outputs": [[t.path.name, t.spec.dtype, t.spec.count] for t in targets]}
    state, published, todo = None, [False] * len(targets), []
    failure = None
    if ctx.is_main:
        try:
            state, published, todo = _start(cube, targets, partials, fingerprint, blocks, resume, compress)
        except BaseException as exc:   # told to the other ranks, which would otherwise wait for rank 0
            failure = exc
    plan = gather((None if failure is None else str(failure), todo), ctx)[0]
    if failure is not None:
        raise failure
    if plan[0] is not None:
        raise SitsError(f"rank 0 could not start the map: {plan[0]}")
    todo = plan[1]
    skipped = len(blocks) - len(todo)
    if skipped and ctx.is_main:
        log(f"resuming: {skipped} of {len(blocks)} blocks already done")
    if ctx.distributed and ctx.is_main:
        log(f"{ctx.world_size} processes share the {len(todo)} blocks to map")
    note = "the finished blocks are kept; continue with the same command and --resume"
    mine = [blocks[i] for i in todo[ctx.rank::ctx.world_size]]
    steps = -(-len(todo) // ctx.world_size)
    try:
        with Progress(len(blocks), label) as bar, contextlib.closing(prefetch(cube, mine)) as reader:
            bar.advance(skipped)
            for _ in range(steps):
                item = next(reader, None)
                mapped = None
                if item is not None:
                    index, window, values, valid = item
                    probs = classifier.predict_window(values, valid, cube.dates, pixel_centres(cube.grid.transform, window),
                                                      window=window)
                    mapped = (index, [t.encode(probs) for t in targets], int((~np.isnan(probs[0])).sum()))
                for result in gather(mapped, ctx, to_main=True):   # [] on the ranks other than 0
                    if result is None:
                        continue
                    index, encoded, count = result
                    for partial, data in zip(partials, encoded):
                        geotiff.write_window(partial, blocks[index][1], data)
                    state.mark(index, count)
                    bar.advance()
                    if after_block is not None:
                        after_block(len(state.done))
        if not ctx.is_main:
            return {"blocks": len(blocks), "blocks_resumed": skipped, "pixels": cube.grid.height * cube.grid.width,
                    "pixels_mapped": None}
        if state.mapped_pixels == 0:
            raise DataContentError("no pixel of the input has a valid observation on any date: nothing to map "
                                   "(check the cloud masks, the --dates range or the --aoi)")
    except INTERRUPTIONS as exc:
        _keep(exc, note)
        raise
    except BaseException:
        if ctx.is_main:
            for partial in partials:
                geotiff.discard(partial)
            state.remove()
        raise
    _publish(targets, partials, published, cog=cog, compress=compress, after_publish=after_publish)
    state.remove()
    return {"blocks": len(blocks), "blocks_resumed": skipped, "pixels": cube.grid.height * cube.grid.width,
            "pixels_mapped": state.mapped_pixels}


def _start(cube: Cube, targets: list[MapTarget], partials: list[Path], fingerprint: dict,
           blocks: list[tuple[int, Window]], resume: bool, compress: str) -> tuple[BlockProgress, list[bool], list[int]]:
    """Rank 0: the job's progress (continued or new), which outputs are published, the blocks to do."""
    state = BlockProgress.start(partials[0], fingerprint, resume=resume)
    published = _published(targets, partials, state, len(blocks))
    if state.done and not all(p.exists() or done for p, done in zip(partials, published)):
        log("the partial rasters of the earlier run are gone: starting from the beginning")
        state.blocks.clear()
        published = [False] * len(targets)
    if not state.done:
        for target, partial in zip(targets, partials):
            geotiff.create(partial, cube.grid, target.spec, compress)
    return state, published, [i for i, _ in blocks if i not in state.done]


def _published(targets: list[MapTarget], partials: list[Path], state: BlockProgress, n_blocks: int) -> list[bool]:
    """Which outputs an interrupted publication already put in place (all blocks done, the output
    there and its partial gone)."""
    complete = len(state.done) == n_blocks
    return [complete and t.path.exists() and not p.exists() for t, p in zip(targets, partials)]


def _publish(targets: list[MapTarget], partials: list[Path], published: list[bool], *, cog: bool, compress: str,
             after_publish: Callable[[Path], None] | None) -> None:
    """Rename every finished partial raster into place; a stop or an error keeps what is left resumable."""
    try:
        for target, partial, done in zip(targets, partials, published):
            if not done:
                geotiff.finish(partial, target.path, target.spec, cog=cog, compress=compress)
                if after_publish is not None:
                    after_publish(target.path)
    except INTERRUPTIONS as exc:
        _keep(exc, "the map is complete but not every output is in place; finish with the same command and --resume")
        raise
    except OSError as exc:
        raise SitsError(f"publishing {target.path} failed ({exc.strerror or exc}): the finished map is kept; "
                        f"fix the cause and finish with the same command and --resume") from exc


def _keep(exc: BaseException, note: str) -> None:
    """Say on an interruption what was kept: in the CLI's line (stop signal) or as a log line (Ctrl-C in a library)."""
    if isinstance(exc, StopRequested):
        exc.keep(note)
    else:
        log(f"interrupted: {note}")
