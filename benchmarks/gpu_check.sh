#!/usr/bin/env bash
# GPU check of the fused NAFBlock kernels: compiled tests, then timings.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [extra benchmarks/gpu_bench.py arguments...]
#
# 0. Installs this checkout editable if tilediff does not import (no network needed); measures
#    the device-to-device copy bandwidth (the practical ceiling the '% copy' columns use).
# 1. python -m pytest -q tests/test_kernels.py tests/test_cuda_graphs.py with TRITON_INTERPRET unset
#    (kernels compiled for the GPU; the tests pick the cuda device; -n 8 with pytest-xdist).  If
#    pytest is not installed or fails, gpu_bench.py --verify also checks fused vs reference.
# 2. python benchmarks/gpu_bench.py OUT_DIR --budget-s <what is left of ~7.5 minutes>
#    (one NAFBlock at c=64..512, 16xcx128x128, fp16/bf16/fp32: eager vs fused, both also replayed
#    from CUDA graphs, torch.compile at fp16:64 bf16:64 fp16:512; the latent network at 750x500, eager / fused / fused + CUDA graph, with the
#    relative error of each against eager; each fused launch alone at c=64 and 256; a sweep of
#    launch configurations (--sweep), whose winners go to OUT_DIR/kernel_configs.json).
# 2b. gpu_bench.py again with the configurations the sweep kept, if any (TILEDIFF_KERNEL_CONFIGS): fp16,
#    c = 64 and 512 with torch.compile, and the network, into OUT_DIR/with_kept_configs/; step 3 uses them too.
# 3. python benchmarks/gpu_restore.py OUT_DIR: one full 100-step 6000x4000 restoration (fp16) after
#    a 2-step warm-up, plus one sampler step taken apart and profiled.
# 4. python benchmarks/gpu_dehaze_defaults.py OUT_DIR: the shipped dehazing model with its file defaults
#    (GPU vs CPU on the bundled example, GPU vs numpy dark channel prior / recomposition, 6000x4000
#    timings) when 90 s are left; GPU_CHECK_DEHAZE_ONLY=1 runs only this step.
# Results: OUT_DIR/gpu_<device>_<date>.json/.md, OUT_DIR/gpu_restore_<device>_<date>.json,
# OUT_DIR/gpu_restore_profile.txt, OUT_DIR/kernel_configs.json, OUT_DIR/pytest_kernels.log and
# OUT_DIR/gpu_check.log (7 files).
# Needs torch (CUDA) + triton and tilediff's dependencies; run it with the python that has them
# (PYTHON=..., default python3).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT_DIR="${1:-benchmarks/results}"
[ $# -gt 0 ] && shift
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
TOTAL_BUDGET="${GPU_CHECK_BUDGET_S:-460}"   # seconds for the whole script (kept under 8 minutes)
PYTEST_TIMEOUT="${GPU_CHECK_PYTEST_S:-210}"
# GPU_CHECK_QUICK=1: a short confirmation run (fp16 only, c=64/512, no sweep or breakdown, the
# restoration's CUDA-graph run only), for when little device time is left
QUICK="${GPU_CHECK_QUICK:-0}"
RESTORE_RESERVE=120
CONFIRM_RESERVE=110   # step 2b
DEHAZE_RESERVE=150    # step 4
BENCH_ARGS=(--sweep --compile-only fp16:64 bf16:64 fp16:512)
RESTORE_ARGS=()
if [ "$QUICK" = 1 ]; then
    RESTORE_RESERVE=70
    CONFIRM_RESERVE=0
    DEHAZE_RESERVE=0
    BENCH_ARGS=(--dtypes fp16 --channels 64 512 --compile-only fp16:64 --breakdown-channels)
    RESTORE_ARGS=(--only-graphs)
fi
PY="${PYTHON:-$(command -v python3 || command -v python)}"
SECONDS=0

log() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$LOG"; }
: > "$LOG"

log "repo $REPO, output $OUT_DIR"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton import failed:", exc)
EOF

# tilediff importable?  kernels/ and weights/ are installed as tilediff.kernels and
# tilediff.shipped_weights by setup.py, so a bare checkout does not import: install it editable
# (no network, no build isolation).  If that fails, run from a flattened copy of the checkout.
if ! "$PY" -c "import tilediff.kernels.nafblock" >/dev/null 2>&1; then
    log "installing tilediff editable (pip --no-deps --no-build-isolation --no-index)"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$LOG" 2>&1
    if ! "$PY" -c "import tilediff.kernels.nafblock" >/dev/null 2>&1; then
        FLAT="$(mktemp -d)/tilediff_flat"
        mkdir -p "$FLAT"
        cp -r tilediff tests benchmarks "$FLAT"/
        cp -r kernels "$FLAT/tilediff/kernels"
        cp -r weights "$FLAT/tilediff/shipped_weights"
        cd "$FLAT"
        export PYTHONPATH="$FLAT${PYTHONPATH:+:$PYTHONPATH}"
        log "editable install failed: running from the flattened copy $FLAT"
    fi
fi
if "$PY" -c "import tilediff.kernels.nafblock, tilediff; print('tilediff from', tilediff.__file__)" 2>&1 | tee -a "$LOG"; then
    :
else
    log "ERROR: cannot import tilediff.kernels"
fi

# 4. (defined here, run last) the shipped dehazing model with its file defaults on the GPU: the
#    bundled example against the CPU, the GPU dark channel prior / recomposition against numpy, and
#    6000x4000 restorations with and without the prior start and the recomposition.
#    GPU_CHECK_DEHAZE_ONLY=1 runs this step alone.
DEHAZE_RC=-1
dehaze_defaults() {
    log "gpu_dehaze_defaults.py (shipped dehaze model, file defaults, 6000x4000 fp16, limit ${1}s)"
    timeout -k 10 "$1" "$PY" benchmarks/gpu_dehaze_defaults.py "$OUT_DIR" --size 6000x4000 --precision fp16 2>&1 \
        | tee -a "$LOG"
    DEHAZE_RC=${PIPESTATUS[0]}
    log "gpu_dehaze_defaults.py rc=$DEHAZE_RC; total ${SECONDS}s"
}
if [ "${GPU_CHECK_DEHAZE_ONLY:-0}" = 1 ]; then
    unset TRITON_INTERPRET
    dehaze_defaults $(( TOTAL_BUDGET - SECONDS ))
    ls -la "$OUT_DIR" | tee -a "$LOG"
    exit "$DEHAZE_RC"
fi

# 1. compiled tests
unset TRITON_INTERPRET
PYTEST_RC=-1
PYTEST_SUMMARY="not run"
EXTRA_VERIFY=()
if "$PY" -c "import pytest" >/dev/null 2>&1; then
    log "pytest tests/test_kernels.py tests/test_cuda_graphs.py (compiled, timeout ${PYTEST_TIMEOUT}s)"
    XDIST=()   # compile the many kernel specialisations in parallel processes when pytest-xdist is there
    "$PY" -c "import xdist" >/dev/null 2>&1 && XDIST=(-n 8)
    timeout -k 10 "$PYTEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -rs ${XDIST[@]+"${XDIST[@]}"} \
        tests/test_kernels.py tests/test_cuda_graphs.py > "$OUT_DIR/pytest_kernels.log" 2>&1
    PYTEST_RC=$?
    PYTEST_SUMMARY="$(grep -E '(passed|failed|error|skipped)' "$OUT_DIR/pytest_kernels.log" | tail -1)"
    [ "$PYTEST_RC" = 124 ] && PYTEST_SUMMARY="timed out after ${PYTEST_TIMEOUT}s; $PYTEST_SUMMARY"
    tail -25 "$OUT_DIR/pytest_kernels.log" | tee -a "$LOG"
    log "pytest rc=$PYTEST_RC: $PYTEST_SUMMARY"
    if [ "$PYTEST_RC" != 0 ]; then EXTRA_VERIFY=(--verify); fi
else
    log "pytest is not installed: gpu_bench.py --verify checks fused vs reference instead"
    PYTEST_SUMMARY="pytest not installed (see verify section)"
    EXTRA_VERIFY=(--verify)
fi

# 2. timings, in what is left of the budget (CONFIRM_RESERVE kept for 2b, RESTORE_RESERVE for 3)
LEFT=$(( TOTAL_BUDGET - DEHAZE_RESERVE - SECONDS - 15 - RESTORE_RESERVE - CONFIRM_RESERVE ))
[ "$LEFT" -lt 60 ] && LEFT=60
log "gpu_bench.py, budget ${LEFT}s"
timeout -k 10 $(( LEFT + 45 )) "$PY" benchmarks/gpu_bench.py "$OUT_DIR" --budget-s "$LEFT" "${BENCH_ARGS[@]}" \
    --pytest-rc "$PYTEST_RC" --pytest-summary "$PYTEST_SUMMARY" ${EXTRA_VERIFY[@]+"${EXTRA_VERIFY[@]}"} "$@" 2>&1 | tee -a "$LOG"
BENCH_RC=${PIPESTATUS[0]}
log "gpu_bench.py rc=$BENCH_RC; total ${SECONDS}s"

# 2b. eager, torch.compile and the fused block back to back in one process (c = 64 and 512, fp16),
#     and the network — with the configurations the sweep kept, if any (the restoration uses them too)
if [ "$QUICK" != 1 ]; then
    if [ -s "$OUT_DIR/kernel_configs.json" ]; then
        export TILEDIFF_KERNEL_CONFIGS="$OUT_DIR/kernel_configs.json"
    fi
    LEFT=$(( TOTAL_BUDGET - DEHAZE_RESERVE - SECONDS - 10 - RESTORE_RESERVE ))
    [ "$LEFT" -lt 45 ] && LEFT=45
    log "gpu_bench.py, configurations: ${TILEDIFF_KERNEL_CONFIGS:-heuristics}, budget ${LEFT}s"
    timeout -k 10 $(( LEFT + 30 )) "$PY" benchmarks/gpu_bench.py "$OUT_DIR/with_kept_configs" --budget-s "$LEFT" \
        --dtypes fp16 --channels 64 512 --compile-only fp16:64 fp16:512 --separate-ln-dtypes \
        --breakdown-channels 64 2>&1 | tee -a "$LOG"
    log "gpu_bench.py (2b) rc=${PIPESTATUS[0]}; total ${SECONDS}s"
fi

# 3. a full 100-step restoration of a 6000x4000 image (official dehazing configuration, random
#    weights, tiled engine, fp16): fused kernels, then eager if time allows
log "gpu_restore.py 6000x4000, 100 steps"
timeout -k 10 $(( RESTORE_RESERVE - 5 )) "$PY" benchmarks/gpu_restore.py "$OUT_DIR" --size 6000x4000 --steps 100 \
    --precision fp16 --budget-s 60 ${RESTORE_ARGS[@]+"${RESTORE_ARGS[@]}"} 2>&1 | tee -a "$LOG"
log "gpu_restore.py rc=${PIPESTATUS[0]}; total ${SECONDS}s"
LEFT=$(( TOTAL_BUDGET - SECONDS ))
if [ "$LEFT" -ge 90 ]; then
    dehaze_defaults "$LEFT"
else
    log "gpu_dehaze_defaults.py skipped: ${LEFT}s left (GPU_CHECK_DEHAZE_ONLY=1 runs it alone)"
fi
ls -la "$OUT_DIR" | tee -a "$LOG"
if [ "$PYTEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]; then exit 0; fi
exit 1
