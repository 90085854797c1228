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
  if [ -z "${FERRULE_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq >&2 || die "apt-get update failed"
    export FERRULE_APT_UPDATED=1
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

# Ensures cargo-fuzz is installed (built from crates.io on first use).
need_cargo_fuzz() {
  cargo fuzz --version >/dev/null 2>&1 && return 0
  step "installing cargo-fuzz from crates.io (first run only)"
  cargo install cargo-fuzz --locked >&2 || die "cargo install cargo-fuzz failed"
}
