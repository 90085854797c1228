#!/usr/bin/env bash
# Runs throwaway Apache Kafka brokers (KRaft, from the released jars on Maven Central)
# for ferrule's tests. Needs java 17+ and mvn (fetch only). Usage:
#   scripts/kafka.sh fetch                         download the jars once (cached)
#   scripts/kafka.sh start-single DIR [PORT [CPORT]]
#                      1 broker+controller, 127.0.0.1:PORT (19092), controller on CPORT (PORT+100)
#   scripts/kafka.sh start-cluster DIR [BASEPORT [CBASEPORT]]
#                      3 brokers+controllers, BASEPORT..+2 (29092), controllers on
#                      CBASEPORT..+2 (BASEPORT+100..+102); RF 3, min.insync.replicas 2,
#                      no unclean election
#   scripts/kafka.sh create-topic BOOTSTRAP NAME PARTITIONS REPLICATION [TopicCommand args...]
#   scripts/kafka.sh leader BOOTSTRAP TOPIC PARTITION   node id of the partition's leader
#   scripts/kafka.sh wait-isr BOOTSTRAP TOPIC [SECS]    wait until no partition is under-replicated
#   scripts/kafka.sh stop DIR                      SIGTERM every broker under DIR, SIGKILL after 20 s
#   scripts/kafka.sh kill DIR/broker-N             SIGKILL one broker
#   scripts/kafka.sh restart BROKERDIR             start a stopped/killed broker again, same config
#   scripts/kafka.sh bootstrap DIR                 print the bootstrap list of DIR
#   scripts/kafka.sh run-class CLASS [ARGS...]     run any Kafka tool class (e.g. kafka.tools.StorageTool)
# start-* print `bootstrap=HOST:PORT[,...]` on stdout (everything else goes to stderr).
# A broker directory holds server.properties, kafka.pid, server.log, stdout.log and data/.
# Controller listeners are on PORT+100 (single) and BASEPORT+100..+102 (cluster) unless
# CPORT / CBASEPORT say otherwise.
# Environment:
#   FERRULEDEV_CACHE          cache root (default ~/.cache/ferrule); jars in kafka-VERSION/libs
#   FERRULEDEV_KAFKA_VERSION  Kafka version (default 4.3.1)
#   KAFKA_HEAP_OPTS        broker heap (default -Xmx512m -Xms256m single, -Xmx384m -Xms192m cluster)
#   FERRULEDEV_KAFKA_PROPS    extra server.properties lines (key=value, newline-separated), last wins
#   FERRULEDEV_KAFKA_START_TIMEOUT_SECS  seconds to wait for a start (default 90)
set -euo pipefail

KAFKA_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$KAFKA_SH_DIR/lib.sh"

KAFKA_VERSION="${FERRULEDEV_KAFKA_VERSION:-4.3.1}"
LOG4J_VERSION="2.24.3"
KAFKA_HOME="${FERRULEDEV_CACHE:-$HOME/.cache/ferrule}/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
START_TIMEOUT="${FERRULEDEV_KAFKA_START_TIMEOUT_SECS:-90}"
CONTROLLER_OFFSET=100
TOOL_LOG4J="$KAFKA_SH_DIR/kafka/log4j2-tools.xml"
BROKER_LOG4J="$KAFKA_SH_DIR/kafka/log4j2-broker.xml"

log() { printf '%s\n' "$*" >&2; }
elapsed() { local d=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

# --- jars -------------------------------------------------------------------------

fetch() {
  [ -f "$KAFKA_HOME/.complete" ] && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch Kafka jars): apt-get install maven"
  step "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
  local work
  work="$(mktemp -d)"
  sed -e "s/@KAFKA_VERSION@/$KAFKA_VERSION/" -e "s/@LOG4J_VERSION@/$LOG4J_VERSION/" \
    "$KAFKA_SH_DIR/kafka/pom.xml.in" >"$work/pom.xml"
  rm -rf "$KAFKA_LIBS.tmp"
  mkdir -p "$KAFKA_HOME"
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$KAFKA_LIBS.tmp" >"$work/mvn.log" 2>&1); then
    tail -30 "$work/mvn.log" >&2
    rm -rf "$work" "$KAFKA_LIBS.tmp"
    die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (set FERRULEDEV_KAFKA_VERSION)"
  fi
  rm -rf "$work" "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "fetch produced no kafka_2.13 jar"
  echo "$KAFKA_VERSION" >"$KAFKA_HOME/.complete"
  log "kafka jars: $(du -sh "$KAFKA_LIBS" | cut -f1) in $KAFKA_LIBS"
}

need_java17() {
  command -v java >/dev/null 2>&1 || die "java not found: Kafka $KAFKA_VERSION needs Java 17+"
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "java $v found; Kafka $KAFKA_VERSION needs Java 17+"
}

# Runs a Kafka tool class in a small, fast-starting JVM.
run_class() {
  [ -f "$KAFKA_HOME/.complete" ] || fetch
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOL_LOG4J" -cp "$KAFKA_LIBS/*" "$@"
}

# --- helpers ----------------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a random Kafka cluster id (22 chars, base64url of 16 bytes, not starting with '-').
random_cluster_id() {
  local id
  while :; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && break
  done
  printf '%s\n' "$id"
}

broker_pid() { # BROKERDIR -> pid of a live broker, or fails
  local f="$1/kafka.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Guards against a recycled pid.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  printf '%s\n' "$pid"
}

show_logs() { # BROKERDIR
  local f
  for f in "$1/stdout.log" "$1/server.log"; do
    [ -s "$f" ] || continue
    # The cause is usually the first error, long before the shutdown at the tail.
    if grep -q -E 'ERROR|FATAL|Exception' "$f"; then
      log "---- first errors in $f"
      grep -m 5 -E 'ERROR|FATAL|Exception' "$f" >&2
    fi
    log "---- last lines of $f"
    tail -n 40 "$f" >&2
  done
}

# Writes BROKERDIR/server.properties. Args: BROKERDIR NODE_ID PORT CPORT VOTERS then
# extra key=value lines on stdin.
write_config() {
  local bdir="$1" id="$2" port="$3" cport="$4" voters="$5"
  mkdir -p "$bdir/data"
  {
    echo "# generated by scripts/kafka.sh"
    echo "process.roles=broker,controller"
    echo "node.id=$id"
    echo "controller.quorum.voters=$voters"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
    echo "controller.listener.names=CONTROLLER"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    echo "log.dirs=$bdir/data"
    echo "auto.create.topics.enable=false"
    echo "num.partitions=3"
    echo "group.initial.rebalance.delay.ms=0"
    # Small machine (2 cores) shared with the tests.
    echo "num.network.threads=2"
    echo "num.io.threads=2"
    echo "num.recovery.threads.per.data.dir=1"
    echo "background.threads=4"
    echo "offsets.topic.num.partitions=5"
    echo "transaction.state.log.num.partitions=5"
    cat
    if [ -n "${FERRULEDEV_KAFKA_PROPS:-}" ]; then
      echo "# FERRULEDEV_KAFKA_PROPS"
      printf '%s\n' "$FERRULEDEV_KAFKA_PROPS"
    fi
  } >"$bdir/server.properties"
}

format_storage() { # BROKERDIR CLUSTER_ID
  run_class kafka.tools.StorageTool format -t "$2" -c "$1/server.properties" \
    >"$1/format.log" 2>&1 || { cat "$1/format.log" >&2; die "formatting $1 failed"; }
}

# Starts the broker of BROKERDIR in the background (config and heap already written).
launch() {
  local bdir="$1" pid port
  if pid="$(broker_pid "$bdir")"; then die "a broker is already running in $bdir (pid $pid)"; fi
  port="$(sed -n 's#^listeners=PLAINTEXT://[^:]*:\([0-9]*\),.*#\1#p' "$bdir/server.properties")"
  if port_open "$port"; then die "port $port is already in use (another broker still running?)"; fi
  local heap
  heap="$(cat "$bdir/heap" 2>/dev/null || echo "-Xmx512m -Xms256m")"
  # shellcheck disable=SC2086 # heap holds several options
  nohup java $heap -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$BROKER_LOG4J" -Dkafka.logs.dir="$bdir" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$bdir/server.properties" \
    >>"$bdir/stdout.log" 2>&1 </dev/null &
  echo $! >"$bdir/kafka.pid"
}

# Waits until every broker dir given is alive and BOOTSTRAP reports all their ids as
# registered brokers. Args: DEADLINE BOOTSTRAP BROKERDIR...
wait_ready() {
  local deadline="$1" bootstrap="$2" bdir id out pid
  shift 2
  local want=()
  for bdir in "$@"; do want+=("$(sed -n 's/^node.id=//p' "$bdir/server.properties")"); done
  while :; do
    for bdir in "$@"; do
      if ! broker_pid "$bdir" >/dev/null; then
        show_logs "$bdir"
        local other
        for other in "$@"; do
          if pid="$(broker_pid "$other")"; then kill -KILL "$pid" 2>/dev/null || true; fi
          rm -f "$other/kafka.pid"
        done
        die "broker in $bdir exited during start-up (the others of this start were killed)"
      fi
    done
    local ok=1
    for bdir in "$@"; do
      port_open "$(sed -n 's#^listeners=PLAINTEXT://[^:]*:\([0-9]*\),.*#\1#p' "$bdir/server.properties")" || ok=0
    done
    if [ "$ok" = 1 ]; then
      out="$(timeout 20 java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$TOOL_LOG4J" -cp "$KAFKA_LIBS/*" \
        org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$bootstrap" 2>/dev/null || true)"
      for id in "${want[@]}"; do
        grep -q "(id: $id " <<<"$out" || ok=0
      done
      [ "$ok" = 1 ] && return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for bdir in "$@"; do show_logs "$bdir"; done
      for bdir in "$@"; do
        if pid="$(broker_pid "$bdir")"; then kill -KILL "$pid" 2>/dev/null || true; fi
        rm -f "$bdir/kafka.pid"
      done
      die "brokers not ready after ${START_TIMEOUT}s (bootstrap $bootstrap): killed them; logs in $*"
    fi
    sleep 0.5
  done
}

# Fails unless every port given is free on 127.0.0.1.
check_ports_free() {
  local p
  for p in "$@"; do
    port_open "$p" && die "port $p on 127.0.0.1 is already in use (another broker still running? scripts/kafka.sh stop DIR)"
  done
  return 0
}

check_fresh_dir() {
  [ -e "$1/server.properties" ] && die "$1 already holds a broker: use 'restart' or remove it first"
  mkdir -p "$1"
}

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

# --- commands ---------------------------------------------------------------------

start_single() {
  local dir port cport t0
  [ $# -ge 1 ] || die "usage: kafka.sh start-single DIR [PORT [CPORT]]"
  t0="$(date +%s%N)"
  need_java17; fetch
  dir="$(abs_dir "$1")"; port="${2:-19092}"; cport="${3:-$((port + CONTROLLER_OFFSET))}"
  check_ports_free "$port" "$cport"
  check_fresh_dir "$dir"
  write_config "$dir" 1 "$port" "$cport" "1@127.0.0.1:$cport" <<EOF
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
EOF
  echo "${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}" >"$dir/heap"
  format_storage "$dir" "$(random_cluster_id)"
  launch "$dir"
  wait_ready $(( $(date +%s) + START_TIMEOUT )) "127.0.0.1:$port" "$dir"
  echo "127.0.0.1:$port" >"$dir/bootstrap"
  log "kafka: single broker up in $dir (pid $(cat "$dir/kafka.pid")) in $(elapsed "$t0") s"
  echo "bootstrap=127.0.0.1:$port"
}

start_cluster() {
  local dir base cbase t0 i voters="" bootstrap="" cid
  [ $# -ge 1 ] || die "usage: kafka.sh start-cluster DIR [BASEPORT [CBASEPORT]]"
  t0="$(date +%s%N)"
  need_java17; fetch
  dir="$(abs_dir "$1")"; base="${2:-29092}"; cbase="${3:-$((base + CONTROLLER_OFFSET))}"
  check_ports_free "$base" $((base + 1)) $((base + 2)) "$cbase" $((cbase + 1)) $((cbase + 2))
  for i in 1 2 3; do
    check_fresh_dir "$dir/broker-$i"
    voters="${voters:+$voters,}$i@127.0.0.1:$((cbase + i - 1))"
    bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:$((base + i - 1))"
  done
  cid="$(random_cluster_id)"
  local pids=()
  for i in 1 2 3; do
    write_config "$dir/broker-$i" "$i" "$((base + i - 1))" "$((cbase + i - 1))" "$voters" <<EOF
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
EOF
    echo "${KAFKA_HEAP_OPTS:--Xmx384m -Xms192m}" >"$dir/broker-$i/heap"
    format_storage "$dir/broker-$i" "$cid" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "formatting failed"; done
  for i in 1 2 3; do launch "$dir/broker-$i"; done
  wait_ready $(( $(date +%s) + START_TIMEOUT )) "$bootstrap" "$dir/broker-1" "$dir/broker-2" "$dir/broker-3"
  echo "$bootstrap" >"$dir/bootstrap"
  log "kafka: 3-broker cluster up in $dir in $(elapsed "$t0") s"
  echo "bootstrap=$bootstrap"
}

restart_broker() {
  local bdir t0 port
  [ $# -eq 1 ] || die "usage: kafka.sh restart BROKERDIR"
  t0="$(date +%s%N)"
  need_java17
  bdir="$(cd "$1" && pwd)" || die "no such directory: $1"
  [ -f "$bdir/server.properties" ] || die "$bdir holds no broker (no server.properties)"
  [ -f "$KAFKA_HOME/.complete" ] || fetch
  launch "$bdir"
  port="$(sed -n 's#^listeners=PLAINTEXT://[^:]*:\([0-9]*\),.*#\1#p' "$bdir/server.properties")"
  wait_ready $(( $(date +%s) + START_TIMEOUT )) "127.0.0.1:$port" "$bdir"
  log "kafka: broker in $bdir restarted (pid $(cat "$bdir/kafka.pid")) in $(elapsed "$t0") s"
  echo "bootstrap=127.0.0.1:$port"
}

broker_dirs() { # DIR -> broker dirs under it (DIR itself, DIR/broker-*, or deeper)
  local f
  find "$1" -maxdepth 4 -name data -prune -o -name server.properties -print 2>/dev/null \
    | sort | while read -r f; do dirname "$f"; done
}

stop_dir() {
  [ $# -eq 1 ] || die "usage: kafka.sh stop DIR"
  [ -d "$1" ] || { log "kafka: $1 does not exist, nothing to stop"; return 0; }
  local bdir pid pids=() i
  while read -r bdir; do
    if pid="$(broker_pid "$bdir")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$bdir/kafka.pid"
  done < <(broker_dirs "$1")
  [ ${#pids[@]} -eq 0 ] && { log "kafka: no broker running under $1"; return 0; }
  for i in $(seq 1 200); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "kafka: pid $pid still running after 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
  log "kafka: stopped ${#pids[@]} broker(s) under $1"
}

kill_broker() {
  [ $# -eq 1 ] || die "usage: kafka.sh kill BROKERDIR"
  local pid
  pid="$(broker_pid "$1")" || die "no broker running in $1"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$1/kafka.pid"
  log "kafka: killed broker in $1 (pid $pid)"
}

create_topic() {
  [ $# -ge 4 ] || die "usage: kafka.sh create-topic BOOTSTRAP NAME PARTITIONS REPLICATION [args...]"
  local bootstrap="$1" name="$2" parts="$3" rf="$4"
  shift 4
  local extra=()
  [ "$rf" -ge 3 ] && extra+=(--config min.insync.replicas=2)
  run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create \
    --topic "$name" --partitions "$parts" --replication-factor "$rf" "${extra[@]}" "$@" >&2
  # Waits until every partition has a leader, so producing right after works.
  local deadline=$(( $(date +%s) + 30 )) out
  while :; do
    out="$(run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
      --describe --topic "$name" 2>/dev/null || true)"
    if [ "$(grep -c 'Partition: ' <<<"$out")" -eq "$parts" ] && ! grep -Eq 'Leader: (none|-1)' <<<"$out"; then
      return 0
    fi
    [ "$(date +%s)" -ge "$deadline" ] && { printf '%s\n' "$out" >&2; die "topic $name has partitions without a leader after 30 s"; }
    sleep 0.3
  done
}

leader() {
  [ $# -eq 3 ] || die "usage: kafka.sh leader BOOTSTRAP TOPIC PARTITION"
  local out l
  out="$(run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --describe --topic "$2")"
  l="$(awk -v p="$3" '{
        part = ""; lead = "";
        for (i = 1; i < NF; i++) {
          if ($i == "Partition:") part = $(i + 1);
          if ($i == "Leader:") lead = $(i + 1);
        }
        if (part == p) print lead
      }' <<<"$out")"
  [ -n "$l" ] || { printf '%s\n' "$out" >&2; die "no partition $3 in topic $2"; }
  [[ "$l" =~ ^[0-9]+$ ]] || die "partition $2-$3 has no leader ($l)"
  printf '%s\n' "$l"
}

wait_isr() {
  [ $# -ge 2 ] || die "usage: kafka.sh wait-isr BOOTSTRAP TOPIC [SECS]"
  local deadline=$(( $(date +%s) + ${3:-60} )) out
  while :; do
    if out="$(run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --describe \
        --topic "$2" --under-replicated-partitions 2>/dev/null)" && [ -z "$out" ]; then
      return 0
    fi
    [ "$(date +%s)" -ge "$deadline" ] && { printf '%s\n' "$out" >&2; die "topic $2 still under-replicated"; }
    sleep 0.5
  done
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  fetch) need_java17; fetch ;;
  start-single) start_single "$@" ;;
  start-cluster) start_cluster "$@" ;;
  create-topic) create_topic "$@" ;;
  leader) leader "$@" ;;
  wait-isr) wait_isr "$@" ;;
  stop) stop_dir "$@" ;;
  kill) kill_broker "$@" ;;
  restart) restart_broker "$@" ;;
  bootstrap) [ $# -eq 1 ] || die "usage: kafka.sh bootstrap DIR"; cat "$1/bootstrap" ;;
  run-class) run_class "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
