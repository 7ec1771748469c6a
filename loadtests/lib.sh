# lib.sh — shared helpers of the load-test scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034 # W_*, RUN_RC, …: globals set for the scripts that source it
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# The caller sets `set -euo pipefail` and, before lib_init, may set:
#   LIB_TAG        prefix of log lines (default: bench)
#   READY_TIMEOUT  seconds wait_ready waits for a process (default 30)
#   KEEP_TMP       1 = keep the temp dir at exit (it is always kept on failure)
#   FREE_PORT_MIN  lowest port free_port hands out (default 10000)
# lib_init NAME creates the temp dir $TMP and installs the exit trap, which stops every
# process registered in PIDS (start_bg/start_nginx do that), a running wrk (run_wrk) or
# bounded tool (run_timed), and runs the commands of ON_EXIT_FIRST / ON_EXIT_KEEP.

LIB_TAG=${LIB_TAG:-bench}
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
LIB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$LIB_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LIB_TAG" "$*" >&2; exit 1; }

# require_uint VAR... : each must be a non-negative integer
require_uint() {
  local v
  for v in "$@"; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
  done
}

# ---------------------------------------------------------------- tools
# ensure_pkgs CMD:PKG[,PKG]... — apt-get install the packages of each missing command
ensure_pkgs() {
  local missing=() spec pkgs
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 && continue
    IFS=, read -ra pkgs <<<"${spec#*:}"
    missing+=("${pkgs[@]}")
  done
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
  # Debian's packages may start a system nginx/haproxy; they are not ours and not used here.
}

# ensure_built PATH CARGO-ARGS... — cargo build --release CARGO-ARGS if PATH is missing.
# An existing binary is used as is (rebuild it yourself after changing the sources).
ensure_built() {
  local bin=$1
  shift
  [[ -x $bin ]] && return 0
  cargo_release "$bin" "$@"
}

# ensure_fresh SRC PATH CARGO-ARGS... — ensure_built, and also rebuild when SRC is newer than
# PATH (for a scenario's own tool in examples/, which changes with the scenario)
ensure_fresh() {
  local src=$1 bin=$2
  shift 2
  if [[ -x $bin && $src -nt $bin ]]; then cargo_release "$bin" "$@"; else ensure_built "$bin" "$@"; fi
}

# cargo_release PATH CARGO-ARGS... — cargo build --release CARGO-ARGS, then PATH must exist
cargo_release() {
  local bin=$1
  shift
  command -v cargo >/dev/null 2>&1 || die "$bin missing and cargo not found"
  log "building: cargo build --release $* (waits if another cargo holds the lock) …"
  (cd "$LIB_REPO" && timeout "${BUILD_TIMEOUT:-3600}" cargo build --release "$@") ||
    die "cargo build --release $* failed"
  [[ -x $bin ]] || die "$bin still missing after the build"
}

# "built 2025-01-01T12:00Z" (+ a warning when a source file is newer than the binary)
build_note() {
  local bin=$1 newer
  newer=$(cd "$LIB_REPO" && find src examples Cargo.toml Cargo.lock -type f -newer "$bin" -print -quit 2>/dev/null) || true
  printf 'built %s%s' "$(date -u -r "$bin" +%Y-%m-%dT%H:%MZ)" "${newer:+ (OLDER than $newer: rebuild?)}"
}

git_rev() {
  printf '%s%s' "$(git -C "$LIB_REPO" rev-parse --short HEAD 2>/dev/null || echo 'no-commit')" \
    "$(git -C "$LIB_REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- temp dir, processes, cleanup
PIDS=()   # every long-running process we started
WRK_PID=  # the wrk (under timeout) running now, if any
FG_PID=   # the tool run_timed runs now, if any
ON_EXIT_FIRST=() # commands the exit trap runs before it stops the processes
ON_EXIT_KEEP=()  # commands the exit trap runs, after stopping them, when the temp dir is kept

lib_init() { # NAME
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  chmod 755 "$TMP" # nginx workers may run as an unprivileged user
  trap lib_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# stop_pids PID... — TERM, wait up to 5 s, then KILL them and their children
stop_pids() {
  local p alive
  (($#)) || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null; then
      pkill -KILL -P "$p" 2>/dev/null || true # the stragglers' children (nginx workers)
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}

# stop_started PID... — stop_pids, then forget them (so the exit trap never signals a reused pid)
stop_started() {
  stop_pids "$@"
  forget_pids "$@"
}

# forget_pids PID... — drop them from PIDS (processes already waited for)
forget_pids() {
  local keep=() p q gone
  for p in "${PIDS[@]}"; do
    gone=0
    for q in "$@"; do [[ $p == "$q" ]] && gone=1; done
    ((gone)) || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

lib_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local cmd p
  for cmd in "${ON_EXIT_FIRST[@]}"; do eval "$cmd" || true; done
  for p in "${WRK_PID:-}" "${FG_PID:-}"; do
    [[ -n $p ]] || continue
    kill -TERM "$p" 2>/dev/null || true # timeout(1) passes it on to wrk / the tool
    wait "$p" 2>/dev/null || true
  done
  stop_pids "${PIDS[@]}"
  if [[ -n ${TMP:-} ]]; then
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
      for cmd in "${ON_EXIT_KEEP[@]}"; do eval "$cmd" || true; done
      log "temp dir kept: $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}

# start_bg LOGFILE CMD... — run CMD in the background (stdout+stderr to LOGFILE), register it,
# set STARTED_PID. Use `exec` inside a subshell command so the pid is the program itself.
start_bg() {
  local logf=$1
  shift
  "$@" >"$logf" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# A loopback port nobody uses, below the kernel's ephemeral range (where the ports of
# outgoing connections and of "bind to port 0" come from — a concurrent test suite or wrk
# could take a port there between our check and the bind).
free_port() {
  local p lo _hi lo_port=${FREE_PORT_MIN:-10000} hi_port=59999
  read -r lo _hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=0
  if ((lo > lo_port + 1000)); then hi_port=$((lo - 1)); else lo_port=20000; fi
  for _ in $(seq 200); do
    p=$((lo_port + (RANDOM * 32768 + RANDOM) % (hi_port - lo_port + 1)))
    # handed out before (free_port runs in $(…), so remember them in a file)
    [[ -n ${TMP:-} && -f $TMP/ports.used ]] && grep -qx "$p" "$TMP/ports.used" && continue
    (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue # someone listens
    if command -v ss >/dev/null 2>&1 && [[ -n $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]; then
      continue # bound by some connection
    fi
    [[ -n ${TMP:-} ]] && echo "$p" >>"$TMP/ports.used"
    echo "$p"
    return 0
  done
  die "no free port found"
}

# wait_ready NAME PID LOGFILE URL [CURL-ARGS…] — until URL answers anything at all (bounded);
# PID must stay alive meanwhile
wait_ready() {
  local name=$1 pid=$2 logf=$3 url=$4 code
  shift 4
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logf" >&2 || true; die "$name (pid $pid) exited during start"; }
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$@" "$url" 2>/dev/null || true)
    [[ -n $code && $code != 000 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name did not answer on $url within ${READY_TIMEOUT}s"
}

# wait_until NAME PID LOGFILE WHAT CMD… — run CMD every WAIT_POLL s (default 0.1) until it
# succeeds, at most READY_TIMEOUT s, else tail LOGFILE and die "NAME WHAT within …s". PID must
# stay alive meanwhile: if it exits and LOGFILE says "Address already in use", return 1 (a
# port was taken meanwhile: the caller retries with others), else die.
wait_until() {
  local name=$1 pid=$2 logf=$3 what=$4
  shift 4
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      grep -q 'Address already in use' "$logf" 2>/dev/null &&
        { log "a port was taken meanwhile; retrying with others"; return 1; }
      tail -n 30 "$logf" >&2 || true
      die "$name (pid $pid) exited during start"
    fi
    "$@" && return 0
    sleep "${WAIT_POLL:-0.1}"
  done
  tail -n 30 "$logf" >&2 || true
  die "$name $what within ${READY_TIMEOUT}s"
}

# check_ok NAME LOGFILE URL [CURL-ARGS…] — one request must come back 200 "ok"
check_ok() {
  local name=$1 logf=$2 url=$3 out code body
  shift 3
  out=$(curl -s -m 5 -w '\n%{http_code}' "$@" "$url" || true)
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  body=${body%$'\n'} # "ok\n"
  if [[ $code != 200 || $body != ok ]]; then
    tail -n 30 "$logf" >&2 || true
    die "$name: sanity request to $url got status '$code' body '${body:0:200}' (want 200 'ok')"
  fi
}

# ---------------------------------------------------------------- nginx
nginx_common() { # DIR [WORKER_CONNECTIONS (4096)]: pid/temp paths inside DIR, error log to a file
  cat <<EOF
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${2:-4096}; }
EOF
}
nginx_http_common() { # DIR [KEEPALIVE_TIMEOUT (75s)]
  cat <<EOF
    access_log off;
    default_type text/plain;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_timeout ${2:-75s};
    keepalive_requests 1000000;
EOF
}

start_nginx() { # NAME DIR (DIR/nginx.conf) -> STARTED_PID (the master)
  local name=$1 dir=$2
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 2>"$dir/test.log" ||
    { cat "$dir/test.log" >&2; die "$name: nginx -t failed"; }
  start_bg "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
}

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)

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

# µs of CPU per unit: TICKS-DELTA COUNT
ticks_per_us() {
  awk -v d="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.2f", (n > 0) ? d / hz * 1e6 / n : 0 }'
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

# run_wrk OUTFILE SECONDS WRK-ARGS… — wrk -d SECONDS WRK-ARGS, output to OUTFILE. In the
# background + wait, so that INT/TERM reach the trap at once. Prefix with `env X=Y` through
# WRK_ENV (an array) if needed.
WRK_ENV=()
run_wrk() {
  local out=$1 secs=$2
  shift 2
  timeout $((secs + 30)) env "${WRK_ENV[@]}" wrk -d"${secs}s" "$@" >"$out" 2>&1 &
  WRK_PID=$!
  local rc=0
  wait "$WRK_PID" || rc=$?
  WRK_PID=
  ((rc == 0)) || { cat "$out" >&2; die "wrk failed (exit $rc): wrk $*"; }
}

# run_timed OUTFILE SECONDS CMD… — timeout SECONDS CMD, stdout+stderr to OUTFILE, in the
# background + wait (INT/TERM reach the trap at once; the exit trap stops it). Sets RUN_RC
# (124: timed out).
run_timed() {
  local out=$1 secs=$2
  shift 2
  timeout "$secs" "$@" >"$out" 2>&1 &
  FG_PID=$!
  RUN_RC=0
  wait "$FG_PID" || RUN_RC=$?
  FG_PID=
}

# parse_wrk OUTFILE — sets W_REQS W_RPS W_P50 W_P99 (µs; needs --latency) W_ERRS
parse_wrk() {
  local out=$1 non2xx sockerr p50 p99
  W_REQS=$(awk '/requests in/ { print $1; exit }' "$out")
  W_RPS=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
  p50=$(awk '/^ +50% / { print $2; exit }' "$out")
  p99=$(awk '/^ +99% / { print $2; exit }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$out")
  sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10; exit }' "$out")
  [[ -n $W_REQS && -n $W_RPS && -n $p50 && -n $p99 ]] || { cat "$out" >&2; die "could not parse wrk output ($out)"; }
  W_P50=$(to_us "$p50")
  W_P99=$(to_us "$p99")
  W_ERRS=$((${non2xx:-0} + ${sockerr:-0}))
}

# parse_h2load OUTFILE — sets W_REQS (requests done) W_RPS W_MEAN W_MAX (µs: mean and max of
# h2load's "time for request"; it reports min/max/mean/sd, no percentiles) W_ERRS (h2load's
# "failed": stream/connection errors, timeouts and HTTP-level failures)
parse_h2load() {
  local out=$1 mean max
  W_RPS=$(awk '/^finished in/ { print $4; exit }' "$out")
  W_REQS=$(awk '/^requests:/ { print $6; exit }' "$out")
  W_ERRS=$(awk '/^requests:/ { print $10; exit }' "$out")
  max=$(awk '/^time for request:/ { print $5; exit }' "$out")
  mean=$(awk '/^time for request:/ { print $6; exit }' "$out")
  [[ -n $W_REQS && -n $W_RPS && -n $W_ERRS && -n $mean && -n $max ]] ||
    { cat "$out" >&2; die "could not parse h2load output ($out)"; }
  W_MEAN=$(to_us "$mean")
  W_MAX=$(to_us "$max")
}
