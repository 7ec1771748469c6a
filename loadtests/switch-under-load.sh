#!/usr/bin/env bash
# switch-under-load.sh — blue/green switches back and forth under steady keep-alive load.
#
# Starts `switchyard demo --config <tmp>/sw.toml` (the proxy plus its built-in blue and green
# backends, every response carrying `x-backend-color`), then runs examples/switch_load.rs:
# CONNS keep-alive connections send requests as fast as the proxy answers for the whole run
# while the tool switches SWITCHES times (green, blue, green, …), one every INTERVAL_MS,
# through POST /v1/switch (smoke checks included) or `releasectl switch` (SWITCH_VIA).
# It reports total requests, failures (every non-2xx, connection error or reset: must be 0),
# req/s, the switch call latency, and per switch: how long after the call returned a newly
# sent request could still reach the old color (must be 0), how many requests were in flight
# on the old color at that moment, and when the last of them finished.
#
# Usage: bash loadtests/switch-under-load.sh
# Env (defaults in brackets):
#   CONNS [32]          concurrent keep-alive client connections
#   SWITCHES [20]       number of switches
#   INTERVAL_MS [1000]  time between the starts of two switches
#   WARMUP_MS [2000]    load before the first switch
#   TAIL_MS [2000]      load after the last switch
#   SWITCH_VIA [api]    "api" (POST /v1/switch from the tool) or "releasectl" (runs the binary)
#   THREADS [2]         switchyard [server] threads
#   SW_BIN [<repo>/target/release/switchyard]   RC_BIN [<repo>/target/release/releasectl]
#   LOAD_BIN [<repo>/target/release/examples/switch_load]
#   SW_LOG [warn]       SWITCHYARD_LOG for switchyard
#   READY_TIMEOUT [30]  seconds to wait for switchyard and its backends
#   KEEP_TMP [0]        1 = keep the temp dir (config, state, logs, raw output)
set -euo pipefail

CONNS=${CONNS:-32}
SWITCHES=${SWITCHES:-20}
INTERVAL_MS=${INTERVAL_MS:-1000}
WARMUP_MS=${WARMUP_MS:-2000}
TAIL_MS=${TAIL_MS:-2000}
SWITCH_VIA=${SWITCH_VIA:-api}
THREADS=${THREADS:-2}
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
SW_LOG=${SW_LOG:-warn}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}
RC_BIN=${RC_BIN:-$REPO/target/release/releasectl}
LOAD_BIN=${LOAD_BIN:-$REPO/target/release/examples/switch_load}

for v in CONNS SWITCHES INTERVAL_MS WARMUP_MS TAIL_MS THREADS READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
((CONNS >= 1 && INTERVAL_MS >= 1 && THREADS >= 1)) || { echo "CONNS, INTERVAL_MS, THREADS must be >= 1" >&2; exit 2; }
((CONNS <= 4096 && SWITCHES <= 1000)) || { echo "CONNS <= 4096 and SWITCHES <= 1000, please" >&2; exit 2; }
case "$SWITCH_VIA" in api | releasectl) ;; *) echo "SWITCH_VIA must be api or releasectl (got '$SWITCH_VIA')" >&2; exit 2 ;; esac

log() { printf '[switch-load] %s\n' "$*" >&2; }
die() { printf '[switch-load] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools + binaries
ensure_tools() {
  local missing=()
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  ((${#missing[@]} == 0)) && return 0
  log "installing: ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y "${missing[@]}" ||
    { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "${missing[@]}"; } ||
    die "apt-get install ${missing[*]} failed"
}

ensure_binaries() {
  local need=0
  [[ -x $SW_BIN && -x $RC_BIN && -x $LOAD_BIN ]] || need=1
  # the load tool is part of this scenario: rebuild it when its source changed
  [[ -x $LOAD_BIN && $REPO/examples/switch_load.rs -nt $LOAD_BIN ]] && need=1
  ((need)) || return 0
  command -v cargo >/dev/null 2>&1 || die "binaries missing and cargo not found"
  log "building (cargo build --release --bins --examples; waits if another build holds the cargo lock) …"
  (cd "$REPO" && timeout "${BUILD_TIMEOUT:-3600}" cargo build --release --bins --examples) ||
    die "cargo build --release --bins --examples failed"
  [[ -x $SW_BIN && -x $RC_BIN && -x $LOAD_BIN ]] || die "binaries still missing after the build"
}

ensure_tools
ensure_binaries

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/switch-load.XXXXXX")
PIDS=()
LOAD_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  if [[ -n $LOAD_PID ]]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true; done
  if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
    log "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Ports below the kernel's ephemeral range, so that no outgoing connection (of this test or
# of anything else running on the machine) can be holding the port we pick.
EPH_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((EPH_LOW > 12000)) || EPH_LOW=32768
declare -A USED_PORTS=()
free_port() { # a loopback port nobody listens on (random in 10000..EPH_LOW-1)
  local p
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % (EPH_LOW - 10000)))
    [[ -n ${USED_PORTS[$p]:-} ]] && continue
    if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS[$p]=1
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# ---------------------------------------------------------------- switchyard demo
SW_LOGF=$TMP/switchyard.log
write_config() {
  cat >"$TMP/sw.toml" <<EOF
# switch-under-load: the demo's service on free loopback ports, plain HTTP only.
[listen]
http  = "127.0.0.1:$PROXY_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[server]
threads = $THREADS
grace_s = 2

[state]
dir = "state"

[[route]]
host = "localhost"
service = "web"

[[route]]
host = "127.0.0.1"
service = "web"

[service.web]
# switchyard demo starts its built-in backends on these addresses
blue  = ["127.0.0.1:$BLUE_PORT"]
green = ["127.0.0.1:$GREEN_PORT"]
health_check = { path = "/health", interval_ms = 1000 }
smoke = [{ path = "/health", expect_status = 200 }]
EOF
}

# Start the demo and wait until blue answers through the proxy and both colors are healthy.
# Returns 1 if it could not bind its ports (the caller retries with others).
start_switchyard() {
  PROXY_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  BLUE_PORT=$(free_port)
  GREEN_PORT=$(free_port)
  ADMIN=http://127.0.0.1:$ADMIN_PORT
  rm -rf "$TMP/state"
  write_config
  echo "+ (cd $TMP && SWITCHYARD_LOG=$SW_LOG $SW_BIN demo --config $TMP/sw.toml)"
  (cd "$TMP" && SWITCHYARD_LOG=$SW_LOG exec "$SW_BIN" demo --config "$TMP/sw.toml") >"$SW_LOGF" 2>&1 &
  SW_PID=$!
  PIDS+=("$SW_PID")
  local deadline=$((SECONDS + READY_TIMEOUT)) status color
  while ((SECONDS < deadline)); do
    if ! kill -0 "$SW_PID" 2>/dev/null; then
      grep -q 'Address already in use' "$SW_LOGF" && { log "a port was taken meanwhile; retrying with others"; return 1; }
      tail -n 30 "$SW_LOGF" >&2 || true
      die "switchyard exited during start"
    fi
    if [[ -s $TOKEN_FILE ]] && curl -sf -m 1 -o /dev/null "$ADMIN/health"; then
      color=$(curl -s -m 1 -D - -o /dev/null "http://127.0.0.1:$PROXY_PORT/" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "x-backend-color" { print $2 }' || true)
      if [[ $color == blue ]]; then
        # both colors' backends must pass their health checks before the smoke-checked switches
        status=$(curl -s -m 1 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "$ADMIN/v1/status" || true)
        (($(grep -o '"healthy":true' <<<"$status" | wc -l) >= 2)) && return 0
      fi
    fi
    sleep 0.1
  done
  tail -n 30 "$SW_LOGF" >&2 || true
  die "switchyard (blue answering, both colors healthy) not ready within ${READY_TIMEOUT}s"
}

echo "== switch-under-load: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== switchyard $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no-commit')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'), built $(date -u -r "$SW_BIN" +%Y-%m-%dT%H:%MZ)"
TOKEN_FILE=$TMP/state/admin.token
started=0
for _ in 1 2 3; do
  if start_switchyard; then
    started=1
    break
  fi
done
((started)) || die "could not start switchyard on free ports (3 attempts)"
log "switchyard pid $SW_PID: proxy 127.0.0.1:$PROXY_PORT, admin $ADMIN, demo backends blue :$BLUE_PORT green :$GREEN_PORT"

# ---------------------------------------------------------------- load + switches
cmd=("$LOAD_BIN" --proxy "127.0.0.1:$PROXY_PORT" --host localhost --admin "$ADMIN" --token-file "$TOKEN_FILE"
  --conns "$CONNS" --switches "$SWITCHES" --interval-ms "$INTERVAL_MS" --warmup-ms "$WARMUP_MS" --tail-ms "$TAIL_MS"
  --service web --verbose)
[[ $SWITCH_VIA == releasectl ]] && cmd+=(--releasectl "$RC_BIN")
echo "+ ${cmd[*]}"
budget=$(((WARMUP_MS + SWITCHES * INTERVAL_MS + TAIL_MS) / 1000 + 60))
rc=0
timeout "$budget" "${cmd[@]}" >"$TMP/switch_load.out" 2>&1 &
LOAD_PID=$!
wait "$LOAD_PID" || rc=$?
LOAD_PID=
cat "$TMP/switch_load.out"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
kill -0 "$SW_PID" 2>/dev/null || { tail -n 30 "$SW_LOGF" >&2 || true; die "switchyard died during the run"; }
# switchyard's own warnings and errors (log colors stripped); pingora's "failed to acquire
# reusable stream" is a benign race in its upstream pool (cloudflare/pingora#201): the request
# just opens a new upstream connection. Counted, not shown.
sed 's/\x1b\[[0-9;]*m//g' "$SW_LOGF" >"$TMP/switchyard.plain.log"
n_reuse=$(grep -c 'failed to acquire reusable stream' "$TMP/switchyard.plain.log" || true)
((n_reuse == 0)) || echo "== switchyard log: $n_reuse x 'failed to acquire reusable stream' (pingora upstream pool race, cloudflare/pingora#201; no request failed because of it)"
if grep -E ' (ERROR|WARN) ' "$TMP/switchyard.plain.log" | grep -vq 'failed to acquire reusable stream'; then
  log "switchyard logged warnings/errors:"
  grep -E ' (ERROR|WARN) ' "$TMP/switchyard.plain.log" | grep -v 'failed to acquire reusable stream' | head -n 10 >&2
fi
case $rc in
  0) echo "== OK: zero failed requests, no request sent after a switch returned reached the old color" ;;
  124) die "the load tool did not finish within ${budget}s" ;;
  *) KEEP_TMP=1; die "the run found failures (exit $rc); see above and $TMP" ;;
esac
