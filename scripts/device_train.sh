#!/usr/bin/env bash
# Train the bundled-model candidate on a lent GPU machine in one command.
#
#   OUT=/some/folder bash scripts/device_train.sh [--smoke] [TRAIN_SECONDS]
#
# Needs the wheels in .whl/ (nibabel, nilearn; the training path imports no
# SimpleITK, napari or Qt) unless $PYTHON already has them. Generates
# randomised phantoms on all cores, trains the light backbone with the
# DeepLabv3+ decoder, size-aware sampling and sequence dropout for
# TRAIN_SECONDS of training loop (default 360; validation every VAL_INTERVAL
# steps keeps the best model), then writes to $OUT:
#   model/config.json, model/model.safetensors.part-aa, -ab ... (<= 15 MiB each;
#   join: cat model.safetensors.part-* > model.safetensors), log.csv, train.log.
# Settings by environment: PYTHON (python3), DECODER (plus), HEAD (128: the
# width of the ASPP and decoder), STRIDE (16), INIT (a model to start from,
# e.g. default: the bundled model's weights; its architecture must match),
# CACHE (a folder for the prepared phantoms: a second run with the same CASES
# and SEED reads them instead of preparing them again),
# LR (1e-3: the peak of the poly schedule), SEED (20000: the first phantom's;
# the validation phantoms follow the training ones),
# ITERATIONS (6000: the poly schedule's length; the time limit may stop it
# first), BATCH (32), VAL_INTERVAL (500), VAL_EACH_OFF (1: validate with each
# sequence switched off too, which takes 5 times as long, and keep the best
# mean mAP; 0: all four only, as v4-v7 were chosen), HARD_NEGATIVES (0: off;
# w > 0: plain slices where the network draws a false positive, found at the
# start and after every validation, are w times as likely as other plain
# slices; finding them runs the training phantoms 5 times), CASES (48 training + 6
# validation phantoms; 56 + 7 took 163 s on 16 cores). On an H200 a step of 32 slices
# takes about 0.05 s and a validation of 7 phantoms about 8 s.
# --smoke: a tiny CPU run (2 + 1 phantoms at 32 px, 6 steps) to test the script.
set -euo pipefail
PY=${PYTHON:-python3}
SMOKE=0
LIMIT=360
for arg in "$@"; do
    case $arg in
        --smoke) SMOKE=1 ;;
        *) LIMIT=$arg ;;
    esac
done
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
RUN=${RUN_DIR:-/tmp/metseg-run}
rm -rf "$RUN"
started=$(date +%s)
"$PY" scripts/device_train.py "$SMOKE" "$LIMIT" "$RUN" 2>&1 | tee "$OUT/train.log"
cp "$RUN/log.csv" "$OUT/log.csv" 2>/dev/null || true
settings=""
for name in TOTAL ITERATIONS BATCH VAL_INTERVAL VAL_EACH_OFF HARD_NEGATIVES CASES SEED LR \
    DECODER HEAD STRIDE INIT; do
    [[ -n ${!name:-} ]] && settings+="$name=${!name} "
done
"$PY" scripts/bundle_model.py "$RUN" "${settings}bash scripts/device_train.sh $*" "$OUT/model"
( cd "$OUT/model" && split -b 15M -d -a 1 model.safetensors model.safetensors.part- \
    && rm model.safetensors && ls -l )
"$PY" - "$OUT/model/config.json" <<'PYTHON'
import json, sys
validation = json.load(open(sys.argv[1]))["metadata"]["training"].get("validation", {})
print("best validation:", json.dumps(validation, indent=1))
PYTHON
echo "total $(( $(date +%s) - started )) s; join with: cat model.safetensors.part-* > model.safetensors"
