#!/usr/bin/env bash
# Runs the fuzz targets for a while each: scripts/fuzz.sh [SECONDS] [TARGET...]
# Default: 60 s per target, every target of every fuzz crate:
#   wire/fuzz      decode reader record   (frames, the frame reader, committed records)
#   disklog/fuzz   recover                (the disk log's recovery scan at open)
#   agent/fuzz     line mqtt_payload      (line protocol input, MQTT payload decoding)
#   identity/fuzz  uri                    (the agent identity in a certificate's URI SAN)
# Uses the stable toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
# Each target starts from its seeds (the wire golden vectors, or the committed
# files in <crate>/fuzz/seeds/<target>/) plus whatever its corpus/ already holds;
# findings land in <crate>/fuzz/artifacts/<target>/ and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_cargo_fuzz
secs="${1:-60}"
shift || true
all=(decode reader record recover line mqtt_payload uri)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
root="$PWD"

# The fuzz crate a target lives in.
crate_of() {
  case "$1" in
    decode|reader|record) echo wire/fuzz ;;
    recover) echo disklog/fuzz ;;
    line|mqtt_payload) echo agent/fuzz ;;
    uri) echo identity/fuzz ;;
    *) die "unknown fuzz target '$1' (known: ${all[*]})" ;;
  esac
}

# Seeds the wire targets with the golden vectors so the fuzzer starts from valid frames.
seed_wire() {
  local t="$1" v mask
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
}

# The disk log target writes its files here (tmpfs when there is one), removed at exit.
scratch="$(mktemp -d -p "$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" ferrule-fuzz.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
export FERRULE_DISKLOG_FUZZ_DIR="$scratch"

for t in "${targets[@]}"; do
  crate="$(crate_of "$t")"
  step "fuzzing $crate target '$t' for ${secs}s"
  cd "$root/$crate"
  mkdir -p "corpus/$t"
  if [ "$crate" = wire/fuzz ]; then
    seed_wire "$t"
  else
    cp seeds/"$t"/* "corpus/$t/"
  fi
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|ERROR|panicked|SUMMARY|Test unit written' >&2
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a finding"
