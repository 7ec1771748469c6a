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

LIB_TAG=rollback-time
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$LIB_REPO
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}
TOOL_BIN=${TOOL_BIN:-$REPO/target/release/examples/rollback_time}

require_uint REPS RATE CONNS MIN_REQUESTS WATCH_S WARM_MS TAIL_MS TIMEOUT_S THREADS READY_TIMEOUT
for w in $WINDOWS; do [[ $w =~ ^[0-9]+$ ]] && ((w >= 1 && w <= 600)) || { echo "WINDOWS: '$w' is not 1..600" >&2; exit 2; }; done
for s in $SHARES; do [[ $s =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "SHARES: '$s' is not a percentage" >&2; exit 2; }; done
[[ $MAX_ERROR_RATE =~ ^[0-9]*[.]?[0-9]+$ ]] || { echo "MAX_ERROR_RATE must be a number (got '$MAX_ERROR_RATE')" >&2; exit 2; }
((REPS >= 1 && RATE >= 1 && CONNS >= 1 && THREADS >= 1)) || { echo "REPS, RATE, CONNS, THREADS must be >= 1" >&2; exit 2; }
((REPS <= 50 && RATE <= 100000)) || { echo "REPS <= 50 and RATE <= 100000, please" >&2; exit 2; }

# ---------------------------------------------------------------- tools + binaries
ensure_pkgs curl:curl
ensure_built "$SW_BIN" --bins --examples
# the tool is part of this scenario: rebuild it when its source changed
ensure_fresh "$REPO/examples/rollback_time.rs" "$TOOL_BIN" --bins --examples

# ---------------------------------------------------------------- temp dir + cleanup
lib_init rollback-time

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
  start_bg "$dir/switchyard.log" env -C "$dir" SWITCHYARD_LOG="$SW_LOG" "$SW_BIN" run --config "$dir/sw.toml"
  SW_PID=$STARTED_PID
  wait_until switchyard "$SW_PID" "$dir/switchyard.log" "did not answer on its admin port" sw_ready "$dir" ||
    { forget_pids "$SW_PID"; return 1; }
}

sw_ready() { # DIR: the admin token is written and the admin /health answers 2xx
  [[ -s $1/state/admin.token ]] && curl -sf -m 1 -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health"
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
failed_settings=0
n_settings=$(($(wc -w <<<"$WINDOWS") * $(wc -w <<<"$SHARES")))
# per repetition: warm-up + detection + tail + 1.2 s pause; plus start/stop per setting
est=$((n_settings * (REPS * (WARM_MS + TAIL_MS + 1700) / 1000 + 3)))

echo "== rollback-time: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), load average $(loadavg)"
echo "== switchyard $(git_rev), built $(date -u -r "$SW_BIN" +%Y-%m-%dT%H:%MZ)"
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
    run_timed "$dir/tool.out" "$budget" "${cmd[@]}"
    rc=$RUN_RC
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
    stop_started "$SW_PID"
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
echo "== load average at the end: $(loadavg)"
((failed_settings == 0)) || die "$failed_settings setting(s) had a repetition without rollback or an error; see above and $TMP"
