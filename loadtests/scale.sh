#!/usr/bin/env bash
# scale.sh — switchyard at scale, on 127.0.0.1, in about a minute:
#
#   A. 10,000 routes / 1,000 releasable services: `switchyard check` time, start-up time
#      until the admin /health answers, RSS, and `POST /v1/reload` latency (idle, then under
#      load) while wrk (keep-alive) and a curl loop (new connection per request) keep hitting
#      one route whose backend is up — every answer must be a 200.
#   B. 10,000 idle keep-alive client connections (each has sent one complete request and read
#      its response): switchyard's RSS before/after, KiB per connection; the same against an
#      nginx reverse proxy for comparison.
#
# Usage: bash loadtests/scale.sh
# Env (defaults in brackets):
#   ROUTES [10000]      routes in the generated config
#   SERVICES [1000]     releasable services (blue + green backend each; only one is up)
#   CONNS [10000]       idle keep-alive connections in part B
#   CHECKS [3]          `switchyard check` repetitions
#   STARTS [5]          cold starts timed (each with an empty state dir)
#   IDLE_RELOADS [3]    reloads without load
#   RELOADS [5]         reloads under load (one every RELOAD_GAP s)
#   RELOAD_GAP [1]      seconds between reloads under load
#   WRK_CONNS [16]      wrk connections during the reload test
#   THREADS [nproc]     switchyard [server] threads = nginx worker_processes
#   PARTS [AB]          A = check + reloads, B = idle connections (start-up is always measured)
#   NGINX_CMP [1]       0 = skip the nginx comparison in part B
#   OPEN_CONCURRENCY [200]  connections being opened at once by the client
#   REOPEN [1]          open and close the CONNS connections a second time (memory reused or not?)
#   SETTLE [2]          seconds between the last connection opened and the RSS reading
#   NOFILE [65536]      ulimit -n wanted (falls back to the hard limit; needs > CONNS)
#   SW_BIN [<repo>/target/release/switchyard]
#   READY_TIMEOUT [60]  seconds to wait for a process to answer
#   KEEP_TMP [0]        1 = keep the temp dir (configs, logs, raw outputs)
set -euo pipefail

ROUTES=${ROUTES:-10000}
SERVICES=${SERVICES:-1000}
CONNS=${CONNS:-10000}
CHECKS=${CHECKS:-3}
IDLE_RELOADS=${IDLE_RELOADS:-3}
STARTS=${STARTS:-5}
RELOADS=${RELOADS:-5}
RELOAD_GAP=${RELOAD_GAP:-1}
WRK_CONNS=${WRK_CONNS:-16}
THREADS=${THREADS:-$(nproc)}
NGINX_CMP=${NGINX_CMP:-1}
PARTS=${PARTS-AB}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-200}
SETTLE=${SETTLE:-2}
REOPEN=${REOPEN:-1}
NOFILE=${NOFILE:-65536}
READY_TIMEOUT=${READY_TIMEOUT:-60}
KEEP_TMP=${KEEP_TMP:-0}
LIVE_HOST=h0.scale.test   # the route whose backend is up
ADDED_HOST=added.scale.test # only in the second config variant: proves a reload took effect

LIB_TAG=scale
FREE_PORT_MIN=20000 # 10000.. are the (down) backends of the generated services
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$LIB_REPO
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}

require_uint ROUTES SERVICES CONNS CHECKS STARTS IDLE_RELOADS RELOADS RELOAD_GAP WRK_CONNS THREADS NGINX_CMP \
  OPEN_CONCURRENCY SETTLE REOPEN NOFILE READY_TIMEOUT
((ROUTES >= 1 && SERVICES >= 1 && CONNS >= 1 && CHECKS >= 1 && STARTS >= 1 && THREADS >= 1 && WRK_CONNS >= 1)) ||
  { echo "ROUTES, SERVICES, CONNS, CHECKS, STARTS, THREADS, WRK_CONNS must be >= 1" >&2; exit 2; }
((10000 + 2 * SERVICES < 20000)) || { echo "SERVICES must be < 5000" >&2; exit 2; }

say() { printf '%s\n' "$*" | tee -a "$REPORT"; } # a result line: stdout + report file

# ---------------------------------------------------------------- tools, limits
ensure_pkgs nginx:nginx wrk:wrk curl:curl python3:python3 ss:iproute2
ensure_built "$SW_BIN" --bins

# Each side of 10,000 connections needs 10,000 descriptors (the client and the proxy are
# separate processes; the limit is inherited by both).
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
((FD_LIMIT > CONNS + 500)) || die "ulimit -n is $FD_LIMIT (hard $(ulimit -Hn)); need > $((CONNS + 500))"

# ---------------------------------------------------------------- temp dir + cleanup
lib_init scale
REPORT=$TMP/report.txt
: >"$REPORT"
# PIDS: every long-lived process we started (nginx masters, switchyard, loops, clients)
ON_EXIT_FIRST+=('touch "$TMP/stop" "$TMP/release" 2>/dev/null') # tells the curl loop / clients to end
# a switchyard stuck in an accept-error loop writes ~90 MB/s of log: keep the head only
ON_EXIT_KEEP+=('find "$TMP" -name "*.log" -size +50M -exec truncate -s 50M {} + 2>/dev/null')

# ---------------------------------------------------------------- helpers
sw_alive() { # die with a clear message if switchyard is gone
  kill -0 "$SW_PID" 2>/dev/null ||
    { tail -n 20 "$SW_DIR/switchyard.log" >&2; die "switchyard (pid $SW_PID) is gone ($1)"; }
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

rss_kib() { # VmRSS of one pid, KiB
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}
hwm_kib() { # VmHWM (peak RSS) of one pid, KiB
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}
tree_rss_kib() { # VmRSS of a pid plus its direct children (nginx master + workers), KiB
  local total c
  total=$(rss_kib "$1")
  for c in $(pgrep -P "$1" || true); do total=$((total + $(rss_kib "$c" 2>/dev/null || echo 0))); done
  echo "$total"
}
cpu_ms() { # utime+stime of one pid (all its threads), ms
  local st
  st=$(<"/proc/$1/stat")
  st=${st##*) } # drop "pid (comm) "
  # shellcheck disable=SC2086
  set -- $st # $12 utime, $13 stime (clock ticks)
  echo $(((${12} + ${13}) * 1000 / CLK_TCK))
}
cpu_split() { # "user/sys" ms of one pid
  local st
  st=$(<"/proc/$1/stat")
  st=${st##*) }
  # shellcheck disable=SC2086
  set -- $st
  echo "$((${12} * 1000 / CLK_TCK))/$((${13} * 1000 / CLK_TCK))"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

median1() { # median of the arguments, one decimal
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) printf "%.1f\n", a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

established() { # established TCP connections whose local port is $1
  ss -Htn state established "( sport = :$1 )" | wc -l
}

# status of one GET through a proxy port with a Host header
status_of() {
  curl -s -o /dev/null -m 5 -w '%{http_code}' -H "Host: $2" "http://127.0.0.1:$1/" || true
}

status_is() { [[ $(status_of "$1" "$2") == "$3" ]]; } # port host want-code
wait_status() { # port host want-code pid logfile: poll until GET answers want-code (bounded)
  WAIT_POLL=0.05 wait_until "127.0.0.1:$1 (Host $2)" "$4" "$5" "did not answer $3" status_is "$1" "$2" "$3" ||
    die "pid $4 exited while waiting for 127.0.0.1:$1"
}

# ---------------------------------------------------------------- upstream (the one live backend)
UP_PORT=$(free_port)
SW_HTTP=$(free_port)
SW_ADMIN=$(free_port)
NG_PORT=$(free_port)

UP_DIR=$TMP/upstream
mkdir -p "$UP_DIR"
{
  nginx_common "$UP_DIR"
  echo "worker_rlimit_nofile $FD_LIMIT;"
  echo "worker_processes 1;"
  echo "http {"
  nginx_http_common "$UP_DIR" 300s
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
wait_status "$UP_PORT" "$LIVE_HOST" 200 "$UP_PID" "$UP_DIR/error.log"

# ---------------------------------------------------------------- the 10k-route config
SW_DIR=$TMP/sw
mkdir -p "$SW_DIR"
CONF=$SW_DIR/switchyard.toml
python3 - "$SW_DIR" "$ROUTES" "$SERVICES" "$SW_HTTP" "$SW_ADMIN" "$UP_PORT" "$THREADS" "$LIVE_HOST" "$ADDED_HOST" <<'PY'
import sys
out, routes, services, http, admin, up, threads, live, added = sys.argv[1:]
routes, services = int(routes), int(services)

def config(with_added):
    w = []
    w.append(f'[listen]\nhttp = "127.0.0.1:{http}"\nadmin = "127.0.0.1:{admin}"\n')
    w.append(f'[server]\nthreads = {threads}\ngrace_s = 1\n')
    w.append('[state]\ndir = "state"\n')
    w.append('[log]\nlevel = "warn"\n')
    # Routes: every 20th is a one-label wildcard, every 20th adds a /api/ prefix to an exact
    # host; the rest are exact hosts. Route 0 is the live one (svc-0, backend up).
    for i in range(routes):
        svc = f"svc-{i % services}"
        if i % 20 == 1:
            host, prefix = f"*.w{i}.scale.test", "/"
        elif i % 20 == 2:
            host, prefix = f"h{i - 2}.scale.test", "/api/"
        else:
            host, prefix = f"h{i}.scale.test", "/"
        w.append(f'[[route]]\nhost = "{host}"\npath_prefix = "{prefix}"\nservice = "{svc}"\n')
    if with_added:
        w.append(f'[[route]]\nhost = "{added}"\nservice = "svc-0"\n')
    # Services: blue/green each; only svc-0's blue is up. The others need not be: no health
    # checks, and nothing routes to them here.
    for s in range(services):
        blue = f"127.0.0.1:{up}" if s == 0 else f"127.0.0.1:{10000 + s}"
        green = f"127.0.0.1:{10000 + services + s}"
        w.append(f'[service.svc-{s}]\nblue = ["{blue}"]\ngreen = ["{green}"]\n')
    return "\n".join(w)

open(f"{out}/v1.conf", "w").write(config(False))
open(f"{out}/v2.conf", "w").write(config(True))
PY
cp "$SW_DIR/v1.conf" "$CONF"
use_conf() { # v1 | v2: replace the config atomically (rename)
  cp "$SW_DIR/$1.conf" "$CONF.new" && mv -f "$CONF.new" "$CONF"
}

say "== switchyard scale test — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average: $(loadavg)"
say "   config: $ROUTES routes ($(grep -c '^host = "\*' "$CONF") wildcard, $(grep -c '^path_prefix = "/api/"' "$CONF") with /api/ prefix), $SERVICES releasable services (blue+green), $(du -k "$CONF" | cut -f1) KiB of TOML; threads = $THREADS; ulimit -n $FD_LIMIT"

# ---------------------------------------------------------------- A1. switchyard check
if [[ $PARTS == *A* ]]; then
say ""
say "-- A1. switchyard check --config (${ROUTES} routes), $CHECKS runs: wall time"
times=()
cpus=()
for i in $(seq "$CHECKS"); do
  t0=$(now_ms)
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%M %U %S' -o "$TMP/check.time" "$SW_BIN" check --config "$CONF" >"$TMP/check.out" 2>&1 ||
      { cat "$TMP/check.out" >&2; die "switchyard check failed"; }
  else
    "$SW_BIN" check --config "$CONF" >"$TMP/check.out" 2>&1 || { cat "$TMP/check.out" >&2; die "switchyard check failed"; }
  fi
  t1=$(now_ms)
  times+=($((t1 - t0)))
  if [[ -f $TMP/check.time ]]; then
    cpus+=("$(tail -n1 "$TMP/check.time" | awk '{ printf "%.0f", ($2 + $3) * 1000 }')")
  fi
done
peak=""
[[ -f $TMP/check.time ]] &&
  peak=", CPU (user+sys) median $(median1 "${cpus[@]}") ms (runs: ${cpus[*]} ms), peak RSS $(mib "$(tail -n1 "$TMP/check.time" | cut -d' ' -f1)")"
say "   check: median $(median1 "${times[@]}") ms (runs: ${times[*]} ms)$peak, exit 0"
fi

# ---------------------------------------------------------------- A2. start-up
say ""
say "-- A2. start-up: launch -> admin /health 200 -> first proxied 200 ($STARTS starts; the last one stays up)"
t_h=()
t_p=()
c_h=()
c_split=()
INT_HANGS=()
for n in $(seq "$STARTS"); do
  rm -rf "$SW_DIR/state" # a first start each time: no state.json, a new token
  t0=$(now_ms)
  SWITCHYARD_LOG=warn start_bg "$SW_DIR/switchyard.log" "$SW_BIN" run --config "$CONF"
  SW_PID=$STARTED_PID
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    kill -0 "$SW_PID" 2>/dev/null || { tail -n 30 "$SW_DIR/switchyard.log" >&2; die "switchyard exited during start"; }
    code=$(curl -s -o "$TMP/health.json" -m 1 -w '%{http_code}' "http://127.0.0.1:$SW_ADMIN/health" 2>/dev/null || true)
    [[ $code == 200 ]] && break
    ((SECONDS < deadline)) || die "switchyard /health did not answer within ${READY_TIMEOUT}s"
    sleep 0.01
  done
  t_health=$(now_ms)
  c_h+=("$(cpu_ms "$SW_PID")")
  c_split+=("$(cpu_split "$SW_PID")")
  wait_status "$SW_HTTP" "$LIVE_HOST" 200 "$SW_PID" "$SW_DIR/switchyard.log"
  t_proxy=$(now_ms)
  t_h+=($((t_health - t0)))
  t_p+=($((t_proxy - t0)))
  if ((n < STARTS)); then # SIGINT: "exits at once"; bounded wait, then SIGKILL
    kill -INT "$SW_PID"
    for _ in $(seq 30); do kill -0 "$SW_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SW_PID" 2>/dev/null; then
      INT_HANGS+=("start $n: $(grep -m1 -o 'Accept() failed.*' "$SW_DIR/switchyard.log" | cut -c1-110)")
      kill -KILL "$SW_PID" 2>/dev/null || true
    fi
    wait "$SW_PID" 2>/dev/null || true
    forget_pids "$SW_PID"
    : >"$SW_DIR/switchyard.log"
  fi
done
say "   wall: /health 200 after median $(median1 "${t_h[@]}") ms (runs: ${t_h[*]} ms); first proxied 200 after median $(median1 "${t_p[@]}") ms (runs: ${t_p[*]} ms)"
say "   CPU time switchyard had used when /health answered: median $(median1 "${c_h[@]}") ms (runs: ${c_h[*]} ms; user/sys: ${c_split[*]} ms)"
say "   /health: $(tr -d '\n' <"$TMP/health.json")"
say "   SIGINT between starts: $((STARTS - 1 - ${#INT_HANGS[@]})) of $((STARTS - 1)) exited within 3 s${INT_HANGS[*]:+; STILL RUNNING (killed): ${INT_HANGS[*]}}"
grep -Eq "\"routes\": *$ROUTES[,}]" "$TMP/health.json" || die "/health does not report $ROUTES routes"
[[ $(status_of "$SW_HTTP" nohost.example.org) == 404 ]] || die "unknown host should get 404"
TOKEN=$(cat "$SW_DIR/state/admin.token")
sleep 1
RSS_START=$(rss_kib "$SW_PID")
say "   RSS after start: $(mib "$RSS_START") (VmHWM $(mib "$(hwm_kib "$SW_PID")"))"

# ---------------------------------------------------------------- A3. reloads
reload_once() { # v1|v2 -> sets RELOAD_MS; dies unless 200 with the expected route count
  local variant=$1 want=$ROUTES out code secs
  [[ $variant == v2 ]] && want=$((ROUTES + 1))
  use_conf "$variant"
  out=$(curl -s -m 60 -o "$TMP/reload.json" -w '%{http_code} %{time_total}' -X POST \
    -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SW_ADMIN/v1/reload") || true
  code=${out%% *}
  secs=${out#* }
  [[ $code == 200 ]] || { cat "$TMP/reload.json" >&2; die "reload answered '$code'"; }
  grep -Eq "\"routes\": *$want[,}]" "$TMP/reload.json" || { cat "$TMP/reload.json" >&2; die "reload: want $want routes"; }
  # The new table is live: the added host routes with v2 and is unknown (404) with v1.
  local added
  added=$(status_of "$SW_HTTP" "$ADDED_HOST")
  if [[ $variant == v2 ]]; then [[ $added == 200 ]] || die "after reload v2: $ADDED_HOST got $added, want 200"; fi
  if [[ $variant == v1 ]]; then [[ $added == 404 ]] || die "after reload v1: $ADDED_HOST got $added, want 404"; fi
  RELOAD_MS=$(awk -v s="$secs" 'BEGIN { printf "%.0f\n", s * 1000 }')
}

BASE_BAD=0
RELOAD_BAD=0
if [[ $PARTS == *A* ]]; then
say ""
say "-- A3. POST /v1/reload of $ROUTES routes (alternating two variants; the second adds $ADDED_HOST and its 200/404 is checked after each reload)"
times=()
variant=v2
cpus=()
for i in $(seq "$IDLE_RELOADS"); do
  c0=$(cpu_ms "$SW_PID")
  reload_once "$variant"
  times+=("$RELOAD_MS")
  cpus+=($(($(cpu_ms "$SW_PID") - c0)))
  [[ $variant == v2 ]] && variant=v1 || variant=v2
done
((IDLE_RELOADS)) && say "   idle: median $(median1 "${times[@]}") ms (runs: ${times[*]} ms); switchyard CPU per reload: median $(median1 "${cpus[@]}") ms (runs: ${cpus[*]} ms)"

wrk_summary() { # wrk output file -> "N req, X req/s, p50 .., p99 .., max .., non-2xx/3xx N, socket errors ..."
  awk '
    /requests in/ { req = $1 }
    /Requests\/sec/ { rps = $2 }
    /^    Latency/ { max = $4 }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    /Non-2xx or 3xx/ { bad = $NF }
    /Socket errors/ { sock = $0; sub(/^ +Socket errors: /, "", sock) }
    END { printf "%s req, %s req/s, p50 %s, p99 %s, max %s, non-2xx/3xx %d, socket errors: %s\n",
          req, rps, p50, p99, max, bad + 0, (sock == "" ? "none" : sock) }' "$1"
}
wrk_bad() { # non-2xx/3xx + socket errors (connect/read/write/timeout) from a wrk output
  awk '/Non-2xx or 3xx/ { b += $NF }
       /Socket errors/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { v = $i; sub(",", "", v); b += v } }
       END { print b + 0 }' "$1"
}

LOAD_S=$((RELOADS * RELOAD_GAP + 3))
run_load() { # id label with-reloads(0|1)
  local id=$1 label=$2 with=$3
  rm -f "$TMP/stop"
  # a curl loop: one new connection per request, the status of each written down
  (
    while [[ ! -e $TMP/stop ]]; do
      curl -s -o /dev/null -m 5 -w '%{http_code}\n' -H "Host: $LIVE_HOST" "http://127.0.0.1:$SW_HTTP/" || echo "curl-exit-$?"
    done
  ) >"$TMP/curl-$id.codes" 2>&1 &
  local loop_pid=$!
  PIDS+=("$loop_pid")
  wrk -t1 -c"$WRK_CONNS" -d"${LOAD_S}s" --latency -H "Host: $LIVE_HOST" "http://127.0.0.1:$SW_HTTP/" >"$TMP/wrk-$id.out" 2>&1 &
  local wrk_pid=$!
  PIDS+=("$wrk_pid")
  RELOAD_TIMES=()
  if ((with)); then
    sleep 1
    local v=v2
    for _ in $(seq "$RELOADS"); do
      local t0 t1
      t0=$(now_ms)
      reload_once "$v"
      RELOAD_TIMES+=("$RELOAD_MS")
      [[ $v == v2 ]] && v=v1 || v=v2
      t1=$(now_ms)
      local rest=$((RELOAD_GAP * 1000 - (t1 - t0)))
      ((rest > 0)) && sleep "$(awk -v r="$rest" 'BEGIN { printf "%.3f", r / 1000 }')"
    done
  fi
  wait "$wrk_pid" || { sw_alive "during the $id load"; die "wrk failed: $(cat "$TMP/wrk-$id.out")"; }
  forget_pids "$wrk_pid"
  touch "$TMP/stop"
  wait "$loop_pid" || true
  forget_pids "$loop_pid"
  local total bad
  total=$(wc -l <"$TMP/curl-$id.codes")
  bad=$(grep -vc '^200$' "$TMP/curl-$id.codes" || true)
  say "   $label wrk -t1 -c$WRK_CONNS ${LOAD_S}s (keep-alive): $(wrk_summary "$TMP/wrk-$id.out")"
  say "   $label curl loop (new connection each): $total requests, non-200: $bad"
  LOAD_BAD=$((bad + $(wrk_bad "$TMP/wrk-$id.out")))
  sw_alive "after the $id load"
}

run_load baseline "baseline (no reload):" 0
BASE_BAD=$LOAD_BAD
run_load reloads "during $RELOADS reloads:" 1
RELOAD_BAD=$LOAD_BAD
say "   reload under load: median $(median1 "${RELOAD_TIMES[@]}") ms (runs: ${RELOAD_TIMES[*]} ms)"
say "   failed requests: baseline $BASE_BAD, during reloads $RELOAD_BAD (non-2xx + socket errors + curl non-200)"
RSS_RELOADED=$(rss_kib "$SW_PID")
say "   RSS: after start $(mib "$RSS_START") -> after $((IDLE_RELOADS + RELOADS)) reloads and load $(mib "$RSS_RELOADED") (VmHWM $(mib "$(hwm_kib "$SW_PID")"))"
fi

# ---------------------------------------------------------------- B. idle keep-alive connections
cat >"$TMP/idle_conns.py" <<'PY'
"""Open N keep-alive connections, send one complete GET on each, read the whole response,
then hold them idle until the file RELEASE exists (or TIMEOUT s pass); then close them all."""
import asyncio, os, sys, time

host, port, n, hosthdr, conc, release, timeout = sys.argv[1:]
port, n, conc, timeout = int(port), int(n), int(conc), float(timeout)
req = f"GET / HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: scale-idle\r\n\r\n".encode()

async def one(sem, conns, stats):
    async with sem:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(req)
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")[1]
            hdrs = {}
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip().lower()
            if "content-length" in hdrs:
                await r.readexactly(int(hdrs["content-length"]))
            elif hdrs.get("transfer-encoding") == "chunked":
                await asyncio.wait_for(r.readuntil(b"0\r\n\r\n"), 30)
            if hdrs.get("connection") == "close":
                stats["close_hdr"] += 1
            stats[status] = stats.get(status, 0) + 1
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001
            stats["errors"] += 1
            stats.setdefault("first_error", repr(e))

async def main():
    sem = asyncio.Semaphore(conc)
    conns, stats = [], {"errors": 0, "close_hdr": 0}
    t0 = time.monotonic()
    await asyncio.gather(*(one(sem, conns, stats) for _ in range(n)))
    print(f"READY open={len(conns)} secs={time.monotonic() - t0:.1f} stats={stats}", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    closed_by_server = sum(1 for r, _ in conns if r.at_eof())
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.2)
    print(f"CLOSED held={len(conns)} closed_by_server_while_idle={closed_by_server}", flush=True)

asyncio.run(main())
PY

hold_round() { # name port pid rss-function tag: open CONNS, hold, close; sets AFTER CLOSED EST LINE OPENED
  local name=$1 port=$2 pid=$3 rssf=$4 tag=$5
  local out=$TMP/idle-$name-$tag.out
  rm -f "$TMP/release"
  python3 "$TMP/idle_conns.py" 127.0.0.1 "$port" "$CONNS" "$LIVE_HOST" "$OPEN_CONCURRENCY" "$TMP/release" 120 \
    >"$out" 2>&1 &
  local cpid=$!
  PIDS+=("$cpid")
  local deadline=$((SECONDS + 90))
  until grep -q '^READY' "$out"; do
    kill -0 "$cpid" 2>/dev/null || { cat "$out" >&2; die "idle client against $name died"; }
    ((SECONDS < deadline)) || die "idle client against $name: not READY within 90 s"
    sleep 0.2
  done
  sleep "$SETTLE"
  AFTER=$($rssf "$pid")
  EST=$(established "$port")
  LINE=$(grep '^READY' "$out")
  touch "$TMP/release"
  wait "$cpid" || true
  forget_pids "$cpid"
  CLOSED_LINE=$(grep '^CLOSED' "$out" | sed 's/^CLOSED //')
  sleep 1
  CLOSED=$($rssf "$pid")
  OPENED=$(sed -E 's/.*open=([0-9]+).*/\1/' <<<"$LINE")
  ((OPENED > 0)) || die "idle client against $name opened no connection: $LINE"
}

idle_test() { # name port pid rss-function -> says lines, sets PER_CONN
  local name=$1 port=$2 pid=$3 rssf=$4
  local before
  # warm up: a few requests, so lazily allocated per-thread state is already there
  for _ in $(seq 20); do status_of "$port" "$LIVE_HOST" >/dev/null; done
  sleep 1
  before=$($rssf "$pid")
  hold_round "$name" "$port" "$pid" "$rssf" 1
  PER_CONN=$(awk -v a="$AFTER" -v b="$before" -v n="$OPENED" 'BEGIN { printf "%.1f", (a - b) / n }')
  say "   $name: client: ${LINE#READY }"
  say "   $name: $CLOSED_LINE; established at the server port while held: $EST"
  say "   $name: RSS before $(mib "$before") -> with $OPENED idle keep-alive connections $(mib "$AFTER") -> 1 s after closing them $(mib "$CLOSED")"
  say "   $name: $PER_CONN KiB per idle keep-alive connection"
  if ((REOPEN)); then # is the memory kept after close reused (allocator cache) or lost (leak)?
    local first_closed=$CLOSED
    hold_round "$name" "$port" "$pid" "$rssf" 2
    say "   $name: again ($OPENED opened, $EST established): RSS $(mib "$first_closed") -> $(mib "$AFTER") -> after closing $(mib "$CLOSED") ($(awk -v a="$AFTER" -v b="$first_closed" -v n="$OPENED" 'BEGIN { printf "%+.1f", (a - b) / n }') KiB per connection on top of the first round)"
  fi
}

if [[ $PARTS == *B* ]]; then
say ""
say "-- B. $CONNS idle keep-alive client connections (each sent one GET Host: $LIVE_HOST and read the 200), held ${SETTLE}s"
sw_alive "before the idle connections"
idle_test switchyard "$SW_HTTP" "$SW_PID" rss_kib
sw_alive "after the idle connections"
SW_PER_CONN=$PER_CONN

if ((NGINX_CMP)); then
  NG_DIR=$TMP/nginx
  mkdir -p "$NG_DIR"
  {
    nginx_common "$NG_DIR" $((CONNS + 1000))
    echo "worker_rlimit_nofile $FD_LIMIT;"
    echo "worker_processes $THREADS;"
    echo "http {"
    nginx_http_common "$NG_DIR" 300s
    cat <<EOF
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NG_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
  } >"$NG_DIR/nginx.conf"
  start_nginx nginx "$NG_DIR"
  NG_PID=$STARTED_PID
  wait_status "$NG_PORT" "$LIVE_HOST" 200 "$NG_PID" "$NG_DIR/error.log"
  say "   (nginx $(nginx -v 2>&1 | sed 's/.*\///'), reverse proxy to the same upstream, worker_processes $THREADS, keepalive_timeout 300s; RSS = master + workers)"
  idle_test nginx "$NG_PORT" "$NG_PID" tree_rss_kib
  say "   switchyard / nginx per connection: $(awk -v s="$SW_PER_CONN" -v n="$PER_CONN" 'BEGIN { if (n > 0) printf "%.1fx", s / n; else print "n/a" }')"
fi
fi

say ""
say "== done; load average now: $(loadavg)"
((BASE_BAD == 0 && RELOAD_BAD == 0)) || die "some requests failed (baseline $BASE_BAD, during reloads $RELOAD_BAD)"
