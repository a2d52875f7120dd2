"""predict-map over several tiles: one map per tile, a VRT mosaic whose pixels are the tiles' maps,
finished tiles skipped and a partial one resumed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from affine import Affine

from sitscli.core.errors import ConfigError
from sitscli.workflows.predict_map import predict_tiles

from test_predict_map import ArrayCube, run_dir  # noqa: F401  (the stand-in classifier and its run)


def _cubes() -> list[ArrayCube]:
    """Two tiles side by side overlapping by 6 columns (as MGRS tiles overlap), the second one row lower."""
    first, second = ArrayCube(seed=0), ArrayCube(seed=1)
    first.tile, second.tile = "31TCJ", "31TDJ"
    t = first.grid.transform
    second.grid = dataclasses.replace(second.grid, transform=Affine(t.a, 0, t.c + 30 * t.a, 0, t.e, t.f + t.e))
    return [first, second]


def _tiles(run_dir, out_dir, **kw) -> dict:
    return predict_tiles(_cubes(), model=run_dir, out_dir=out_dir, block=16, batch_size=100, device="cpu", **kw)


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_two_tiles_and_their_vrt_mosaic(run_dir, tmp_path):
    summary = _tiles(run_dir, tmp_path / "maps")
    assert summary["mosaics"] == [str(tmp_path / "maps" / "mosaic.vrt")]
    a, b = _read(tmp_path / "maps" / "T31TCJ.tif"), _read(tmp_path / "maps" / "T31TDJ.tif")
    with rasterio.open(tmp_path / "maps" / "mosaic.vrt") as ds:
        assert (ds.width, ds.height) == (66, 41) and ds.nodata == 255
        assert ds.transform == _cubes()[0].grid.transform and ds.crs.to_epsg() == 32631
        assert ds.colormap(1)[2][:3] == (0x33, 0xa0, 0x2c)
        mosaic = ds.read(1)
    expected = np.full((41, 66), 255, np.uint8)
    expected[:40, :36] = a
    later = expected[1:, 30:]
    later[b != 255] = b[b != 255]           # the later tile on top where it has data, not its nodata
    np.testing.assert_array_equal(mosaic, expected)
    assert (mosaic[1:5, 30:34] == a[1:5, 30:34]).all()   # tile 2's never-clear corner shows tile 1


def test_finished_tiles_skipped_partial_one_resumed(run_dir, tmp_path):
    _tiles(run_dir, tmp_path / "full")

    def fault(done: int) -> None:
        if done == 4 and (tmp_path / "maps" / "T31TCJ.tif").exists():
            raise KeyboardInterrupt     # stopped in the middle of the second tile

    with pytest.raises(KeyboardInterrupt):
        _tiles(run_dir, tmp_path / "maps", after_block=fault)
    assert not (tmp_path / "maps" / "T31TDJ.tif").exists()
    summary = _tiles(run_dir, tmp_path / "maps")
    assert summary["tiles"]["T31TCJ"] == {"skipped": True, "outputs": {"map": str(tmp_path / "maps" / "T31TCJ.tif")}}
    assert summary["tiles"]["T31TDJ"]["blocks_resumed"] == 4
    for name in ("T31TCJ.tif", "T31TDJ.tif", "mosaic.vrt"):
        np.testing.assert_array_equal(_read(tmp_path / "maps" / name), _read(tmp_path / "full" / name))


def test_tile_options_checked(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="--out .*is a folder"):
        predict_tiles(_cubes(), model=run_dir, out_dir=tmp_path / "map.tif")
    with pytest.raises(ConfigError, match="--probabilities and --confidence take one input"):
        predict_tiles(_cubes(), model=run_dir, out_dir=tmp_path, probabilities=tmp_path / "p.tif")
    with pytest.raises(ConfigError, match="--tiles picks tiles of one STAC catalog"):
        predict_tiles(["a", "b"], model=run_dir, out_dir=tmp_path, tiles=["31TCJ"])
