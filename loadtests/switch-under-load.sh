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

LIB_TAG=switch-load
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$LIB_REPO
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}
RC_BIN=${RC_BIN:-$REPO/target/release/releasectl}
LOAD_BIN=${LOAD_BIN:-$REPO/target/release/examples/switch_load}

require_uint CONNS SWITCHES INTERVAL_MS WARMUP_MS TAIL_MS THREADS READY_TIMEOUT
((CONNS >= 1 && INTERVAL_MS >= 1 && THREADS >= 1)) || { echo "CONNS, INTERVAL_MS, THREADS must be >= 1" >&2; exit 2; }
((CONNS <= 4096 && SWITCHES <= 1000)) || { echo "CONNS <= 4096 and SWITCHES <= 1000, please" >&2; exit 2; }
case "$SWITCH_VIA" in api | releasectl) ;; *) echo "SWITCH_VIA must be api or releasectl (got '$SWITCH_VIA')" >&2; exit 2 ;; esac

# ---------------------------------------------------------------- tools + binaries
ensure_pkgs curl:curl
ensure_built "$SW_BIN" --bins --examples
ensure_built "$RC_BIN" --bins --examples
# the load tool is part of this scenario: rebuild it when its source changed
ensure_fresh "$REPO/examples/switch_load.rs" "$LOAD_BIN" --bins --examples

# ---------------------------------------------------------------- temp dir + cleanup
lib_init switch-load

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
  start_bg "$SW_LOGF" env -C "$TMP" SWITCHYARD_LOG="$SW_LOG" "$SW_BIN" demo --config "$TMP/sw.toml"
  SW_PID=$STARTED_PID
  wait_until switchyard "$SW_PID" "$SW_LOGF" "(blue answering, both colors healthy) not ready" sw_ready ||
    { forget_pids "$SW_PID"; return 1; }
}

# blue answers through the proxy, and both colors' backends pass their health checks (needed
# before the smoke-checked switches)
sw_ready() {
  local status color
  [[ -s $TOKEN_FILE ]] && curl -sf -m 1 -o /dev/null "$ADMIN/health" || return 1
  color=$(curl -s -m 1 -D - -o /dev/null "http://127.0.0.1:$PROXY_PORT/" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "x-backend-color" { print $2 }' || true)
  [[ $color == blue ]] || return 1
  status=$(curl -s -m 1 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "$ADMIN/v1/status" || true)
  (($(grep -o '"healthy":true' <<<"$status" | wc -l) >= 2))
}

echo "== switch-under-load: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), load average $(loadavg)"
echo "== switchyard $(git_rev), built $(date -u -r "$SW_BIN" +%Y-%m-%dT%H:%MZ)"
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
run_timed "$TMP/switch_load.out" "$budget" "${cmd[@]}"
rc=$RUN_RC
cat "$TMP/switch_load.out"
echo "== load average at the end: $(loadavg)"
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
