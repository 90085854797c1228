#!/usr/bin/env bash
# Runs the wire fuzz targets for a while each: scripts/fuzz.sh [SECONDS] [TARGET...]
# Default: 60 s per target, every target. Uses the stable toolchain through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags); findings land in
# wire/fuzz/artifacts/ and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_cargo_fuzz
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode reader record)
cd wire/fuzz
for t in "${targets[@]}"; do
  step "fuzzing wire target '$t' for ${secs}s"
  mkdir -p "corpus/$t"
  # Seed with the golden vectors so the fuzzer starts from valid frames.
  for v in ../tests/vectors/*.hex ../tests/vectors/hostile/*.hex; do
    grep -v '^#' "$v" | tr -d ' \n' | xxd -r -p > "corpus/$t/$(basename "$v" .hex)" 2>/dev/null || true
  done
  # The record target's input is a byte (which series' values to decline) and
  # then a record: seed it with the committed-record vector, nothing declined
  # and every other series declined.
  if [ "$t" = record ]; then
    for mask in 00 aa; do
      { printf '%s' "$mask" | xxd -r -p; grep -v '^#' ../tests/vectors/record_three_phase.hex | tr -d ' \n' | xxd -r -p; } \
        > "corpus/$t/record_three_phase_$mask" 2>/dev/null || true
    done
  fi
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|panicked|SUMMARY|Test unit written' >&2
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a finding"
