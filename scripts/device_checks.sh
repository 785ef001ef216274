#!/usr/bin/env bash
# The GPU checks of a lent device machine in one command (see /work/.library/device):
# CUDA tests, the inference benchmark and the correction-loop benchmark in both modes.
#
#   OUT=/some/folder bash scripts/device_checks.sh        # everything
#   OUT=/some/folder bash scripts/device_checks.sh e2e    # ResNet-50 case end to end only (~1 min)
#
# Needs the cp312 wheels of the core's missing dependencies in .whl/ (nibabel,
# nilearn, connected-components-3d, isal) unless python3 already has them.
# Writes cuda_tests.txt, bench_inference.txt and bench_correction_{full,fast}.txt to $OUT
# (e2e: bench_e2e.txt, the stage table of the all-positive random ResNet-50 and
# of the same network made sparse, with their TFLOP/s, foreground and lesions).
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
MODE=${1:-all}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site
fi
export XDG_CACHE_HOME=/tmp/cache PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "$MODE" = e2e ]; then
    timeout 110 python3 -m bench.inference --device cuda --repeat 3 --cohort 0 --no-cli \
        --backbones resnet50 resnet50-sparse 2>&1 | grep -v INFO | tee "$OUT/bench_e2e.txt"
    exit
fi
timeout 70 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_torchprep.py tests/test_engine.py \
    tests/correction tests/test_losses.py tests/test_saliency.py \
    tests/test_training_loop.py 2>&1 | tail -15 | tee "$OUT/cuda_tests.txt"
timeout 130 python3 -m bench.inference --device cuda --repeat 2 --cohort 12 --no-cli 2>&1 | grep -v INFO \
    | tee "$OUT/bench_inference.txt"
# Both modes on the same cases: which one `auto` should pick on a GPU (stop 27: full
# refused the tiny dabs that fast mode on the CPU took; fast mode on CUDA is untimed).
for mode in full fast; do
    timeout 120 python3 -m bench.correction_loop --device cuda --mode $mode --cases 2 \
        --profiles tiny,wrong_undo,five --variants lopsided 2>&1 | grep --line-buffered -v INFO \
        | tee "$OUT/bench_correction_$mode.txt"
done
