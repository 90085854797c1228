# Shared helpers for ferrule's scripts. Source it; do not run it.

# Prints a visible step header on stderr.
step() { printf '\n==> %s\n' "$*" >&2; }

# Fails with a message.
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs apt-get install for the Debian packages given, once, only for missing commands.
# Usage: need_apt COMMAND PACKAGE [COMMAND PACKAGE ...]
need_apt() {
  local missing=()
  while [ $# -ge 2 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "need ${missing[*]} and apt-get is not available: install them by hand"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  step "installing ${missing[*]} from Debian packages"
  if [ -z "${FERRULEDEV_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq >&2 || die "apt-get update failed"
    export FERRULEDEV_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

# Ensures cargo, rustfmt and clippy exist.
need_rust() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
  if command -v rustup >/dev/null 2>&1; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >&2
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >&2
  fi
}

# Ensures the go command exists (scripts/otelcol.sh builds a collector with it). Debian's
# golang-go is too old for the collector modules (they need Go 1.26+), so no apt fallback.
need_go() {
  if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 \
    || die "go not found (not on PATH, nor /usr/local/go/bin/go): install Go 1.26+ to build the test collector"
}

# Ensures cargo-fuzz is installed (built from crates.io on first use).
need_cargo_fuzz() {
  cargo fuzz --version >/dev/null 2>&1 && return 0
  step "installing cargo-fuzz from crates.io (first run only)"
  cargo install cargo-fuzz --locked >&2 || die "cargo install cargo-fuzz failed"
}

# Ensures Java 17+ (Kafka 4.x brokers need it) and Maven (to fetch Kafka's jars).
need_java() {
  need_apt java openjdk-17-jre-headless mvn maven
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "java $v found; Kafka needs Java 17+"
}

# Ensures what the Kafka tests need: Java, the Kafka jars (scripts/kafka.sh fetch, cached
# under ${FERRULEDEV_CACHE:-~/.cache/ferrule}), kcat, and Python's confluent-kafka for
# scripts/kafka/consume.py and produce.py.
need_kafka() {
  need_java
  need_apt kcat kcat python3 python3
  "$(dirname "${BASH_SOURCE[0]}")/kafka.sh" fetch
  if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
    step "installing confluent-kafka from PyPI"
    # A Debian python3 refuses pip installs (PEP 668): fall back to its own package.
    python3 -m pip install --quiet 'confluent-kafka>=2.6,<3' >&2 \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-confluent-kafka >&2 \
      || die "could not install confluent-kafka (pip or apt python3-confluent-kafka)"
  fi
}
