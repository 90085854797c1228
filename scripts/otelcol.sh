#!/usr/bin/env bash
# Runs a throwaway OpenTelemetry Collector for ferrule's tests: the upstream otlp receiver
# (gRPC and HTTP/protobuf or JSON) and the contrib file exporter, which writes everything it
# receives as OTLP JSON, one export request per line. The collector is built from
# scripts/otelcol (pinned Go modules) with the go command; nothing else is downloaded.
# Usage:
#   scripts/otelcol.sh build   build once (cached per source hash); prints `bin=PATH`
#   scripts/otelcol.sh start DIR GRPC_PORT HTTP_PORT [--tls CERT KEY CA]
#                      writes DIR/config.yaml and starts the collector in the background:
#                      receivers on 127.0.0.1:GRPC_PORT (gRPC) and 127.0.0.1:HTTP_PORT (HTTP),
#                      metrics, traces and logs written to DIR/metrics.jsonl, traces.jsonl,
#                      logs.jsonl. The files exist (empty) from the start; a line is written
#                      before the collector answers the export that carried it (no batching,
#                      no buffering), so a test may read the file as soon as its export
#                      succeeded. With --tls (PEM files) both receivers speak TLS only and
#                      require client certificates chaining to CA. Prints
#                      `grpc=http://127.0.0.1:GRPC_PORT` and `http=http://127.0.0.1:HTTP_PORT`
#                      (`https://localhost:PORT` with --tls) once both ports accept connections.
#   scripts/otelcol.sh stop DIR   SIGTERM, SIGKILL after 10 s
# Only `bin=`, `grpc=` and `http=` lines go to stdout; everything else goes to stderr.
# DIR also holds otelcol.log (the collector's own log: one line per received batch from the
# debug exporter) and otelcol.pid. The collector's own telemetry binds no port.
# The binary is cached under ${FERRULEDEV_CACHE:-~/.cache/ferrule}/otelcol/HASH/.
set -euo pipefail

OTELCOL_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$OTELCOL_SH_DIR/lib.sh"

OTELCOL_SRC="$OTELCOL_SH_DIR/otelcol"
OTELCOL_CACHE="${FERRULEDEV_CACHE:-$HOME/.cache/ferrule}/otelcol"

log() { printf '%s\n' "$*" >&2; }

# Prints the path of the binary for the current sources (built or not).
bin_path() {
  local hash
  hash="$(cd "$OTELCOL_SRC" && sha256sum go.mod go.sum main.go | sha256sum | cut -c1-16)"
  printf '%s/%s/otelcol-ferrule\n' "$OTELCOL_CACHE" "$hash"
}

# Builds the collector unless the binary for these sources exists; prints its path.
build() {
  local bin dir tmp start
  bin="$(bin_path)"
  if [ -x "$bin" ]; then
    printf '%s\n' "$bin"
    return 0
  fi
  need_go
  dir="$(dirname "$bin")"
  mkdir -p "$dir"
  tmp="$dir/otelcol-ferrule.tmp.$$"
  step "building the test collector into $dir (first run only: downloads its Go modules)"
  start=$SECONDS
  # -mod=readonly: go.mod/go.sum are complete, a build never edits them; -buildvcs=false:
  # the repo's git state is no input (and needs no git). CGO off: a static binary, no C
  # compiler needed.
  (cd "$OTELCOL_SRC" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
    go build -trimpath -ldflags='-s -w' -o "$tmp" .) >&2 \
    || { rm -f "$tmp"; die "go build of scripts/otelcol failed"; }
  mv -f "$tmp" "$bin"
  log "built $bin in $((SECONDS - start)) s"
  printf '%s\n' "$bin"
}

cmd_build() {
  [ $# -eq 0 ] || die "usage: scripts/otelcol.sh build"
  printf 'bin=%s\n' "$(build)"
}

# Exits 0 when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c ": <>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Exits 0 while process $1 runs (a zombie does not: PID 1 may reap it late).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

# Prints $1 as a single-quoted YAML scalar; refuses what the config resolver would expand.
yaml_str() {
  case "$1" in
    *'$'* | *$'\n'*) die "path not usable in a collector config (\$ or newline): $1" ;;
  esac
  printf "'%s'" "${1//\'/\'\'}"
}

# Prints an absolute path for the existing file $1.
abs_file() {
  [ -f "$1" ] || die "no such file: $1"
  printf '%s/%s\n' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")"
}

write_config() {
  local dir="$1" grpc="$2" http="$3" tls="" sig
  if [ $# -eq 6 ]; then
    tls="        tls:
          cert_file: $(yaml_str "$4")
          key_file: $(yaml_str "$5")
          client_ca_file: $(yaml_str "$6")"
  fi
  {
    cat <<EOF
# Written by scripts/otelcol.sh start.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$grpc
${tls}
      http:
        endpoint: 127.0.0.1:$http
${tls}
exporters:
  debug:
    verbosity: basic
EOF
    # rotation set: the exporter writes through to the file on each export (without it,
    # it buffers and flushes once a second at best).
    for sig in metrics traces logs; do
      cat <<EOF
  file/$sig:
    path: $(yaml_str "$dir/$sig.jsonl")
    format: json
    rotation:
      max_megabytes: 1024
      max_backups: 1
EOF
    done
    cat <<EOF
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: info
      encoding: console
  pipelines:
EOF
    for sig in metrics traces logs; do
      cat <<EOF
    $sig:
      receivers: [otlp]
      exporters: [file/$sig, debug]
EOF
    done
  } | grep -v '^$' >"$dir/config.yaml"
}

cmd_start() {
  local usage="usage: scripts/otelcol.sh start DIR GRPC_PORT HTTP_PORT [--tls CERT KEY CA]"
  [ $# -eq 3 ] || { [ $# -eq 7 ] && [ "$4" = --tls ]; } || die "$usage"
  local dir grpc="$2" http="$3" tls=() p
  for p in "$grpc" "$http"; do
    case "$p" in '' | *[!0-9]*) die "$usage (port '$p' is not a number)" ;; esac
  done
  [ "$grpc" != "$http" ] || die "gRPC and HTTP ports must differ"
  [ $# -eq 7 ] && tls=("$(abs_file "$5")" "$(abs_file "$6")" "$(abs_file "$7")")
  mkdir -p "$1"
  dir="$(cd "$1" && pwd)"
  if [ -f "$dir/otelcol.pid" ] && alive "$(cat "$dir/otelcol.pid")"; then
    die "a collector already runs for $dir (pid $(cat "$dir/otelcol.pid")): stop it first"
  fi
  for p in "$grpc" "$http"; do
    ! port_open "$p" || die "127.0.0.1:$p is already in use"
  done
  local bin
  bin="$(build)"
  write_config "$dir" "$grpc" "$http" "${tls[@]}"
  # The files exist from the start, so a test can open them before the first export.
  : >"$dir/metrics.jsonl"
  : >"$dir/traces.jsonl"
  : >"$dir/logs.jsonl"
  # Its own session and no inherited stdout/stderr: the caller's pipes close when this
  # script exits, and the caller's Ctrl-C does not reach it.
  setsid "$bin" --config "file:$dir/config.yaml" </dev/null >"$dir/otelcol.log" 2>&1 &
  local pid=$!
  printf '%s\n' "$pid" >"$dir/otelcol.pid"
  local deadline=$((SECONDS + 30))
  while :; do
    if ! alive "$pid"; then
      tail -30 "$dir/otelcol.log" >&2 || true
      die "the collector exited during startup (log: $dir/otelcol.log)"
    fi
    if port_open "$grpc" && port_open "$http"; then break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -30 "$dir/otelcol.log" >&2 || true
      kill -9 "$pid" 2>/dev/null || true
      die "the collector did not open 127.0.0.1:$grpc and :$http within 30 s (log: $dir/otelcol.log)"
    fi
    sleep 0.1
  done
  log "collector up: gRPC 127.0.0.1:$grpc, HTTP 127.0.0.1:$http, pid $pid ($dir)"
  if [ ${#tls[@]} -gt 0 ]; then
    printf 'grpc=https://localhost:%s\nhttp=https://localhost:%s\n' "$grpc" "$http"
  else
    printf 'grpc=http://127.0.0.1:%s\nhttp=http://127.0.0.1:%s\n' "$grpc" "$http"
  fi
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: scripts/otelcol.sh stop DIR"
  local pid
  pid="$(cat "$1/otelcol.pid" 2>/dev/null || true)"
  [ -n "$pid" ] || return 0
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1/otelcol.pid"
}

[ $# -ge 1 ] || die "usage: scripts/otelcol.sh build|start|stop ..."
sub="$1"
shift
case "$sub" in
  build) cmd_build "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) die "unknown command $sub" ;;
esac
