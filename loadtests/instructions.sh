#!/usr/bin/env bash
# instructions.sh — user-space instructions per proxied request, switchyard and nginx side by
# side, counted by valgrind's callgrind.
#
# Why: CPU time per request on a shared 2-core box moves by ±20 % within the hour (see
# bench.sh); an instruction count does not depend on what else the machine runs, so it shows
# what a change to the request path costs or saves. It counts user space only (the kernel's
# share — about 60 % of a proxied request here — is not in it) and says nothing about cache
# misses or latency: bench.sh stays the measure of speed, this one is the measure of work.
#
# Each proxy runs alone under callgrind, in front of the same upstream (an nginx answering
# `200 ok`, not under valgrind), with one worker. h2load sends WARM keep-alive requests
# (HTTP/1.1, CONNS connections), the counters are zeroed, REQUESTS more are sent, and the
# counters are dumped: instructions / REQUESTS is the figure. Startup and warm-up are not in
# it.
#
# Usage: bash loadtests/instructions.sh
#        SW_BIN=/path/to/other/switchyard bash loadtests/instructions.sh
# Env (defaults in brackets):
#   REQUESTS [20000]  WARM [2000]  CONNS [32]  PROXIES ["switchyard nginx"]
#   SW_BIN [target/release/switchyard]  SW_LOG [warn]  TOP [0] (list the TOP costliest
#   functions of each proxy, inclusive)  READY_TIMEOUT [60]  KEEP_TMP [0]
set -euo pipefail

REQUESTS=${REQUESTS:-20000}
WARM=${WARM:-2000}
CONNS=${CONNS:-32}
PROXIES=${PROXIES:-switchyard nginx}
SW_LOG=${SW_LOG:-warn}
TOP=${TOP:-0}
READY_TIMEOUT=${READY_TIMEOUT:-60} # a proxy under valgrind starts slowly
HOST_NAME=bench.local

# shellcheck disable=SC2034 # LIB_TAG, KEEP_TMP: read by lib.sh
LIB_TAG=instructions
# shellcheck source=loadtests/lib.sh disable=SC1091 # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}

require_uint REQUESTS WARM CONNS TOP READY_TIMEOUT
((REQUESTS >= 1 && CONNS >= 1)) || { echo "REQUESTS and CONNS must be >= 1" >&2; exit 2; }
read -ra PROXY_LIST <<<"$PROXIES"
for p in "${PROXY_LIST[@]}"; do
  [[ $p == switchyard || $p == nginx ]] || { echo "PROXIES: unknown proxy '$p' (switchyard nginx)" >&2; exit 2; }
done

ensure_pkgs nginx:nginx valgrind:valgrind callgrind_annotate:valgrind h2load:nghttp2-client curl:curl
[[ " ${PROXY_LIST[*]} " != *" switchyard "* || -x $SW_BIN ]] || ensure_built "$SW_BIN" --bin switchyard

lib_init instructions

# ---------------------------------------------------------------- the upstream (not under valgrind)
UP=$TMP/upstream
mkdir -p "$UP"
UP_PORT=$(free_port)
{
  nginx_common "$UP"
  echo "worker_processes 1;"
  echo "http {"
  nginx_http_common "$UP"
  printf '    server { listen 127.0.0.1:%s; location / { return 200 "ok\\n"; } }\n' "$UP_PORT"
  echo "}"
} >"$UP/nginx.conf"
start_nginx upstream "$UP"
wait_ready upstream "$STARTED_PID" "$UP/error.log" "http://127.0.0.1:$UP_PORT/"

# ---------------------------------------------------------------- one proxy under callgrind
# measure NAME PORT CMD… — prints "NAME instructions/request"; TOP > 0 adds its costliest
# functions
measure() {
  local name=$1 port=$2 pid dump total ok
  shift 2
  start_bg "$TMP/$name.log" valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$name.%p" "$@"
  pid=$STARTED_PID
  wait_ready "$name" "$pid" "$TMP/$name.log" "http://127.0.0.1:$port/" -H "Host: $HOST_NAME"
  h2load --h1 -n "$WARM" -c "$CONNS" -H ":authority: $HOST_NAME" "http://127.0.0.1:$port/" >"$TMP/$name-warm.txt" 2>&1 ||
    die "$name: h2load (warm-up) failed: $(tail -n 3 "$TMP/$name-warm.txt")"
  callgrind_control -z "$pid" >/dev/null 2>&1
  h2load --h1 -n "$REQUESTS" -c "$CONNS" -H ":authority: $HOST_NAME" "http://127.0.0.1:$port/" >"$TMP/$name-run.txt" 2>&1 ||
    die "$name: h2load failed: $(tail -n 3 "$TMP/$name-run.txt")"
  callgrind_control -d "$pid" >/dev/null 2>&1
  ok=$(awk '/^status codes:/{print $3}' "$TMP/$name-run.txt")
  [[ $ok == "$REQUESTS" ]] || die "$name: $ok of $REQUESTS requests answered 2xx ($(grep '^status codes' "$TMP/$name-run.txt"))"
  stop_pids "$pid"
  forget_pids "$pid"
  dump=$(find "$TMP" -maxdepth 1 -name "cg-$name.$pid.*" | head -n 1)
  [[ -n $dump ]] || die "$name: no callgrind dump"
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
  printf '%-12s %8d instructions/request  (%d requests, all 2xx)\n' "$name" $((total / REQUESTS)) "$REQUESTS"
  if ((TOP > 0)); then
    callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
      awk -v n="$REQUESTS" '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ {c=$1; gsub(",", "", c); $1=""; $2=""; printf "    %8d  %s\n", c / n, $0}' |
      grep -v -e 'clone.S' -e 'pthread_create' -e 'thread_start' -e 'call_once' -e 'backtrace' -e 'enter_runtime' -e 'block_on' |
      head -n "$TOP" | cut -c1-200
  fi
}

log "$(date -u +%FT%TZ), $(nproc) cpu(s), $REQUESTS requests after $WARM, h2load --h1 -c$CONNS; $(valgrind --version)"
for p in "${PROXY_LIST[@]}"; do
  case $p in
    switchyard)
      SW=$TMP/switchyard
      mkdir -p "$SW"
      SW_PORT=$(free_port)
      ADMIN_PORT=$(free_port)
      cat >"$SW/switchyard.toml" <<EOF
[listen]
http = "127.0.0.1:$SW_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[server]
threads = 1

[state]
dir = "$SW/state"

[[route]]
host = "$HOST_NAME"
service = "app"

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
      log "switchyard: $SW_BIN, $(build_note "$SW_BIN")"
      SWITCHYARD_LOG=$SW_LOG measure switchyard "$SW_PORT" "$SW_BIN" run --config "$SW/switchyard.toml"
      ;;
    nginx)
      NG=$TMP/nginx
      mkdir -p "$NG"
      NG_PORT=$(free_port)
      {
        nginx_common "$NG" | sed 's/^master_process on;/master_process off;/'
        echo "worker_processes 1;"
        echo "http {"
        nginx_http_common "$NG"
        cat <<EOF
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NG_PORT;
        server_name $HOST_NAME;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
      } >"$NG/nginx.conf"
      nginx -t -q -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" 2>"$NG/test.log" ||
        { cat "$NG/test.log" >&2; die "nginx: nginx -t failed"; }
      log "nginx: $(nginx -v 2>&1)"
      measure nginx "$NG_PORT" nginx -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf"
      ;;
  esac
done
