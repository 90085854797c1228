#!/usr/bin/env bash
# Runs throwaway redis-server instances (Debian's redis-server, 7.0 on these machines)
# for ferrule's tests: no persistence, bound to 127.0.0.1, everything under DIR. Usage:
#   scripts/redis.sh start DIR PORT [CERT KEY CA]
#                      one server on 127.0.0.1:PORT; with CERT KEY CA (PEM files) it speaks
#                      TLS only, on PORT, and requires client certificates chaining to CA
#   scripts/redis.sh start-cluster DIR BASEPORT
#                      3 masters on BASEPORT..+2, no replicas, slots spread evenly
#   scripts/redis.sh stop DIR                  stop every server under DIR (SIGTERM, SIGKILL
#                                              after 10 s)
#   scripts/redis.sh kill DIR                  SIGKILL every server under DIR (a crash)
#   scripts/redis.sh restart DIR               start the servers of DIR again, same ports
#   scripts/redis.sh pause DIR / resume DIR    SIGSTOP / SIGCONT every server under DIR (a
#                                              Redis that hangs: connections open, no answers)
# start and start-cluster print `url=redis://127.0.0.1:PORT` (`url=rediss://localhost:PORT`
# with TLS) on stdout (everything else
# goes to stderr). A server directory holds port, redis.pid, redis.log (and nodes.conf
# in a cluster).
set -euo pipefail

REDIS_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$REDIS_SH_DIR/lib.sh"

need_apt redis-server redis-server redis-cli redis-tools

log() { printf '%s\n' "$*" >&2; }

# Starts the server whose directory is $1 (its port file says the port); $2 = yes for
# cluster mode. Waits until it answers PING.
start_one() {
  local dir port cluster
  dir="$(cd "$1" && pwd)"
  port="$(cat "$dir/port")"
  cluster="${2:-no}"
  local extra=()
  [ "$cluster" = yes ] && extra=(--cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000)
  local ping=(redis-cli -p "$port")
  local plain_port="$port"
  if [ -f "$dir/tls" ]; then
    local cert key ca
    { read -r cert; read -r key; read -r ca; } <"$dir/tls"
    extra+=(--tls-port "$port" --tls-cert-file "$cert" --tls-key-file "$key" --tls-ca-cert-file "$ca" --tls-auth-clients yes)
    plain_port=0
    # Clients need a certificate: readiness is read from the log instead.
    : >"$dir/redis.log"
    ping=(grep -q "Ready to accept connections" "$dir/redis.log")
  fi
  redis-server --port "$plain_port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save '' --appendonly no --protected-mode yes "${extra[@]}" >&2 \
    || die "redis-server on port $port did not start (see $dir/redis.log)"
  local i
  for i in $(seq 1 100); do
    if [ -f "$dir/tls" ]; then "${ping[@]}" && return 0; else "${ping[@]}" ping >/dev/null 2>&1 && return 0; fi
    sleep 0.1
  done
  tail -20 "$dir/redis.log" >&2 || true
  die "redis-server on port $port does not answer PING"
}

server_dirs() {
  local d
  for d in "$1"/node-* "$1"; do
    [ -f "$d/port" ] && printf '%s\n' "$d"
  done
  return 0
}

cmd_start() {
  [ $# -eq 2 ] || [ $# -eq 5 ] || die "usage: scripts/redis.sh start DIR PORT [CERT KEY CA]"
  mkdir -p "$1"
  printf '%s\n' "$2" >"$1/port"
  if [ $# -eq 5 ]; then
    local f out=()
    for f in "$3" "$4" "$5"; do out+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"); done
    printf '%s\n' "${out[@]}" >"$1/tls"
  fi
  start_one "$1" no
  log "redis-server up on 127.0.0.1:$2 ($1)"
  if [ -f "$1/tls" ]; then
    printf 'url=rediss://localhost:%s\n' "$2"
  else
    printf 'url=redis://127.0.0.1:%s\n' "$2"
  fi
}

cmd_start_cluster() {
  [ $# -eq 2 ] || die "usage: scripts/redis.sh start-cluster DIR BASEPORT"
  local dir="$1" base="$2" i nodes=()
  for i in 0 1 2; do
    mkdir -p "$dir/node-$i"
    printf '%s\n' $((base + i)) >"$dir/node-$i/port"
    printf 'yes\n' >"$dir/node-$i/cluster"
    start_one "$dir/node-$i" yes
    nodes+=("127.0.0.1:$((base + i))")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2 \
    || die "redis-cli --cluster create failed"
  for i in $(seq 1 100); do
    if redis-cli -p "$base" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
      log "redis cluster up on 127.0.0.1:$base..$((base + 2)) ($dir)"
      printf 'url=redis://127.0.0.1:%s\n' "$base"
      return 0
    fi
    sleep 0.1
  done
  die "redis cluster on $base did not reach cluster_state:ok"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: scripts/redis.sh stop DIR"
  local d pid
  while read -r d; do
    pid="$(cat "$d/redis.pid" 2>/dev/null || true)"
    # SIGTERM is a SHUTDOWN (nothing to save: persistence is off); it also
    # reaches a TLS-only server, which redis-cli on the plain port would not.
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null || true
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    if [ -n "$pid" ]; then
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done < <(server_dirs "$1")
}

cmd_kill() {
  [ $# -eq 1 ] || die "usage: scripts/redis.sh kill DIR"
  local d pid
  while read -r d; do
    pid="$(cat "$d/redis.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done < <(server_dirs "$1")
}

cmd_signal() {
  local d pid
  while read -r d; do
    pid="$(cat "$d/redis.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill "-$1" "$pid" 2>/dev/null || true
  done < <(server_dirs "$2")
}

cmd_restart() {
  [ $# -eq 1 ] || die "usage: scripts/redis.sh restart DIR"
  local d
  while read -r d; do
    if [ -f "$d/cluster" ]; then start_one "$d" yes; else start_one "$d" no; fi
  done < <(server_dirs "$1")
}

[ $# -ge 1 ] || die "usage: scripts/redis.sh start|start-cluster|stop|kill|restart|pause|resume ..."
sub="$1"
shift
case "$sub" in
  start) cmd_start "$@" ;;
  start-cluster) cmd_start_cluster "$@" ;;
  stop) cmd_stop "$@" ;;
  kill) cmd_kill "$@" ;;
  restart) cmd_restart "$@" ;;
  pause) [ $# -eq 1 ] || die "usage: scripts/redis.sh pause DIR"; cmd_signal STOP "$1" ;;
  resume) [ $# -eq 1 ] || die "usage: scripts/redis.sh resume DIR"; cmd_signal CONT "$1" ;;
  *) die "unknown command $sub" ;;
esac
