"""Remote rasters and STAC catalogs, over a real HTTP server on 127.0.0.1 with byte ranges, so that
GDAL's /vsicurl/ path (HEAD, ranged GETs) and pystac's reading are exercised without the network."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import gdal_path, is_remote, require_input
from sitscli.data.readers import detect_layout, open_source, streaming_env
from sitscli.data.synthetic import write_synthetic
from sitscli.workflows.predict_map import predict_map

from _cli import sits
from test_predict_map import run_dir  # noqa: F401  (a stand-in classifier reading B04 and B08)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files of a folder with `Range: bytes=a-b` support (206 Partial Content), as object stores do."""

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def send_head(self):
        range_header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not range_header or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = range_header.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(remaining))
        self._remaining = None


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server for `folder` on 127.0.0.1 (a free port) -> its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("stac") / "scene", size=32, seed=4, layout="cog", years=1)


def _item_collection(scene, base_url: str | None) -> dict:
    """The scene's item JSONs as one ItemCollection, asset hrefs absolute (URLs when `base_url`)."""
    features = []
    for item_file in sorted(scene.l2a.glob("*/*.json")):
        item = json.loads(item_file.read_text())
        folder = item_file.parent
        for asset in item["assets"].values():
            name = asset["href"].removeprefix("./")
            asset["href"] = f"{base_url}/{folder.name}/{name}" if base_url else str(folder / name)
        item["links"] = []
        features.append(item)
    return {"type": "FeatureCollection", "features": features}


def test_remote_names_are_gdal_paths():
    assert gdal_path("s3://bucket/T31TCJ/B02.tif") == "/vsis3/bucket/T31TCJ/B02.tif"
    assert gdal_path("https://h.org/a/B02.tif") == "/vsicurl/https://h.org/a/B02.tif"
    assert gdal_path("/vsicurl/https://h.org/a.tif") == "/vsicurl/https://h.org/a.tif"
    assert is_remote("gs://b/k.tif") and not is_remote("data/B02.tif")
    # a URL is not folded by Path() nor checked on disk
    assert require_input("https://h.org/a/B02.tif") == "/vsicurl/https://h.org/a/B02.tif"


def test_cog_over_http_reads_the_same_as_the_local_file(scene):
    folder = sorted(p for p in scene.l2a.iterdir() if p.is_dir())[0]
    with serve(folder) as url, streaming_env():
        window = Window(3, 5, 20, 17)
        with rasterio.open(folder / "B04.tif") as local, rasterio.open(gdal_path(f"{url}/B04.tif")) as remote:
            assert remote.profile["blockxsize"] == local.profile["blockxsize"]
            np.testing.assert_array_equal(remote.read(1, window=window), local.read(1, window=window))


def test_stack_url_is_a_source(scene, tmp_path):
    """A multiband stack given by URL opens (no 'path not found') and reads the same as the local file."""
    local = open_source(scene.l2a, bands=["B04", "B08"])
    values, valid = local.read(Window(0, 0, 32, 32))
    stack = tmp_path / "stack.tif"
    profile = {"driver": "GTiff", "dtype": "float32", "width": 32, "height": 32, "count": 2 * len(local.dates),
               "crs": local.grid.crs, "transform": local.grid.transform, "nodata": float("nan")}
    data = np.where(valid[:, None], values, np.nan).reshape(-1, 32, 32)
    with rasterio.open(stack, "w", **profile) as ds:
        ds.write(data)
        for t, day in enumerate(local.dates):
            for c, band in enumerate(("B04", "B08")):
                ds.set_band_description(2 * t + c + 1, f"{np.datetime64(int(day), 'D')} {band}")
    with serve(tmp_path) as url, streaming_env():
        assert detect_layout(f"{url}/stack.tif") == "stack"
        remote = open_source(f"{url}/stack.tif")
        got_values, got_valid = remote.read(Window(4, 4, 16, 16))
    np.testing.assert_array_equal(got_valid, valid[:, 4:20, 4:20])
    np.testing.assert_allclose(got_values, values[:, :, 4:20, 4:20])


def test_failed_request_is_one_line(tmp_path):
    with serve(tmp_path) as url, streaming_env(), pytest.raises(DataFormatError) as err:
        open_source(f"{url}/missing.tif")
    message = str(err.value)
    assert "\n" not in message and "cannot read remote raster" in message and "missing.tif" in message


def test_stac_item_collection_over_http_reads_like_the_cog_folder(scene, tmp_path):
    folder_cube = open_source(scene.l2a)
    with serve(scene.l2a) as url:
        (scene.l2a.parent / "items.json").write_text(json.dumps(_item_collection(scene, url)))
        with serve(scene.l2a.parent) as catalog_url, streaming_env():
            assert detect_layout(f"{catalog_url}/items.json") == "stac"
            cube = open_source(f"{catalog_url}/items.json", tile="T31TCJ")
            assert cube.layout == "stac" and cube.tile == scene.tile
            np.testing.assert_array_equal(cube.dates, folder_cube.dates)
            got = cube.read(Window(2, 2, 24, 24))
    expected = folder_cube.read(Window(2, 2, 24, 24))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_stac_filters(scene, tmp_path):
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(_item_collection(scene, None)))
    covers = sorted(f["properties"]["eo:cloud_cover"] for f in _item_collection(scene, None)["features"])
    threshold = covers[len(covers) // 2]
    cube = open_source(collection, max_cloud=threshold)
    all_dates = open_source(collection).dates
    assert 0 < len(cube.dates) < len(all_dates)
    with pytest.raises(DataContentError, match="raise --max-cloud"):
        open_source(collection, max_cloud=-1)
    with pytest.raises(ConfigError, match="no acquisition of tile 32ULU"):
        open_source(collection, tile="32ULU")
    with pytest.raises(ConfigError, match="--max-cloud filters the items of a STAC catalog"):
        open_source(scene.l2a, max_cloud=50)


def test_cli_maps_two_catalog_tiles_over_http(scene, run_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`sits predict-map URL --tiles`: a catalog of two tiles -> two maps equal to the one-tile map, and a mosaic."""
    collection = _item_collection(scene, None)
    second = json.loads(json.dumps(collection["features"]))
    for item in second:                       # the same acquisitions, catalogued as a second tile
        item["id"] += "-31TDJ"
        item["properties"]["s2:mgrs_tile"] = "31TDJ"
    single = tmp_path / "single.tif"
    predict_map(scene.l2a, model=run_dir, out=single, block=16, device="cpu")
    with serve(scene.l2a) as url:
        remote = _item_collection(scene, url)
        remote["features"] += [{**item, "assets": {k: {**a, "href": f"{url}/{Path(a['href']).parent.name}/"
                                                                      f"{Path(a['href']).name}"}
                                                   for k, a in item["assets"].items()}} for item in second]
        (tmp_path / "items.json").write_text(json.dumps(remote))
        with serve(tmp_path) as catalog_url:
            code, out, err = sits(monkeypatch, capsys, "predict-map", f"{catalog_url}/items.json", "--model", run_dir,
                                  "--out", tmp_path / "maps", "--tiles", "all", "--block", "16", "--device", "cpu")
    assert code == 0, err
    assert "T31TCJ" in out and "mosaic:" in out
    with rasterio.open(single) as ds:
        expected = ds.read(1)
    for name in ("T31TCJ.tif", "T31TDJ.tif", "mosaic.vrt"):
        with rasterio.open(tmp_path / "maps" / name) as ds:
            np.testing.assert_array_equal(ds.read(1), expected)


def test_cli_prepares_a_dataset_from_a_catalog_url(scene, tmp_path, monkeypatch, capsys):
    """`sits prepare s2 URL`: the same samples as from the COG folder, with --tile and --max-cloud honoured."""
    from sitscli.data.prepared import open_prepared

    common = ("--labels", scene.parcels, "--class-field", scene.class_field, "--bands", "B04,B08",
              "--max-per-polygon", 5, "--max-cloud", 100, "--tile", "31TCJ")
    with serve(scene.l2a) as url:
        (tmp_path / "items.json").write_text(json.dumps(_item_collection(scene, url)))
        with serve(tmp_path) as catalog_url:
            code, out, err = sits(monkeypatch, capsys, "prepare", "s2", f"{catalog_url}/items.json", *common,
                                  "--out", tmp_path / "remote")
    assert code == 0, err
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", scene.l2a, *common[:-4], "--out", tmp_path / "local")
    assert code == 0, err
    remote, local = open_prepared(tmp_path / "remote.sits"), open_prepared(tmp_path / "local.sits")
    for name in ("x", "valid", "date", "y", "split"):
        np.testing.assert_array_equal(np.asarray(remote.ds[name]), np.asarray(local.ds[name]))
