#!/usr/bin/env bash
# Linear probing with and without `--cache-features` (`cache_features`), same data, same run:
# wall time of `dfdet train` on the 32 sample crops, ROUNDS alternating pairs, and the ratio.
# Usage: scripts/bench/cache_features.sh   (env: BACKBONE, EPOCHS=10, ROUNDS=3, SAMPLES)
# BACKBONE: a CLIP folder (default: the tiny CLIP fixture; a real ViT-L/14 folder shows the
# full-size ratio, which approaches EPOCHS since encoding dominates).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
backbone=${BACKBONE:-$root/tests/fixtures/tiny-clip-p14}
epochs=${EPOCHS:-10}
rounds=${ROUNDS:-3}
samples=$(cd "${SAMPLES:-$root/../shared/data/samples}" && pwd)
(cd "$root" && cargo build --release --quiet)
out=$(mktemp -d)
lists=$samples/config/datasets
cat > "$out/config.toml" <<TOML
run_dir = "$out/runs"
backbone = "$backbone"
data_root = "$samples"
trn_files = ["$lists/FF/test/real.txt", "$lists/FF/test/DF.txt", "$lists/FF/test/F2F.txt", "$lists/FF/test/FS.txt", "$lists/FF/test/NT.txt", "$lists/CDFv2/test/Celeb-real.txt", "$lists/CDFv2/test/Celeb-synthesis.txt", "$lists/CDFv2/test/YouTube-real.txt"]
val_files = ["$lists/FF/test/real.txt", "$lists/FF/test/DF.txt"]
tst_files = {}
max_epochs = $epochs
batch_size = 8
mini_batch_size = 8
lr = 1e-2
peft.enabled = false
TOML
printf '%-5s %10s %10s %8s\n' round uncached cached speed-up
for r in $(seq 1 "$rounds"); do
  for cached in false true; do
    start=$(date +%s.%N)
    "$root/target/release/dfdet" train --config "$out/config.toml" --set "cache_features=$cached" \
      --set "run_name=\"r$r-$cached\"" > "$out/log-$r-$cached" 2>&1
    end=$(date +%s.%N)
    t[$([ $cached = true ] && echo 1 || echo 0)]=$(awk "BEGIN { print $end - $start }")
  done
  printf '%-5s %9.2fs %9.2fs %7.1fx\n' "$r" "${t[0]}" "${t[1]}" "$(awk "BEGIN { print ${t[0]} / ${t[1]} }")"
done
