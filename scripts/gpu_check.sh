#!/usr/bin/env bash
# The GPU check: one prepared command, at most 5 minutes on one GPU.
#
#   bash scripts/gpu_check.sh OUT_DIR [extra options for python -m benchmarks.gpu_check]
#
# 1. the tests marked `gpu` (tests/test_gpu.py: selectors give the same queries on the GPU as on
#    the CPU, an adaptation step in bf16 + channels_last, ranking through the actors' code);
# 2. python -m benchmarks.gpu_check: forward pass vs every selector at 1024x2048 with 19 classes,
#    ranking images/s, adaptation steps of the papers' recipe at its 640x1280 (train images/s),
#    evaluation at the labels' native 1024x2048; peak GPU memory;
# 3. python -m benchmarks.profile_selectors: where each selector's time goes (a torch.profiler table
#    per selector and kind of maps: kernels, launches, copies, syncs, greedy rounds, graph replays);
# 4. python -m benchmarks.window_max: the greedy rounds' window maximum, one pooling against one per axis.
# Each writes into OUT_DIR as it goes (gpu-tests.txt, gpu-tests.xml, gpu-check.json, gpu-check.txt,
# profile/, window-max.txt), so a part that fails or runs out of time leaves the others' figures. Needs torch with CUDA,
# torchvision, numpy, scipy, pyarrow, pyyaml and pytest; neither Ray nor MLflow.
set -u
OUT="${1:-${OUT:-gpu-check-out}}"
shift || true
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$OUT"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
started=$(date +%s)
status=0

echo "== gpu check: $(date -u +%FT%TZ), $("$PYTHON" --version 2>&1), $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
echo "== 1/4 tests marked gpu (at most 90 s)"
timeout 90 "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" \
    2>&1 | tee "$OUT/gpu-tests.txt"
test "${PIPESTATUS[0]}" -eq 0 || status=1

echo "== 2/4 ranking, training, evaluation (at most 200 s)"
timeout 200 "$PYTHON" -m benchmarks.gpu_check --out "$OUT" "$@"
code=$?
if [ "$code" -eq 124 ]; then echo "gpu check: ran out of its 200 s; the parts finished so far are in $OUT/gpu-check.json"; fi
test "$code" -eq 0 || status=1

echo "== 3/4 where each selector's time goes (at most 120 s)"
timeout 120 "$PYTHON" -m benchmarks.profile_selectors --device cuda --out "$OUT/profile" 2>&1 \
    | grep -v "SyncActivityProfilerHandler" | tee "$OUT/profile.txt"
code=${PIPESTATUS[0]}
if [ "$code" -eq 124 ]; then echo "profile: ran out of its 120 s; the selectors done so far are in $OUT/profile"; fi
test "$code" -eq 0 || status=1

echo "== 4/4 the greedy rounds' window maximum: one pooling against one per axis (at most 30 s)"
timeout 30 "$PYTHON" -m benchmarks.window_max --device cuda 2>&1 | tee "$OUT/window-max.txt"
test "${PIPESTATUS[0]}" -eq 0 || status=1

echo "== gpu check finished in $(( $(date +%s) - started )) s with status $status; figures in $OUT"
exit "$status"
