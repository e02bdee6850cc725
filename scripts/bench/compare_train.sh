#!/usr/bin/env bash
# One LN-tuning training step of full-size ViT-L/14 (f32, random weights), dfdet then PyTorch,
# back to back on this machine, and their ratio; ROUNDS pairs, alternating, since a shared
# machine drifts between runs.
# Usage: scripts/bench/compare_train.sh [PYTHON]   (env: THREADS, BATCH=4, ITERS=3, ROUNDS=1,
#        PRECISION=32 or bf16-mixed: both sides train in it; PRECISION="32 bf16-mixed" runs both)
# PYTHON: an interpreter with torch==2.6.0 transformers==4.50.0 (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
threads=${THREADS:-$(nproc)}
batch=${BATCH:-4}
iters=${ITERS:-3}
rounds=${ROUNDS:-1}
precisions=${PRECISION:-32}
cargo build --release --quiet
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for p in $precisions; do
    ./target/release/dfdet bench --train --precision "$p" --threads "$threads" --batch "$batch" --iters "$iters" --format json > "$out/dfdet-$p-$r.json"
    "$py" scripts/bench/train_torch.py --precision "$p" --threads "$threads" --batch "$batch" --iters "$iters" > "$out/torch-$p-$r.json"
  done
done
"$py" - "$out" "$rounds" $precisions <<'PY'
import json, statistics, sys
out, rounds, precisions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"{'round':5} {'precision':10} {'':6} {'s/step':>8} {'s/img':>7} {'peak MiB':>9} {'trainable':>9}")
ratios = {p: [] for p in precisions}
for r in range(1, rounds + 1):
    for p in precisions:
        ours, ref = (json.load(open(f"{out}/{n}-{p}-{r}.json")) for n in ("dfdet", "torch"))
        for name, x in (("dfdet", ours), ("torch", ref)):
            print(f"{r:<5} {p:10} {name:6} {x['s_per_step']:>8.3f} {x['s_per_img']:>7.3f} {x['peak_rss_mib']:>9.0f} {x['trainable']:>9}")
        ratios[p].append(ref['s_per_step'] / ours['s_per_step'])
        print(f"{r:<5} {p:10} speed-up {ratios[p][-1]:.2f}x, memory {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x of PyTorch's")
cpu = json.load(open(f"{out}/dfdet-{precisions[0]}-1.json"))
print(f"CPU: {cpu['cpu']} ({cpu['isa']}); dfdet's f32 products: {cpu['kernels']}")
for p in precisions:
    print(f"{p}: median speed-up over {rounds} round(s): {statistics.median(ratios[p]):.2f}x")
PY
