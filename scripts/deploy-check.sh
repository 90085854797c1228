#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools, and installs nothing:
#   - systemd units: `systemd-analyze verify` (in a scratch root holding the
#     unit files unchanged and stub executables at their ExecStart paths) and
#     `systemd-analyze security --offline=true`, failing above a maximum
#     exposure;
#   - Prometheus: `promtool check rules`, `promtool test rules` (unit tests),
#     `promtool check config` of the compose Prometheus, and the dashboard's
#     queries parsed by promtool as recording rules;
#   - Grafana: the dashboard is JSON (`python3 -m json.tool`) with what an
#     import needs (uid, title, panels with gridPos, targets with expr/refId);
#   - Compose: `docker-compose config -q`, the collector's and Grafana's
#     provisioning YAML parses, and (when binaries are already built, never
#     building them) `ferrule-aggregator check-config` of both compose configs
#     with a scratch PKI.
# Then it prints every ferrule metric name the rules and the dashboard use.
#
# Usage: scripts/deploy-check.sh [--names-out FILE] [--max-exposure N]
#   --names-out FILE   also write the metric names there, one a line
#   --max-exposure N   highest systemd exposure level accepted (default 1.5,
#                      or FERRULE_MAX_EXPOSURE); the scale is systemd's 0.0-10.0
# Needs: systemd-analyze (systemd >= 250, for --offline), promtool (Debian
# package prometheus), docker-compose (docker-compose), python3 (python3,
# python3-yaml for the YAML checks).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

names_out=""
max_exposure="${FERRULE_MAX_EXPOSURE:-1.5}"
while [ $# -gt 0 ]; do
  case "$1" in
    --names-out) [ $# -ge 2 ] || die "--names-out needs a file"; names_out="$2"; shift 2 ;;
    --names-out=*) names_out="${1#*=}"; shift ;;
    --max-exposure) [ $# -ge 2 ] || die "--max-exposure needs a number"; max_exposure="$2"; shift 2 ;;
    --max-exposure=*) max_exposure="${1#*=}"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ "$max_exposure" =~ ^[0-9]+(\.[0-9])?$ ]] || die "--max-exposure takes a number with at most one decimal, like 1.5"

UNITS=(deploy/systemd/ferrule-agent.service deploy/systemd/ferrule-aggregator.service)
RULES=deploy/prometheus/ferrule-alerts.yml
RULE_TESTS=deploy/prometheus/ferrule-alerts.test.yml
DASHBOARD=deploy/grafana/ferrule.json
COMPOSE=deploy/compose/docker-compose.yml
PROM_CONFIG=deploy/compose/prometheus.yml

# --- tools: named by their Debian package; this script installs nothing.
missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (Debian package: $2)"); }
need_cmd systemd-analyze systemd
need_cmd promtool prometheus
need_cmd docker-compose docker-compose
need_cmd python3 python3
if [ ${#missing[@]} -gt 0 ]; then
  printf 'error: missing: %s\n' "${missing[@]}" >&2
  die "install them (e.g. apt-get install -y prometheus docker-compose) and run again"
fi
systemd-analyze security --help 2>/dev/null | grep -q -- '--offline' \
  || die "systemd-analyze has no --offline (systemd >= 250 needed, Debian 12 has 252)"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
passed=()
# Runs a check by name: the command's output is shown; its status is recorded.
check() {
  local name="$1"; shift
  step "$name"
  if "$@"; then
    printf 'PASS  %s\n' "$name"; passed+=("$name")
  else
    printf 'FAIL  %s\n' "$name"; failed+=("$name")
  fi
}

# --- systemd ---------------------------------------------------------------
# verify needs the ExecStart binaries and the units systemd's own targets pull
# in. A scratch root gets the unit files byte for byte, the distribution's
# units, and stub executables at the paths the units name; --root resolves
# everything in it, so nothing in the unit is rewritten. verify exits 0 on
# unknown keys and unparsable values (it only prints them), so any output
# at all fails the check.
systemd_verify() {
  local root="$scratch/sdroot" out rc unit bin
  mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
  for d in /usr/lib/systemd/system /lib/systemd/system; do
    [ -d "$d" ] && { cp -r "$d" "$root/usr/lib/systemd/" 2>/dev/null && break; }
  done
  [ -e "$root/usr/lib/systemd/system/sysinit.target" ] || { echo "no sysinit.target to copy"; return 1; }
  for unit in "${UNITS[@]}"; do
    cp "$unit" "$root/etc/systemd/system/"
    for bin in $(sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*([^ ]+).*/\1/p' "$unit" | sort -u); do
      mkdir -p "$root$(dirname "$bin")"
      printf '#!/bin/sh\nexit 0\n' > "$root$bin"
      chmod 755 "$root$bin"
    done
  done
  out="$(cd "$root" && systemd-analyze verify --root="$root" --man=no \
    "${UNITS[@]##*/}" 2>&1)"; rc=$?
  [ -n "$out" ] && printf '%s\n' "$out"
  [ $rc -eq 0 ] && [ -z "$out" ] && echo "verify: no findings for ${UNITS[*]##*/}"
}
check "systemd-analyze verify" systemd_verify

# --threshold is on systemd's internal 0-100 scale (the printed level x 10).
threshold="$(awk -v m="$max_exposure" 'BEGIN { printf "%d", m * 10 + 0.5 }')"
security() {
  local unit="$1" out rc level
  out="$(systemd-analyze security --offline=true --no-pager --threshold="$threshold" "$unit" 2>&1)"; rc=$?
  printf '%s\n' "$out" | grep -E '^✗' || true
  level="$(printf '%s\n' "$out" | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p')"
  [ -n "$level" ] || { printf '%s\n' "$out"; echo "no exposure level printed"; return 1; }
  echo "exposure of ${unit##*/}: $level (maximum $max_exposure)"
  [ $rc -eq 0 ] && awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l <= m) }'
}
for unit in "${UNITS[@]}"; do
  check "systemd-analyze security ${unit##*/}" security "$unit"
done

# --- Prometheus ------------------------------------------------------------
check "promtool check rules" promtool check rules "$RULES"
check "promtool test rules" promtool test rules "$RULE_TESTS"
check "promtool check config (compose Prometheus)" promtool check config "$PROM_CONFIG"

# --- Grafana ---------------------------------------------------------------
check "dashboard is JSON (python3 -m json.tool)" \
  sh -c "python3 -m json.tool '$DASHBOARD' >/dev/null && echo '$DASHBOARD: valid JSON'"

dashboard_shape() {
  python3 - "$DASHBOARD" "$scratch/dashboard-rules.yml" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
problems = []
for key in ("uid", "title", "panels", "schemaVersion"):
    if key not in d:
        problems.append(f"no {key}")
names = [v.get("name") for v in d.get("templating", {}).get("list", [])]
if "datasource" not in names:
    problems.append("no `datasource` template variable")
exprs = []
for p in d.get("panels", []):
    g = p.get("gridPos", {})
    if not all(k in g for k in ("h", "w", "x", "y")):
        problems.append(f"panel {p.get('id')}: gridPos incomplete")
    if p.get("type") == "row":
        continue
    if not p.get("targets"):
        problems.append(f"panel {p.get('id')} {p.get('title')!r}: no targets")
    refs = [t.get("refId") for t in p.get("targets", [])]
    if len(set(refs)) != len(refs) or None in refs:
        problems.append(f"panel {p.get('id')}: refIds missing or repeated")
    for t in p.get("targets", []):
        if not t.get("expr"):
            problems.append(f"panel {p.get('id')}: a target without expr")
        else:
            exprs.append(t["expr"])
ids = [p.get("id") for p in d.get("panels", [])]
if len(set(ids)) != len(ids):
    problems.append("panel ids repeat")
# Grafana's range variables become a fixed range so promtool can parse them.
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        f.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e)}\n")
for p in problems:
    print(p)
print(f"{len(d.get('panels', []))} panels, {len(exprs)} queries")
sys.exit(1 if problems else 0)
EOF
}
check "dashboard has what an import needs" dashboard_shape
check "dashboard queries parse (promtool)" promtool check rules "$scratch/dashboard-rules.yml"

# --- Compose ---------------------------------------------------------------
check "docker-compose config -q" \
  sh -c "docker-compose -f '$COMPOSE' config -q && echo '$COMPOSE: valid'"

yaml_parses() {
  python3 -c 'import yaml' 2>/dev/null || { echo "python3-yaml (Debian package python3-yaml) is missing"; return 1; }
  python3 - deploy/compose/otel-collector.yaml deploy/compose/grafana/provisioning/*/*.yml <<'EOF'
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        doc = yaml.safe_load(open(path))
        assert isinstance(doc, dict), "not a mapping"
        print(f"{path}: parses")
    except Exception as e:
        print(f"{path}: {e}"); bad += 1
c = yaml.safe_load(open(sys.argv[1]))
for name, p in c["service"]["pipelines"].items():
    for kind in ("receivers", "processors", "exporters"):
        for comp in p.get(kind, []):
            if comp not in c.get(kind, {}):
                print(f"otel pipeline {name}: {kind[:-1]} {comp} is not defined"); bad += 1
sys.exit(1 if bad else 0)
EOF
}
check "collector and Grafana provisioning YAML" yaml_parses

# The compose configs against the aggregator's own parser (deny_unknown_fields)
# and TLS checks, when a binary is already built: this never builds one.
# The newer of a release and a debug build (a stale one would not know new keys).
agg_bin=""; certs_bin=""
for p in target/release target/debug; do
  [ -x "$p/ferrule-aggregator" ] && { [ -z "$agg_bin" ] || [ "$p/ferrule-aggregator" -nt "$agg_bin" ]; } \
    && agg_bin="$p/ferrule-aggregator"
  [ -x "$p/ferrule-certs" ] && { [ -z "$certs_bin" ] || [ "$p/ferrule-certs" -nt "$certs_bin" ]; } \
    && certs_bin="$p/ferrule-certs"
done
compose_configs() {
  local pki="$scratch/pki" n rc=0
  "$certs_bin" init --dir "$pki" >/dev/null 2>&1 || { echo "ferrule-certs init failed"; return 1; }
  for n in 1 2; do
    "$certs_bin" issue-server --dir "$pki" --name "aggregator-$n" >/dev/null 2>&1 \
      || { echo "ferrule-certs issue-server failed"; return 1; }
    FERRULE_TLS__CERT="$pki/server-aggregator-$n.crt" FERRULE_TLS__KEY="$pki/server-aggregator-$n.key" \
      FERRULE_TLS__CLIENT_CA="$pki/ca-bundle.crt" FERRULE_TLS__CRL="$pki/crl.pem" \
      "$agg_bin" check-config --config "deploy/compose/aggregator-$n.toml" 2>&1 \
      | grep -v 'overrides the file' || true
    FERRULE_TLS__CERT="$pki/server-aggregator-$n.crt" FERRULE_TLS__KEY="$pki/server-aggregator-$n.key" \
      FERRULE_TLS__CLIENT_CA="$pki/ca-bundle.crt" FERRULE_TLS__CRL="$pki/crl.pem" \
      "$agg_bin" check-config --config "deploy/compose/aggregator-$n.toml" >/dev/null 2>&1 || rc=1
  done
  return $rc
}
if [ -n "$agg_bin" ] && [ -n "$certs_bin" ]; then
  check "ferrule-aggregator check-config (compose configs, $agg_bin)" compose_configs
else
  step "ferrule-aggregator check-config (compose configs)"
  echo "SKIP  no built ferrule-aggregator and ferrule-certs under target/ (this script builds nothing)"
fi

# --- metric names ----------------------------------------------------------
# Every ferrule metric the rules and the dashboard reference, for a test that
# scrapes running processes and checks each is exported.
step "metric names used by $RULES and $DASHBOARD"
# Taken from the queries only (rule `expr`s, dashboard target `expr`s), not
# from comments or descriptions.
names="$(python3 - "$RULES" "$DASHBOARD" <<'EOF'
import json, re, sys
exprs = []
try:
    import yaml
    for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
        exprs += [r["expr"] for r in g["rules"]]
except ImportError:
    # Without python3-yaml: the rule file's expr blocks, read by indentation.
    grab, ind = False, 0
    for line in open(sys.argv[1]).read().splitlines():
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if m:
            grab, ind = True, len(m.group(1)); exprs.append(m.group(2)); continue
        if grab and (not line.strip() or len(line) - len(line.lstrip()) > ind):
            exprs.append(line); continue
        grab = False
for p in json.load(open(sys.argv[2]))["panels"]:
    exprs += [t["expr"] for t in p.get("targets", []) if "expr" in t]
names = sorted({n for e in exprs for n in re.findall(r"\bferrule_(?:agent|aggregator)_[a-z0-9_]+", e)})
print("\n".join(names))
EOF
)" || die "could not read the metric names"
printf '%s\n' "$names"
echo "($(printf '%s\n' "$names" | wc -l) names)"
if [ -n "$names_out" ]; then
  printf '%s\n' "$names" > "$names_out" || die "cannot write $names_out"
  echo "written to $names_out"
fi

step "summary"
printf 'PASS  %s\n' "${passed[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAIL  %s\n' "${failed[@]}"
  exit 1
fi
echo "all ${#passed[@]} checks passed"
