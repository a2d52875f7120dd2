#!/usr/bin/env bash
# Two Sentinel-2 tiles, one model, one mosaic: a STAC catalog served over HTTP -> one training dataset of
# both tiles -> a classifier -> a map of each tile on two processes -> their VRT mosaic.
# The tiles are synthetic: the demo scene (31TCJ) and a copy of it placed right beside it, catalogued as 31TDJ.
# Usage: bash examples/multi_tile.sh [WORKDIR]   (a few minutes on 2 CPU cores; needs torchrun)
set -euo pipefail
work=${1:-sits-multi-tile}
mkdir -p "$work" && cd "$work"
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1 OMP_NUM_THREADS=1   # the catalog is local; 2 processes share the cores

# 1. One synthetic scene of per-band COGs (one agronomic year), then a second tile, labels over both, a catalog.
sits prepare synthetic --out scene --layout cog --size 96 --years 1 --overwrite
python - <<'EOF'
"""tile2/: scene/'s COGs moved one scene width east as tile 31TDJ; labels.gpkg: the parcels of both tiles;
catalog.json: a static STAC catalog of every item (relative links)."""
import json
import shutil
from pathlib import Path

import geopandas as gpd
import pandas as pd
import rasterio
from affine import Affine

shift, tile = (960.0, 0.0), "31TDJ"   # 96 px of 10 m
shutil.rmtree("tile2", ignore_errors=True)
for item_file in sorted(Path("scene/l2a").glob("*/*.json")):
    item = json.loads(item_file.read_text())
    item["id"] = item["id"].replace("31TCJ", tile)
    item["properties"]["s2:mgrs_tile"] = tile
    folder = Path("tile2/l2a") / item["id"]
    folder.mkdir(parents=True)
    (folder / f"{item['id']}.json").write_text(json.dumps(item))
    for raster in item_file.parent.glob("*.tif"):
        with rasterio.open(raster) as src:
            profile, data, t = src.profile, src.read(), src.transform
        profile.update(driver="GTiff", transform=Affine(t.a, 0, t.c + shift[0], 0, t.e, t.f + shift[1]))
        with rasterio.open(folder / raster.name, "w", **profile) as dst:
            dst.write(data)
first = gpd.read_file("scene/parcels.gpkg")
second = first.set_geometry(first.translate(*shift))
gpd.GeoDataFrame(pd.concat([first, second], ignore_index=True), crs=first.crs).to_file("labels.gpkg")
items = sorted(Path(".").glob("*/l2a/*/*.json"))
Path("catalog.json").write_text(json.dumps({
    "type": "Catalog", "stac_version": "1.0.0", "id": "synthetic", "description": "two synthetic Sentinel-2 tiles",
    "links": [{"rel": "item", "href": f"./{p.as_posix()}", "type": "application/json"} for p in items]}))
EOF

# 2. Serve the folder over HTTP, as a catalog on an object store would be.
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
catalog=http://127.0.0.1:$port/catalog.json
for _ in $(seq 50); do curl -sf -o /dev/null "$catalog" 2>/dev/null && break; sleep 0.2; done

# 3. One dataset of both tiles (every tile of the catalog; --tile T31TCJ,T31TDJ would choose them): each tile on
#    its own grid and CRS, one train/val/test split drawn over the polygons of both.
sits prepare s2 "$catalog" --labels labels.gpkg --class-field class_y1 --max-per-polygon 40 --out tiles.sits --overwrite
sits info tiles.sits

# 4. A small TempCNN trained on both tiles.
sits finetune tiles.sits --model tempcnn --hparam filters=16 --hparam dense=64 --epochs 15 --device cpu \
    --out runs/tempcnn --overwrite

# 5. The map of each tile on two processes (maps/T31TCJ.tif, maps/T31TDJ.tif) and their mosaic (maps/mosaic.vrt;
#    tiles in several UTM zones give one mosaic_EPSG_326xx.vrt per zone).
torchrun --standalone --nproc_per_node 2 -m sitscli predict-map "$catalog" --tiles all --model runs/tempcnn \
    --block 48 --out maps --device cpu --overwrite
ls maps

# 6. The mosaic scored against the test split of both tiles (polygons never seen in training).
sits accuracy maps/mosaic.vrt --reference tiles.sits --out accuracy --overwrite
