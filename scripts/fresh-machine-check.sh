#!/usr/bin/env bash
# Checks the README's first command the way a newcomer meets it: a fresh clone, built
# and run on a machine without the C libraries' development packages. Those packages
# (and pkg-config) are hidden, not removed: the check runs in a private mount namespace
# where an overlay over /usr whites out every file they installed, so nothing else on
# the machine changes. Needs root (unshare, mount) and Debian's dpkg.
#
#   scripts/fresh-machine-check.sh [SECONDS]   run the demo for SECONDS (default 30)
#
# Prints the first build's wall time, checks the demo's status lines arrive, that its
# output to a file carries no ANSI colour codes, and that Ctrl-C (SIGINT) stops it
# cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

run_secs="${1:-30}"
hidden_pkgs=(libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev pkg-config pkgconf pkgconf-bin)

if [ "${FRESH_CHECK_INSIDE:-}" != 1 ]; then
  [ "$(id -u)" -eq 0 ] || die "run as root: the check hides packages with a private mount namespace"
  command -v dpkg >/dev/null || die "needs dpkg to know which files the packages installed"
  work="$(mktemp -d /tmp/ferrule-fresh.XXXXXX)"
  mkdir -p "$work/upper" "$work/work"
  step "hiding ${hidden_pkgs[*]} (overlay whiteouts in a private mount namespace)"
  for pkg in "${hidden_pkgs[@]}"; do
    # A package that is not installed has nothing to hide.
    { dpkg -L "$pkg" 2>/dev/null || true; } | while read -r f; do
      case "$f" in /usr/*) ;; *) continue ;; esac
      if [ -f "$f" ] || [ -L "$f" ]; then
        rel="${f#/usr/}"
        mkdir -p "$work/upper/$(dirname "$rel")"
        mknod "$work/upper/$rel" c 0 0
      fi
    done
  done
  step "cloning $(git rev-parse --short HEAD) into $work/clone"
  git clone -q . "$work/clone"
  export FRESH_CHECK_INSIDE=1 FRESH_CHECK_WORK="$work"
  status=0
  unshare -m --propagation private bash -c '
    set -e
    mount -t overlay overlay -o "lowerdir=/usr,upperdir=$FRESH_CHECK_WORK/upper,workdir=$FRESH_CHECK_WORK/work" /usr
    exec "$FRESH_CHECK_WORK/clone/scripts/fresh-machine-check.sh" "$@"
  ' bash "$run_secs" || status=$?
  rm -rf "$work"
  exit "$status"
fi

# Inside the namespace, in the fresh clone.
for h in curl/curl.h openssl/ssl.h zlib.h sasl/sasl.h; do
  [ ! -e "/usr/include/$h" ] || die "/usr/include/$h is still visible"
done
! command -v pkg-config >/dev/null 2>&1 || die "pkg-config is still visible"
step "first build: cargo build --release --bin ferrule-demo (the first half of the README's first command)"
export CARGO_TARGET_DIR="$PWD/target"
start=$(date +%s)
cargo build --release --locked --bin ferrule-demo
build_secs=$(( $(date +%s) - start ))
step "first build took ${build_secs} s on $(nproc) cores"

step "cargo run --release --bin ferrule-demo, output to a file, for ${run_secs} s"
out="$PWD/demo.out"
cargo run --release --locked --bin ferrule-demo >"$out" 2>&1 &
pid=$!
deadline=$(( $(date +%s) + run_secs + 120 ))
# Wait for a status line that shows events committed, then let it run its time.
until grep -q "committed" "$out" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$out"; die "the demo exited before its first status line"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$out"; kill -INT "$pid"; die "no status line"; }
  sleep 1
done
sleep "$run_secs"
grep -q "http://127.0.0.1:9480/" "$out" || { cat "$out"; kill -INT "$pid"; die "the demo did not print the live page's address"; }
# The page answers, with the stages (bash's /dev/tcp: nothing else needed).
state="$(exec 3<>/dev/tcp/127.0.0.1/9480 && printf 'GET /state HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n' >&3 && timeout 5 cat <&3)" || true
grep -q '"stage":"aggregator"' <<<"$state" || { echo "$state"; kill -INT "$pid"; die "the live page at http://127.0.0.1:9480/ did not answer with the stages"; }
step "the live page answers at http://127.0.0.1:9480/ with the stages"
# cargo run forwards SIGINT to the demo through the process group; signal the demo itself.
demo_pid="$(pgrep -f 'target/release/ferrule-demo' | head -n1 || true)"
kill -INT "${demo_pid:-$pid}"
wait "$pid" || die "the demo did not exit cleanly on SIGINT (status $?)"
tail -n 5 "$out"
if grep -q $'\e\[' "$out"; then die "the demo's output to a file carries ANSI escape codes"; fi
step "fresh-machine check passed: first build ${build_secs} s, demo ran ${run_secs} s and stopped cleanly"
