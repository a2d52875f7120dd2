#!/usr/bin/env bash
# The pipeline by hand, step by step, on the embedded synthetic data (what `sits demo` does in one go).
# Usage: bash examples/pipeline.sh [WORKDIR]   (a few minutes on 2 CPU cores)
set -euo pipefail
work=${1:-sits-example}
mkdir -p "$work" && cd "$work"

# 1. A synthetic Sentinel-2 L2A folder (SAFE products, two agronomic years) and its parcels.
sits prepare synthetic --out scene --size 192 --overwrite
sits info scene/l2a

# 2. Year 1 as a pixel dataset, with an unlabelled pool for self-supervised pre-training.
sits prepare s2 scene/l2a --labels scene/parcels.gpkg --class-field class_y1 \
    --dates 2021-10-01:2022-09-30 --max-per-polygon 40 --unlabeled 6000 --out year1.sits --overwrite
sits info year1.sits

# 3. SITS-BERT: contamination pre-training, then fine-tuning (small model: see --hparam).
sits pretrain year1.sits --model sitsbert --hparam hidden=64 --hparam layers=2 --hparam heads=4 \
    --epochs 8 --out runs/sitsbert-pre --overwrite
sits finetune year1.sits --from runs/sitsbert-pre --mode full --epochs 15 --out runs/sitsbert-ft --overwrite

# 4. The land-cover map of year 1, with the confidence of each pixel.
sits predict-map scene/l2a --model runs/sitsbert-ft --dates 2021-10-01:2022-09-30 \
    --out landcover.tif --confidence confidence.tif --overwrite
