#!/usr/bin/env bash
# One LN-tuning training step of full-size ViT-L/14 (f32, random weights), dfdet then PyTorch,
# back to back on this machine, and their ratio; ROUNDS pairs, alternating, since a shared
# machine drifts between runs.
# Usage: scripts/bench/compare_train.sh [PYTHON]   (env: THREADS, BATCH=4, ITERS=3, ROUNDS=1)
# PYTHON: an interpreter with torch==2.6.0 transformers==4.50.0 (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
threads=${THREADS:-$(nproc)}
batch=${BATCH:-4}
iters=${ITERS:-3}
rounds=${ROUNDS:-1}
cargo build --release --quiet
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  ./target/release/dfdet bench --train --threads "$threads" --batch "$batch" --iters "$iters" --format json > "$out/dfdet$r.json"
  "$py" scripts/bench/train_torch.py --threads "$threads" --batch "$batch" --iters "$iters" > "$out/torch$r.json"
done
"$py" - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'round':5} {'':6} {'s/step':>8} {'s/img':>7} {'peak MiB':>9} {'trainable':>9}")
ratios = []
for r in range(1, rounds + 1):
    ours, ref = (json.load(open(f"{out}/{n}{r}.json")) for n in ("dfdet", "torch"))
    for name, x in (("dfdet", ours), ("torch", ref)):
        print(f"{r:<5} {name:6} {x['s_per_step']:>8.3f} {x['s_per_img']:>7.3f} {x['peak_rss_mib']:>9.0f} {x['trainable']:>9}")
    ratios.append(ref['s_per_step'] / ours['s_per_step'])
    print(f"{r:<5} speed-up {ratios[-1]:.2f}x, memory {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x of PyTorch's")
print(f"median speed-up over {rounds} round(s): {statistics.median(ratios):.2f}x")
PY
