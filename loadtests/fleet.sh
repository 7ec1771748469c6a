#!/usr/bin/env bash
# fleet.sh — load tests of a site: 3 switchyard instances sharing release state through a
# 3-member etcd cluster, all on 127.0.0.1 (SPEC "Several instances (etcd)", issue 12 item 7).
#
# Sets up, in a temp dir, on free loopback ports:
#   - etcd: 3 members (the flags of tests/it/support/etcd.rs: heartbeat 100 ms, election 1 s);
#   - backends: `fleet_load backends` (examples/fleet_load.rs), blue and green answering with
#     `x-backend-color`, green's failure share set at runtime through a control port;
#   - 3 instances: `switchyard run --config`, `[state] store = "etcd"`, one prefix,
#     etcd_lease_s = LEASE_S, one admin token file for all, service `web` (host localhost)
#     with a health check, a smoke check and an SLO.
# Then runs the phases (PHASES, in this order):
#   writes     etcd writes over WRITES_S s at rest (right after start: nothing released), then
#              over WRITES_S s during the SLO watch after a switch (fleet_load etcd-writes)
#   propagate  SWITCHES switches through instance 1; per switch and instance, the time until
#              a poll request (every POLL_MS ms per instance) is answered by the new color,
#              from the switch sent and from the call returned (fleet_load propagate)
#   load       LOAD_CONNS keep-alive connections spread over the 3 instances' data ports,
#              LOAD_SWITCHES switches every LOAD_INTERVAL_MS through instance 1: failed
#              requests must be 0 (examples/switch_load.rs)
#   failover   FAILOVERS times: kill -9 the leader (a canary running, a step a second), time
#              until a survivor leads and until the canary steps on; restart the killed one
#   rollback   ROLLBACKS times: switch to green through a follower, green fails every request
#              while RATE req/s go through that follower only; first 5xx seen → every instance
#              serves blue (the leader rolls back on the site's figures)
# and prints a summary table. Exit 1 if a phase failed (a failed request, a failed switch, no
# new leader, no rollback, …).
#
# Usage: bash loadtests/fleet.sh
# Env (defaults in brackets):
#   PHASES ["writes propagate load failover rollback"]
#   SWITCHES [100]  POLL_MS [2]  GAP_MS [100]
#   LOAD_CONNS [30]  LOAD_SWITCHES [20]  LOAD_INTERVAL_MS [1000]
#   FAILOVERS [5]  ROLLBACKS [5]  RATE [200]  WRITES_S [30]
#   LEASE_S [2]      etcd_lease_s of every instance
#   WATCH_S [45]     slo.watch_s (must outlast WRITES_S)
#   THREADS [1]      [server] threads of each instance (3 instances share the machine)
#   SW_BIN [<repo>/target/release/switchyard]  TOOL_BIN [<repo>/target/release/examples/fleet_load]
#   LOAD_BIN [<repo>/target/release/examples/switch_load]  ETCD_BIN [etcd on PATH]
#   SW_LOG [info]       SWITCHYARD_LOG of the instances
#   READY_TIMEOUT [30]  seconds to wait for a process
#   KEEP_TMP [0]        1 = keep the temp dir (configs, logs, per-switch figures)
set -euo pipefail

PHASES=${PHASES:-writes propagate load failover rollback}
SWITCHES=${SWITCHES:-100}
POLL_MS=${POLL_MS:-2}
GAP_MS=${GAP_MS:-100}
LOAD_CONNS=${LOAD_CONNS:-30}
LOAD_SWITCHES=${LOAD_SWITCHES:-20}
LOAD_INTERVAL_MS=${LOAD_INTERVAL_MS:-1000}
FAILOVERS=${FAILOVERS:-5}
ROLLBACKS=${ROLLBACKS:-5}
RATE=${RATE:-200}
WRITES_S=${WRITES_S:-30}
LEASE_S=${LEASE_S:-2}
WATCH_S=${WATCH_S:-45}
THREADS=${THREADS:-1}
SW_LOG=${SW_LOG:-info}
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
N=3

LIB_TAG=fleet
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$LIB_REPO
SW_BIN=${SW_BIN:-$REPO/target/release/switchyard}
TOOL_BIN=${TOOL_BIN:-$REPO/target/release/examples/fleet_load}
LOAD_BIN=${LOAD_BIN:-$REPO/target/release/examples/switch_load}

require_uint SWITCHES POLL_MS GAP_MS LOAD_CONNS LOAD_SWITCHES LOAD_INTERVAL_MS FAILOVERS ROLLBACKS RATE WRITES_S LEASE_S WATCH_S THREADS READY_TIMEOUT
((SWITCHES <= 2000 && LOAD_CONNS >= 1 && LOAD_CONNS <= 4096 && FAILOVERS <= 50 && ROLLBACKS <= 50)) ||
  { echo "SWITCHES <= 2000, 1 <= LOAD_CONNS <= 4096, FAILOVERS and ROLLBACKS <= 50, please" >&2; exit 2; }
((LEASE_S >= 1 && LEASE_S <= 60 && THREADS >= 1 && RATE >= 1)) || { echo "LEASE_S 1-60, THREADS and RATE >= 1" >&2; exit 2; }
for p in $PHASES; do
  case $p in writes | propagate | load | failover | rollback) ;; *) echo "PHASES: unknown phase '$p'" >&2; exit 2 ;; esac
done
[[ " $PHASES " == *" writes "* ]] && ((WATCH_S < WRITES_S + 10)) &&
  { echo "WATCH_S ($WATCH_S) must outlast WRITES_S ($WRITES_S) by 10 s: the watch sample runs inside one watch" >&2; exit 2; }

# ---------------------------------------------------------------- tools + binaries
ensure_pkgs curl:curl jq:jq etcd:etcd-server
ETCD_BIN=${ETCD_BIN:-$(command -v etcd)}
ensure_built "$SW_BIN" --bins --examples
# the scenario's own tools: rebuilt when their source changed
ensure_fresh "$REPO/examples/fleet_load.rs" "$TOOL_BIN" --bins --examples
ensure_fresh "$REPO/examples/switch_load.rs" "$LOAD_BIN" --bins --examples

lib_init fleet
PREFIX=/switchyard/fleet-load-$$/
echo "== fleet: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpu(s), load average $(loadavg)"
echo "== switchyard $(git_rev), $(build_note "$SW_BIN"); $("$ETCD_BIN" --version 2>/dev/null | head -n 1)"
echo "== phases: $PHASES; 3 etcd members, $N instances ([server] threads = $THREADS, etcd_lease_s = $LEASE_S), temp dir $TMP"

# ---------------------------------------------------------------- etcd
ETCD_ENDPOINTS=()
etcd_member_cmd() { # I
  local i=$1
  echo "$ETCD_BIN" --name "m$i" --data-dir "$TMP/etcd/m$i.etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CPORT[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CPORT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PPORT[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PPORT[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token "fleet-load-$$" \
    --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-outputs stderr
}
etcd_healthy() { # I
  [[ $(curl -s -m 1 "http://127.0.0.1:${ETCD_CPORT[$1]}/health" 2>/dev/null | jq -r .health 2>/dev/null) == true ]]
}
start_etcd() { # returns 1 if a member exited during the start (a port taken meanwhile)
  local i
  ETCD_CPORT=() ETCD_PPORT=() ETCD_PIDS=() ETCD_ENDPOINTS=()
  rm -rf "$TMP/etcd"
  mkdir -p "$TMP/etcd"
  for i in 0 1 2; do
    ETCD_CPORT[i]=$(free_port)
    ETCD_PPORT[i]=$(free_port)
    ETCD_ENDPOINTS+=("http://127.0.0.1:${ETCD_CPORT[i]}")
  done
  ETCD_CLUSTER="m0=http://127.0.0.1:${ETCD_PPORT[0]},m1=http://127.0.0.1:${ETCD_PPORT[1]},m2=http://127.0.0.1:${ETCD_PPORT[2]}"
  for i in 0 1 2; do
    # shellcheck disable=SC2046
    start_bg "$TMP/etcd/m$i.log" env -i -C "$TMP/etcd" $(etcd_member_cmd "$i")
    ETCD_PIDS[i]=$STARTED_PID
  done
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    local ok=0
    for i in 0 1 2; do
      kill -0 "${ETCD_PIDS[i]}" 2>/dev/null || {
        tail -n 5 "$TMP/etcd/m$i.log" >&2
        stop_started "${ETCD_PIDS[@]}"
        return 1
      }
      etcd_healthy "$i" && ok=$((ok + 1))
    done
    ((ok == 3)) && return 0
    sleep 0.1
  done
  tail -n 20 "$TMP"/etcd/m*.log >&2
  die "etcd did not become healthy within ${READY_TIMEOUT}s"
}
started=0
for _ in 1 2 3; do
  if start_etcd; then started=1; break; fi
  log "an etcd member exited during the start (port taken?); retrying with other ports"
done
((started)) || die "could not start etcd (3 attempts)"
echo "+ etcd: $(etcd_member_cmd 0) (and m1, m2 alike)"
log "etcd members: ${ETCD_ENDPOINTS[*]}"

# ---------------------------------------------------------------- backends
BLUE_PORT=$(free_port)
GREEN_PORT=$(free_port)
CTL_PORT=$(free_port)
CONTROL=127.0.0.1:$CTL_PORT
echo "+ $TOOL_BIN backends --blue 127.0.0.1:$BLUE_PORT --green 127.0.0.1:$GREEN_PORT --control $CONTROL"
start_bg "$TMP/backends.log" "$TOOL_BIN" backends --blue "127.0.0.1:$BLUE_PORT" --green "127.0.0.1:$GREEN_PORT" --control "$CONTROL"
BACKENDS_PID=$STARTED_PID
wait_ready backends "$BACKENDS_PID" "$TMP/backends.log" "http://$CONTROL/stats"

# ---------------------------------------------------------------- instances
TOKEN_FILE=$TMP/admin.token
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
TOKEN=$(cat "$TOKEN_FILE")
endpoints_toml=$(printf '"%s", ' "${ETCD_ENDPOINTS[@]}")
endpoints_toml="[${endpoints_toml%, }]"
DATA=() ADMIN=() SW_PIDS=()

write_config() { # I
  local i=$1 dir=$TMP/i$1
  mkdir -p "$dir"
  cat >"$dir/sw.toml" <<EOF
# fleet.sh: instance $i of a site of $N (same config everywhere but the listen ports).
[listen]
http  = "127.0.0.1:${DATA_PORT[i]}"
admin = "127.0.0.1:${ADMIN_PORT[i]}"

[server]
threads = $THREADS
grace_s = 1

[admin]
token_file = "$TOKEN_FILE"

[state]
dir = "state"
store = "etcd"
etcd_endpoints = $endpoints_toml
etcd_prefix = "$PREFIX"
etcd_lease_s = $LEASE_S

[[route]]
host = "localhost"
service = "web"

[service.web]
blue  = ["127.0.0.1:$BLUE_PORT"]
green = ["127.0.0.1:$GREEN_PORT"]
health_check = { path = "/health", interval_ms = 1000 }
smoke = [{ path = "/health", expect_status = 200 }]
slo = { max_error_rate = 0.05, window_s = 10, min_requests = 20, watch_s = $WATCH_S }
EOF
}

status_of() { # I → /v1/status JSON (empty on failure)
  curl -s -m 2 -H "Authorization: Bearer $TOKEN" "${ADMIN[$1]}/v1/status" 2>/dev/null || true
}

# the instance answers /health 200 with "store":"ok"
instance_ready() { # I
  [[ $(curl -s -m 1 "${ADMIN[$1]}/health" 2>/dev/null | jq -r .store 2>/dev/null) == ok ]]
}

# start_instance I: start (or restart) instance I on its ports and state dir; wait until ready.
# A restart keeps the previous run's log as switchyard.log.N.
start_instance() {
  local i=$1 dir=$TMP/i$1 n=1
  if [[ -f $dir/switchyard.log ]]; then
    while [[ -f $dir/switchyard.log.$n ]]; do n=$((n + 1)); done
    mv "$dir/switchyard.log" "$dir/switchyard.log.$n"
  fi
  start_bg "$dir/switchyard.log" env -C "$dir" SWITCHYARD_LOG="$SW_LOG" "$SW_BIN" run --config "$dir/sw.toml"
  SW_PIDS[i]=$STARTED_PID
  wait_until "instance $((i + 1))" "${SW_PIDS[i]}" "$dir/switchyard.log" "not ready (/health store ok)" instance_ready "$i"
}

# every instance's status: N instances listed, one leader, one applied revision, both colors healthy
site_settled() {
  local i st
  for ((i = 0; i < N; i++)); do
    st=$(status_of "$i")
    jq -e --argjson n "$N" '(.instances | length) == $n
      and ([.instances[] | select(.leader)] | length) == 1
      and ([.instances[].applied_revision] | unique | length) == 1
      and ([.services.web.backends[][] | select(.healthy)] | length) >= 2' <<<"$st" >/dev/null 2>&1 || return 1
  done
}
wait_settled() { # CONTEXT
  local deadline=$((SECONDS + READY_TIMEOUT))
  until site_settled; do
    if ((SECONDS >= deadline)); then
      status_of 0 >&2
      die "the site did not settle ($1): want $N instances listed, one leader, one applied revision, both colors healthy"
    fi
    sleep 0.1
  done
}

for ((i = 0; i < N; i++)); do
  DATA_PORT[i]=$(free_port)
  ADMIN_PORT[i]=$(free_port)
  DATA[i]=127.0.0.1:${DATA_PORT[i]}
  ADMIN[i]=http://127.0.0.1:${ADMIN_PORT[i]}
  write_config "$i"
done
echo "+ (cd $TMP/iN && SWITCHYARD_LOG=$SW_LOG $SW_BIN run --config $TMP/iN/sw.toml)   for N = 0 1 2"
# at exit, the instances go before etcd (else each logs "etcd unreachable" on the way out)
stop_instances() { stop_started "${SW_PIDS[@]}"; }
ON_EXIT_FIRST+=(stop_instances)
for ((i = 0; i < N; i++)); do start_instance "$i"; done
wait_settled "after start"
for ((i = 0; i < N; i++)); do log "instance $((i + 1)): pid ${SW_PIDS[i]}, data ${DATA[i]}, admin ${ADMIN[i]}"; done
echo "== instance config (instance 1):"
sed 's/^/   /' "$TMP/i0/sw.toml"

DATA_LIST=$(IFS=,; echo "${DATA[*]}")
ADMIN_LIST=$(IFS=,; echo "${ADMIN[*]}")
ETCD_LIST=$(IFS=,; echo "${ETCD_ENDPOINTS[*]}")
SITE_ARGS=(--data "$DATA_LIST" --admins "$ADMIN_LIST" --token-file "$TOKEN_FILE" --host localhost --service web)

FAILED=()
declare -A RES=() # phase → its RESULT line(s)

# run_phase NAME BUDGET_S CMD… — run CMD bounded, print its output, keep its RESULT lines
run_phase() {
  local name=$1 budget=$2
  shift 2
  echo
  echo "+ $*"
  run_timed "$TMP/$name.out" "$budget" "$@"
  cat "$TMP/$name.out"
  RES[$name]+=$(grep '^RESULT ' "$TMP/$name.out" || true)$'\n'
  case $RUN_RC in
    0) ;;
    124) FAILED+=("$name (timed out after ${budget}s)") ;;
    *) FAILED+=("$name (exit $RUN_RC)") ;;
  esac
}

# field KEY TEXT — the value of KEY=… in a RESULT line
field() { grep -o "\b$1=[^ ]*" <<<"$2" | head -n 1 | cut -d= -f2; }

switch_to() { # COLOR via instance 1 (smoke checks)
  local out
  out=$(curl -s -m 30 -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"color\":\"$1\",\"services\":[\"web\"]}" "${ADMIN[0]}/v1/switch")
  jq -e '.changed' <<<"$out" >/dev/null 2>&1 || die "switch to $1 failed: $out"
}

for phase in $PHASES; do
  case $phase in
    writes)
      echo
      echo "== etcd writes at rest: nothing released since the start, no watch running"
      run_phase writes-rest $((WRITES_S + 30)) "$TOOL_BIN" etcd-writes --etcd "$ETCD_LIST" --prefix "$PREFIX" --secs "$WRITES_S" --instances "$N" --label rest
      switch_to green
      echo "== etcd writes during the SLO watch after a switch to green (watch_s = $WATCH_S, no traffic needed: followers publish their window once a second)"
      run_phase writes-watch $((WRITES_S + 30)) "$TOOL_BIN" etcd-writes --etcd "$ETCD_LIST" --prefix "$PREFIX" --secs "$WRITES_S" --instances "$N" --label watch
      ;;
    propagate)
      run_phase propagate $((SWITCHES * 8 + 60)) "$TOOL_BIN" propagate "${SITE_ARGS[@]}" --switches "$SWITCHES" --via 0 \
        --poll-ms "$POLL_MS" --gap-ms "$GAP_MS" --per-switch "$TMP/propagation.tsv"
      ;;
    load)
      run_phase load $(((LOAD_SWITCHES * LOAD_INTERVAL_MS + 4000) / 1000 + 60)) "$LOAD_BIN" --proxy "$DATA_LIST" --host localhost \
        --admin "${ADMIN[0]}" --token-file "$TOKEN_FILE" --conns "$LOAD_CONNS" --switches "$LOAD_SWITCHES" \
        --interval-ms "$LOAD_INTERVAL_MS" --warmup-ms 2000 --tail-ms 2000 --service web --verbose
      ;;
    failover)
      for ((r = 1; r <= FAILOVERS; r++)); do
        wait_settled "before failover $r"
        pids=$(IFS=,; echo "${SW_PIDS[*]}")
        run_phase failover $((30 + 3 * LEASE_S)) "$TOOL_BIN" failover "${SITE_ARGS[@]}" --pids "$pids" --canary
        killed=$(field killed "$(grep '^RESULT ' "$TMP/failover.out" | tail -n 1)")
        [[ $killed =~ ^[0-9]+$ ]] || { log "failover $r: no instance killed"; break; }
        k=$((killed - 1))
        wait "${SW_PIDS[k]}" 2>/dev/null || true
        forget_pids "${SW_PIDS[k]}"
        log "failover $r: restarting instance $killed"
        start_instance "$k"
      done
      wait_settled "after the failovers"
      ;;
    rollback)
      run_phase rollback $((ROLLBACKS * 25 + 30)) "$TOOL_BIN" rollback "${SITE_ARGS[@]}" --control "$CONTROL" \
        --reps "$ROLLBACKS" --rate "$RATE" --conns 4
      ;;
  esac
done

# ---------------------------------------------------------------- logs
echo
for ((i = 0; i < N; i++)); do
  plain=$TMP/i$i/switchyard.plain.log
  # every run of the instance (a killed leader's log is kept as switchyard.log.N)
  logs=()
  for f in "$TMP/i$i"/switchyard.log.* "$TMP/i$i/switchyard.log"; do
    if [[ -f $f ]]; then logs+=("$f"); fi
  done
  sed 's/\x1b\[[0-9;]*m//g' "${logs[@]}" >"$plain"
  n_warn=$(grep -cE ' (WARN|ERROR) ' "$plain" || true)
  n_breach=$(grep -c 'SLO breached' "$plain" || true)
  n_lead=$(grep -c 'leading the site' "$plain" || true)
  n_runs=${#logs[@]}
  echo "== instance $((i + 1)) log ($n_runs run(s)): $n_lead x 'leading the site', $n_breach x 'SLO breached', $n_warn WARN/ERROR lines in all"
  grep -E ' (WARN|ERROR) ' "$plain" | grep -v -e 'SLO breached' -e 'failed to acquire reusable stream' |
    sed 's/^/   /' | cut -c1-240 | sort | uniq -c | sort -rn | head -n 5 || true
done

# ---------------------------------------------------------------- summary
echo
echo "== summary (fleet.sh, $(nproc) cpus, load average at the end $(loadavg))"
if [[ -n ${RES[writes-rest]:-} || -n ${RES[writes-watch]:-} ]]; then
  for l in rest watch; do
    r=${RES[writes-$l]:-}
    [[ -n $r ]] || continue
    printf '%-44s %s write txns/s in all = %s per instance (revisions +%s in %s s; lease keep-alives %s per instance per s, not writes)\n' \
      "etcd writes, $l" "$(field writes_per_s "$r")" "$(field writes_per_instance_s "$r")" "$(field revisions "$r")" \
      "$(field secs "$r")" "$(field keepalive_per_instance_s "$r")"
  done
fi
if [[ -n ${RES[propagate]:-} ]]; then
  r=${RES[propagate]}
  printf '%-44s p50 %s  p99 %s  max %s ms\n' "switch call (smoke checks, waits for all)" "$(field call_p50 "$r")" "$(field call_p99 "$r")" "$(field call_max "$r")"
  for k in i1 i2 i3 all; do
    printf '%-44s from sent: p50 %s  p99 %s  max %s ms;  from returned: p50 %s  p99 %s  max %s ms\n' \
      "propagation, $k" "$(field ${k}_send_p50 "$r")" "$(field ${k}_send_p99 "$r")" "$(field ${k}_send_max "$r")" \
      "$(field ${k}_ret_p50 "$r")" "$(field ${k}_ret_p99 "$r")" "$(field ${k}_ret_max "$r")"
  done
  printf '%-44s %s switches, %s failed, %s not seen everywhere, %s flaps\n' "" "$(field switches "$r")" \
    "$(field failed_switches "$r")" "$(field missing "$r")" "$(field flaps "$r")"
fi
if [[ -n ${RES[load]:-} ]]; then
  r=${RES[load]}
  printf '%-44s %s failed of %s requests (%s req/s), %s switches (%s failed), %s requests after a return reached the old color\n' \
    "load through all $N instances" "$(field failures "$r")" "$(field total "$r")" "$(field rps "$r")" \
    "$(field switches "$r")" "$(field failed_switches "$r")" "$(field leak_reqs "$r")"
fi
if [[ -n ${RES[failover]:-} ]]; then
  lm=() ls=() cs=() ca=()
  while read -r line; do
    [[ $line == RESULT* ]] || continue
    lm+=("$(field leader_metric_ms "$line")")
    ls+=("$(field leader_status_ms "$line")")
    cs+=("$(field canary_step_ms "$line")")
    ca+=("$(field canary_step_all_ms "$line")")
  done <<<"${RES[failover]}"
  printf '%-44s %s ms (median %s)\n' "failover: a survivor leads (its /metrics)" "${lm[*]}" "$(median "${lm[@]}")"
  printf '%-44s %s ms (median %s)\n' "failover: new leader in a survivor's status" "${ls[*]}" "$(median "${ls[@]}")"
  printf '%-44s %s ms (median %s)\n' "failover: canary steps on (first survivor)" "${cs[*]}" "$(median "${cs[@]}")"
  printf '%-44s %s ms (median %s)\n' "failover: canary steps on (every survivor)" "${ca[*]}" "$(median "${ca[@]}")"
fi
if [[ -n ${RES[rollback]:-} ]]; then
  r=${RES[rollback]}
  printf '%-44s %s ms (min %s, median %s, max %s); %s of %s rolled back; 5xx per rep median %s\n' \
    "rollback: first 5xx → every instance blue" "$(field all_list "$r")" "$(field all_min "$r")" "$(field all_med "$r")" \
    "$(field all_max "$r")" "$(field rolled_back "$r")" "$(field reps "$r")" "$(field fail_med "$r")"
fi
if ((${#FAILED[@]})); then
  KEEP_TMP=1
  die "failed phases: ${FAILED[*]}; see above and $TMP"
fi
echo "== OK"
