#!/usr/bin/env bash
# middlewares.sh — what each edge middleware costs per request, and rate limiting over many
# distinct clients (issue 14). One switchyard in front of an nginx upstream, driven by wrk.
#
# Part 1, cost: one switchyard process with a route per middleware (and one without any),
# driven in interleaved rounds (off, headers, rate_limit, page-off, gzip, br, zstd, all, off,
# …) so that drift on the machine hits every scenario alike. Each round measures the proxy's
# CPU time per request (utime + stime of the process, /proc) over the requests wrk
# completed. The small scenarios fetch `/` (a 3-byte body); the compression ones fetch
# `/page`, a 16 KiB HTML page, with `Accept-Encoding` set, against `page-off` (the same page
# and header through the route without middlewares, so not compressed).
#
# Part 2, many clients: another switchyard trusting 127.0.0.1 as a proxy (listen.trusted_proxies),
# one rate-limited route (a token per 20 s). wrk sends one request from each of CLIENTS
# distinct addresses (X-Forwarded-For 10.x.y.z): the limiter holds a bucket per address. It
# prints the process's RSS before, right after, and once the sweeper has dropped the buckets
# that filled up again (switchyard_rate_limit_clients back to 0). Then the addresses round
# and round for CLIENTS_DURATION, through the limited route and through one without a
# limit: the CPU the limiter adds per request with that many clients.
#
# Usage: bash loadtests/middlewares.sh          (defaults: about 4 minutes)
#        ROUNDS=1 DURATION=2 WARMUP=1 CLIENTS=20000 bash loadtests/middlewares.sh   (quick)
# Env (defaults in brackets):
#   PARTS ["cost clients"]   ROUNDS [3]   DURATION [5] seconds per round
#   CONNS [32] wrk connections   THREADS [1] wrk threads   WORKERS [1] switchyard threads
#   WARMUP [2] s per scenario before its rounds   PAGE_BYTES [16384]
#   CLIENTS [100000]   CLIENTS_DURATION [20] s of each many-clients load; the fill gets half
#                      (at least 5 s) and must send CLIENTS requests within 20 s
#   SW_BIN [target/release/switchyard]   SW_LOG [warn]   READY_TIMEOUT [30]   KEEP_TMP [0]
set -euo pipefail

PARTS=${PARTS:-cost clients}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
WARMUP=${WARMUP:-2}
PAGE_BYTES=${PAGE_BYTES:-16384}
CLIENTS=${CLIENTS:-100000}
CLIENTS_DURATION=${CLIENTS_DURATION:-20}
SW_LOG=${SW_LOG:-warn}

LIB_TAG=middlewares
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}

require_uint ROUNDS DURATION CONNS THREADS WORKERS WARMUP PAGE_BYTES CLIENTS CLIENTS_DURATION READY_TIMEOUT
((ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && THREADS >= 1 && WORKERS >= 1 && CLIENTS >= 1 && CLIENTS <= 16000000)) ||
  { echo "ROUNDS, DURATION, CONNS, THREADS, WORKERS must be >= 1; CLIENTS 1..16000000" >&2; exit 2; }
read -ra PART_LIST <<<"$PARTS"
for p in "${PART_LIST[@]}"; do [[ $p == cost || $p == clients ]] || { echo "PARTS: unknown part '$p' (cost clients)" >&2; exit 2; }; done
want_part() { [[ " ${PART_LIST[*]} " == *" $1 "* ]]; }

ensure_pkgs nginx:nginx wrk:wrk curl:curl
ensure_built "$SW_BIN" --bin switchyard
lib_init middlewares

# A copy: a `cargo build` during the run (the box is shared) must not swap the binary.
SW_NOTE="switchyard $(git_rev), $(build_note "$SW_BIN")"
mkdir -p "$TMP/bin"
cp "$SW_BIN" "$TMP/bin/switchyard"
SW_BIN=$TMP/bin/switchyard

# ---------------------------------------------------------------- upstream
UP_PORT=$(free_port)
UP_DIR=$TMP/upstream
mkdir -p "$UP_DIR"
# An HTML page of PAGE_BYTES: a table of rows that differ (not one repeated block).
awk -v n="$PAGE_BYTES" 'BEGIN {
  s = "<!doctype html><html><head><title>orders</title><link rel=\"stylesheet\" href=\"/app.css\"></head><body><table>\n"
  for (i = 1; length(s) < n - 40; i++)
    s = s sprintf("<tr class=\"row\"><td>%d</td><td>order-%06d</td><td>%d.%02d EUR</td><td>shipped</td></tr>\n", i, (i * 7919) % 1000000, (i * 37) % 500, (i * 13) % 100)
  s = s "</table></body></html>\n"
  printf "%s", substr(s, 1, n)
}' >"$UP_DIR/page.html"
{
  nginx_common "$UP_DIR"
  echo "worker_processes 1;"
  echo "http {"
  nginx_http_common "$UP_DIR"
  cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location = / { return 200 "ok\n"; }
        location = /page { default_type text/html; alias $UP_DIR/page.html; }
    }
EOF
  echo "}"
} >"$UP_DIR/nginx.conf"
start_nginx upstream "$UP_DIR"
UP_PID=$STARTED_PID
wait_ready upstream "$UP_PID" "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"
check_ok upstream "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"

# ---------------------------------------------------------------- switchyard
start_switchyard() { # NAME EXTRA-LISTEN-LINES ROUTES -> SW_PID SW_PORT SW_ADMIN SW_LOGF
  local name=$1 dir=$TMP/$1
  mkdir -p "$dir"
  SW_PORT=$(free_port)
  SW_ADMIN=$(free_port)
  cat >"$dir/sw.toml" <<EOF
[listen]
http = "127.0.0.1:$SW_PORT"
admin = "127.0.0.1:$SW_ADMIN"
$2

[server]
threads = $WORKERS

[state]
dir = "state"

$3

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
  SW_LOGF=$dir/switchyard.log
  start_bg "$SW_LOGF" bash -c 'cd "$1" && SWITCHYARD_LOG=$2 exec "$3" run --config "$1/sw.toml"' \
    _ "$dir" "$SW_LOG" "$SW_BIN"
  SW_PID=$STARTED_PID
  wait_ready "switchyard ($name)" "$SW_PID" "$SW_LOGF" "http://127.0.0.1:$SW_PORT/" -H "Host: off.local"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
metric() { # NAME -> value from the admin /metrics (read whole first: awk stops at the match)
  local text
  text=$(curl -s -m 5 "http://127.0.0.1:$SW_ADMIN/metrics") || die "GET /metrics failed"
  awk -v m="$1" '$1 == m { print $2; exit }' <<<"$text"
}

LOAD_START=$(loadavg)
echo "== middlewares: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r), load average at start $LOAD_START"
echo "== $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }'); $SW_NOTE"
echo "== parts: ${PART_LIST[*]}; $ROUNDS rounds x ${DURATION}s per scenario, wrk -t$THREADS -c$CONNS, switchyard threads $WORKERS;" \
  "page $PAGE_BYTES bytes; $CLIENTS clients for ${CLIENTS_DURATION}s"

# ---------------------------------------------------------------- part 1: cost per middleware
# scenario: name host path accept-encoding baseline
SCENARIOS=(
  "off off.local / - -"
  "headers headers.local / - off"
  "rate_limit ratelimit.local / - off"
  "page-off off.local /page gzip -"
  "gzip compress.local /page gzip page-off"
  "br compress.local /page br page-off"
  "zstd compress.local /page zstd page-off"
  "all all.local /page gzip page-off"
)
declare -A RPS=() P50=() P99=() CPU=() UPC=() ERRS=() SIZE=()

scenario_args() { # HOST PATH AE -> WRK_ARGS
  WRK_ARGS=(-t"$THREADS" -c"$CONNS" --latency -H "Host: $1")
  [[ $3 != - ]] && WRK_ARGS+=(-H "Accept-Encoding: $3")
  WRK_ARGS+=("http://127.0.0.1:$SW_PORT$2")
}

run_cost() {
  local HEADERS='security_headers = true
response_headers = { "Content-Security-Policy" = "default-src '"'"'self'"'"'", "X-Powered-By" = "" }
request_headers = { "X-Env" = "prod" }'
  local LIMIT='rate_limit = { per_client_per_s = 1000000, burst = 1000000 }'
  local routes="[[route]]
host = \"off.local\"
service = \"app\"

[[route]]
host = \"headers.local\"
service = \"app\"
$HEADERS

[[route]]
host = \"ratelimit.local\"
service = \"app\"
$LIMIT

[[route]]
host = \"compress.local\"
service = \"app\"
compress = true

[[route]]
host = \"all.local\"
service = \"app\"
$HEADERS
$LIMIT
compress = true"
  start_switchyard cost "" "$routes"
  local s name host path ae base out
  for s in "${SCENARIOS[@]}"; do
    read -r name host path ae base <<<"$s"
    local curl_args=(-s -o /dev/null -m 5 -w '%{http_code} %{size_download}' -H "Host: $host")
    [[ $ae != - ]] && curl_args+=(-H "Accept-Encoding: $ae")
    out=$(curl "${curl_args[@]}" "http://127.0.0.1:$SW_PORT$path")
    [[ ${out%% *} == 200 ]] || die "$name: sanity request got '$out'"
    SIZE[$name]=${out#* }
  done
  log "switchyard (cost) pid $SW_PID on 127.0.0.1:$SW_PORT"
  if ((WARMUP > 0)); then
    for s in "${SCENARIOS[@]}"; do
      read -r name host path ae base <<<"$s"
      scenario_args "$host" "$path" "$ae"
      run_wrk "$TMP/wrk-warmup-$name.txt" "$WARMUP" "${WRK_ARGS[@]}"
    done
  fi
  local r t0 t1 u0 u1 cpu up
  for r in $(seq 1 "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
      read -r name host path ae base <<<"$s"
      kill -0 "$SW_PID" 2>/dev/null || { tail -n 30 "$SW_LOGF" >&2; die "switchyard is gone"; }
      scenario_args "$host" "$path" "$ae"
      out=$TMP/wrk-$name-$r.txt
      t0=$(tree_ticks "$SW_PID")
      u0=$(tree_ticks "$UP_PID")
      run_wrk "$out" "$DURATION" "${WRK_ARGS[@]}"
      t1=$(tree_ticks "$SW_PID")
      u1=$(tree_ticks "$UP_PID")
      parse_wrk "$out"
      ((W_REQS > 0)) || { cat "$out" >&2; die "$name: wrk completed no request"; }
      cpu=$(ticks_per_us $((t1 - t0)) "$W_REQS")
      up=$(ticks_per_us $((u1 - u0)) "$W_REQS")
      RPS[$name]+="$W_RPS "
      P50[$name]+="$W_P50 "
      P99[$name]+="$W_P99 "
      CPU[$name]+="$cpu "
      UPC[$name]+="$up "
      ERRS[$name]=$((${ERRS[$name]:-0} + W_ERRS))
      printf '%-11s round %d  req/s %9.0f  p50 %7.3f ms  p99 %7.3f ms  cpu/req %8.2f µs  (upstream %5.2f µs, errors %d, load %s)\n' \
        "$name" "$r" "$W_RPS" "$(awk -v v="$W_P50" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$W_P99" 'BEGIN{print v/1000}')" "$cpu" "$up" "$W_ERRS" "$(loadavg)"
    done
  done
  stop_started "$SW_PID"

  # shellcheck disable=SC2086
  med() { local -n a=$1; median ${a[$2]}; }
  echo
  echo "== cost per request: median of $ROUNDS rounds; cpu = switchyard CPU time per request; Δ = against the baseline"
  printf '%-11s %-16s %10s %9s %9s %10s %9s %10s %7s\n' scenario "request" "req/s" "p50 ms" "p99 ms" "cpu/req µs" "Δ µs" "resp bytes" errors
  local total_errs=0 c b d
  for s in "${SCENARIOS[@]}"; do
    read -r name host path ae base <<<"$s"
    c=$(med CPU "$name")
    d="—"
    if [[ $base != - ]]; then
      b=$(med CPU "$base")
      d=$(awk -v c="$c" -v b="$b" 'BEGIN { printf "%+.2f", c - b }')
    fi
    local req=$path
    [[ $ae != - ]] && req+=" ($ae)"
    printf '%-11s %-16s %10.0f %9.3f %9.3f %10.2f %9s %10s %7d\n' "$name" "$req" \
      "$(med RPS "$name")" "$(awk -v v="$(med P50 "$name")" 'BEGIN{print v/1000}')" \
      "$(awk -v v="$(med P99 "$name")" 'BEGIN{print v/1000}')" "$c" "$d" "${SIZE[$name]}" "${ERRS[$name]:-0}"
    total_errs=$((total_errs + ${ERRS[$name]:-0}))
  done
  echo "(request: path, then the Accept-Encoding sent; resp bytes: the body one curl got)"
  if ((total_errs > 0)); then
    log "WARNING: non-2xx responses or socket errors were seen (raw wrk output in $TMP)"
    KEEP_TMP=1
  fi
}

# ---------------------------------------------------------------- part 2: many clients
run_clients() {
  local routes='[[route]]
host = "limited.local"
service = "app"
rate_limit = { per_client_per_s = 0.05, burst = 10 }

[[route]]
host = "off.local"
service = "app"'
  start_switchyard clients 'trusted_proxies = ["127.0.0.1"]' "$routes"
  log "switchyard (clients) pid $SW_PID on 127.0.0.1:$SW_PORT"
  # wrk counts per thread: with -t1 every address is sent. `fill` sends one request per
  # client to the limited route, then keeps the connections busy on the other route;
  # `cycle` sends the addresses round and round to the route of -H Host.
  local lua_fill=$TMP/fill.lua lua_cycle=$TMP/cycle.lua
  local xff='string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)'
  # wrk calls request() once before the run to check it (that request is not sent): the
  # fill sends addresses 1 … CLIENTS-1, then 0, so every one is sent either way.
  cat >"$lua_fill" <<EOF
local n, clients = 0, $CLIENTS
request = function()
  local k = n
  n = n + 1
  if k <= clients then
    local i = k % clients
    return wrk.format(nil, nil, { ["Host"] = "limited.local", ["X-Forwarded-For"] = $xff })
  end
  return wrk.format(nil, nil, { ["Host"] = "off.local", ["X-Forwarded-For"] = "10.255.255.254" })
end
EOF
  cat >"$lua_cycle" <<EOF
local n, clients = 0, $CLIENTS
request = function()
  local i = n % clients
  n = n + 1
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = $xff })
end
EOF
  cycle() { # HOST OUTFILE -> W_* and CPU_US
    local t0 t1
    t0=$(tree_ticks "$SW_PID")
    run_wrk "$2" "$CLIENTS_DURATION" -s "$lua_cycle" -t1 -c"$CONNS" --latency -H "Host: $1" "http://127.0.0.1:$SW_PORT/"
    t1=$(tree_ticks "$SW_PID")
    parse_wrk "$2"
    CPU_US=$(ticks_per_us $((t1 - t0)) "$W_REQS")
  }
  # Warm-up through the route without a limit: the process at its working size.
  ((WARMUP > 0)) && run_wrk "$TMP/wrk-clients-warmup.txt" "$WARMUP" -t1 -c"$CONNS" -H "Host: off.local" "http://127.0.0.1:$SW_PORT/"

  # Memory: one bucket per client. A token comes back every 20 s: every bucket is still
  # held a moment after the fill (if it took less than 20 s), and full again — swept — up
  # to 20 s later.
  local rss0 rss1 rss2 held left fill_s=$((CLIENTS_DURATION / 2 > 5 ? CLIENTS_DURATION / 2 : 5))
  rss0=$(rss_kb "$SW_PID")
  run_wrk "$TMP/wrk-fill.txt" "$fill_s" -s "$lua_fill" -t1 -c"$CONNS" --latency -H "Host: off.local" "http://127.0.0.1:$SW_PORT/"
  parse_wrk "$TMP/wrk-fill.txt"
  ((W_REQS >= CLIENTS)) || log "WARNING: only $W_REQS requests in ${fill_s}s for $CLIENTS clients: raise CLIENTS_DURATION"
  local fill_reqs=$W_REQS fill_errs=$W_ERRS
  rss1=$(rss_kb "$SW_PID")
  sleep 1.2 # the sweeper publishes the count once a second
  held=$(metric switchyard_rate_limit_clients)
  local started=$SECONDS deadline=$((SECONDS + 45))
  while ((SECONDS < deadline)); do
    left=$(metric switchyard_rate_limit_clients)
    [[ $left == 0 ]] && break
    sleep 0.5
  done
  local swept_s=$((SECONDS - started))
  rss2=$(rss_kb "$SW_PID")

  # CPU: the addresses round and round, through the limited route, then the same load
  # through the route without a limit.
  local n0 n1
  n0=$(metric 'switchyard_rejected_requests_total{reason="rate_limited"}')
  cycle limited.local "$TMP/wrk-cycle-limited.txt"
  local reqs_l=$W_REQS rps_l=$W_RPS p99_l=$W_P99 errs_l=$W_ERRS cpu_l=$CPU_US
  n1=$(metric 'switchyard_rejected_requests_total{reason="rate_limited"}')
  cycle off.local "$TMP/wrk-cycle-off.txt"
  local cpu_off=$CPU_US rps_off=$W_RPS
  echo
  echo "== rate limiting over $CLIENTS distinct client addresses (X-Forwarded-For through a trusted proxy, 127.0.0.1), limit 0.05/s burst 10"
  printf '%-44s %s\n' \
    "fill: one request per client" "$CLIENTS of $fill_reqs requests in ${fill_s}s (non-2xx/errors $fill_errs)" \
    "clients holding a bucket after the fill" "$held (switchyard_rate_limit_clients)" \
    "RSS before" "$rss0 KiB" \
    "RSS after the fill" "$rss1 KiB ($(awk -v a="$rss1" -v b="$rss0" -v n="$CLIENTS" 'BEGIN { printf "%+d KiB, %.0f bytes per client", a - b, (a - b) * 1024 / n }'))" \
    "RSS once swept" "$rss2 KiB (clients left: ${left:-?}, ${swept_s}s after)" \
    "cycle, limited route" "$reqs_l requests in ${CLIENTS_DURATION}s ($rps_l req/s, p99 $(awk -v v="$p99_l" 'BEGIN{print v/1000}') ms, non-2xx/errors $errs_l, 429s counted $(awk -v a="${n1:-0}" -v b="${n0:-0}" 'BEGIN { print a - b }'))" \
    "cpu/req, limited route" "$cpu_l µs" \
    "cpu/req, same load, route without limit" "$cpu_off µs ($rps_off req/s)" \
    "the limiter with $CLIENTS clients" "$(awk -v a="$cpu_l" -v b="$cpu_off" 'BEGIN { printf "%+.2f µs per request", a - b }')"
  stop_started "$SW_PID"
}

want_part cost && run_cost
want_part clients && run_clients
echo
echo "== load average $LOAD_START at start, $(loadavg) at end"
