#!/usr/bin/env bash
# Fuzzes the parsers partners' bytes reach (tests/fuzz: CSV, CSV files through the sftp_csv
# adapter, SOAP responses, signed JSON webhooks) with libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 300 csv_fuzz
#
# Builds with clang (installed when missing) into build-fuzz/, every library instrumented, then
# runs each target for SECONDS (60 by default) from its seeds in tests/fuzz/corpus/TARGET; inputs
# that found new paths go to build-fuzz/fuzz/corpus/TARGET, a failing input to
# build-fuzz/fuzz/crash-*. Exits non-zero when a target failed. Not part of ./test.sh: a fuzzing
# run is open-ended, and a finding becomes a unit test with the fix (tests/adapters/csv_test.cc).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(csv_fuzz sftp_csv_pull_fuzz soap_fuzz webhook_fuzz)

scripts/install-deps.sh
if ! command -v clang++ >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang
fi

BUILD_DIR=build-fuzz
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DESS_FUZZ=ON -DESS_MALLOC=system \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined"
fi
cmake --build "$BUILD_DIR" --target "${TARGETS[@]}"

# Any report stops the run (an undefined-behaviour report too), except the suppressed ones.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/tests/fuzz/ubsan.supp"
failed=0
for target in "${TARGETS[@]}"; do
  corpus="$BUILD_DIR/fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  if ! "$BUILD_DIR/fuzz/$target" -max_total_time="$SECONDS_EACH" -max_len=4096 \
      -artifact_prefix="$BUILD_DIR/fuzz/" "$corpus" "tests/fuzz/corpus/$target" \
      > "$BUILD_DIR/fuzz/$target.log" 2>&1; then
    echo "fuzz: $target FAILED (see $BUILD_DIR/fuzz/$target.log)"
    tail -n 30 "$BUILD_DIR/fuzz/$target.log"
    failed=1
  else
    tail -n 1 "$BUILD_DIR/fuzz/$target.log"
  fi
done
exit $failed
