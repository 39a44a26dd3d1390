#!/usr/bin/env bash
# Quick start on a fresh machine, no downloads needed:
#   1. set up the virtual environment (.venv, scripts/setup_env.sh);
#   2. render a small synthetic MegaDepth-like training set and a PhotoTourism-like
#      validation scene in the real on-disk formats (data_pairs.make_synthetic);
#   3. generate the training pairs from it (data_pairs.prep_megadepth_training_pairs);
#   4. train the paper's model configuration (ResNet-34 with stride-8 layer3, 512-wide
#      regressors, 16x16 patches, 8 anchors) at reduced sizes for a few minutes on the CPU
#      (or the GPU when there is one), with validation after each epoch.
# Checkpoints, log.txt, metrics.jsonl and config.json end up under $OUT_DIR (default
# output/quickstart/...); the experiment directory is printed at the end, and the training
# plots are drawn into run.png there (python -m utils.train.plot_run).
#
# Usage: bash scripts/quickstart.sh
# Environment overrides: DATA_ROOT (default data/synthetic; kept apart from real data),
#   PAIR_ROOT (default $DATA_ROOT/pairs), OUT_DIR (default output/quickstart), EPOCHS (2),
#   ITERS (steps per epoch, 10), DEVICE (auto|cpu|cuda), SKIP_SETUP=1 (reuse .venv as is).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT="${DATA_ROOT:-data/synthetic}"
PAIR_ROOT="${PAIR_ROOT:-$DATA_ROOT/pairs}"
OUT_DIR="${OUT_DIR:-output/quickstart}"
EPOCHS="${EPOCHS:-2}"
ITERS="${ITERS:-10}"
DEVICE="${DEVICE:-auto}"
PY=.venv/bin/python

step() { printf '\n==> %s\n' "$*"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    step "Setting up the environment (.venv)"
    bash scripts/setup_env.sh
fi

if [ ! -d "$DATA_ROOT/MegaDepth_undistort/scene_info" ]; then
    step "Rendering synthetic data into $DATA_ROOT"
    "$PY" -m data_pairs.make_synthetic --out "$DATA_ROOT" --scenes 2 --images_per_scene 8 \
        --val_scenes 1 --val_images 6 --width 480 --height 320 --points 2000 \
        --supersample 1 --portrait_every 0
else
    step "Synthetic data found in $DATA_ROOT (kept)"
fi

step "Generating training pairs into $PAIR_ROOT"
"$PY" -m data_pairs.prep_megadepth_training_pairs --base_dir "$DATA_ROOT/MegaDepth_undistort" \
    --save_dir "$PAIR_ROOT"

step "Training (${EPOCHS} epochs x ${ITERS} steps, paper model configuration, reduced sizes)"
# The paper's model flags (--change_stride --panc 8, default regressor dims and patch sizes)
# with smaller images (--train_size 240 160), fewer coarse matches per pair (--ptmax 25),
# batch 1 and a small validation (320 px, 5 pairs). --random_backbone: the quick start needs
# no download (a real run starts from the ImageNet ResNet-34 weights, fetched when missing).
"$PY" -m train_patch2pix --data_root "$DATA_ROOT" --pair_root "$PAIR_ROOT" -o "$OUT_DIR" \
    --change_stride --panc 8 --batch 1 --ptmax 25 --train_size 240 160 \
    --epochs "$EPOCHS" --max_iters_per_epoch "$ITERS" --plot_counts 2 --save_step 1 \
    -lr 0.0005 -lrd multistep 0.2 5 --cls_dthres 50 5 --epi_dthres 50 5 \
    --val_imsize 320 --val_sample_max 5 --workers 1 --device "$DEVICE" --random_backbone

step "Done. Experiment directory:"
find "$OUT_DIR" -name last_ckpt.pth -printf '%h\n' | sort -u

step "Training plots (losses, F1, match distances, lr, validation) from metrics.jsonl"
find "$OUT_DIR" -name metrics.jsonl -printf '%h\n' | sort -u | while read -r exp; do
    "$PY" -m utils.train.plot_run "$exp" --out "$exp/run.png"
done
