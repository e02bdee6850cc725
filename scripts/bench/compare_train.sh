#!/usr/bin/env bash
# One LN-tuning training step of full-size ViT-L/14 (f32, random weights), dfdet then PyTorch,
# back to back on this machine, and their ratio.
# Usage: scripts/bench/compare_train.sh [PYTHON]   (env: THREADS, BATCH=4, ITERS=3)
# PYTHON: an interpreter with torch==2.6.0 transformers==4.50.0 (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
threads=${THREADS:-$(nproc)}
batch=${BATCH:-4}
iters=${ITERS:-3}
cargo build --release --quiet
out=$(mktemp -d)
./target/release/dfdet bench --train --threads "$threads" --batch "$batch" --iters "$iters" --format json > "$out/dfdet.json"
"$py" scripts/bench/train_torch.py --threads "$threads" --batch "$batch" --iters "$iters" > "$out/torch.json"
"$py" - "$out/dfdet.json" "$out/torch.json" <<'PY'
import json, sys
ours, ref = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{'':6} {'s/step':>8} {'s/img':>7} {'peak MiB':>9} {'trainable':>9}")
for name, r in (("dfdet", ours), ("torch", ref)):
    print(f"{name:6} {r['s_per_step']:>8.3f} {r['s_per_img']:>7.3f} {r['peak_rss_mib']:>9.0f} {r['trainable']:>9}")
print(f"speed-up {ref['s_per_step'] / ours['s_per_step']:.2f}x, memory {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x of PyTorch's")
PY
