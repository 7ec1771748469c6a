#!/usr/bin/env bash
# bench.sh — switchyard, nginx, haproxy and a bare pingora proxy side by side, in one run.
#
# All proxies sit in front of the SAME upstream (an nginx answering `200 ok`), run with the
# same worker/thread count, and are driven by wrk in interleaved rounds (sw, nginx, haproxy,
# bare, sw, …) so that drift on the machine hits all alike. Modes:
#   http       plain HTTP/1.1 keep-alive                           req/s, p50, p99, CPU µs/req
#   tls        HTTPS keep-alive (TLS 1.3, SNI bench.local)         req/s, p50, p99, CPU µs/req
#   handshake  a new connection with a FULL TLS handshake per request (wrk -H 'Connection:
#              close' + wrk-noresume.so, which stops wrk resuming sessions) — handshakes/s, CPU µs/handshake
#   h2         HTTP/2 over TLS (ALPN h2), h2load -c$H2_CONNS -m$H2_STREAMS: H2_CONNS connections with
#              H2_STREAMS concurrent streams each      req/s, request time mean/max, CPU µs/req
# tls, handshake and h2 run once per certificate type (ECDSA P-256, RSA-2048; generated here).
# The bare pingora proxy has no TLS: "n/a" in the TLS modes.
#
# Usage: bash loadtests/bench.sh          (defaults: about 5 minutes)
#        ROUNDS=1 DURATION=2 WARMUP=0 bash loadtests/bench.sh   (quick run, about 1 minute)
# Env (defaults in brackets):
#   MODES ["http tls handshake"]  (add h2: "http tls handshake h2")   PROXIES ["switchyard nginx haproxy bare"]   CERTS ["ecdsa rsa"]
#   ROUNDS [3]        measured rounds per proxy and scenario
#   DURATION [5]      seconds per round
#   CONNS [32]        wrk connections (-c) in http/tls
#   HS_CONNS [CONNS]  wrk connections in handshake mode
#   H2_CONNS [10]     h2load connections (-c) in h2 mode
#   H2_STREAMS [10]   h2load concurrent streams per connection (-m) in h2 mode
#   THREADS [1]       wrk / h2load threads (-t)
#   WORKERS [1]       nginx worker_processes = haproxy nbthread = switchyard [server] threads
#                     = bare pingora threads
#   UPSTREAM_WORKERS [1]  worker_processes of the upstream nginx
#   WARMUP [2]        seconds of unmeasured load per proxy and group before its rounds
#   SW_BIN [target/release/switchyard]  BARE_BIN [target/release/examples/bare_pingora]
#   BASE_BIN [none]   a switchyard binary built from another commit: add `base` to PROXIES to
#                     measure it beside the current one in the same interleaved rounds
#                     (before/after figures of a change, on the same machine state)
#   SW_LOG [warn]     SWITCHYARD_LOG for switchyard (the others log nothing per request)
#   READY_TIMEOUT [30]  KEEP_TMP [0]  (1 = keep configs, logs and raw wrk output)
set -euo pipefail

MODES=${MODES:-http tls handshake}
PROXIES=${PROXIES:-switchyard nginx haproxy bare}
CERTS=${CERTS:-ecdsa rsa}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
HS_CONNS=${HS_CONNS:-$CONNS}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
WARMUP=${WARMUP:-2}
SW_LOG=${SW_LOG:-warn}
HOST_NAME=bench.local

# shellcheck disable=SC2034 # LIB_TAG, KEEP_TMP, WRK_ENV: read by lib.sh
LIB_TAG=bench
# shellcheck source=loadtests/lib.sh disable=SC1091 # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}
BARE_BIN=${BARE_BIN:-$LIB_REPO/target/release/examples/bare_pingora}

# ---------------------------------------------------------------- settings
require_uint ROUNDS DURATION CONNS HS_CONNS H2_CONNS H2_STREAMS THREADS WORKERS UPSTREAM_WORKERS WARMUP READY_TIMEOUT
((ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1 && HS_CONNS >= 1 && H2_CONNS >= 1 && H2_STREAMS >= 1 && THREADS >= 1 &&
  WORKERS >= 1 && UPSTREAM_WORKERS >= 1)) ||
  { echo "ROUNDS, DURATION, CONNS, HS_CONNS, H2_CONNS, H2_STREAMS, THREADS, WORKERS, UPSTREAM_WORKERS must be >= 1" >&2; exit 2; }
read -ra MODE_LIST <<<"$MODES"
read -ra PROXY_LIST <<<"$PROXIES"
read -ra CERT_LIST <<<"$CERTS"
in_list() { # WORD LIST-WORDS…
  local w=$1 x
  shift
  for x in "$@"; do [[ $x == "$w" ]] && return 0; done
  return 1
}
for m in "${MODE_LIST[@]}"; do in_list "$m" http tls handshake h2 || { echo "MODES: unknown mode '$m' (http tls handshake h2)" >&2; exit 2; }; done
for p in "${PROXY_LIST[@]}"; do in_list "$p" switchyard base nginx haproxy bare || { echo "PROXIES: unknown proxy '$p' (switchyard base nginx haproxy bare)" >&2; exit 2; }; done
for c in "${CERT_LIST[@]}"; do in_list "$c" ecdsa rsa || { echo "CERTS: unknown certificate type '$c' (ecdsa rsa)" >&2; exit 2; }; done
((${#MODE_LIST[@]} && ${#PROXY_LIST[@]})) || { echo "MODES and PROXIES must not be empty" >&2; exit 2; }
want_mode() { in_list "$1" "${MODE_LIST[@]}"; }
if want_mode h2 && ((THREADS > H2_CONNS)); then echo "THREADS must be <= H2_CONNS (h2load -t/-c)" >&2; exit 2; fi
want_proxy() { in_list "$1" "${PROXY_LIST[@]}"; }
NEED_TLS=0
if want_mode tls || want_mode handshake || want_mode h2; then
  ((${#CERT_LIST[@]})) || { echo "CERTS must not be empty with the tls, handshake or h2 mode" >&2; exit 2; }
  NEED_TLS=1
fi

# Scenarios ("mode cert"), in report order, and the proxies each one runs.
SCENARIOS=()
want_mode http && SCENARIOS+=("http -")
for m in tls handshake h2; do
  want_mode "$m" || continue
  for c in "${CERT_LIST[@]}"; do SCENARIOS+=("$m $c"); done
done
scenario_proxies() { # MODE -> the proxies of PROXY_LIST that can run it
  local p
  for p in "${PROXY_LIST[@]}"; do
    [[ $1 != http && $p == bare ]] && continue
    echo "$p"
  done
}
SLOTS=0 # (scenario, proxy) pairs
for s in "${SCENARIOS[@]}"; do SLOTS=$((SLOTS + $(scenario_proxies "${s%% *}" | wc -l))); done
((SLOTS > 0)) || { echo "nothing to run: bare pingora has no TLS, add another proxy to PROXIES" >&2; exit 2; }
STARTS=0 # proxy starts (one warm-up each)
want_mode http && STARTS=$(scenario_proxies http | wc -l)
((NEED_TLS)) && STARTS=$((STARTS + ${#CERT_LIST[@]} * $(scenario_proxies tls | wc -l)))

# ---------------------------------------------------------------- tools and binaries
pkgs=(nginx:nginx wrk:wrk curl:curl)
want_proxy haproxy && pkgs+=(haproxy:haproxy)
((NEED_TLS)) && pkgs+=(openssl:openssl)
# shellcheck disable=SC2054 # CMD:PKG,PKG is one word (ensure_pkgs)
want_mode handshake && pkgs+=(cc:gcc,libc6-dev)
want_mode h2 && pkgs+=(h2load:nghttp2-client)
ensure_pkgs "${pkgs[@]}"
want_proxy switchyard && ensure_built "$SW_BIN" --bin switchyard
if want_proxy base && [[ ! -x ${BASE_BIN:-} ]]; then
  echo "PROXIES has base: set BASE_BIN to a switchyard binary built from the commit to compare with" >&2
  exit 2
fi
if want_proxy bare && want_mode http; then ensure_built "$BARE_BIN" --example bare_pingora; fi

lib_init bench

# Run copies: a `cargo build` during the run (the box is shared) must not swap the binary
# between two groups. The header notes are taken from the originals, now.
SW_NOTE='' BARE_NOTE='' BASE_NOTE=''
mkdir -p "$TMP/bin"
if want_proxy switchyard; then
  # the commit only says what the binary is when it was built from this tree
  if [[ $(realpath "$SW_BIN") == "$LIB_REPO"/* ]]; then SW_NOTE="switchyard $(git_rev)"; else SW_NOTE="switchyard $SW_BIN"; fi
  SW_NOTE+=", $(build_note "$SW_BIN")"
  cp "$SW_BIN" "$TMP/bin/switchyard"
  SW_BIN=$TMP/bin/switchyard
fi
if want_proxy base; then
  BASE_NOTE="base: $BASE_BIN, $(build_note "$BASE_BIN")"
  cp "$BASE_BIN" "$TMP/bin/base"
  BASE_BIN=$TMP/bin/base
fi
if want_proxy bare && want_mode http; then
  BARE_NOTE="bare pingora (examples/bare_pingora.rs), $(build_note "$BARE_BIN")"
  cp "$BARE_BIN" "$TMP/bin/bare_pingora"
  BARE_BIN=$TMP/bin/bare_pingora
fi

# ---------------------------------------------------------------- certificates, wrk helpers
CERT_DIR=$TMP/certs
gen_certs() {
  mkdir -p "$CERT_DIR"
  local ext=$CERT_DIR/leaf.ext c
  printf '%s\n' "subjectAltName=DNS:$HOST_NAME" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$ext"
  # one throwaway CA (ECDSA P-256) signs both leaves; clients here skip chain verification
  # (wrk) or trust ca.crt (curl); the proxies serve the leaf alone
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj "/CN=switchyard bench CA" -keyout "$CERT_DIR/ca.key" -out "$CERT_DIR/ca.crt" 2>"$CERT_DIR/openssl.log" ||
    { cat "$CERT_DIR/openssl.log" >&2; die "openssl: CA generation failed"; }
  for c in "${CERT_LIST[@]}"; do
    local newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    [[ $c == rsa ]] && newkey=(-newkey rsa:2048)
    { openssl req -new "${newkey[@]}" -nodes -subj "/CN=$HOST_NAME" \
        -keyout "$CERT_DIR/$c.key" -out "$CERT_DIR/$c.csr" &&
      openssl x509 -req -in "$CERT_DIR/$c.csr" -CA "$CERT_DIR/ca.crt" -CAkey "$CERT_DIR/ca.key" \
        -CAcreateserial -days 7 -extfile "$ext" -out "$CERT_DIR/$c.crt"; } 2>>"$CERT_DIR/openssl.log" ||
      { cat "$CERT_DIR/openssl.log" >&2; die "openssl: $c certificate generation failed"; }
    cat "$CERT_DIR/$c.crt" "$CERT_DIR/$c.key" >"$CERT_DIR/$c.pem" # haproxy wants both in one file
    chmod 600 "$CERT_DIR/$c.key" "$CERT_DIR/$c.pem"
  done
}
((NEED_TLS)) && gen_certs

# wrk resolves the URL's host itself and sends it as SNI: keep https://bench.local:PORT/ in
# the URL (SNI bench.local) but connect to 127.0.0.1, without touching /etc/hosts.
SNI_LUA=$TMP/sni.lua
cat >"$SNI_LUA" <<'EOF'
-- connect to 127.0.0.1 whatever the URL's host is (which stays the SNI)
wrk.resolve = function(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
EOF

NORESUME_SO=$TMP/wrk-noresume.so
if want_mode handshake; then
  cc -O2 -shared -fPIC -o "$NORESUME_SO" "$LIB_REPO/loadtests/wrk-noresume.c" -ldl 2>"$TMP/cc.log" ||
    { cat "$TMP/cc.log" >&2; die "could not build wrk-noresume.so"; }
fi

# ---------------------------------------------------------------- upstream
UP_PORT=$(free_port)
CHK_PORT=$(free_port)
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
EOF
  if want_mode handshake; then
    # only for the client check before the handshake rounds: logs whether each TLS
    # connection resumed a session ("r") or did a full handshake (".")
    cat <<EOF
    log_format reused '\$ssl_session_reused';
    server {
        listen 127.0.0.1:$CHK_PORT ssl;
        ssl_certificate $CERT_DIR/${CERT_LIST[0]}.crt;
        ssl_certificate_key $CERT_DIR/${CERT_LIST[0]}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:chk:1m;
        access_log $UP_DIR/reused.log reused;
        location / { return 200 "ok\n"; }
    }
EOF
  fi
  echo "}"
} >"$UP_DIR/nginx.conf"
start_nginx upstream "$UP_DIR"
UP_PID=$STARTED_PID
wait_ready upstream "$UP_PID" "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"
check_ok upstream "$UP_DIR/error.log" "http://127.0.0.1:$UP_PORT/"
log "upstream nginx pid $UP_PID on 127.0.0.1:$UP_PORT ($UPSTREAM_WORKERS worker(s))"

# ---------------------------------------------------------------- proxies
# A group is "plain" (http mode) or a certificate type (tls + handshake modes); each group
# gets its own set of proxy processes, stopped before the next group starts.
declare -A PROXY_PID=() PROXY_PORT=() PROXY_LOG=()

curl_args() { # GROUP PORT -> the curl options to reach a proxy of that group
  if [[ $1 == plain ]]; then
    printf '%s\n' -H "Host: $HOST_NAME"
  else
    printf '%s\n' --resolve "$HOST_NAME:$2:127.0.0.1" --cacert "$CERT_DIR/ca.crt"
  fi
}
proxy_url() { # GROUP PORT
  if [[ $1 == plain ]]; then echo "http://127.0.0.1:$2/"; else echo "https://$HOST_NAME:$2/"; fi
}

start_proxy() { # NAME GROUP
  local name=$1 group=$2 port dir
  port=$(free_port)
  dir=$TMP/$name-$group
  mkdir -p "$dir"
  case $name in
    nginx)
      local listen="listen 127.0.0.1:$port;"
      if [[ $group != plain ]]; then
        # http2 on the listen only with the h2 mode: ALPN then offers h2; wrk (tls,
        # handshake modes) offers no ALPN and gets HTTP/1.1 either way
        local h2=
        want_mode h2 && h2=" http2"
        listen="listen 127.0.0.1:$port ssl$h2;
        ssl_certificate $CERT_DIR/$group.crt;
        ssl_certificate_key $CERT_DIR/$group.key;
        ssl_protocols TLSv1.2 TLSv1.3;"
      fi
      {
        nginx_common "$dir"
        echo "worker_processes $WORKERS;"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        $listen
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
      } >"$dir/nginx.conf"
      start_nginx "nginx ($group)" "$dir"
      PROXY_LOG[$name]=$dir/error.log
      ;;
    haproxy)
      local bind="bind 127.0.0.1:$port"
      [[ $group != plain ]] && bind+=" ssl crt $CERT_DIR/$group.pem ssl-min-ver TLSv1.2"
      [[ $group != plain ]] && want_mode h2 && bind+=" alpn h2,http/1.1"
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s

frontend fe
    $bind
    default_backend app

backend app
    # like nginx's keepalive pool: any idle upstream connection serves any request
    http-reuse always
    server up 127.0.0.1:$UP_PORT
EOF
      haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
        { cat "$dir/check.log" >&2; die "haproxy ($group): config check failed"; }
      start_bg "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
      PROXY_LOG[$name]=$dir/haproxy.log
      ;;
    switchyard | base)
      local admin listen_key=http tls_section='' bin=$SW_BIN
      [[ $name == base ]] && bin=$BASE_BIN
      admin=$(free_port)
      if [[ $group != plain ]]; then
        listen_key=https
        tls_section="[tls]
issuer = \"files\"
cert_dir = \"certs\"

[tls.files]
\"$HOST_NAME\" = { cert = \"$CERT_DIR/$group.crt\", key = \"$CERT_DIR/$group.key\" }
"
      fi
      cat >"$dir/sw.toml" <<EOF
[listen]
$listen_key = "127.0.0.1:$port"
admin = "127.0.0.1:$admin"

[server]
threads = $WORKERS

[state]
dir = "state"

$tls_section
[[route]]
host = "$HOST_NAME"
service = "app"

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
      # shellcheck disable=SC2016 # expanded by the inner bash
      start_bg "$dir/switchyard.log" bash -c 'cd "$1" && SWITCHYARD_LOG=$2 exec "$3" run --config "$1/sw.toml"' \
        _ "$dir" "$SW_LOG" "$bin"
      PROXY_LOG[$name]=$dir/switchyard.log
      ;;
    bare)
      [[ $group == plain ]] || die "bare pingora has no TLS"
      start_bg "$dir/bare.log" "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" "$WORKERS"
      PROXY_LOG[$name]=$dir/bare.log
      ;;
  esac
  PROXY_PID[$name]=$STARTED_PID
  PROXY_PORT[$name]=$port
  local url args
  url=$(proxy_url "$group" "$port")
  mapfile -t args < <(curl_args "$group" "$port")
  wait_ready "$name ($group)" "$STARTED_PID" "${PROXY_LOG[$name]}" "$url" -k "${args[@]}"
  check_ok "$name ($group)" "${PROXY_LOG[$name]}" "$url" "${args[@]}"
  local extra=
  if [[ $group != plain ]]; then
    extra=", $(tls_params "$port" "$group")"
    want_mode handshake && check_close "$name ($group)" "$port"
    want_mode h2 && check_alpn_h2 "$name ($group)" "$port" && extra+=", ALPN h2"
  fi
  log "$name ($group) pid $STARTED_PID on 127.0.0.1:$port$extra"
}

# handshake mode needs a new connection per request: a request with `Connection: close`
# must get `Connection: close` back (what wrk looks at) and the connection closed
check_close() { # NAME PORT
  local out rc=0
  out=$(printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$HOST_NAME" |
    timeout 5 openssl s_client -quiet -ign_eof -connect "127.0.0.1:$2" -servername "$HOST_NAME" 2>/dev/null) || rc=$?
  ((rc != 124)) || die "$1: kept the connection open after a 'Connection: close' request"
  grep -qi '^connection: *close' <<<"${out//$'\r'/}" ||
    die "$1: no 'Connection: close' in the response to a 'Connection: close' request: ${out:0:300}"
}

# h2 mode: a client offering "h2,http/1.1" must get h2 (each h2load round checks it again)
check_alpn_h2() { # NAME PORT
  local out
  # (tr: the server's h2 frames after the handshake carry NUL bytes, which bash warns about)
  out=$(openssl s_client -connect "127.0.0.1:$2" -servername "$HOST_NAME" -alpn h2,http/1.1 </dev/null 2>&1 | tr -d '\0' || true)
  grep -q '^ALPN protocol: h2$' <<<"$out" ||
    die "$1: did not negotiate h2 by ALPN (openssl s_client -alpn h2,http/1.1 says: $(grep -i alpn <<<"$out" | head -n 1))"
}

# "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 ECDSA" as negotiated by an OpenSSL client (the
# library wrk uses); also checks that the proxy serves our certificate for SNI bench.local
tls_params() { # PORT GROUP
  local out fp want
  out=$(openssl s_client -connect "127.0.0.1:$1" -servername "$HOST_NAME" -brief </dev/null 2>&1 || true)
  fp=$(openssl s_client -connect "127.0.0.1:$1" -servername "$HOST_NAME" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null || true)
  want=$(openssl x509 -noout -fingerprint -sha256 -in "$CERT_DIR/$2.crt")
  [[ -n $fp && $fp == "$want" ]] || { echo "$out" >&2; die "port $1 does not serve the $2 certificate for SNI $HOST_NAME"; }
  awk -F': ' '
    /^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 } /^Signature type/ { s = $2 }
    /^(Server|Peer) Temp Key/ { split($2, k, ","); t = k[1] }
    END { printf "%s %s %s %s", p, c, t, s }' <<<"$out"
}

# ---------------------------------------------------------------- client check (handshake mode)
# wrk -H 'Connection: close' reconnects per request but resumes the TLS session; with
# wrk-noresume.so it must do only full handshakes. Checked against the upstream's TLS port.
check_client() {
  local logf=$UP_DIR/reused.log n r plain_n plain_r
  local args=(-t1 -c4 -s "$SNI_LUA" -H "Host: $HOST_NAME" -H "Connection: close" "https://$HOST_NAME:$CHK_PORT/")
  : >"$logf"
  WRK_ENV=()
  run_wrk "$TMP/wrk-check-plain.txt" 1 "${args[@]}"
  plain_n=$(wc -l <"$logf")
  plain_r=$(grep -c '^r' "$logf" || true)
  : >"$logf"
  WRK_ENV=("LD_PRELOAD=$NORESUME_SO")
  run_wrk "$TMP/wrk-check-noresume.txt" 1 "${args[@]}"
  WRK_ENV=()
  n=$(wc -l <"$logf")
  r=$(grep -c '^r' "$logf" || true)
  ((n >= 10)) || die "client check: only $n TLS connections in 1 s (see $TMP/wrk-check-noresume.txt)"
  ((r == 0)) || die "client check: wrk with wrk-noresume.so still resumed $r of $n TLS sessions"
  echo "== handshake client check: wrk -H 'Connection: close' alone resumed $plain_r of $plain_n TLS sessions;" \
    "with wrk-noresume.so $r of $n (all full handshakes)"
}

# ---------------------------------------------------------------- rounds
declare -A RPS=() P50=() P99=() MEAN=() MAXT=() CPU=() UPC=() OPENS=() ERRS=() # "mode cert|proxy" -> per-round values

active_opens() { awk '/^Tcp:/ && ++n == 2 { print $6 }' /proc/net/snmp; }

wrk_args() { # MODE PORT CONNS -> sets WRK_ARGS and WRK_ENV
  local mode=$1 port=$2 conns=$3
  WRK_ENV=()
  case $mode in
    http) WRK_ARGS=(-t"$THREADS" -c"$conns" --latency -H "Host: $HOST_NAME" "http://127.0.0.1:$port/") ;;
    tls) WRK_ARGS=(-t"$THREADS" -c"$conns" --latency -s "$SNI_LUA" -H "Host: $HOST_NAME" "https://$HOST_NAME:$port/") ;;
    handshake)
      WRK_ENV=("LD_PRELOAD=$NORESUME_SO")
      WRK_ARGS=(-t"$THREADS" -c"$conns" --latency -s "$SNI_LUA" -H "Host: $HOST_NAME" -H "Connection: close"
        "https://$HOST_NAME:$port/")
      ;;
  esac
}

# h2 mode: h2load over https://bench.local:PORT/ (SNI and :authority bench.local) connecting
# to 127.0.0.1; ALPN offers h2 first (h2load's default list). Output to OUTFILE; dies unless
# the connections really spoke h2.
run_h2load() { # OUTFILE SECONDS PORT NAME
  local out=$1 secs=$2 port=$3 name=$4
  run_timed "$out" $((secs + 30)) h2load -t"$THREADS" -c"$H2_CONNS" -m"$H2_STREAMS" -D "$secs" \
    --connect-to="127.0.0.1:$port" "https://$HOST_NAME:$port/"
  ((RUN_RC == 0)) || { cat "$out" >&2; die "$name: h2load failed (exit $RUN_RC)"; }
  grep -q '^Application protocol: h2$' "$out" ||
    { cat "$out" >&2; die "$name: h2load did not negotiate h2 ($(grep -i 'protocol' "$out" | head -n 1))"; }
}

# load of MODE on PORT for SECONDS, raw output to OUTFILE (wrk, or h2load in h2 mode)
drive() { # MODE PORT CONNS SECONDS OUTFILE NAME
  if [[ $1 == h2 ]]; then
    run_h2load "$5" "$4" "$2" "$6"
  else
    wrk_args "$1" "$2" "$3"
    run_wrk "$5" "$4" "${WRK_ARGS[@]}"
    # shellcheck disable=SC2034 # read by run_wrk (lib.sh)
    WRK_ENV=()
  fi
}

one_round() { # MODE CERT ROUND PROXY
  local mode=$1 cert=$2 r=$3 name=$4 pid=${PROXY_PID[$4]} port=${PROXY_PORT[$4]}
  local key="$mode $cert|$name" out=$TMP/wrk-$mode-$cert-$name-$r.txt t0 t1 u0 u1 o0 o1 conns=$CONNS
  [[ $mode == handshake ]] && conns=$HS_CONNS
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "${PROXY_LOG[$name]}" >&2 || true; die "$name (pid $pid) is gone"; }
  [[ $mode == h2 ]] && out=$TMP/h2load-$cert-$name-$r.txt
  o0=$(active_opens)
  t0=$(tree_ticks "$pid")
  u0=$(tree_ticks "$UP_PID")
  drive "$mode" "$port" "$conns" "$DURATION" "$out" "$name"
  t1=$(tree_ticks "$pid")
  u1=$(tree_ticks "$UP_PID")
  o1=$(active_opens)
  if [[ $mode == h2 ]]; then parse_h2load "$out"; else parse_wrk "$out"; fi
  ((W_REQS > 0)) || { cat "$out" >&2; die "$name: the client completed no request"; }
  local cpu up opens
  cpu=$(ticks_per_us $((t1 - t0)) "$W_REQS")
  up=$(ticks_per_us $((u1 - u0)) "$W_REQS")
  opens=$(awk -v d=$((o1 - o0)) -v n="$W_REQS" 'BEGIN { printf "%.2f", d / n }')
  RPS[$key]+="$W_RPS "
  if [[ $mode == h2 ]]; then
    MEAN[$key]+="$W_MEAN "
    MAXT[$key]+="$W_MAX "
  else
    P50[$key]+="$W_P50 "
    P99[$key]+="$W_P99 "
  fi
  CPU[$key]+="$cpu "
  UPC[$key]+="$up "
  OPENS[$key]+="$opens "
  ERRS[$key]=$((${ERRS[$key]:-0} + W_ERRS))
  local label="$mode"
  [[ $cert != - ]] && label+=" $cert"
  if [[ $mode == handshake ]]; then
    printf '%-15s round %d  %-10s  hs/s  %9.0f                                  cpu/hs  %8.2f µs  (new conns/hs %.2f, upstream %5.2f µs, errors %d, load %s)\n' \
      "$label" "$r" "$name" "$W_RPS" "$cpu" "$opens" "$up" "$W_ERRS" "$(loadavg)"
  elif [[ $mode == h2 ]]; then
    printf '%-15s round %d  %-10s  req/s %9.0f  mean %6.3f ms  max %7.3f ms  cpu/req %8.2f µs  (upstream %5.2f µs, errors %d, load %s)\n' \
      "$label" "$r" "$name" "$W_RPS" "$(awk -v v="$W_MEAN" 'BEGIN{print v/1000}')" \
      "$(awk -v v="$W_MAX" 'BEGIN{print v/1000}')" "$cpu" "$up" "$W_ERRS" "$(loadavg)"
  else
    printf '%-15s round %d  %-10s  req/s %9.0f  p50 %7.3f ms  p99 %7.3f ms  cpu/req %8.2f µs  (upstream %5.2f µs, errors %d, load %s)\n' \
      "$label" "$r" "$name" "$W_RPS" "$(awk -v v="$W_P50" 'BEGIN{print v/1000}')" \
      "$(awk -v v="$W_P99" 'BEGIN{print v/1000}')" "$cpu" "$up" "$W_ERRS" "$(loadavg)"
  fi
}

run_group() { # GROUP (plain | ecdsa | rsa)
  local group=$1 modes=() m name names=() r
  if [[ $group == plain ]]; then
    modes=(http)
  else
    want_mode tls && modes+=(tls)
    want_mode handshake && modes+=(handshake)
    want_mode h2 && modes+=(h2)
  fi
  mapfile -t names < <(scenario_proxies "${modes[0]}")
  ((${#names[@]})) || return 0
  PROXY_PID=() PROXY_PORT=() PROXY_LOG=()
  for name in "${names[@]}"; do start_proxy "$name" "$group"; done
  local cert=-
  [[ $group != plain ]] && cert=$group
  if ((WARMUP > 0)); then
    for name in "${names[@]}"; do
      log "warm-up $name ($group, ${modes[0]}) ${WARMUP}s"
      drive "${modes[0]}" "${PROXY_PORT[$name]}" "$CONNS" "$WARMUP" "$TMP/warmup-$group-$name.txt" "$name"
    done
  fi
  for m in "${modes[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
      for name in "${names[@]}"; do one_round "$m" "$cert" "$r" "$name"; done
    done
  done
  local pids=()
  for name in "${names[@]}"; do pids+=("${PROXY_PID[$name]}"); done
  stop_started "${pids[@]}"
}

# ---------------------------------------------------------------- run
LOAD_START=$(loadavg)
versions="$(nginx -v 2>&1 | sed 's/^nginx version: //')"
want_proxy haproxy && versions+=", haproxy $( (haproxy -v 2>/dev/null || true) | awk 'NR == 1 { print $3 }')"
versions+=", wrk $( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')" # wrk -v exits 1
((NEED_TLS)) && versions+=", $(openssl version | awk '{ print $1 " " $2 }')"
want_mode h2 && versions+=", $(h2load --version | awk 'NR == 1 { print $2 }')"
echo "== bench: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(uname -r), load average at start $LOAD_START"
echo "== $versions"
[[ -n $SW_NOTE ]] && echo "== $SW_NOTE"
[[ -n $BARE_NOTE ]] && echo "== $BARE_NOTE"
[[ -n $BASE_NOTE ]] && echo "== $BASE_NOTE"
echo "== modes: ${MODE_LIST[*]}; certs: ${CERT_LIST[*]}; proxies: ${PROXY_LIST[*]}"
echo "== $ROUNDS rounds x ${DURATION}s per proxy and scenario, wrk -t$THREADS -c$CONNS (handshake -c$HS_CONNS)," \
  "h2load -t$THREADS -c$H2_CONNS -m$H2_STREAMS (h2 mode)," \
  "workers $WORKERS, upstream workers $UPSTREAM_WORKERS; about $((SLOTS * ROUNDS * DURATION + STARTS * (WARMUP + 2) + 5)) s"
want_mode handshake && check_client

want_mode http && run_group plain
if ((NEED_TLS)); then
  for c in "${CERT_LIST[@]}"; do run_group "$c"; done
fi

# ---------------------------------------------------------------- summary
med() { # ARRAY-NAME KEY
  local -n a=$1
  # shellcheck disable=SC2086
  median ${a[$2]}
}
echo
echo "== summary: median of $ROUNDS rounds; cpu = proxy CPU time (all processes/threads) per request or" \
  "handshake; load average $LOAD_START at start, $(loadavg) at end"
printf '%-16s %-14s' "scenario" ""
for p in "${PROXY_LIST[@]}"; do printf '%12s' "$p"; done
echo
total_errs=0
low_opens=0
for s in "${SCENARIOS[@]}"; do
  mode=${s%% *}
  cert=${s#* }
  label=$mode
  [[ $cert != - ]] && label+=" $cert"
  if [[ $mode == handshake ]]; then
    rows=("hs/s:RPS:1:.0f" "cpu/hs (µs):CPU:1:.1f" "new conns/hs:OPENS:1:.2f")
  elif [[ $mode == h2 ]]; then
    rows=("req/s:RPS:1:.0f" "mean (ms):MEAN:1000:.3f" "max (ms):MAXT:1000:.3f" "cpu/req (µs):CPU:1:.2f")
  else
    rows=("req/s:RPS:1:.0f" "p50 (ms):P50:1000:.3f" "p99 (ms):P99:1000:.3f" "cpu/req (µs):CPU:1:.2f")
  fi
  first=1
  for row in "${rows[@]}" "errors:ERRS:1:d"; do
    IFS=: read -r rlabel arr scale fmt <<<"$row"
    printf '%-16s %-14s' "$( ((first)) && echo "$label")" "$rlabel"
    first=0
    for p in "${PROXY_LIST[@]}"; do
      key="$s|$p"
      if [[ -z ${RPS[$key]:-} ]]; then
        printf '%12s' "n/a"
      elif [[ $arr == ERRS ]]; then
        printf '%12d' "${ERRS[$key]:-0}"
        total_errs=$((total_errs + ${ERRS[$key]:-0}))
      else
        v=$(med "$arr" "$key")
        [[ $arr == OPENS ]] && awk -v v="$v" 'BEGIN { exit !(v < 0.95) }' && low_opens=1
        printf "%12$fmt" "$(awk -v v="$v" -v s="$scale" 'BEGIN { print v / s }')"
      fi
    done
    echo
  done
done
if ((total_errs > 0)); then
  log "WARNING: non-2xx responses, socket errors or failed h2 requests were seen (raw wrk/h2load output in $TMP)"
  # shellcheck disable=SC2034 # read by lib.sh's exit trap
  KEEP_TMP=1
fi
if ((low_opens)); then
  log "WARNING: fewer new TCP connections than requests in handshake mode: a proxy kept connections" \
    "open despite 'Connection: close' (raw wrk output in $TMP)"
  # shellcheck disable=SC2034 # read by lib.sh's exit trap
  KEEP_TMP=1
fi
