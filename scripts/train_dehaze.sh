#!/usr/bin/env bash
# How weights/dehaze.safetensors was trained (CPU, 1 torch thread, in the background with nohup).
# Needs scikit-image for the photos (training/evaluation only). Checkpoints go to .train_state/dehaze
# (git-ignored; the noise stage's checkpoint is ~37 MB). Re-running a stage with --resume continues it.
set -euo pipefail
cd "$(dirname "$0")/.."

# `tilediff train/eval` once registered in tilediff/cli.py; the click commands directly until then.
td() {
  if tilediff "$1" --help >/dev/null 2>&1; then tilediff "$@"; else
    python -c 'import sys; from tilediff.train_cli import train_cmd, eval_cmd
cmd = {"train": train_cmd, "eval": eval_cmd}[sys.argv[1]]; cmd(sys.argv[2:], prog_name="tilediff " + sys.argv[1])' "$@"
  fi
}

STATE=.train_state/dehaze
STAGES=${STAGES:-"data compressor noise finetune eval"}   # e.g. STAGES=noise RESUME=--resume scripts/train_dehaze.sh
has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$STATE"
has data && python scripts/prepare_skimage_data.py .train_state/data   # train/ (12 images) and heldout/ (4 photos)

# Stage 1: compressor (ch 8, ch_mult 2,4,4,8, latent 1/8 × 8 channels), latent regulariser 0.1,
# 30 % of samples decoded without their LQ skips (see tilediff.train.compressor_loss).
has compressor && td train --task dehaze --clean .train_state/data/train --stage compressor \
  --out "$STATE/compressor.safetensors" --iters 900 --crop 128 --batch 8 --optimizer adamw --lr 1e-3 \
  --latent-weight 0.1 --skip-dropout 0.3 --threads 1 --state-dir "$STATE" --save-every 100 ${RESUME:-}

# Stage 2: noise network (width 24, enc 1,1,1,2) on the frozen compressor's latents, SDE max_sigma 30.
has noise && td train --task dehaze --clean .train_state/data/train --stage noise \
  --compressor "$STATE/compressor.safetensors" --out "$STATE/dehaze.safetensors" \
  --noise-iters 5000 --noise-crop 256 --batch 8 --noise-optimizer lion --noise-lr 2e-4 --warmup 100 \
  --max-sigma 30 --width 24 --enc-blocks 1,1,1,2 --middle-blocks 1 --dec-blocks 1,1,1,1 \
  --haze-refresh 1 --threads 1 --state-dir "$STATE" --save-every 250 ${RESUME:-}

# Stage 3: fine-tune the noise network with the capped x̂0 error (tilediff.train.noise_loss): the MLE loss
# alone left part of the haze in place. B: MLE + 0.05 × x̂0 error, 4000 iterations at lr 1e-4; E: the x̂0
# error alone, 3000 more at lr 5e-5 (seed 2). Each round a fresh cosine schedule, EMA weights kept.
if has finetune; then
  common="--task dehaze --clean .train_state/data/train --stage noise --compressor $STATE/dehaze.safetensors
    --noise-crop 256 --batch 8 --noise-optimizer lion --warmup 50 --max-sigma 30 --width 24 --enc-blocks 1,1,1,2
    --middle-blocks 1 --dec-blocks 1,1,1,1 --haze-refresh 1 --threads 1 --save-every 250"
  td train $common --out "$STATE/dehaze_ftB.safetensors" --init-noise "$STATE/dehaze.safetensors" \
    --noise-loss mle+x0 --noise-iters 4000 --noise-lr 1e-4 --state-dir "$STATE/ftB" ${RESUME:-}
  td train $common --out "$STATE/dehaze_ftE.safetensors" --init-noise "$STATE/dehaze_ftB.safetensors" \
    --noise-loss x0 --noise-iters 3000 --noise-lr 5e-5 --seed 2 --state-dir "$STATE/ftE" ${RESUME:-}
  cp "$STATE/dehaze_ftE.safetensors" "$STATE/dehaze.safetensors"
fi

# Restoration defaults stored in the file (used when the options are not given): the probability-flow
# ODE, and the mean of 4 runs' final latents (chosen in session 4), the runs in four orientations of the
# latent (session 6), each starting at t = 0.5 T from the dark channel prior's latent, and the output
# recomposed with the input (session 7; see weights/dehaze.md).
has eval && python -c 'import sys; from tilediff.train import update_metadata
update_metadata(sys.argv[1], default_sampler="ode", default_samples=4, default_ensemble=True,
                default_prior="dcp", default_prior_t=0.5, default_recompose=True)' "$STATE/dehaze.safetensors"

# Evaluation on photos never seen in training (4 held-out scikit-image photos + matplotlib's grace_hopper),
# three haze densities × seeds 0-2; --store writes the means into the model file.
has eval && td eval --weights "$STATE/dehaze.safetensors" --clean .train_state/data/heldout \
  --clean .train_state/data/heldout_extra --density light,moderate,dense --seed 0,1,2 \
  --json "$STATE/eval.json" --store --threads 1
# Per-image table and the images of dehaze_examples.png (seed 0, moderate haze).
has eval && td eval --weights "$STATE/dehaze.safetensors" --clean .train_state/data/heldout \
  --clean .train_state/data/heldout_extra --save-images "$STATE/eval" --threads 1
