#!/usr/bin/env bash
# Configures and builds ESS in Release with Ninja and ccache into build/ (or $ESS_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ESS_BUILD_DIR:-build}
# ccache keys on the compiler's command line: with a base dir, paths inside the checkout become
# relative, so another clone of the repository (CI's) hits the same cache entries.
export CCACHE_BASEDIR="$PWD"
export CCACHE_NOHASHDIR=1
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD_DIR" "$@"
