#!/usr/bin/env bash
# Runs ferrule's whole test suite from a fresh clone, installing what it needs:
# formatting, lints, docs, every test (the long randomized ones too) and a short
# fuzz run. Environment:
#   FERRULEDEV_FUZZ_SECS   seconds per fuzz target (default 20; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# Test output is also kept here, to print one closing count at the end.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

step "checking tools"
need_rust
# cmake, make, perl and C and C++ compilers build librdkafka and the C libraries it links
# (OpenSSL, libcurl, zlib) from bundled sources: no -dev package is needed.
need_apt openssl openssl xxd xxd cmake cmake make make perl perl cc gcc c++ g++
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
# Real peers for the agent's inputs: Mosquitto, socat and nc, a pymodbus simulator.
need_apt mosquitto mosquitto mosquitto_pub mosquitto-clients socat socat nc netcat-openbsd
python3 -c 'import pymodbus' >/dev/null 2>&1 || python3 -m pip install -q 'pymodbus>=3.6,<4'
# A real Prometheus Alertmanager for the alert notifiers' test (its own process on a
# free port; the package's systemd service plays no part).
need_apt prometheus-alertmanager prometheus-alertmanager
# Kafka brokers from Apache's jars, kcat and confluent-kafka for the independent consumer.
need_kafka
# Redis for the real-time fan-out tests (scripts/redis.sh).
need_apt redis-server redis-server redis-cli redis-tools
python3 -c 'import redis' >/dev/null 2>&1 || python3 -m pip install -q redis
# Network namespaces and nftables for the fleet's partition and packet-loss
# faults (loadtest/tests/fleet.rs; rules only inside namespaces it creates).
need_apt ip iproute2 nft nftables
# A real browser for the live page's test (headless, driven over DevTools).
need_apt chromium chromium
# deploy/'s checks (scripts/deploy-check.sh, run by loadtest/tests/deploy.rs):
# promtool for the alerting rules, docker-compose to validate the compose file
# (no container engine runs), systemd-analyze for the units.
need_apt promtool prometheus docker-compose docker-compose systemd-analyze systemd
python3 -c 'import yaml' >/dev/null 2>&1 || python3 -m pip install -q pyyaml
# A real OpenTelemetry Collector for the OTLP export's test (loadtest/tests/otlp.rs),
# built once from the Go module proxy (pinned in scripts/otelcol/; about 3 minutes the
# first time, cached after).
scripts/otelcol.sh build >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "cargo test"
cargo test --workspace --locked 2>&1 | tee -a "$results"

step "python: the record decoder other teams copy, against the golden vector"
python3 -m pytest -q -p no:cacheprovider wire/python 2>&1 | tee -a "$results"

step "cargo test: long and randomized runs"
cargo test --workspace --locked -- --ignored 2>&1 | tee -a "$results"

fuzz_secs="${FERRULEDEV_FUZZ_SECS:-20}"
if [ "$fuzz_secs" != 0 ]; then
  step "fuzz smoke run"
  scripts/fuzz.sh "$fuzz_secs"
fi

step "all checks passed"
# One closing line over every runner: cargo's "test result" lines and pytest's summary.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
  /^[0-9]+ passed/ { p += $1; if (match($0, /[0-9]+ failed/)) f += substr($0, RSTART, RLENGTH) + 0 }
  END { printf "ferrule: %d passed, %d failed\n", p, f }
' "$results"
