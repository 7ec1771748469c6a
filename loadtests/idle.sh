#!/usr/bin/env bash
# idle.sh — memory per idle keep-alive client connection, plain HTTP and TLS, switchyard and
# nginx side by side.
#
# For each (proxy, mode) a fresh proxy process is started in front of the same upstream (an
# nginx answering `200 ok`). A Python asyncio client (embedded below) opens CONNS connections,
# sends one `GET /` with keep-alive on each, reads the whole response, and then holds them
# all idle. The proxy's RSS (VmRSS; nginx: master + workers) is read before, while they are
# held, and after the client closed them: KiB per connection = (held - before) / held
# connections. While they are held the script also counts the established connections at the
# proxy's port (`ss`) and sends one fresh request through the proxy, which must get 200.
#
# More than ~28,000 connections from one source address to one port exhaust the ephemeral
# ports: the client spreads its connections over 127.0.0.2, 127.0.0.3, … (SRC_PER_IP each,
# bound before connect). Each side of CONNS connections is one process holding CONNS sockets,
# so `ulimit -n` must go above CONNS: the script raises the soft limit to the hard one and
# stops with an explanation when that is not enough.
#
# Usage: bash loadtests/idle.sh                           (10,000 connections, plain + tls)
#        CONNS=100000 MODES=plain bash loadtests/idle.sh  (needs a hard nofile limit > 101,000)
# Env (defaults in brackets):
#   CONNS [10000]         idle keep-alive connections per (proxy, mode)
#   MODES ["plain tls"]   plain = HTTP/1.1 on the http listener; tls = HTTP/1.1 over TLS 1.3
#                         (ALPN http/1.1, ECDSA P-256 certificate, a full handshake each)
#   PROXIES ["switchyard nginx"]
#   WORKERS [1]           switchyard [server] threads = nginx worker_processes
#   OPEN_CONCURRENCY [200]  connections being opened at once by the client
#   SRC_PER_IP [20000]    client connections per source address (127.0.0.2, .3, …)
#   SETTLE [2]            seconds between the last connection made and the RSS reading
#   IDLE_TIMEOUT [600]    the proxies' keep-alive timeout (s): must outlast the run
#   SW_BIN [target/release/switchyard]   SW_LOG [warn]
#   READY_TIMEOUT [30]  KEEP_TMP [0]  (1 = keep configs, logs and the client's output)
set -euo pipefail

CONNS=${CONNS:-10000}
MODES=${MODES:-plain tls}
PROXIES=${PROXIES:-switchyard nginx}
WORKERS=${WORKERS:-1}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-200}
SRC_PER_IP=${SRC_PER_IP:-20000}
SETTLE=${SETTLE:-2}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-600}
SW_LOG=${SW_LOG:-warn}
HOST_NAME=idle.local

# shellcheck disable=SC2034 # LIB_TAG, KEEP_TMP, WRK_ENV: read by lib.sh
LIB_TAG=idle
# shellcheck source=loadtests/lib.sh disable=SC1091 # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SW_BIN=${SW_BIN:-$LIB_REPO/target/release/switchyard}

# ---------------------------------------------------------------- settings
require_uint CONNS WORKERS OPEN_CONCURRENCY SRC_PER_IP SETTLE IDLE_TIMEOUT READY_TIMEOUT
((CONNS >= 1 && WORKERS >= 1 && OPEN_CONCURRENCY >= 1 && SRC_PER_IP >= 1 && IDLE_TIMEOUT >= 1)) ||
  { echo "CONNS, WORKERS, OPEN_CONCURRENCY, SRC_PER_IP, IDLE_TIMEOUT must be >= 1" >&2; exit 2; }
((SRC_PER_IP <= 28000)) || { echo "SRC_PER_IP must be <= 28000 (ephemeral ports per source address)" >&2; exit 2; }
read -ra MODE_LIST <<<"$MODES"
read -ra PROXY_LIST <<<"$PROXIES"
((${#MODE_LIST[@]} && ${#PROXY_LIST[@]})) || { echo "MODES and PROXIES must not be empty" >&2; exit 2; }
for m in "${MODE_LIST[@]}"; do [[ $m == plain || $m == tls ]] || { echo "MODES: unknown mode '$m' (plain tls)" >&2; exit 2; }; done
for p in "${PROXY_LIST[@]}"; do
  [[ $p == switchyard || $p == nginx ]] || { echo "PROXIES: unknown proxy '$p' (switchyard nginx)" >&2; exit 2; }
done
N_SRC=$(((CONNS + SRC_PER_IP - 1) / SRC_PER_IP))
((N_SRC <= 250)) || { echo "CONNS / SRC_PER_IP needs more than 250 source addresses" >&2; exit 2; }

# ---------------------------------------------------------------- tools, limits
ensure_pkgs nginx:nginx curl:curl python3:python3 ss:iproute2 openssl:openssl
[[ -x $SW_BIN ]] || ensure_built "$SW_BIN" --bin switchyard

# The proxy holds CONNS client sockets in one process (switchyard; nginx with one worker) and
# so does the client: each needs CONNS descriptors plus some. They inherit this shell's limit.
FD_NEED=$((CONNS + 1000))
HARD=$(ulimit -Hn)
if [[ $HARD != unlimited ]] && ((HARD < FD_NEED)); then
  ulimit -Hn "$FD_NEED" 2>/dev/null || true # root with CAP_SYS_RESOURCE only
fi
ulimit -n "$FD_NEED" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
NR_OPEN=$(cat /proc/sys/fs/nr_open)
FILE_MAX=$(cat /proc/sys/fs/file-max)
if [[ $FD_LIMIT != unlimited ]] && ((FD_LIMIT < FD_NEED)); then
  die "CONNS=$CONNS needs ulimit -n >= $FD_NEED in the proxy and in the client; the hard limit here is $(ulimit -Hn) and could not be raised (fs.nr_open $NR_OPEN; raising a hard limit needs CAP_SYS_RESOURCE: run as root outside a restricted container, or set LimitNOFILE / docker --ulimit nofile=$FD_NEED:$FD_NEED), or use CONNS <= $((FD_LIMIT - 1000))"
fi
((FILE_MAX > 2 * CONNS + 10000)) || die "fs.file-max is $FILE_MAX: too low for 2 x $CONNS sockets"

lib_init idle
# shellcheck disable=SC2016 # expanded by the exit trap
ON_EXIT_FIRST+=('touch "$TMP/release" 2>/dev/null') # tells a running client to close and end

# A run copy of the binary: a `cargo build` meanwhile must not swap it between two starts.
SW_NOTE=''
if [[ " ${PROXY_LIST[*]} " == *" switchyard "* ]]; then
  SW_NOTE="switchyard $SW_BIN, $(build_note "$SW_BIN")"
  mkdir -p "$TMP/bin"
  cp "$SW_BIN" "$TMP/bin/switchyard"
  SW_BIN=$TMP/bin/switchyard
fi

# ---------------------------------------------------------------- certificate (tls mode)
CERT_DIR=$TMP/certs
mkdir -p "$CERT_DIR"
{
  printf '%s\n' "subjectAltName=DNS:$HOST_NAME" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$CERT_DIR/leaf.ext"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj "/CN=switchyard idle CA" -keyout "$CERT_DIR/ca.key" -out "$CERT_DIR/ca.crt" &&
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$HOST_NAME" \
      -keyout "$CERT_DIR/leaf.key" -out "$CERT_DIR/leaf.csr" &&
    openssl x509 -req -in "$CERT_DIR/leaf.csr" -CA "$CERT_DIR/ca.crt" -CAkey "$CERT_DIR/ca.key" \
      -CAcreateserial -days 7 -extfile "$CERT_DIR/leaf.ext" -out "$CERT_DIR/leaf.crt"
} >"$CERT_DIR/openssl.log" 2>&1 || { cat "$CERT_DIR/openssl.log" >&2; die "openssl: certificate generation failed"; }
chmod 600 "$CERT_DIR/leaf.key"

# ---------------------------------------------------------------- the client
cat >"$TMP/idle_client.py" <<'PY'
"""Open N keep-alive connections (spread over source addresses), send one GET on each, read the
whole response, hold them all idle until the file RELEASE exists (or TIMEOUT s pass), then
close them. Prints READY … when all are made, CLOSED … at the end."""
import asyncio, os, socket, ssl, sys, time

(host, port, n, hosthdr, conc, srcs, per_ip, tls, cafile, release, timeout) = sys.argv[1:]
port, n, conc, per_ip, tls, timeout = int(port), int(n), int(conc), int(per_ip), tls == "1", float(timeout)
srcs = srcs.split(",")
req = f"GET / HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: idle-client\r\n\r\n".encode()
ctx = None
if tls:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

async def one(i, sem, conns, stats):
    async with sem:
        sock = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # pick the port at connect, per (source, destination) pair, not at bind
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((srcs[i // per_ip], 0))
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 30)
            r, w = await asyncio.wait_for(asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=hosthdr if tls else None), 30)
            sock = None
            if tls:
                stats["alpn"][w.get_extra_info("ssl_object").selected_alpn_protocol()] = 1
            w.write(req)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")[1]
            hdrs = {}
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip().lower()
            if "content-length" in hdrs:
                await asyncio.wait_for(r.readexactly(int(hdrs["content-length"])), 30)
            elif hdrs.get("transfer-encoding") == "chunked":
                await asyncio.wait_for(r.readuntil(b"0\r\n\r\n"), 30)
            if hdrs.get("connection") == "close":
                stats["close_hdr"] += 1
            stats["status"][status] = stats["status"].get(status, 0) + 1
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001 — counted and reported
            stats["errors"] += 1
            stats.setdefault("first_error", repr(e))
            if sock is not None:
                sock.close()

async def main():
    sem = asyncio.Semaphore(conc)
    conns, stats = [], {"errors": 0, "close_hdr": 0, "status": {}, "alpn": {}}
    t0 = time.monotonic()
    await asyncio.gather(*(one(i, sem, conns, stats) for i in range(n)))
    if not tls:
        del stats["alpn"]
    print(f"READY open={len(conns)} secs={time.monotonic() - t0:.1f} stats={stats}", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    closed_by_server = sum(1 for r, _ in conns if r.at_eof())
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.5)
    print(f"CLOSED held={len(conns)} closed_by_server_while_idle={closed_by_server}", flush=True)

asyncio.run(main())
PY
SRCS=$(seq -s, -f '127.0.0.%g' 2 $((N_SRC + 1)))

# ---------------------------------------------------------------- helpers
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
tree_rss_kib() { # VmRSS of a pid plus its children (nginx master + workers), KiB
  local total c
  total=$(rss_kib "$1")
  for c in $(pgrep -P "$1" || true); do total=$((total + $(rss_kib "$c" 2>/dev/null || echo 0))); done
  echo "$total"
}
proxy_rss() { # NAME PID
  if [[ $1 == nginx ]]; then tree_rss_kib "$2"; else rss_kib "$2"; fi
}
established() { # PORT -> established connections whose server side is PORT
  ss -Htn state established "( sport = :$1 )" | wc -l
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
curl_args() { # MODE PORT
  if [[ $1 == plain ]]; then
    printf '%s\n' -H "Host: $HOST_NAME"
  else
    printf '%s\n' --resolve "$HOST_NAME:$2:127.0.0.1" --cacert "$CERT_DIR/ca.crt"
  fi
}
proxy_url() { # MODE PORT
  if [[ $1 == plain ]]; then echo "http://127.0.0.1:$2/"; else echo "https://$HOST_NAME:$2/"; fi
}

# ---------------------------------------------------------------- upstream
UP_PORT=$(free_port)
UP_DIR=$TMP/upstream
mkdir -p "$UP_DIR"
{
  nginx_common "$UP_DIR"
  echo "worker_processes 1;"
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

# ---------------------------------------------------------------- proxies
# start_proxy NAME MODE -> P_PID P_PORT P_LOG: a fresh process listening in MODE on P_PORT
start_proxy() {
  local name=$1 mode=$2 dir
  P_PORT=$(free_port)
  dir=$TMP/$name-$mode
  mkdir -p "$dir"
  case $name in
    nginx)
      local listen="listen 127.0.0.1:$P_PORT;"
      [[ $mode == tls ]] && listen="listen 127.0.0.1:$P_PORT ssl;
        ssl_certificate $CERT_DIR/leaf.crt;
        ssl_certificate_key $CERT_DIR/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;"
      {
        # each worker may hold all the clients plus its upstream connections; and nginx
        # closes idle keep-alive connections ("worker_connections are not enough, reusing
        # connections") once fewer than 1/16 of worker_connections are free: twice CONNS
        # keeps it from touching them (the descriptors stay bounded by ulimit -n)
        nginx_common "$dir" $((2 * CONNS + 1000))
        echo "worker_processes $WORKERS;"
        echo "worker_rlimit_nofile $FD_LIMIT;"
        echo "http {"
        nginx_http_common "$dir" "${IDLE_TIMEOUT}s"
        cat <<EOF
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
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
      start_nginx "nginx ($mode)" "$dir"
      P_LOG=$dir/error.log
      ;;
    switchyard)
      local admin listen_key=http tls_section=''
      admin=$(free_port)
      if [[ $mode == tls ]]; then
        listen_key=https
        tls_section="[tls]
issuer = \"files\"
cert_dir = \"certs\"

[tls.files]
\"$HOST_NAME\" = { cert = \"$CERT_DIR/leaf.crt\", key = \"$CERT_DIR/leaf.key\" }
"
      fi
      cat >"$dir/sw.toml" <<EOF
[listen]
$listen_key = "127.0.0.1:$P_PORT"
admin = "127.0.0.1:$admin"

[server]
threads = $WORKERS

[state]
dir = "state"

[limits]
max_connections = $FD_NEED
idle_timeout_s = $IDLE_TIMEOUT

$tls_section
[[route]]
host = "$HOST_NAME"
service = "app"

[service.app]
backends = ["127.0.0.1:$UP_PORT"]
EOF
      # shellcheck disable=SC2016 # expanded by the inner bash
      start_bg "$dir/switchyard.log" bash -c 'cd "$1" && SWITCHYARD_LOG=$2 exec "$3" run --config "$1/sw.toml"' \
        _ "$dir" "$SW_LOG" "$SW_BIN"
      P_LOG=$dir/switchyard.log
      ;;
  esac
  P_PID=$STARTED_PID
  local url args
  url=$(proxy_url "$mode" "$P_PORT")
  mapfile -t args < <(curl_args "$mode" "$P_PORT")
  wait_ready "$name ($mode)" "$P_PID" "$P_LOG" "$url" -k "${args[@]}"
  check_ok "$name ($mode)" "$P_LOG" "$url" "${args[@]}"
}

# ---------------------------------------------------------------- one measurement
declare -A BEFORE=() HELD=() AFTER=() PER=() EST=() OPENED=() FRESH=() CLOSED_IDLE=()

measure() { # NAME MODE
  local name=$1 mode=$2 key="$1|$2" url args out cpid
  start_proxy "$name" "$mode"
  url=$(proxy_url "$mode" "$P_PORT")
  mapfile -t args < <(curl_args "$mode" "$P_PORT")
  # warm-up: some requests on new connections, so lazily made per-thread state (and the
  # upstream connection pool) exists before the first reading
  for _ in $(seq 20); do check_ok "$name ($mode)" "$P_LOG" "$url" "${args[@]}"; done
  sleep 1
  BEFORE[$key]=$(proxy_rss "$name" "$P_PID")
  log "$name ($mode) pid $P_PID on 127.0.0.1:$P_PORT: RSS $(mib "${BEFORE[$key]}"); opening $CONNS connections"
  out=$TMP/client-$name-$mode.out
  rm -f "$TMP/release"
  : >"$out"
  local tls=0
  [[ $mode == tls ]] && tls=1
  python3 "$TMP/idle_client.py" 127.0.0.1 "$P_PORT" "$CONNS" "$HOST_NAME" "$OPEN_CONCURRENCY" "$SRCS" \
    "$SRC_PER_IP" "$tls" "$CERT_DIR/ca.crt" "$TMP/release" 3600 >"$out" 2>&1 &
  cpid=$!
  PIDS+=("$cpid")
  local deadline=$((SECONDS + 600))
  until grep -q '^READY' "$out"; do
    kill -0 "$cpid" 2>/dev/null || { cat "$out" >&2; die "the client against $name ($mode) died"; }
    kill -0 "$P_PID" 2>/dev/null || { tail -n 30 "$P_LOG" >&2; die "$name ($mode) (pid $P_PID) is gone"; }
    ((SECONDS < deadline)) || die "the client against $name ($mode): not READY within 600 s"
    sleep 0.2
  done
  sleep "$SETTLE"
  HELD[$key]=$(proxy_rss "$name" "$P_PID")
  EST[$key]=$(established "$P_PORT")
  # a fresh request through the proxy while all of them are held
  local code
  code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' "${args[@]}" "$url" || true)
  FRESH[$key]=$code
  local ready
  ready=$(grep '^READY' "$out")
  OPENED[$key]=$(sed -E 's/.*open=([0-9]+).*/\1/' <<<"$ready")
  touch "$TMP/release"
  wait "$cpid" || true
  forget_pids "$cpid"
  CLOSED_IDLE[$key]=$(sed -nE 's/^CLOSED .*closed_by_server_while_idle=([0-9]+).*/\1/p' "$out")
  sleep 1
  AFTER[$key]=$(proxy_rss "$name" "$P_PID")
  kill -0 "$P_PID" 2>/dev/null || { tail -n 30 "$P_LOG" >&2; die "$name ($mode) (pid $P_PID) is gone"; }
  stop_started "$P_PID"
  ((OPENED[$key] > 0)) || die "$name ($mode): the client made no connection: $ready"
  PER[$key]=$(awk -v a="${HELD[$key]}" -v b="${BEFORE[$key]}" -v n="${OPENED[$key]}" 'BEGIN { printf "%.2f", (a - b) / n }')
  echo "$name ($mode): client: ${ready#READY }"
  echo "$name ($mode): established at the proxy port while held: ${EST[$key]}; fresh request while held: ${FRESH[$key]};" \
    "closed by the proxy while idle: ${CLOSED_IDLE[$key]:-?}"
  echo "$name ($mode): RSS $(mib "${BEFORE[$key]}") -> $(mib "${HELD[$key]}") with ${OPENED[$key]} idle connections" \
    "-> $(mib "${AFTER[$key]}") 1 s after closing them: ${PER[$key]} KiB per connection"
}

# ---------------------------------------------------------------- run
LOAD_START=$(loadavg)
echo "== idle: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
  "$(uname -r), load average at start $LOAD_START"
echo "== $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(python3 --version), $(openssl version | awk '{ print $1 " " $2 }')"
[[ -n $SW_NOTE ]] && echo "== $SW_NOTE"
echo "== $CONNS connections per (proxy, mode) from $N_SRC source address(es) ($SRCS), $OPEN_CONCURRENCY opened at once;" \
  "modes: ${MODE_LIST[*]}; proxies: ${PROXY_LIST[*]}; workers $WORKERS; ulimit -n $FD_LIMIT (fs.nr_open $NR_OPEN, fs.file-max $FILE_MAX)"
for mode in "${MODE_LIST[@]}"; do
  for name in "${PROXY_LIST[@]}"; do measure "$name" "$mode"; done
done

echo
echo "== summary: $CONNS idle keep-alive connections (one GET answered on each), RSS of the proxy" \
  "(nginx: master + workers); load average $LOAD_START at start, $(loadavg) at end"
printf '%-6s %-11s %10s %10s %10s %12s %12s %12s %8s\n' mode proxy held established fresh "RSS before" "RSS held" "after close" "KiB/conn"
bad=0
for mode in "${MODE_LIST[@]}"; do
  for name in "${PROXY_LIST[@]}"; do
    key="$name|$mode"
    printf '%-6s %-11s %10d %10d %10s %12s %12s %12s %8.2f\n' "$mode" "$name" "${OPENED[$key]}" "${EST[$key]}" \
      "${FRESH[$key]}" "$(mib "${BEFORE[$key]}")" "$(mib "${HELD[$key]}")" "$(mib "${AFTER[$key]}")" "${PER[$key]}"
    ((OPENED[$key] == CONNS && EST[$key] >= CONNS)) && [[ ${FRESH[$key]} == 200 && ${CLOSED_IDLE[$key]:-1} == 0 ]] || bad=1
  done
done
if ((bad)); then
  # shellcheck disable=SC2034 # read by lib.sh's exit trap
  KEEP_TMP=1
  die "not every connection was made, held and still established, or a fresh request did not get 200 (see above; outputs in $TMP)"
fi
