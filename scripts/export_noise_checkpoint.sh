#!/usr/bin/env bash
# Write a model file from the noise stage's latest checkpoint (EMA weights) without disturbing the
# running training: copies the checkpoint to a scratch state folder and "resumes" it for 0 steps.
#   scripts/export_noise_checkpoint.sh STATE_DIR OUT.safetensors [train options of that run...]
set -euo pipefail
STATE=$1; OUT=$2; shift 2
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
cp "$STATE/noise.ckpt" "$SCRATCH/noise.ckpt"
STEP=$(python -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False, map_location='cpu')['step'])" "$SCRATCH/noise.ckpt")
tilediff train --stage noise --resume --noise-iters "$STEP" --state-dir "$SCRATCH" --out "$OUT" --no-progress "$@"
echo "exported step $STEP to $OUT"
