#!/usr/bin/env bash
# Side by side with the OpenTelemetry Collector (issue 15): the fleet-like workload through
# the Collector as a gateway, OTLP/gRPC with mutual TLS in, its Kafka exporter (acks=all,
# otlp_proto) out, on one local broker; optionally ferrule's fleet run on the same machine
# right after, and the ratios.
#
# Usage (from anywhere; paths are the repository's):
#   loadtest/side-by-side.sh [options]
#     --secs N            measured seconds (20)
#     --warmup N          warm-up seconds before them (5)
#     --workers N         load generator workers = simulated agents, one gRPC connection each (200)
#     --rate N            points per second per worker (2000: 400 000 points/s in all)
#     --batch N           points per request (100: one request per 50 ms per worker)
#     --sensors N         gauge metrics per worker a request's points are spread over (7)
#     --fault none|broker-restart|collector-kill
#                         a third into the measured period (as ferrule-loadtest fleet does):
#                         broker-restart: SIGKILL the broker, start it again --down-secs
#                         later (the start itself takes seconds more: the outage printed is
#                         from the kill until the broker answers); collector-kill: SIGKILL
#                         the Collector, start it again --down-secs later. With --ferrule,
#                         ferrule's run gets kafka-restart or aggregator-kill
#     --down-secs N       seconds between the kill and the restart (1, as ferrule's fleet)
#     --ack memory|kafka  memory (default): batch processor and the exporter's default
#                         in-memory sending_queue, as a gateway is usually run; the client's
#                         answer then means "accepted in memory". kafka: no batch processor,
#                         sending_queue off, so each answer waits for Kafka's acks=all
#     --ferrule           also run ferrule-loadtest fleet with the same agents, rate, secs
#                         and fault (needs ./target/release/ferrule-loadtest: build it first)
#     --out DIR           where everything goes (default: a new directory under /tmp)
#     --grpc-port P       collector's OTLP gRPC port (44317)
#     --kafka-port P      collector run's broker (49092; controller P+100)
#     --ferrule-kafka-port P  ferrule run's broker (49292; controller P+100)
#     --keep              keep the broker's data (always kept when --out is given)
# Prints the figures at the end and writes DIR/summary.json.
#
# The Collector, the load generator (loadtest/otelcol/loadgen) and the Kafka point
# counter (loadtest/otelcol/kafkacount) are built from loadtest/otelcol with the go command
# (pinned modules, Go module proxy), cached under
# ${FERRULEDEV_CACHE:-~/.cache/ferrule}/otelcol-peer/HASH/. Kafka comes from scripts/kafka.sh.
# telemetrygen is not used: the module proxy here does not serve it; loadgen does the same
# job and also reports the answer latency and which requests were acknowledged.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$ROOT/scripts/lib.sh"
SRC="$HERE/otelcol"
CACHE="${FERRULEDEV_CACHE:-$HOME/.cache/ferrule}/otelcol-peer"
TOPIC=otlp_metrics
PARTITIONS=8

SECS=20 WARMUP=5 WORKERS=200 RATE=2000 BATCH=100 SENSORS=7 FAULT=none DOWN=1 ACK=memory
FERRULE=0 OUT="" GRPC_PORT=44317 KPORT=49092 FKPORT=49292 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --batch) BATCH="$2"; shift ;;
    --sensors) SENSORS="$2"; shift ;;
    --fault) FAULT="$2"; shift ;;
    --down-secs) DOWN="$2"; shift ;;
    --ack) ACK="$2"; shift ;;
    --ferrule) FERRULE=1 ;;
    --out) OUT="$2"; KEEP=1; shift ;;
    --grpc-port) GRPC_PORT="$2"; shift ;;
    --kafka-port) KPORT="$2"; shift ;;
    --ferrule-kafka-port) FKPORT="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
  shift
done
for v in SECS WARMUP WORKERS RATE BATCH SENSORS DOWN GRPC_PORT KPORT FKPORT; do
  case "${!v}" in '' | *[!0-9]*) die "$v must be a whole number (got '${!v}')" ;; esac
done
case "$FAULT" in none | broker-restart | collector-kill) ;; *) die "--fault none|broker-restart|collector-kill" ;; esac
case "$ACK" in memory | kafka) ;; *) die "--ack memory|kafka" ;; esac
[ "$SECS" -ge 3 ] || die "--secs must be at least 3"
ports=("$GRPC_PORT" "$KPORT" "$((KPORT + 100))")
[ "$FERRULE" = 1 ] && ports+=("$FKPORT" "$((FKPORT + 100))")
[ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" = "${#ports[@]}" ] || die "ports collide: ${ports[*]}"

log() { printf '%s\n' "$*" >&2; }
port_open() { timeout 2 bash -c ": <>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for p in "${ports[@]}"; do ! port_open "$p" || die "127.0.0.1:$p is already in use"; done

if [ -z "$OUT" ]; then OUT="$(mktemp -d /tmp/side-by-side.XXXXXX)"; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
[ ! -e "$OUT/kafka/server.properties" ] || die "$OUT already holds a run: give another --out"

# --- cleanup: everything this script started --------------------------------------
COL_PID="" GEN_PID="" FAULT_PID="" FL_PID="" KAFKA_UP=0
cleanup() {
  local rc=$?
  set +e
  for p in "$GEN_PID" "$FAULT_PID"; do
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null
  done
  if [ -n "$COL_PID" ] && kill -0 "$COL_PID" 2>/dev/null; then
    kill -9 "$COL_PID" 2>/dev/null
  fi
  [ "$KAFKA_UP" = 1 ] && "$ROOT/scripts/kafka.sh" stop "$OUT/kafka" >/dev/null 2>&1
  if [ -n "$FL_PID" ] && kill -0 "$FL_PID" 2>/dev/null; then
    # Interrupted mid-run: let ferrule-loadtest stop its aggregator and broker, then make sure.
    kill -TERM "$FL_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$FL_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$FL_PID" 2>/dev/null
    # It does not stop its children on a signal: its aggregator (config under
    # $OUT/ferrule-data) and its broker (scripts/kafka.sh, data there too).
    local f pid
    for f in /proc/[0-9]*/cmdline; do
      pid="${f#/proc/}" pid="${pid%/cmdline}"
      tr '\0' ' ' <"$f" 2>/dev/null | grep -qF "$OUT/ferrule-data/" && kill -9 "$pid" 2>/dev/null
    done
    "$ROOT/scripts/kafka.sh" stop "$OUT/ferrule-data" >/dev/null 2>&1
  fi
  if [ "$KEEP" = 0 ] && [ "$rc" = 0 ]; then
    rm -rf "$OUT/kafka"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -------------------------------------------------------------------------
need_go
HASH="$(cd "$SRC" && sha256sum go.mod go.sum main.go loadgen/main.go kafkacount/main.go | sha256sum | cut -c1-16)"
BIN="$CACHE/$HASH"
if [ ! -x "$BIN/otelcol-peer" ] || [ ! -x "$BIN/loadgen" ] || [ ! -x "$BIN/kafkacount" ]; then
  step "building the Collector, loadgen and kafkacount into $BIN (first run only: downloads Go modules)"
  mkdir -p "$BIN"
  t0=$SECONDS
  for target in otelcol-peer:. loadgen:./loadgen kafkacount:./kafkacount; do
    name="${target%%:*}" pkg="${target#*:}"
    (cd "$SRC" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
      go build -trimpath -ldflags='-s -w' -o "$BIN/$name.tmp.$$" "$pkg") >&2 \
      || { rm -f "$BIN/$name.tmp.$$"; die "go build of loadtest/otelcol ($pkg) failed"; }
    mv -f "$BIN/$name.tmp.$$" "$BIN/$name"
  done
  log "built in $((SECONDS - t0)) s"
fi

# --- certificates: a throwaway CA, a server and a client certificate ----------------
step "certificates (throwaway CA, server localhost/127.0.0.1, client) in $OUT/certs"
C="$OUT/certs"
mkdir -p "$C"
(
  cd "$C"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=side-by-side CA" -keyout ca.key -out ca.pem 2>/dev/null
  for who in server client; do
    if [ "$who" = server ]; then
      ext="subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
    else
      ext="subjectAltName=URI:ferrule://side-by-side/loadgen
extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
    fi
    printf '%s\n' "$ext" >"$who.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=side-by-side $who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$who.ext" -out "$who.pem" 2>/dev/null
  done
) || die "openssl failed"

# --- Kafka ---------------------------------------------------------------------------
step "Kafka: one broker on 127.0.0.1:$KPORT, topic $TOPIC ($PARTITIONS partitions, replication 1)"
KAFKA_UP=1
"$ROOT/scripts/kafka.sh" start-single "$OUT/kafka" "$KPORT" >/dev/null
BOOT="127.0.0.1:$KPORT"
"$ROOT/scripts/kafka.sh" create-topic "$BOOT" "$TOPIC" "$PARTITIONS" 1 >/dev/null 2>&1 \
  || die "could not create topic $TOPIC"

# --- the Collector --------------------------------------------------------------------
if [ "$ACK" = memory ]; then
  PROCESSORS="[memory_limiter, batch]"
  QUEUE=""  # the exporter's default sending_queue (in memory)
else
  PROCESSORS="[memory_limiter]"
  QUEUE="    sending_queue:
      enabled: false"
fi
cat >"$OUT/otelcol.yaml" <<EOF
# Written by loadtest/side-by-side.sh: a gateway, OTLP/gRPC with mutual TLS in, Kafka out.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$GRPC_PORT
        tls:
          cert_file: '$C/server.pem'
          key_file: '$C/server.key'
          client_ca_file: '$C/ca.pem'
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 2048
    spike_limit_mib: 512
  batch: {}
exporters:
  kafka:
    brokers: ["$BOOT"]
    metrics:
      topic: $TOPIC
      encoding: otlp_proto
    producer:
      required_acks: all
$QUEUE
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: info
  pipelines:
    metrics:
      receivers: [otlp]
      processors: $PROCESSORS
      exporters: [kafka]
EOF
step "Collector: OTLP/gRPC mTLS on 127.0.0.1:$GRPC_PORT -> kafka exporter (acks=all, otlp_proto), ack=$ACK"
start_collector() {
  setsid "$BIN/otelcol-peer" --config "file:$OUT/otelcol.yaml" </dev/null >>"$OUT/otelcol.log" 2>&1 &
  COL_PID=$!
  local deadline=$((SECONDS + 30))
  until port_open "$GRPC_PORT"; do
    kill -0 "$COL_PID" 2>/dev/null || { tail -30 "$OUT/otelcol.log" >&2; die "the Collector exited during start-up"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -30 "$OUT/otelcol.log" >&2; die "the Collector did not listen within 30 s"; }
    sleep 0.1
  done
}
start_collector
"$BIN/otelcol-peer" --version >"$OUT/otelcol.version" 2>&1 || true

# CPU (utime+stime, clock ticks) and RSS of a process.
TICKS="$(getconf CLK_TCK)"
cpu_ticks() { local s; s="$(cat "/proc/$1/stat")"; s="${s##*) }"; set -- $s; echo $((${12} + ${13})); }
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }
hwm_kib() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }

# --- load -----------------------------------------------------------------------------
step "load: $WORKERS workers x $RATE points/s (batches of $BATCH over $SENSORS sensors) = $((WORKERS * RATE)) points/s offered, ${WARMUP} s warm-up + ${SECS} s measured; uptime: $(uptime)"
uptime >"$OUT/uptime.before"
"$BIN/loadgen" -endpoint "127.0.0.1:$GRPC_PORT" -server-name localhost \
  -ca "$C/ca.pem" -cert "$C/client.pem" -key "$C/client.key" \
  -workers "$WORKERS" -rate "$RATE" -batch "$BATCH" -sensors "$SENSORS" \
  -warmup "${WARMUP}s" -duration "${SECS}s" \
  -out "$OUT/loadgen.json" -acked "$OUT/acked.txt" 2>"$OUT/loadgen.log" &
GEN_PID=$!
T_LAUNCH="$(date +%s.%N)"

# The timeline: loadgen starts its schedule 0.2 s after launch; the fault, if any, a third
# into the measured period (as ferrule-loadtest fleet does).
T_START="$(awk -v t="$T_LAUNCH" 'BEGIN { printf "%.3f", t + 0.25 }')"
sleep_until() { # seconds after T_START
  sleep "$(awk -v s="$T_START" -v o="$1" -v n="$(date +%s.%N)" 'BEGIN { d = s + o - n; if (d < 0) d = 0; printf "%.3f", d }')"
}
FAULT_AT="" DOWN_ACTUAL=""
sleep_until "$WARMUP"
c0="$(cpu_ticks "$COL_PID")"; t0="$(date +%s.%N)"
CPU_CARRIED=0
if [ "$FAULT" != none ]; then
  FAULT_AT=$((WARMUP + SECS / 3))
  sleep_until "$FAULT_AT"
  td="$(date +%s.%N)"
  if [ "$FAULT" = broker-restart ]; then
    # In the background, so that the measured window keeps its length (a broker start
    # takes 8-20 s here).
    (
      "$ROOT/scripts/kafka.sh" kill "$OUT/kafka" 2>>"$OUT/fault.log"
      sleep "$DOWN"
      "$ROOT/scripts/kafka.sh" restart "$OUT/kafka" >/dev/null 2>>"$OUT/fault.log"
      awk -v a="$td" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$OUT/fault.down"
    ) &
    FAULT_PID=$!
  else
    # SIGKILL, then the same configuration again: what it held in memory is gone.
    CPU_CARRIED=$(($(cpu_ticks "$COL_PID") - c0))
    kill -9 "$COL_PID"
    wait "$COL_PID" 2>/dev/null || true
    sleep "$DOWN"
    start_collector
    c0=0
    awk -v a="$td" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$OUT/fault.down"
  fi
fi
sleep_until "$((WARMUP + SECS))"
c1=$(($(cpu_ticks "$COL_PID") + CPU_CARRIED)); t1="$(date +%s.%N)"
RSS_END="$(rss_kib "$COL_PID")"
uptime >"$OUT/uptime.after"

# loadgen's requests time out after 10 s: it ends within that of its schedule.
deadline=$((SECONDS + 60))
while kill -0 "$GEN_PID" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || die "loadgen did not finish within 60 s of its schedule"
  sleep 0.2
done
wait "$GEN_PID" || { cat "$OUT/loadgen.log" >&2; die "loadgen failed"; }
GEN_PID=""
if [ -n "$FAULT_PID" ]; then
  wait "$FAULT_PID" || die "the broker did not restart (see $OUT/fault.log)"
  FAULT_PID=""
fi
DOWN_ACTUAL=""
[ -f "$OUT/fault.down" ] && DOWN_ACTUAL="$(cat "$OUT/fault.down")"
[ -n "$DOWN_ACTUAL" ] && log "fault $FAULT at ${FAULT_AT} s: back after ${DOWN_ACTUAL} s"
HWM="$(hwm_kib "$COL_PID")"

# Give the Collector time to deliver what it holds (its retries back off up to 30 s):
# until Kafka has every acknowledged point, or nothing new came for 45 s (150 s at most).
ACKED_POINTS="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked_points_total"])' "$OUT/loadgen.json")"
step "waiting for the Collector to deliver the $ACKED_POINTS points it acknowledged (until nothing new for 45 s, 150 s at most)"
"$BIN/kafkacount" -brokers "$BOOT" -topic "$TOPIC" -wait-points "$ACKED_POINTS" -idle 45s -timeout 150s \
  >"$OUT/drain.json" || die "kafkacount -wait-points failed"
log "$(cat "$OUT/drain.json")"

# Then stop it: a graceful stop flushes the batch processor and the queue.
step "stopping the Collector (SIGTERM; 60 s limit)"
kill -TERM "$COL_PID"
deadline=$((SECONDS + 60))
STOP_CLEAN=1
while kill -0 "$COL_PID" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then kill -9 "$COL_PID"; STOP_CLEAN=0; break; fi
  sleep 0.2
done
wait "$COL_PID" 2>/dev/null || true
COL_PID=""

step "reading $TOPIC back and counting points"
"$BIN/kafkacount" -brokers "$BOOT" -topic "$TOPIC" -acked "$OUT/acked.txt" >"$OUT/kafkacount.json" \
  || die "kafkacount failed"
"$ROOT/scripts/kafka.sh" stop "$OUT/kafka" >/dev/null 2>&1 || true
KAFKA_UP=0

# --- ferrule's side ----------------------------------------------------------------------
if [ "$FERRULE" = 1 ]; then
  FL="$ROOT/target/release/ferrule-loadtest"
  [ -x "$FL" ] || die "$FL not found: build the release binaries first"
  ffault=none
  [ "$FAULT" = broker-restart ] && ffault=kafka-restart
  [ "$FAULT" = collector-kill ] && ffault=aggregator-kill
  step "ferrule: ferrule-loadtest fleet --agents $WORKERS --rate $RATE --secs $SECS --warmup-secs $WARMUP --kafka-port $FKPORT --fault $ffault"
  uptime >"$OUT/uptime.ferrule"
  mkdir -p "$OUT/ferrule-data"
  (cd "$ROOT" && exec "$FL" fleet --agents "$WORKERS" --rate "$RATE" --secs "$SECS" --warmup-secs "$WARMUP" \
    --kafka-port "$FKPORT" --fault "$ffault" --data-dir "$OUT/ferrule-data" --out "$OUT/ferrule") \
    </dev/null >"$OUT/ferrule.log" 2>&1 &
  FL_PID=$!
  # Bounded: its own run plus broker start-up, verification and a margin.
  deadline=$((SECONDS + WARMUP + SECS + 600))
  while kill -0 "$FL_PID" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -30 "$OUT/ferrule.log" >&2; die "ferrule-loadtest fleet still running after $((WARMUP + SECS + 600)) s"; }
    sleep 0.5
  done
  FRC=0
  wait "$FL_PID" || FRC=$?
  FL_PID=""
  echo "$FRC" >"$OUT/ferrule.rc"
  [ -f "$OUT/ferrule/report.json" ] || { tail -30 "$OUT/ferrule.log" >&2; die "ferrule-loadtest fleet wrote no report (rc $FRC)"; }
fi

# --- figures ------------------------------------------------------------------------------
python3 - "$OUT" "$c0" "$c1" "$t0" "$t1" "$TICKS" "$RSS_END" "$HWM" "$SECS" "$FAULT" "$ACK" \
  "$STOP_CLEAN" "$FERRULE" "$FAULT_AT" "$DOWN_ACTUAL" <<'PY'
import json, os, sys
out, c0, c1, t0, t1, ticks, rss, hwm, secs, fault, ack, clean, ferrule, fault_at, down = sys.argv[1:]
c0, c1, ticks, rss, hwm, secs = int(c0), int(c1), int(ticks), int(rss or 0), int(hwm or 0), int(secs)
window = float(t1) - float(t0)
gen = json.load(open(os.path.join(out, "loadgen.json")))
kc = json.load(open(os.path.join(out, "kafkacount.json")))
cpu = (c1 - c0) / ticks
gen_cpu = gen["generator_cpu_secs"]
meas = gen["measured_acked_points"]
eps = meas / secs
cpm = cpu / (meas / 1e6) if meas else float("nan")
ver = open(os.path.join(out, "otelcol.version")).read().strip()
s = {
    "collector": {
        "version": ver, "ack": ack, "fault": fault,
        "offered_points_per_sec": gen["offered_points_per_sec"],
        "events_per_sec": eps,
        "cpu_secs": cpu, "cpu_window_secs": window, "cores": cpu / window,
        "cpu_secs_per_million": cpm,
        "loadgen_cpu_secs": gen_cpu,
        "rss_mib_end": rss / 1024, "rss_mib_peak": hwm / 1024,
        "ack_latency_from_due_ms": gen["ack_latency_from_due_ms"],
        "ack_latency_from_send_ms": gen["ack_latency_from_send_ms"],
        "ack_meaning": ("accepted into the Collector's memory (batch processor, in-memory sending_queue), not committed to Kafka"
                        if ack == "memory" else "after the kafka exporter's produce with acks=all (no batch processor, no queue)"),
        "points_acked": gen["acked_points_total"], "points_refused": gen["failed_points_total"],
        "errors": gen["errors"],
        "kafka_records": kc["records"], "kafka_points": kc["points"],
        "points_lost": kc.get("lost_points"), "points_duplicated": kc.get("duplicate_points"),
        "points_in_kafka_from_refused_requests": kc.get("points_from_unacked_requests"),
        "stopped_cleanly": clean == "1",
        "drain": json.load(open(os.path.join(out, "drain.json"))),
    }
}
c = s["collector"]
def pct(p):
    return "n/a" if not p else "p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f ms" % (p["p50"], p["p90"], p["p99"], p["p99.9"], p["max"])
print()
print("== OpenTelemetry Collector (%s), gateway: OTLP/gRPC + mTLS -> kafka exporter acks=all, otlp_proto, 1 broker, RF 1, 8 partitions" % ver)
print("   offered            %10.0f points/s (%d workers x %g, batches of %d)" % (c["offered_points_per_sec"], gen["workers"], gen["rate_per_worker"], gen["batch_points"]))
print("   acknowledged       %10.0f points/s over the %d s measured" % (eps, secs))
print("   CPU                %10.2f s in %.1f s (%.2f cores): %.3f CPU-s per million points" % (cpu, window, c["cores"], cpm))
print("   RSS                %10.1f MiB at the end of the window, peak %.1f MiB" % (c["rss_mib_end"], c["rss_mib_peak"]))
print("   loadgen CPU        %10.2f s (%.2f cores)" % (gen_cpu, gen_cpu / window))
print("   answer latency     from due:  %s" % pct(c["ack_latency_from_due_ms"]))
print("                      from send: %s" % pct(c["ack_latency_from_send_ms"]))
print("                      (%s)" % c["ack_meaning"])
print("   points acked       %10d   refused (client saw an error): %d" % (c["points_acked"], c["points_refused"]))
print("   points in Kafka    %10d   in %d records" % (c["kafka_points"], c["kafka_records"]))
print("   acked, not in Kafka (lost) %d   duplicated %d   from refused requests %d" % (c["points_lost"], c["points_duplicated"], c["points_in_kafka_from_refused_requests"]))
if fault != "none":
    c["fault_at_secs"], c["down_secs"] = float(fault_at), float(down)
    what = "broker" if fault == "broker-restart" else "Collector"
    print("   fault              %s SIGKILLed at %s s, answering again %s s later" % (what, fault_at, down))
    print("                      (events/s and CPU above are over the measured window, outage included)")
if c["errors"]:
    print("   client errors      " + "; ".join("%dx %s" % (n, e) for e, n in sorted(c["errors"].items(), key=lambda x: -x[1])[:3]))
d = c["drain"]
print("   drain after load   %10.1f s (%s; includes reading the topic back)" % (d["waited_secs"], {"reached": "until every acknowledged point was in Kafka", "idle": "gave up: nothing new for 45 s", "timeout": "gave up after 150 s"}[d["reason"]]))
if not c["stopped_cleanly"]:
    print("   WARNING: the Collector did not stop within 60 s of SIGTERM and was killed")
if ferrule == "1":
    r = json.load(open(os.path.join(out, "ferrule", "report.json")))
    agg, v = r["aggregator"], r["verdict"]
    f = {"events_per_sec": r["throughput"]["events_per_sec"], "cpu_secs": agg["cpu_secs"],
         "cpu_secs_per_million": agg["cpu_secs_per_million"], "rss_mib": agg["rss_mib"],
         "ack_latency_ms": r["ack_latency_ms"], "verdict": v, "problems": r["problems"],
         "rc": int(open(os.path.join(out, "ferrule.rc")).read())}
    s["ferrule"] = f
    a = r["ack_latency_ms"]
    batch = r["conditions"]["batch_samples"]
    print()
    print("== ferrule (ferrule-loadtest fleet, Kafka 1 broker, acks=all, alert rules on), exit %d" % f["rc"])
    print("   committed          %10.0f events/s" % f["events_per_sec"])
    print("   CPU                %10.2f s: %.3f CPU-s per million events" % (agg["cpu_secs"], agg["cpu_secs_per_million"]))
    print("   RSS                %10.1f MiB" % agg["rss_mib"])
    print("   ack latency        from due: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f ms (after Kafka's ack)" % (a["p50"], a["p90"], a["p99"], a["p999"], a["max"]))
    print("   batches            acked %d  lost %d  duplicates %d  (%d events per batch)" % (v["acked"], v["lost"], v["duplicates"], batch))
    if r.get("fault"):
        fr = r["fault"]
        f["fault"] = fr
        print("   fault              %s at %.1f s, down %.1f s, recovered after %s s" % (fr["kind"], fr["at_secs"], fr["down_secs"], fr.get("recovered_after_secs")))
    if r["problems"]:
        print("   problems           " + "; ".join(r["problems"][:3]))
    ratio_eff = cpm / agg["cpu_secs_per_million"] if agg["cpu_secs_per_million"] else float("nan")
    s["ratios"] = {"events_per_cpu_sec": ratio_eff,
                   "events_per_sec": f["events_per_sec"] / eps if eps else float("nan")}
    print()
    print("== ratios (ferrule / Collector)")
    print("   events per CPU-second  %.1fx   (ferrule %.0f, Collector %.0f)" % (ratio_eff, 1e6 / agg["cpu_secs_per_million"], 1e6 / cpm))
    print("   events per second      %.2fx" % s["ratios"]["events_per_sec"])
    print("   lost                   ferrule %d batches, Collector %d points" % (v["lost"], c["points_lost"]))
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=2)
print()
print("Everything is in %s (summary.json, loadgen.json, kafkacount.json, otelcol.yaml, otelcol.log)" % out)
PY
