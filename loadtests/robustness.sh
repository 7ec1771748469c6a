#!/usr/bin/env bash
# robustness.sh — issue 10's robustness campaign: COUNT (default 10^6) generated valid,
# malformed and mutated requests against the release switchyard, with a strict recording
# backend behind it (loadtests/robustness.py does the work; see its docstring and
# loadtests/README.md, "Robustness (issue 10)").
#
#   bash loadtests/robustness.sh                 # 1,000,000 requests, 50 batches of 20,000
#   COUNT=20000 BATCH=5000 bash loadtests/robustness.sh   # quick run
#   TARGET=nginx COUNT=100000 bash loadtests/robustness.sh # the same campaign against nginx
#
# Exit status: 0 clean; 1 a VIOLATION, a crash (restart) or a failed sanity GET; 2 set-up.
set -euo pipefail
LIB_TAG=robust
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-1000000}
BATCH=${BATCH:-20000}
CONC=${CONC:-128}
THREADS=${THREADS:-2}
SEED=${SEED:-10}
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}
SW_LOG=${SW_LOG:-warn}
TARGET=${TARGET:-switchyard}
TIME_LIMIT=${TIME_LIMIT:-7200}
HEADER_TIMEOUT=${HEADER_TIMEOUT:-2}
BODY_TIMEOUT=${BODY_TIMEOUT:-2}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-5}
MAX_BODY=${MAX_BODY:-1048576}
require_uint COUNT BATCH CONC THREADS SEED TIME_LIMIT HEADER_TIMEOUT BODY_TIMEOUT IDLE_TIMEOUT MAX_BODY
export COUNT BATCH CONC SEED SW_LOG

[[ $TARGET == switchyard || $TARGET == nginx ]] || { echo "TARGET must be switchyard or nginx" >&2; exit 2; }
ensure_pkgs python3:python3 curl:curl
if [[ $TARGET == nginx ]]; then
  ensure_pkgs nginx:nginx
else
  ensure_built "$SW_BIN" --bin switchyard
  SW_NOTE="$(build_note "$SW_BIN")"
fi

lib_init robustness
DIR=$TMP/proxy
mkdir -p "$DIR"
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
BACKEND_PORT=$(free_port)

write_config() { # WITH_LIMITS(0|1)
  {
    cat <<EOF
[listen]
http = "127.0.0.1:$PROXY_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[server]
threads = $THREADS

[state]
dir = "state"

EOF
    if (($1)); then
      cat <<EOF
[limits]
header_timeout_s = $HEADER_TIMEOUT
body_timeout_s = $BODY_TIMEOUT
idle_timeout_s = $IDLE_TIMEOUT
max_body_bytes = $MAX_BODY

EOF
    fi
    cat <<EOF
[[route]]
host = "fuzz.test"
service = "app"

[[route]]
host = "*.fuzz.test"
service = "app"

[service.app]
backends = ["127.0.0.1:$BACKEND_PORT"]
EOF
  } >"$DIR/sw.toml"
}

run_campaign() { # NAME CMD LOG
  local rc=0
  ON_EXIT_KEEP+=("log \"$1 log: $3; violations log: $TMP/violations.log\"")
  timeout "$TIME_LIMIT" python3 -u "$LIB_REPO/loadtests/robustness.py" \
    --name "$1" --cmd "$2" --cwd "$DIR" --log "$3" \
    --proxy-port "$PROXY_PORT" --backend-port "$BACKEND_PORT" --admin-port "$ADMIN_PORT" \
    --violations-log "$TMP/violations.log" &
  FG_PID=$!
  wait "$FG_PID" || rc=$?
  FG_PID=
  echo "== load average at end $(loadavg)"
  RC=$rc
}

if [[ $TARGET == nginx ]]; then
  # the same limits, nginx's way: a reverse proxy to the same kind of backend
  {
    nginx_common "$DIR" 4096
    echo "worker_processes $THREADS;"
    echo "http {"
    nginx_http_common "$DIR" "${IDLE_TIMEOUT}s"
    cat <<EOF
    client_header_timeout ${HEADER_TIMEOUT}s;
    client_body_timeout ${BODY_TIMEOUT}s;
    client_max_body_size $MAX_BODY;
    upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$PROXY_PORT default_server;
        return 404;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        server_name fuzz.test *.fuzz.test;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
        }
    }
}
EOF
  } >"$DIR/nginx.conf"
  nginx -t -q -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" 2>"$TMP/check.log" ||
    { cat "$TMP/check.log" >&2; die "nginx -t failed"; }
  echo "== robustness against nginx: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r), load average at start $(loadavg)"
  echo "== $(nginx -v 2>&1 | sed 's/^nginx version: //'), worker_processes $THREADS; $(python3 --version)"
  echo "== client_header_timeout ${HEADER_TIMEOUT}s client_body_timeout ${BODY_TIMEOUT}s keepalive_timeout ${IDLE_TIMEOUT}s client_max_body_size $MAX_BODY"
  run_campaign nginx "nginx -p '$DIR' -e '$DIR/error.log' -c '$DIR/nginx.conf'" "$DIR/nginx.log"
  ((RC == 0)) || { KEEP_TMP=1; exit "$RC"; }
  exit 0
fi

cp "$SW_BIN" "$TMP/switchyard" # a cargo build elsewhere cannot swap it mid-run
LIMITS_NOTE="[limits] header_timeout_s=$HEADER_TIMEOUT body_timeout_s=$BODY_TIMEOUT idle_timeout_s=$IDLE_TIMEOUT max_body_bytes=$MAX_BODY"
write_config 1
if ! "$TMP/switchyard" check --config "$DIR/sw.toml" >"$TMP/check.log" 2>&1; then
  if grep -qi 'limits' "$TMP/check.log"; then
    LIMITS_NOTE="this binary has no [limits] section (rejected by 'switchyard check'): run with its built-in behaviour"
    write_config 0
    "$TMP/switchyard" check --config "$DIR/sw.toml" >"$TMP/check.log" 2>&1 ||
      { cat "$TMP/check.log" >&2; die "switchyard check failed"; }
  else
    cat "$TMP/check.log" >&2
    die "switchyard check failed"
  fi
fi

echo "== robustness: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r), load average at start $(loadavg)"
echo "== switchyard binary $SW_BIN ($SW_NOTE; repo at $(git_rev)), threads $THREADS, SWITCHYARD_LOG=$SW_LOG; $(python3 --version)"
echo "== $LIMITS_NOTE"
echo "== proxy 127.0.0.1:$PROXY_PORT, backend (robustness.py) 127.0.0.1:$BACKEND_PORT; temp dir $TMP"

run_campaign switchyard "'$TMP/switchyard' run --config '$DIR/sw.toml'" "$DIR/switchyard.log"
rc=$RC
if [[ -s $DIR/switchyard.log ]]; then
  echo "== switchyard log: $(wc -l <"$DIR/switchyard.log") lines; panics: $(grep -c 'panicked' "$DIR/switchyard.log" || true)"
fi
((rc == 124)) && log "stopped after TIME_LIMIT=${TIME_LIMIT}s"
if ((rc != 0)); then
  KEEP_TMP=1
  exit "$rc"
fi
