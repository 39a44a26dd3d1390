#!/usr/bin/env bash
# The GPU checks of issue 8 in one go, on a machine with one CUDA GPU:
#   1. the CUDA test subset (tests/test_cuda.py and the CUDA cases of tests/test_ncn.py);
#   2. the training-step table (benchmarks/bench_train_step.py) at the paper's setting:
#      fp32 / bf16 / fp16, with and without --grad_ckpt, batch 1 and 4; TF32 as PyTorch
#      ships it (what training gets) and, for the fp32 rows, with TF32 off;
#   3. estimate_matches at imsize 512 and 1024 (benchmarks/bench_matching.py), and at 1024
#      with TF32 off;
#   4. (part train_forms, issue 17) batch 4, fp32 (TF32) and bf16, with the regressor input
#      as before issue 17 ("old"), as now, and with torch.compile'd regressors: the goal is
#      a bf16 step >= 2x the TF32 default.
# Everything is written under OUTDIR (default benchmarks/gpu_out) and summarised on stdout.
#
#   bash benchmarks/run_gpu_checks.sh [OUTDIR] [tests|train|train_notf32|train_forms|match|match_notf32 ...]
set -uo pipefail
OUTDIR=${1:-benchmarks/gpu_out}
case $OUTDIR in
  tests|train|train_notf32|train_forms|match|match_notf32)
    echo "run_gpu_checks: the first argument is the output folder, then the parts" >&2; exit 2;;
esac
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)  # relative to the caller's folder
cd "$(dirname "$0")/.."
shift || true
PARTS=${*:-tests train train_notf32 train_forms match match_notf32}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee "$OUTDIR/device.txt" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit \
  --format=csv >>"$OUTDIR/device.txt" 2>&1 || true
rc=0
for part in $PARTS; do
  case $part in
    tests)
      $PY -m pytest -q -rs -s -p no:cacheprovider tests/test_cuda.py "tests/test_ncn.py" -k "cuda" \
        2>&1 | tee "$OUTDIR/cuda_tests.txt"
      rc=$((rc | PIPESTATUS[0]));;
    train)
      $PY -m benchmarks.bench_train_step --device cuda --warmup 3 --steps 10 \
        --variants 1,off,0 1,off,1 1,bf16,0 1,bf16,1 1,fp16,0 4,off,0 4,off,1 4,bf16,0 \
                   4,bf16,1 4,fp16,1 \
        --json "$OUTDIR/train_step_cuda.json" --profile "$OUTDIR" 2>&1 \
        | tee "$OUTDIR/train_step_cuda.txt"
      rc=$((rc | PIPESTATUS[0]));;
    train_notf32)
      $PY -m benchmarks.bench_train_step --device cuda --warmup 3 --steps 10 --tf32 off \
        --variants 1,off,0 1,bf16,0 4,off,0 4,bf16,0 4,bf16,1 \
        --json "$OUTDIR/train_step_cuda_notf32.json" 2>&1 \
        | tee "$OUTDIR/train_step_cuda_notf32.txt"
      rc=$((rc | PIPESTATUS[0]));;
    train_forms)
      $PY -m benchmarks.bench_train_step --device cuda --warmup 3 --steps 10 \
        --variants 4,off,0,old 4,off,0 4,off,0,compile 4,bf16,0,old 4,bf16,0 4,bf16,0,compile \
        --json "$OUTDIR/train_step_cuda_forms.json" --profile "$OUTDIR" 2>&1 \
        | tee "$OUTDIR/train_step_cuda_forms.txt"
      rc=$((rc | PIPESTATUS[0]));;
    match)
      $PY -m benchmarks.bench_matching --devices cuda --imsizes 512 1024 --repeats 10 \
        --out "$OUTDIR/matching_cuda.md" 2>&1 | tee "$OUTDIR/matching_cuda.txt"
      rc=$((rc | PIPESTATUS[0]));;
    match_notf32)  # the two formulations round differently under TF32: identical without?
      $PY -m benchmarks.bench_matching --devices cuda --imsizes 1024 --repeats 10 --tf32 off \
        --out "$OUTDIR/matching_cuda.md" 2>&1 | tee -a "$OUTDIR/matching_cuda.txt"
      rc=$((rc | PIPESTATUS[0]));;
    *) echo "run_gpu_checks: unknown part $part (tests, train, train_notf32, train_forms, match, match_notf32)" >&2; exit 2;;
  esac
done
exit $rc
