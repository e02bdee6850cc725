#!/usr/bin/env bash
# Runs dfdet's and PyTorch's inference benchmark back to back (same machine, same settings)
# and prints their ratio. Usage: scripts/bench/compare.sh [PYTHON] [extra dfdet bench flags]
# PYTHON: an interpreter with torch==2.6.0 transformers==4.50.0 (default: python3); for GenD's
# encoders (BACKBONE=facebook/dinov3-vitl16-pretrain-lvd1689m, vit_pe_core_large_patch14_336)
# one with GenD's pins (scripts/fixtures/requirements-gend.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
shift || true
threads=${THREADS:-$(nproc)}
batch=${BATCH:-1,8}
dtype=${DTYPE:-f32,bf16}
iters=${ITERS:-3}
# PyTorch's bf16: `autocast` (as dfdet's bf16 computes) or `cast` (the model cast to bfloat16).
bf16=${BF16:-autocast}
backbone=${BACKBONE:-openai/clip-vit-large-patch14}
cargo build --release --quiet
out=$(mktemp -d)
./target/release/dfdet bench --threads "$threads" --batch "$batch" --dtype "$dtype" --iters "$iters" --backbone "$backbone" --format json "$@" > "$out/dfdet.json"
"$py" scripts/bench/bench_torch.py --threads "$threads" --batch "$batch" --dtype "$dtype" --iters "$iters" --bf16 "$bf16" --backbone "$backbone" > "$out/torch.json"
"$py" - "$out/dfdet.json" "$out/torch.json" <<'PY'
import json, sys
ours, ref = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda r: (r["dtype"], r["batch"])
ref = {key(r): r for r in ref}
print(f"{'dtype':5} {'batch':>5} {'dfdet s/img':>11} {'torch s/img':>11} {'speed-up':>8} {'dfdet MiB':>9} {'torch MiB':>9}")
for r in ours:
    t = ref.get(key(r))
    if t:
        print(f"{r['dtype']:5} {r['batch']:>5} {r['s_per_img']:>11.3f} {t['s_per_img']:>11.3f} {t['s_per_img']/r['s_per_img']:>7.2f}x {r['peak_rss_mib']:>9.0f} {t['peak_rss_mib']:>9.0f}")
PY
