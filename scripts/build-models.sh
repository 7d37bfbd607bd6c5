#!/usr/bin/env bash
# Rebuilds the bundled default models (`make models`): builds the built-in
# corpora, trains each modality on its training split, exports with a uint8
# quantized copy, and records the linear-probe evaluation in bundle.json.
# Takes about an hour on 2 CPU cores; steps can be lowered for a quick run,
# e.g. AUDIO_STEPS=200 IMAGE_STEPS=200 TEXT_STEPS=200 make models.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
CORPORA=${CORPORA:-corpora}
RUNS=${RUNS:-runs}
MODELS=${MODELS:-models}
AUDIO_STEPS=${AUDIO_STEPS:-3000}
IMAGE_STEPS=${IMAGE_STEPS:-2000}
TEXT_STEPS=${TEXT_STEPS:-2000}

corpus() {  # corpus KIND: build it once; an existing manifest means it is there
    [ -f "$CORPORA/$1/manifest.csv" ] || "$BIN/cpc-embed" data "$1" --out "$CORPORA/$1"
}

model() {  # model MODALITY CORPUS STEPS EVAL_DATA...
    local modality=$1 corpus=$2 steps=$3
    shift 3
    if [ -f "$RUNS/$modality/checkpoint.pt" ]; then
        "$BIN/cpc-embed" train --modality "$modality" --data "$corpus" --out "$RUNS/$modality" \
            --resume --steps "$steps" --no-progress
    else
        "$BIN/cpc-embed" train --modality "$modality" --data "$corpus" --split train \
            --out "$RUNS/$modality" --steps "$steps" --no-progress
    fi
    rm -rf "${MODELS:?}/$modality"
    "$BIN/cpc-embed" export "$RUNS/$modality" --out "$MODELS/$modality" --quantize
    "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$1" --update-bundle
    "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$1" --quantized \
        --out "$RUNS/$modality/eval-quantized"
    for extra in "${@:2}"; do
        "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$extra" \
            --out "$RUNS/$modality/eval-$(basename "$extra")"
    done
}

corpus speech
corpus text
corpus images
model audio "$CORPORA/speech" "$AUDIO_STEPS" "$CORPORA/speech"
model image "$CORPORA/images" "$IMAGE_STEPS" "$CORPORA/images/shapes" "$CORPORA/images/digits"
model text "$CORPORA/text" "$TEXT_STEPS" "$CORPORA/text"
