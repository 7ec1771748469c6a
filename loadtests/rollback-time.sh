#!/usr/bin/env bash
# rollback-time.sh — how long a bad release serves clients before switchyard rolls it back.
#
# For every setting window_s ∈ WINDOWS × green error share ∈ SHARES, it starts
# `switchyard run` with service `web`: blue (healthy) and green (bad) are both served by
# examples/rollback_time.rs itself, green answering 500 to SHARE % of requests, and
#   slo = { max_error_rate = MAX_ERROR_RATE, window_s = W, min_requests = MIN_REQUESTS, watch_s = WATCH_S }
# The tool puts paced keep-alive load on the proxy (RATE req/s over CONNS connections) and,
# REPS times, switches to green with skip_smoke and measures, from what the clients saw, the
# time from the first bad response to the first request after which every response came from
# blue, and the number of failed requests. The end: a table, and beside it what Argo Rollouts
# and Flagger give with their documented/typical analysis settings (arithmetic on the
# configuration, not measurements).
#
# Usage: bash loadtests/rollback-time.sh
# Env (defaults in brackets):
#   WINDOWS ["5 10 30"]   slo.window_s values
#   SHARES ["100 20"]     green's share of 500s, percent
#   REPS [5]              repetitions per setting
#   RATE [200]            total client request rate (req/s)
#   CONNS [8]             keep-alive client connections
#   MAX_ERROR_RATE [0.05] MIN_REQUESTS [20] WATCH_S [300]   the rest of the SLO
#   WARM_MS [1000]        load on blue before each switch
#   TAIL_MS [500]         load after the rollback showed in /v1/status
#   TIMEOUT_S [15]        give up on a repetition without a rollback after this long
#   THREADS [2]           switchyard [server] threads
#   SW_BIN [<repo>/target/release/switchyard]
#   TOOL_BIN [<repo>/target/release/examples/rollback_time]
#   SW_LOG [warn]         SWITCHYARD_LOG (the rollback itself is logged at error level)
#   READY_TIMEOUT [30]    seconds to wait for switchyard
#   KEEP_TMP [0]          1 = keep the temp dir (configs, state, logs, raw output)
set -euo pipefail

WINDOWS=${WINDOWS:-5 10 30}
SHARES=${SHARES:-100 20}
REPS=${REPS:-5}
RATE=${RATE:-200}
CONNS=${CONNS:-8}
MAX_ERROR_RATE=${MAX_ERROR_RATE:-0.05}
MIN_REQUESTS=${MIN_REQUESTS:-20}
WATCH_S=${WATCH_S:-300}
WARM_MS=${WARM_MS:-1000}
TAIL_MS=${TAIL_MS:-500}
TIMEOUT_S=${TIMEOUT_S:-15}
THREADS=${THREADS:-2}
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
SW_LOG=${SW_LOG:-warn}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}
TOOL_BIN=${TOOL_BIN:-$REPO/target/release/examples/rollback_time}

for v in REPS RATE CONNS MIN_REQUESTS WATCH_S WARM_MS TAIL_MS TIMEOUT_S THREADS READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
for w in $WINDOWS; do [[ $w =~ ^[0-9]+$ ]] && ((w >= 1 && w <= 600)) || { echo "WINDOWS: '$w' is not 1..600" >&2; exit 2; }; done
for s in $SHARES; do [[ $s =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "SHARES: '$s' is not a percentage" >&2; exit 2; }; done
[[ $MAX_ERROR_RATE =~ ^[0-9]*[.]?[0-9]+$ ]] || { echo "MAX_ERROR_RATE must be a number (got '$MAX_ERROR_RATE')" >&2; exit 2; }
((REPS >= 1 && RATE >= 1 && CONNS >= 1 && THREADS >= 1)) || { echo "REPS, RATE, CONNS, THREADS must be >= 1" >&2; exit 2; }
((REPS <= 50 && RATE <= 100000)) || { echo "REPS <= 50 and RATE <= 100000, please" >&2; exit 2; }

log() { printf '[rollback-time] %s\n' "$*" >&2; }
die() { printf '[rollback-time] ERROR: %s\n' "$*" >&2; exit 1; }

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
  [[ -x $SW_BIN && -x $TOOL_BIN ]] || need=1
  # the tool is part of this scenario: rebuild it when its source changed
  [[ -x $TOOL_BIN && $REPO/examples/rollback_time.rs -nt $TOOL_BIN ]] && need=1
  ((need)) || return 0
  command -v cargo >/dev/null 2>&1 || die "binaries missing and cargo not found"
  log "building (cargo build --release --bins --examples; waits if another build holds the cargo lock) …"
  (cd "$REPO" && timeout "${BUILD_TIMEOUT:-3600}" cargo build --release --bins --examples) ||
    die "cargo build --release --bins --examples failed"
  [[ -x $SW_BIN && -x $TOOL_BIN ]] || die "binaries still missing after the build"
}

ensure_tools
ensure_binaries

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rollback-time.XXXXXX")
PIDS=() # switchyard processes
TOOL_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  if [[ -n $TOOL_PID ]]; then
    kill -TERM "$TOOL_PID" 2>/dev/null || true
    wait "$TOOL_PID" 2>/dev/null || true
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

# ---------------------------------------------------------------- one setting
# start_switchyard DIR WINDOW: config + start + wait for /health and the token.
# Returns 1 if a port was taken meanwhile (the caller retries with others).
start_switchyard() {
  local dir=$1 window=$2
  PROXY_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  BLUE_PORT=$(free_port)
  GREEN_PORT=$(free_port)
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/sw.toml" <<EOF
# rollback-time: blue and green are served by examples/rollback_time (blue healthy, green bad).
[listen]
http  = "127.0.0.1:$PROXY_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[server]
threads = $THREADS
grace_s = 1

[state]
dir = "state"

[[route]]
host = "localhost"
service = "web"

[service.web]
blue  = ["127.0.0.1:$BLUE_PORT"]
green = ["127.0.0.1:$GREEN_PORT"]
slo = { max_error_rate = $MAX_ERROR_RATE, window_s = $window, min_requests = $MIN_REQUESTS, watch_s = $WATCH_S }
EOF
  echo "+ (cd $dir && SWITCHYARD_LOG=$SW_LOG $SW_BIN run --config $dir/sw.toml)"
  (cd "$dir" && SWITCHYARD_LOG=$SW_LOG exec "$SW_BIN" run --config "$dir/sw.toml") >"$dir/switchyard.log" 2>&1 &
  SW_PID=$!
  PIDS+=("$SW_PID")
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$SW_PID" 2>/dev/null; then
      grep -q 'Address already in use' "$dir/switchyard.log" && { log "a port was taken meanwhile; retrying with others"; return 1; }
      tail -n 30 "$dir/switchyard.log" >&2 || true
      die "switchyard exited during start"
    fi
    [[ -s $dir/state/admin.token ]] && curl -sf -m 1 -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health" && return 0
    sleep 0.1
  done
  tail -n 30 "$dir/switchyard.log" >&2 || true
  die "switchyard did not answer on its admin port within ${READY_TIMEOUT}s"
}

stop_switchyard() { # SIGTERM, bounded wait, then KILL
  kill -TERM "$SW_PID" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$SW_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SW_PID" 2>/dev/null || true
  wait "$SW_PID" 2>/dev/null || true
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
failed_settings=0
n_settings=$(($(wc -w <<<"$WINDOWS") * $(wc -w <<<"$SHARES")))
# per repetition: warm-up + detection + tail + 1.2 s pause; plus start/stop per setting
est=$((n_settings * (REPS * (WARM_MS + TAIL_MS + 1700) / 1000 + 3)))

echo "== rollback-time: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== switchyard $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no-commit')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'), built $(date -u -r "$SW_BIN" +%Y-%m-%dT%H:%MZ)"
echo "== windows [$WINDOWS] s x green error share [$SHARES] %, $REPS rep(s) each, $RATE req/s over $CONNS connections, max_error_rate $MAX_ERROR_RATE, min_requests $MIN_REQUESTS (about ${est}s)"

for window in $WINDOWS; do
  for share in $SHARES; do
    dir=$TMP/w$window-s$share
    started=0
    for _ in 1 2 3; do
      if start_switchyard "$dir" "$window"; then
        started=1
        break
      fi
    done
    ((started)) || die "could not start switchyard on free ports (3 attempts)"
    cmd=("$TOOL_BIN" --proxy "127.0.0.1:$PROXY_PORT" --host localhost --admin "http://127.0.0.1:$ADMIN_PORT"
      --token-file "$dir/state/admin.token" --blue "127.0.0.1:$BLUE_PORT" --green "127.0.0.1:$GREEN_PORT"
      --error-pct "$share" --reps "$REPS" --rate "$RATE" --conns "$CONNS" --warm-ms "$WARM_MS" --tail-ms "$TAIL_MS"
      --timeout-s "$TIMEOUT_S" --service web --window-s "$window" --results "$RESULTS")
    echo "+ ${cmd[*]}"
    budget=$((REPS * (WARM_MS + TAIL_MS + 1200 + TIMEOUT_S * 1000) / 1000 + 30))
    rc=0
    timeout "$budget" "${cmd[@]}" >"$dir/tool.out" 2>&1 &
    TOOL_PID=$!
    wait "$TOOL_PID" || rc=$?
    TOOL_PID=
    cat "$dir/tool.out"
    # switchyard's log, colors stripped: the rollbacks are logged at error level ("SLO breached");
    # pingora's "failed to acquire reusable stream" is a benign race in its upstream pool
    # (cloudflare/pingora#201: the request opens a new upstream connection instead). Anything
    # else is shown.
    sed 's/\x1b\[[0-9;]*m//g' "$dir/switchyard.log" >"$dir/switchyard.plain.log"
    n_breach=$(grep -c 'SLO breached' "$dir/switchyard.plain.log" || true)
    n_reuse=$(grep -c 'failed to acquire reusable stream' "$dir/switchyard.plain.log" || true)
    echo "   switchyard log: $n_breach x 'SLO breached … rolling back', $n_reuse x 'failed to acquire reusable stream' (pingora#201, benign)"
    grep -E ' (ERROR|WARN) ' "$dir/switchyard.plain.log" | grep -v -e 'failed to acquire reusable stream' -e 'SLO breached' |
      head -n 5 | sed 's/^/   switchyard log: /' || true
    if ((rc != 0)); then
      failed_settings=$((failed_settings + 1))
      log "window_s $window, share $share %: the tool exited $rc"
      tail -n 20 "$dir/switchyard.log" >&2 || true
      KEEP_TMP=1
    fi
    stop_switchyard
  done
done

# ---------------------------------------------------------------- table
echo
echo "== switchyard, measured: first bad response a client saw → traffic back on blue"
echo "   (RATE $RATE req/s, SLO max_error_rate $MAX_ERROR_RATE, min_requests $MIN_REQUESTS; judged every 250 ms)"
printf '%-9s %-12s %-11s %-28s %-24s %s\n' "window_s" "green 5xx %" "rolled back" "rollback ms (min/med/max)" "failed reqs (min/med/max)" "green live ms (med)"
while IFS=$'\t' read -r w s reps ok rmin rmed rmax fmin fmed fmax lmed; do
  printf '%-9s %-12s %-11s %-28s %-24s %s\n' "$w" "$s" "$ok/$reps" "$rmin / $rmed / $rmax" "$fmin / $fmed / $fmax" "$lmed"
done <"$RESULTS"
echo
echo "== for comparison — Argo Rollouts and Flagger, from their documented configuration (arithmetic, NOT measured here)"
echo "   Both judge a release from Prometheus queries on a schedule: a rollback needs several failed"
echo "   measurements, and each sees the errors only after a scrape (typically every 15-30 s, not counted below)."
echo "   Failed requests = RATE x time x share, at this run's RATE ($RATE req/s)."
printf '   %-14s %-52s %-38s %s\n' "tool" "setting" "time to rollback" "failed requests at 100 % / 20 %"
cmp_row() { # tool setting formula seconds
  local f100 f20
  f100=$(awk -v r="$RATE" -v t="$4" 'BEGIN { printf "%d", r * t }')
  f20=$(awk -v r="$RATE" -v t="$4" 'BEGIN { printf "%d", r * t * 0.2 }')
  printf '   %-14s %-52s %-38s %s\n' "$1" "$2" "$3" "~$f100 / ~$f20"
}
cmp_row "Argo Rollouts" "AnalysisTemplate interval 1m, failureLimit 3" "interval x (failureLimit+1) = ~4 min" 240
cmp_row "Argo Rollouts" "the docs' example: interval 5m, failureLimit 3" "~20 min" 1200
cmp_row "Flagger" "analysis interval 1m, threshold 5 (docs' examples)" "interval x threshold = ~5 min" 300
cmp_row "Flagger" "interval 10s, threshold 10 (tutorials)" "~100 s" 100
cmp_row "Flagger" "interval 10s, threshold 1 (about the fastest)" "~10 s" 10
echo "   (Argo: failureLimit = failed measurements tolerated before the run fails, default 0. Flagger:"
echo "   threshold = failed checks before rollback; interval defaults to 60 s.)"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
((failed_settings == 0)) || die "$failed_settings setting(s) had a repetition without rollback or an error; see above and $TMP"
