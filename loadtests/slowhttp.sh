#!/usr/bin/env bash
# slowhttp.sh — slowhttptest (slowloris -H, slow body -B, slow read -X) against switchyard and
# nginx side by side, both reverse proxies in front of the same upstream, with the same
# timeouts (switchyard's [limits] defaults = nginx's: whole head 10 s, body 60 s between reads,
# idle 60 s, send 60 s). See loadtests/README.md, "Robustness (issue 10)".
#
#   bash loadtests/slowhttp.sh                        # 3 modes x 2 proxies, -c 500, 60 s each
#   MODES=H DURATION=30 bash loadtests/slowhttp.sh    # slowloris only, 30 s
#   PROXIES=switchyard SW_BIN=/tmp/old/switchyard bash loadtests/slowhttp.sh
#
# Per mode and proxy it prints: slowhttptest's exit status, peak and final connections it
# held open, when the server had closed 90 % of them (the time it held them), how many of
# the probe seconds the service was available, and the RSS of the proxy at the peak and end.
set -euo pipefail
LIB_TAG=slowhttp
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-H B X}
PROXIES=${PROXIES:-switchyard nginx}
CONNS=${CONNS:-500}
RATE=${RATE:-200}
DURATION=${DURATION:-60}
INTERVAL=${INTERVAL:-10}
PROBE=${PROBE:-5}
THREADS=${THREADS:-2}
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}
SW_LOG=${SW_LOG:-warn}
SW_LIMITS=${SW_LIMITS:-} # extra lines for switchyard's [limits] (default: none, the built-in defaults)
require_uint CONNS RATE DURATION INTERVAL PROBE THREADS

ensure_pkgs slowhttptest:slowhttptest nginx:nginx curl:curl
[[ " $PROXIES " == *" switchyard "* ]] && ensure_built "$SW_BIN" --bin switchyard

lib_init slowhttp
ON_EXIT_KEEP+=("log \"slowhttptest CSV/HTML and logs in $TMP\"")

# ---------------------------------------------------------------- upstream: nginx, static
UP_PORT=$(free_port)
UP=$TMP/upstream
mkdir -p "$UP/www"
echo ok >"$UP/www/index.html"
head -c 1048576 /dev/zero | tr '\0' 'a' >"$UP/www/big" # slow read needs a response bigger than socket buffers
{
  nginx_common "$UP"
  echo "worker_processes 1;"
  echo "http {"
  nginx_http_common "$UP"
  cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        root $UP/www;
        # "/" reads the whole request body before it answers (through a proxy_pass to itself,
        # which buffers the body): a backend that answered a slow POST at once would end the
        # slow-body test early for a streaming proxy but not for a buffering one
        client_body_timeout 600s;
        client_max_body_size 10m;
        location = / { proxy_pass http://127.0.0.1:$UP_PORT/ok; }
        location = /ok { return 200 "ok\n"; }
        location / { }
    }
}
EOF
} >"$UP/nginx.conf"
start_nginx upstream "$UP"
wait_ready upstream "$STARTED_PID" "$UP/error.log" "http://127.0.0.1:$UP_PORT/"
check_ok upstream "$UP/error.log" "http://127.0.0.1:$UP_PORT/"

# ---------------------------------------------------------------- proxies
declare -A PID=() PORT=() LOGF=()
start_proxy() { # NAME
  local name=$1 dir=$TMP/$1 port
  port=$(free_port)
  mkdir -p "$dir"
  case $name in
    nginx)
      {
        nginx_common "$dir" 8192
        echo "worker_processes $THREADS;"
        echo "worker_rlimit_nofile 20000;"
        echo "http {"
        nginx_http_common "$dir" 60s
        cat <<EOF
    client_header_timeout 10s;
    client_body_timeout 60s;
    send_timeout 60s;
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
      } >"$dir/nginx.conf"
      start_nginx nginx "$dir"
      LOGF[$name]=$dir/error.log
      ;;
    switchyard)
      cp "$SW_BIN" "$dir/switchyard"
      local limits=
      [[ -n $SW_LIMITS ]] && limits=$'[limits]\n'"$SW_LIMITS"
      cat >"$dir/sw.toml" <<EOF
[listen]
http = "127.0.0.1:$port"
admin = "127.0.0.1:$(free_port)"

[server]
threads = $THREADS

[state]
dir = "state"

$limits

[[route]]
host = "127.0.0.1"
service = "app"

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
      "$dir/switchyard" check --config "$dir/sw.toml" >"$dir/check.log" 2>&1 ||
        { cat "$dir/check.log" >&2; die "switchyard check failed"; }
      start_bg "$dir/switchyard.log" bash -c 'cd "$1" && SWITCHYARD_LOG=$2 exec ./switchyard run --config sw.toml' \
        _ "$dir" "$SW_LOG"
      LOGF[$name]=$dir/switchyard.log
      ;;
    *) die "unknown proxy $name" ;;
  esac
  PID[$name]=$STARTED_PID
  PORT[$name]=$port
  wait_ready "$name" "$STARTED_PID" "${LOGF[$name]}" "http://127.0.0.1:$port/"
  check_ok "$name" "${LOGF[$name]}" "http://127.0.0.1:$port/"
}

rss_tree_kb() { # PID -> VmRSS of it and its children (nginx master + workers)
  local root=$1 total=0 p
  for p in "$root" $(pgrep -P "$root" 2>/dev/null || true); do
    total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# ---------------------------------------------------------------- runs
mode_args() { # MODE PORT
  case $1 in
    H) echo "-H -i $INTERVAL -u http://127.0.0.1:$2/" ;;
    B) echo "-B -i $INTERVAL -s 65536 -u http://127.0.0.1:$2/" ;;
    X) echo "-X -k 3 -n 5 -w 512 -y 1024 -z 32 -u http://127.0.0.1:$2/big" ;;
    *) die "unknown mode $1 (H, B or X)" ;;
  esac
}
mode_name() { case $1 in H) echo "slowloris (-H)" ;; B) echo "slow body (-B)" ;; X) echo "slow read (-X)" ;; esac; }

declare -A RESULT=()
one_test() { # MODE PROXY
  local mode=$1 name=$2 pid=${PID[$2]} port=${PORT[$2]} out=$TMP/$1-$2 rss_peak=0 rss
  log "$(mode_name "$mode") against $name: -c $CONNS -r $RATE -l $DURATION"
  # shellcheck disable=SC2046
  timeout $((DURATION + 60)) slowhttptest -g -o "$out" -c "$CONNS" -r "$RATE" -l "$DURATION" -p "$PROBE" \
    $(mode_args "$mode" "$port") >"$out.txt" 2>&1 &
  FG_PID=$!
  while kill -0 "$FG_PID" 2>/dev/null; do
    rss=$(rss_tree_kb "$pid")
    ((rss > rss_peak)) && rss_peak=$rss
    sleep 1
  done
  wait "$FG_PID" || true
  FG_PID=
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "${LOGF[$name]}" >&2; die "$name (pid $pid) died during the test"; }
  local status
  status=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$out.txt" | awk -F': *' '/^Exit status:/ { print $2 }' | tail -n 1)
  # CSV: Seconds,Closed,Pending,Connected,Service Available
  RESULT[$mode|$name]=$(awk -F, -v st="${status:-?}" -v rss="$rss_peak/$(rss_tree_kb "$pid")" '
    NR == 1 { next }
    { t = $1; closed = $2; conn = $4; avail = $5; n++
      if (conn > peak) { peak = conn; tpeak = t }
      if (avail + 0 > 0) up++
      row[n] = t; c[n] = conn; cl[n] = closed
      last_conn = conn; last_t = t }
    END {
      held = "-"
      if (peak > 0) {
        held = "> " last_t " s"
        for (i = 1; i <= n; i++) if (row[i] > tpeak && c[i] <= peak * 0.1) { held = row[i] " s"; break }
      }
      # slowhttptest stops as soon as the server has closed every connection; its last CSV
      # row is written before it notices
      if (st ~ /No open connections left/) { if (held ~ /^>/) held = last_t " s"; last_conn = 0 }
      printf "%s|%d|%d|%s|%d/%d|%s", st, peak, last_conn, held, up, n, rss
    }' "$out.csv")
  log "  -> $(tr '|' ' ' <<<"${RESULT[$mode|$name]}")"
}

echo "== slowhttp: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r), load average at start $(loadavg)"
echo "== $(slowhttptest -h 2>&1 | awk '/version/ { print "slowhttptest " $NF; exit }'), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
if [[ " $PROXIES " == *" switchyard "* ]]; then
  echo "== switchyard binary $SW_BIN ($(build_note "$SW_BIN"); repo at $(git_rev)), threads $THREADS, [limits] ${SW_LIMITS:-built-in defaults}"
fi
echo "== nginx: worker_processes $THREADS, client_header_timeout 10s, client_body_timeout 60s, send_timeout 60s, keepalive_timeout 60s"
echo "== slowhttptest -c $CONNS -r $RATE -l $DURATION -p $PROBE; -H/-B: -i $INTERVAL (-B -s 65536); -X: -k 3 -n 5 -w 512 -y 1024 -z 32, GET /big (1 MiB)"
for p in $PROXIES; do start_proxy "$p"; done
for m in $MODES; do
  for p in $PROXIES; do one_test "$m" "$p"; done
done

echo
echo "== summary: per test, connections slowhttptest held open (peak, at the end), when the server had"
echo "   closed 90 % of them (held until), probe seconds with the service available, proxy RSS kB (peak/end)"
printf '%-16s %-11s %-28s %6s %6s %12s %10s %14s\n' test proxy "slowhttptest exit status" peak end "held until" available "RSS peak/end"
for m in $MODES; do
  for p in $PROXIES; do
    IFS='|' read -r st peak end held avail rss <<<"${RESULT[$m|$p]}"
    printf '%-16s %-11s %-28s %6s %6s %12s %10s %14s\n' "$(mode_name "$m")" "$p" "${st:0:28}" "$peak" "$end" "$held" "$avail" "$rss"
  done
done
