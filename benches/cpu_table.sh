#!/usr/bin/env bash
# The CPU table of issue 24, ponder beside PyTorch, row by row, on one machine:
#   benches/cpu_table.sh MODEL_DIR [ROWS...]
# MODEL_DIR is a Hugging Face checkpoint (f32 safetensors) that transformers can read,
# e.g. SmolLM2-135M-Instruct. ROWS picks some of: dpo512 dpo2048 attn matmul generate
# (default: all). Both sides run on THREADS threads (default 2). PYTHON is a python with
# torch and transformers (default ~/peer/bin/python). Build first: cargo build --release.
set -euo pipefail
model=${1:?usage: benches/cpu_table.sh MODEL_DIR [ROWS...]}
shift
rows=${*:-dpo512 dpo2048 attn matmul generate}
threads=${THREADS:-2}
py=${PYTHON:-$HOME/peer/bin/python}
here=$(cd "$(dirname "$0")/.." && pwd)
ponder() { RAYON_NUM_THREADS=$threads "$here/target/release/ponder" bench "$@"; }
torch() { OMP_NUM_THREADS=$threads "$py" "$here/benches/torch_peer.py" --device cpu --threads "$threads" "$@"; }
for row in $rows; do
  case $row in
    dpo512 | dpo2048)
      len=${row#dpo}
      steps=3
      [ "$len" = 2048 ] && steps=2
      args=(--pairs 1 --prompt-len 64 --completion-len $((len - 64)) --steps $steps)
      ponder dpo --device cpu --model "$model" "${args[@]}"
      torch dpo --model "$model" "${args[@]}"
      ;;
    attn)
      args=(--b 2 --t 2048 --heads 9 --kv-heads 3 --head-dim 64 --reps 3)
      for dir in "" --backward; do
        ponder attention --device cpu "${args[@]}" $dir
        torch attention "${args[@]}" $dir
      done
      ;;
    matmul)
      for shape in "1024 1024 1024" "1024 1536 576" "64 576 576" "64 1536 576" "1024 49152 576"; do
        read -r m n k <<<"$shape"
        wt=--weight-t
        [ "$m" = 1024 ] && [ "$n" = 1024 ] && wt=
        ponder matmul --device cpu --m "$m" --n "$n" --k "$k" $wt --reps 15
        torch matmul --m "$m" --n "$n" --k "$k" $wt --reps 15
      done
      ;;
    generate)
      for case in "16 128 0.7" "64 64 0.7" "64 64 0" "1 128 0.7"; do
        read -r b new temp <<<"$case"
        args=(--batch "$b" --prompt-len 32 --new-tokens "$new" --temperature "$temp")
        ponder generate --device cpu --model "$model" "${args[@]}" --reps 2
        torch generate --model "$model" "${args[@]}" --reps 2
      done
      ;;
    *) echo "unknown row $row (dpo512 dpo2048 attn matmul generate)" >&2; exit 2 ;;
  esac
done
