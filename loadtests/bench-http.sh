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
#   SW_RUST_LOG [warn]  RUST_LOG for switchyard (nginx runs with access_log off)
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
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
SW_RUST_LOG=${SW_RUST_LOG:-warn}
HOST_HDR=bench.local

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}

case "$ONLY" in
  both) PROXIES=(switchyard nginx) ;;
  nginx | switchyard) PROXIES=("$ONLY") ;;
  *) echo "ONLY must be nginx, switchyard or unset (got '$ONLY')" >&2; exit 2 ;;
esac
for v in ROUNDS DURATION CONNS THREADS WORKERS UPSTREAM_WORKERS WARMUP READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
((ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && THREADS >= 1 && WORKERS >= 1 && UPSTREAM_WORKERS >= 1)) ||
  { echo "ROUNDS, DURATION, CONNS, THREADS, WORKERS, UPSTREAM_WORKERS must be >= 1" >&2; exit 2; }

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
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
  # Debian's package starts a system nginx on :80; it is not ours and not used here.
}

ensure_switchyard() {
  if [[ ! -x $SW_BIN ]]; then
    command -v cargo >/dev/null 2>&1 || die "$SW_BIN missing and cargo not found"
    log "building switchyard (cargo build --release) …"
    (cd "$REPO" && timeout "${BUILD_TIMEOUT:-3600}" cargo build --release --bin switchyard) ||
      die "cargo build --release failed"
    [[ -x $SW_BIN ]] || die "$SW_BIN still missing after the build"
  fi
}

ensure_tools
[[ " ${PROXIES[*]} " == *" switchyard "* ]] && ensure_switchyard
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-http.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as an unprivileged user
PIDS=()          # every process we started (nginx masters, switchyard)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  if [[ -n ${WRK_PID:-} ]]; then
    kill -TERM "$WRK_PID" 2>/dev/null || true # timeout(1) passes it on to wrk
    wait "$WRK_PID" 2>/dev/null || true
  fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      # kill the stragglers and their children (nginx workers)
      pkill -KILL -P "$p" 2>/dev/null || true
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
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

# ---------------------------------------------------------------- helpers
declare -A USED_PORTS=()
free_port() { # a loopback port nobody listens on (random in 20000-59999)
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    [[ -n ${USED_PORTS[$p]:-} ]] && continue
    if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS[$p]=1
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# wait until http://127.0.0.1:PORT/ answers anything at all (bounded); PID must stay alive
wait_ready() {
  local name=$1 pid=$2 port=$3 logf=$4 code
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logf" >&2 || true; die "$name (pid $pid) exited during start"; }
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' -H "Host: $HOST_HDR" "http://127.0.0.1:$port/" 2>/dev/null || true)
    [[ -n $code && $code != 000 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}

check_ok() { # one request must come back 200 "ok"
  local name=$1 port=$2 logf=$3 out code body
  out=$(curl -s -m 5 -w '\n%{http_code}' -H "Host: $HOST_HDR" "http://127.0.0.1:$port/" || true)
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  body=${body%$'\n'} # "ok\n"
  if [[ $code != 200 || $body != ok ]]; then
    tail -n 30 "$logf" >&2 || true
    die "$name: sanity request got status '$code' body '${body:0:200}' (want 200 'ok')"
  fi
}

# utime+stime (clock ticks) of PID and all its descendants
tree_ticks() {
  local root=$1 f s total=0
  local -A ppid_of=() ticks_of=()
  for f in /proc/[0-9]*/stat; do
    { read -r s <"$f"; } 2>/dev/null || continue
    local pid=${s%% *}
    s=${s##*) } # drop "pid (comm) " — comm may contain spaces
    # shellcheck disable=SC2086
    set -- $s   # $1 state, $2 ppid, …, $12 utime, $13 stime
    ppid_of[$pid]=$2
    ticks_of[$pid]=$((${12} + ${13}))
  done
  local -a queue=("$root")
  local -A seen=()
  while ((${#queue[@]})); do
    local p=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$p]:-} ]] && continue
    seen[$p]=1
    total=$((total + ${ticks_of[$p]:-0}))
    local c
    for c in "${!ppid_of[@]}"; do
      [[ ${ppid_of[$c]} == "$p" ]] && queue+=("$c")
    done
  done
  echo "$total"
}

# wrk time ("123.45us", "1.20ms", "2.00s", "1.00m") -> microseconds
to_us() {
  awk -v t="$1" 'BEGIN {
    if (match(t, /^[0-9.]+/)) { v = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1) } else { print "nan"; exit }
    m = (u == "us") ? 1 : (u == "ms") ? 1e3 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : (u == "h") ? 3.6e9 : -1
    if (m < 0) print "nan"; else printf "%.1f\n", v * m }'
}

median() { # median of the arguments
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) printf "%.3f\n", a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- processes
UP_PORT=$(free_port)
NG_PORT=$(free_port)
SW_PORT=$(free_port)
SW_ADMIN=$(free_port)

nginx_common() { # $1 = dir: pid/temp paths inside it, error log to a file
  cat <<EOF
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
  cat <<EOF
    access_log off;
    default_type text/plain;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
EOF
}

start_nginx() { # name dir conf -> sets STARTED_PID
  local name=$1 dir=$2
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 2>"$dir/test.log" ||
    { cat "$dir/test.log" >&2; die "$name: nginx -t failed"; }
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

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
wait_ready upstream "$UP_PID" "$UP_PORT" "$UP_DIR/error.log"
check_ok upstream "$UP_PORT" "$UP_DIR/error.log"
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
  wait_ready nginx "$STARTED_PID" "$NG_PORT" "$NG_DIR/error.log"
  check_ok nginx "$NG_PORT" "$NG_DIR/error.log"
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
  (cd "$SW_DIR" && RUST_LOG=$SW_RUST_LOG exec "$SW_BIN" run --config "$SW_DIR/sw.toml") >"$SW_DIR/switchyard.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  PROXY_PID[switchyard]=$STARTED_PID
  PROXY_PORT[switchyard]=$SW_PORT
  PROXY_LOG[switchyard]=$SW_DIR/switchyard.log
  wait_ready switchyard "$STARTED_PID" "$SW_PORT" "$SW_DIR/switchyard.log"
  check_ok switchyard "$SW_PORT" "$SW_DIR/switchyard.log"
  log "switchyard pid $STARTED_PID on 127.0.0.1:$SW_PORT ($WORKERS thread(s)), admin 127.0.0.1:$SW_ADMIN"
fi

# ---------------------------------------------------------------- load
WRK_PID=
run_wrk() { # port seconds outfile
  # in the background + wait, so that INT/TERM reach our trap at once
  timeout $(($2 + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency -H "Host: $HOST_HDR" \
    "http://127.0.0.1:$1/" >"$3" 2>&1 &
  WRK_PID=$!
  local rc=0
  wait "$WRK_PID" || rc=$?
  WRK_PID=
  ((rc == 0)) || { cat "$3" >&2; die "wrk failed (port $1, exit $rc)"; }
}

declare -A RPS=() P50=() P99=() CPU=() ERRS=() # "proxy" -> space-separated per-round values

one_round() { # round proxy
  local r=$1 name=$2 pid=${PROXY_PID[$2]} port=${PROXY_PORT[$2]}
  local out=$TMP/wrk-$name-$r.txt t0 t1 u0 u1
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "${PROXY_LOG[$name]}" >&2 || true; die "$name (pid $pid) is gone"; }
  t0=$(tree_ticks "$pid")
  u0=$(tree_ticks "$UP_PID")
  run_wrk "$port" "$DURATION" "$out"
  t1=$(tree_ticks "$pid")
  u1=$(tree_ticks "$UP_PID")

  local reqs rps p50 p99 non2xx sockerr
  reqs=$(awk '/requests in/ { print $1; exit }' "$out")
  rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
  p50=$(awk '/^ +50% / { print $2; exit }' "$out")
  p99=$(awk '/^ +99% / { print $2; exit }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$out")
  sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10; exit }' "$out")
  [[ -n $reqs && -n $rps && -n $p50 && -n $p99 ]] || { cat "$out" >&2; die "could not parse wrk output ($out)"; }
  ((reqs > 0)) || { cat "$out" >&2; die "$name: wrk completed no request"; }
  p50=$(to_us "$p50")
  p99=$(to_us "$p99")
  local errs=$((${non2xx:-0} + ${sockerr:-0}))
  local cpu up
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  up=$(awk -v d=$((u1 - u0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')

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
echo "== $(nginx -v 2>&1), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')$( [[ -n ${PROXY_PID[switchyard]:-} ]] && echo ", switchyard $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no-commit')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'), built $(date -u -r "$SW_BIN" +%Y-%m-%dT%H:%MZ)")"
echo "== rounds $ROUNDS x ${DURATION}s per proxy, wrk -t$THREADS -c$CONNS, workers $WORKERS, upstream workers $UPSTREAM_WORKERS"

if ((WARMUP > 0)); then
  for name in "${PROXIES[@]}"; do
    log "warm-up $name ${WARMUP}s"
    run_wrk "${PROXY_PORT[$name]}" "$WARMUP" "$TMP/wrk-$name-warmup.txt"
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
