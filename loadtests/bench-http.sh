#!/usr/bin/env bash
# bench-http.sh — switchyard vs nginx as HTTP/1.1 reverse proxies, side by side.
#
# Both proxies sit in front of the SAME upstream (an nginx answering `200 ok`), run with
# the same worker count, and are driven by wrk in interleaved rounds (sw, nginx, sw, …) so
# that drift on the machine (thermal, noisy neighbours) hits both alike. Per round and per
# proxy: req/s, p50, p99 and proxy CPU time per request (utime+stime from /proc).
#
# Usage: bash loadtests/bench-http.sh
# Env (defaults in brackets):
#   ROUNDS [5]        rounds per proxy
#   DURATION [10]     seconds per round
#   CONNS [32]        wrk connections (-c)
#   THREADS [1]       wrk threads (-t)
#   WORKERS [1]       nginx worker_processes = switchyard [server] threads
#   UPSTREAM_WORKERS [1]  worker_processes of the upstream nginx
#   WARMUP [2]        seconds of unmeasured load per proxy before the rounds
#   ONLY [both]       "nginx" or "switchyard" to run one proxy only
#   SW_BIN [<repo>/target/release/switchyard]
#   SW_LOG [warn]     SWITCHYARD_LOG (tracing filter) for switchyard (nginx runs with access_log off)
#   READY_TIMEOUT [30]  seconds to wait for a process to accept requests
#   KEEP_TMP [0]      1 = keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
WARMUP=${WARMUP:-2}
ONLY=${ONLY:-both}
SW_LOG=${SW_LOG:-warn}
HOST_HDR=bench.local

LIB_TAG=bench
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # log, die, ensure_*, lib_init, tree_ticks, …
REPO=$LIB_REPO
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}

case "$ONLY" in
  both) PROXIES=(switchyard nginx) ;;
  nginx | switchyard) PROXIES=("$ONLY") ;;
  *) echo "ONLY must be nginx, switchyard or unset (got '$ONLY')" >&2; exit 2 ;;
esac
require_uint ROUNDS DURATION CONNS THREADS WORKERS UPSTREAM_WORKERS WARMUP READY_TIMEOUT
((ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && THREADS >= 1 && WORKERS >= 1 && UPSTREAM_WORKERS >= 1)) ||
  { echo "ROUNDS, DURATION, CONNS, THREADS, WORKERS, UPSTREAM_WORKERS must be >= 1" >&2; exit 2; }

ensure_pkgs nginx:nginx wrk:wrk curl:curl
[[ " ${PROXIES[*]} " == *" switchyard "* ]] && ensure_built "$SW_BIN" --bin switchyard

lib_init bench-http # temp dir $TMP (removed at exit unless KEEP_TMP=1 or failure); stops what we start

# ---------------------------------------------------------------- processes
UP_PORT=$(free_port)
NG_PORT=$(free_port)
SW_PORT=$(free_port)
SW_ADMIN=$(free_port)

# upstream: its own nginx, answers 200 "ok\n", keep-alive
UP_DIR=$TMP/upstream
mkdir -p "$UP_DIR"
{
  nginx_common "$UP_DIR"
  echo "worker_processes $UPSTREAM_WORKERS;"
  echo "http {"
  nginx_http_common "$UP_DIR"
  cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok\n"; }
    }
}
EOF
} >"$UP_DIR/nginx.conf"
start_nginx upstream "$UP_DIR"
UP_PID=$STARTED_PID
wait_ready upstream "$UP_PID" "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"
check_ok upstream "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"
log "upstream nginx pid $UP_PID on 127.0.0.1:$UP_PORT ($UPSTREAM_WORKERS worker(s))"

declare -A PROXY_PID=() PROXY_PORT=() PROXY_LOG=()

if [[ " ${PROXIES[*]} " == *" nginx "* ]]; then
  NG_DIR=$TMP/nginx
  mkdir -p "$NG_DIR"
  {
    nginx_common "$NG_DIR"
    echo "worker_processes $WORKERS;"
    echo "http {"
    nginx_http_common "$NG_DIR"
    cat <<EOF
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NG_PORT;
        server_name $HOST_HDR;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
  } >"$NG_DIR/nginx.conf"
  start_nginx nginx "$NG_DIR"
  PROXY_PID[nginx]=$STARTED_PID
  PROXY_PORT[nginx]=$NG_PORT
  PROXY_LOG[nginx]=$NG_DIR/error.log
  wait_ready nginx "$STARTED_PID" "$NG_DIR/error.log" "http://127.0.0.1:$NG_PORT/" -H "Host: $HOST_HDR"
  check_ok nginx "$NG_DIR/error.log" "http://127.0.0.1:$NG_PORT/" -H "Host: $HOST_HDR"
  log "nginx proxy pid $STARTED_PID on 127.0.0.1:$NG_PORT ($WORKERS worker(s))"
fi

if [[ " ${PROXIES[*]} " == *" switchyard "* ]]; then
  SW_DIR=$TMP/switchyard
  mkdir -p "$SW_DIR"
  cat >"$SW_DIR/sw.toml" <<EOF
[listen]
http = "127.0.0.1:$SW_PORT"
admin = "127.0.0.1:$SW_ADMIN"

[server]
threads = $WORKERS

[state]
dir = "state"

[[route]]
host = "$HOST_HDR"
service = "app"

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
  start_bg "$SW_DIR/switchyard.log" bash -c 'cd "$1" && SWITCHYARD_LOG=$2 exec "$3" run --config "$1/sw.toml"' \
    _ "$SW_DIR" "$SW_LOG" "$SW_BIN"
  PROXY_PID[switchyard]=$STARTED_PID
  PROXY_PORT[switchyard]=$SW_PORT
  PROXY_LOG[switchyard]=$SW_DIR/switchyard.log
  wait_ready switchyard "$STARTED_PID" "$SW_DIR/switchyard.log" "http://127.0.0.1:$SW_PORT/" -H "Host: $HOST_HDR"
  check_ok switchyard "$SW_DIR/switchyard.log" "http://127.0.0.1:$SW_PORT/" -H "Host: $HOST_HDR"
  log "switchyard pid $STARTED_PID on 127.0.0.1:$SW_PORT ($WORKERS thread(s)), admin 127.0.0.1:$SW_ADMIN"
fi

# ---------------------------------------------------------------- load
wrk_run() { # port seconds outfile
  run_wrk "$3" "$2" -t"$THREADS" -c"$CONNS" --latency -H "Host: $HOST_HDR" "http://127.0.0.1:$1/"
}

declare -A RPS=() P50=() P99=() CPU=() ERRS=() # "proxy" -> space-separated per-round values

one_round() { # round proxy
  local r=$1 name=$2 pid=${PROXY_PID[$2]} port=${PROXY_PORT[$2]}
  local out=$TMP/wrk-$name-$r.txt t0 t1 u0 u1
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "${PROXY_LOG[$name]}" >&2 || true; die "$name (pid $pid) is gone"; }
  t0=$(tree_ticks "$pid")
  u0=$(tree_ticks "$UP_PID")
  wrk_run "$port" "$DURATION" "$out"
  t1=$(tree_ticks "$pid")
  u1=$(tree_ticks "$UP_PID")

  parse_wrk "$out"
  ((W_REQS > 0)) || { cat "$out" >&2; die "$name: wrk completed no request"; }
  local rps=$W_RPS p50=$W_P50 p99=$W_P99 errs=$W_ERRS cpu up
  cpu=$(ticks_per_us $((t1 - t0)) "$W_REQS")
  up=$(ticks_per_us $((u1 - u0)) "$W_REQS")

  RPS[$name]+="$rps "
  P50[$name]+="$p50 "
  P99[$name]+="$p99 "
  CPU[$name]+="$cpu "
  ERRS[$name]=$((${ERRS[$name]:-0} + errs))
  printf 'round %d  %-10s  req/s %10.0f   p50 %8.3f ms   p99 %8.3f ms   cpu/req %7.2f µs   (upstream %5.2f µs/req, errors %d)\n' \
    "$r" "$name" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" \
    "$cpu" "$up" "$errs"
}

echo "== bench-http: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r)"
echo "== $(nginx -v 2>&1), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')$( [[ -n ${PROXY_PID[switchyard]:-} ]] && echo ", switchyard $(git_rev), $(build_note "$SW_BIN")")"
echo "== rounds $ROUNDS x ${DURATION}s per proxy, wrk -t$THREADS -c$CONNS, workers $WORKERS, upstream workers $UPSTREAM_WORKERS"

if ((WARMUP > 0)); then
  for name in "${PROXIES[@]}"; do
    log "warm-up $name ${WARMUP}s"
    wrk_run "${PROXY_PORT[$name]}" "$WARMUP" "$TMP/wrk-$name-warmup.txt"
  done
fi

for r in $(seq 1 "$ROUNDS"); do
  for name in "${PROXIES[@]}"; do
    one_round "$r" "$name"
  done
done

# ---------------------------------------------------------------- summary
declare -A M_RPS=() M_P50=() M_P99=() M_CPU=()
for name in "${PROXIES[@]}"; do
  # shellcheck disable=SC2086
  M_RPS[$name]=$(median ${RPS[$name]})
  # shellcheck disable=SC2086
  M_P50[$name]=$(median ${P50[$name]})
  # shellcheck disable=SC2086
  M_P99[$name]=$(median ${P99[$name]})
  # shellcheck disable=SC2086
  M_CPU[$name]=$(median ${CPU[$name]})
done

echo
echo "== summary (median of $ROUNDS rounds)"
cols=("${PROXIES[@]}")
both=0
[[ -n ${PROXY_PID[switchyard]:-} && -n ${PROXY_PID[nginx]:-} ]] && both=1
printf '%-16s' ""
for name in "${cols[@]}"; do printf '%14s' "$name"; done
((both)) && printf '%19s' "switchyard/nginx"
echo
row() { # label array-name scale fmt
  local label=$1 arr=$2 scale=$3 fmt=$4 name
  local -n a=$arr
  printf '%-16s' "$label"
  for name in "${cols[@]}"; do printf "%14${fmt}" "$(awk -v v="${a[$name]}" -v s="$scale" 'BEGIN{print v/s}')"; done
  ((both)) && printf '%19.2f' "$(awk -v x="${a[switchyard]}" -v y="${a[nginx]}" 'BEGIN{ print (y > 0) ? x / y : 0 }')"
  echo
}
row "req/s" M_RPS 1 .0f
row "p50 (ms)" M_P50 1000 .3f
row "p99 (ms)" M_P99 1000 .3f
row "cpu/req (µs)" M_CPU 1 .2f
printf '%-16s' "errors (sum)"
for name in "${cols[@]}"; do printf '%14d' "${ERRS[$name]:-0}"; done
echo
total_errs=0
for name in "${cols[@]}"; do total_errs=$((total_errs + ${ERRS[$name]:-0})); done
if ((total_errs > 0)); then
  log "WARNING: non-2xx responses or socket errors were seen (raw wrk output in $TMP)"
  KEEP_TMP=1
fi
