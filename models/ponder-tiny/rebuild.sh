#!/usr/bin/env bash
# Rebuild every file of models/ponder-tiny with ponder itself: the synthetic task, the
# tokenizer, a random initialisation, pre-training, and the two SFT models. Prints the
# time each step took. Run from anywhere; PONDER names the binary (default: the release
# build of this checkout), WORK a scratch directory for the data (default: a temp dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
P="${PONDER:-$here/../../target/release/ponder}"
W="${WORK:-$(mktemp -d)}"
step() {
    local name=$1
    shift
    local t0=$SECONDS
    "$@"
    echo "== $name: $((SECONDS - t0)) s"
}
step "data synth" "$P" data synth --out "$W/data" --seed 0
step "tokenizer train" "$P" tokenizer train --files "$W/data/corpus.txt" --out "$W/tokenizer" --vocab-size 384
step "init" "$P" init --config init-config.json --tokenizer "$W/tokenizer" --out "$W/init" --seed 0
# pre-training: every training problem's text (question, then a short or a long rationale)
step "pre-train (base)" "$P" sft --model "$W/init" --data "$W/data/pretrain.jsonl" --out base \
    --epochs 3 --batch-size 16 --lr 3e-3 --lr-scheduler cosine --warmup-ratio 0.03 --shuffle --device cpu --quiet
# sft-short: the short rationales of the first 300 training questions only (few gold
# rationales: the setting self-training improves on)
head -300 "$W/data/train-short.jsonl" > "$W/train300-short.jsonl"
step "sft-short" "$P" sft --model base --data "$W/train300-short.jsonl" --out sft-short \
    --epochs 2 --batch-size 16 --lr 5e-4 --lr-scheduler cosine --shuffle --device cpu --quiet
# sft-long: ThinkPO's long-CoT starting point: the long rationale of every multi-step
# training problem, the short one of every one-step problem (train-mixed.jsonl)
step "sft-long" "$P" sft --model base --data "$W/data/train-mixed.jsonl" --out sft-long \
    --epochs 2 --batch-size 16 --lr 1e-3 --lr-scheduler cosine --warmup-ratio 0.03 --shuffle --device cpu --quiet
for m in base sft-short sft-long; do
    for c in "" --calculator; do
        style=short; [ "$m" = sft-long ] && style=long
        echo "== eval $m $c: $("$P" eval --data "$W/data/test-$style.jsonl" --model "$m" --max-new-tokens 400 --quiet --format json $c)"
    done
done
rm -f base/.ponder.lock sft-short/.ponder.lock sft-long/.ponder.lock
