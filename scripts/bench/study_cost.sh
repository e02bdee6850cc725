#!/usr/bin/env bash
# What `dfdet study` costs on this machine, measured on the 32 sample crops with random weights
# of the real architectures (`backbone = "random:<preset>"`; random weights are as fast as real
# ones), in one run:
#   1. the shared feature cache: the four linear-probing cells with `study.share_features` on and
#      off (CACHE_BACKBONE, default ViT-B/16), wall time and ratio;
#   2. one LN-tuning cell (ln-tuning-norm-slerp, 1 epoch) at 25 % and at 100 % of the sample
#      videos with COST_BACKBONE (default ViT-L/14): seconds per training frame from the
#      difference, seconds per validation/test frame from the rest, and from them the cost of a
#      cell and of the whole 16-cell study on FF++ (extrapolated, printed as such).
# Usage: scripts/bench/study_cost.sh   (env: CACHE_BACKBONE, COST_BACKBONE, SAMPLES, SKIP_CACHE=1,
#        SKIP_COST=1; FF++ sizes: FF_TRAIN_FRAMES, FF_VAL_FRAMES, TEST_FRAMES, EPOCHS)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
samples=$(cd "${SAMPLES:-$root/../shared/data/samples}" && pwd)
cache_backbone=${CACHE_BACKBONE:-random:openai/clip-vit-base-patch16}
cost_backbone=${COST_BACKBONE:-random:openai/clip-vit-large-patch14}
(cd "$root" && cargo build --release --quiet)
dfdet=$root/target/release/dfdet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) threads"
echo "ISA: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"
echo "dfdet $(git -C "$root" rev-parse --short HEAD)"

# The sample study (examples/study-samples.toml) with absolute paths, so it runs from anywhere.
config=$out/study.toml
sed -e "s|^data_root = .*|data_root = \"$samples\"|" \
    -e "s|\"\.\./\.\./shared/data/samples/|\"$samples/|" \
    -e "s|^backbone = .*|backbone = \"$cache_backbone\"|" \
    -e "s|^run_dir = .*|run_dir = \"$out/studies\"|" "$root/examples/study-samples.toml" > "$config"

seconds() { # seconds COMMAND...: runs it (output to $out/log), prints its wall time
  local start end
  start=$(date +%s.%N)
  "$@" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
  end=$(date +%s.%N)
  awk "BEGIN { printf \"%.1f\", $end - $start }"
}

if [[ -z ${SKIP_CACHE:-} ]]; then
  echo
  echo "1. Feature cache: the 4 linear-probing cells (3 epochs each), $cache_backbone"
  off=$(seconds "$dfdet" study -c "$config" --only linear-probe --set 'run_name="cache-off"' \
        --set study.share_features=false)
  on=$(seconds "$dfdet" study -c "$config" --only linear-probe --set 'run_name="cache-on"')
  printf '   without the shared cache %7.1f s\n   with it                  %7.1f s\n   speed-up %.2fx\n' \
    "$off" "$on" "$(awk "BEGIN { print $off / $on }")"
fi

if [[ -z ${SKIP_COST:-} ]]; then
  echo
  echo "2. Cost of an LN-tuning cell (ln-tuning-norm-slerp, 1 epoch, mini-batch 8), $cost_backbone"
  cell() { # cell PERCENT: seconds of that cell in a fresh study
    seconds "$dfdet" study -c "$config" --only "ln-tuning-norm-slerp-$1" --set "run_name=\"cost-$1\"" \
      --set "backbone=\"$cost_backbone\"" --set max_epochs=1 --set mini_batch_size=8
  }
  frames() { grep -vc '^#' "$out/studies/cost-$1/subsets/trn-$1.txt"; }
  t25=$(cell 25)
  t100=$(cell 100)
  n25=$(frames 25)
  n100=$(frames 100)
  # Validation and test frames of one cell (1 epoch): the sample study's val and test lists.
  nval=16
  ntst=32
  awk -v t25="$t25" -v t100="$t100" -v n25="$n25" -v n100="$n100" -v nval="$nval" -v ntst="$ntst" \
      -v ftrn="${FF_TRAIN_FRAMES:-115200}" -v fval="${FF_VAL_FRAMES:-22400}" \
      -v ftst="${TEST_FRAMES:-38976}" -v epochs="${EPOCHS:-10}" 'BEGIN {
    a = (t100 - t25) / (n100 - n25); b = (t25 - n25 * a) / (nval + ntst)
    printf "   measured: %.1f s with %d training frames, %.1f s with %d\n", t25, n25, t100, n100
    printf "   => %.2f s per training frame (forward + backward + step), %.2f s per validation/test frame\n", a, b
    full = epochs * (ftrn * a + fval * b) + ftst * b
    printf "   extrapolated to FF++ (%d training, %d validation, %d test frames, %d epochs):\n", ftrn, fval, ftst, epochs
    printf "     one LN-tuning cell at 100 %%: %.0f h\n", full / 3600
    study = 3 * epochs * (2.5 * ftrn * a + 4 * fval * b) + 3 * 4 * ftst * b + 4 * (ftrn + fval + ftst) * b
    printf "     the 16-cell study (3 LN-tuning methods x 4 fractions + 4 linear-probing cells sharing the cache): %.0f days\n", study / 86400
  }'
fi
