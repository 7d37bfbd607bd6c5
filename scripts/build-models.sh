#!/usr/bin/env bash
# Rebuilds the bundled default models (`make models`): builds the corpora (real
# recordings, photos and text from Debian packages, plus the built-in synthetic
# ones), trains each modality on the training splits of a real corpus and a
# built-in one, exports with an int8 copy, and evaluates each bundle on every
# corpus of its modality: the first goes to models/<m>/eval.json and
# bundle.json, the others to models/<m>/eval-<corpus>/.
# Needs the Debian packages that `.ci/run` and docs/training.md list. Takes about two
# hours on 2 CPU cores; steps can be lowered for a quick run, e.g.
# AUDIO_STEPS=200 IMAGE_STEPS=200 TEXT_STEPS=200 make models.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
CORPORA=${CORPORA:-corpora}
RUNS=${RUNS:-runs}
MODELS=${MODELS:-models}
AUDIO_STEPS=${AUDIO_STEPS:-2000}
IMAGE_STEPS=${IMAGE_STEPS:-2000}
TEXT_STEPS=${TEXT_STEPS:-6000}
FASHION_PER_CLASS=${FASHION_PER_CLASS:-1000}  # of each split: 10,000 train, the whole test set
# The committed text bundle was trained on one thread, which makes it reproducible bit
# for bit here (more threads sum in another order); the small text model loses little.
TEXT_THREADS=${TEXT_THREADS:-1}

corpus() {  # corpus KIND [FOLDER] [ARGS...]: build it once; a manifest means it is there
    local kind=$1 folder=${2:-$1}
    shift $(($# > 1 ? 2 : 1))
    [ -f "$CORPORA/$folder/manifest.csv" ] || "$BIN/cpc-embed" data "$kind" --out "$CORPORA/$folder" "$@"
}

model() {  # model MODALITY STEPS "TRAIN_FOLDERS" EVAL_FOLDERS... (the default config,
    # with scripts/models/MODALITY.toml over it where there is one)
    local modality=$1 steps=$2 data=()
    for folder in $3; do data+=(--data "$CORPORA/$folder"); done
    [ -f "scripts/models/$modality.toml" ] && data+=(--config "scripts/models/$modality.toml")
    shift 3
    if [ -f "$RUNS/$modality/checkpoint.pt" ]; then
        "$BIN/cpc-embed" train --modality "$modality" "${data[@]}" --out "$RUNS/$modality" \
            --resume --steps "$steps" --no-progress
    else
        "$BIN/cpc-embed" train --modality "$modality" "${data[@]}" --split train \
            --out "$RUNS/$modality" --steps "$steps" --no-progress
    fi
    rm -rf "${MODELS:?}/$modality"
    "$BIN/cpc-embed" export "$RUNS/$modality" --out "$MODELS/$modality" --quantize
    "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$CORPORA/$1" --update-bundle
    "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$CORPORA/$1" --quantized \
        --out "$RUNS/$modality/eval-quantized"
    for extra in "${@:2}"; do
        "$BIN/cpc-embed" eval "$MODELS/$modality" --data "$CORPORA/$extra" \
            --out "$MODELS/$modality/eval-$(basename "$extra")"
    done
}

corpus voices
corpus speech
corpus fashion fashion --per-class "$FASHION_PER_CLASS"
corpus images
corpus manpages
corpus text
model audio "$AUDIO_STEPS" "voices speech" voices speech
model image "$IMAGE_STEPS" "fashion images/shapes" fashion images/shapes images/digits
OMP_NUM_THREADS=$TEXT_THREADS model text "$TEXT_STEPS" "text manpages" text manpages
