#!/usr/bin/env bash
# The Switchyard steps of a blue/green CD job, with releasectl's exit codes turned into one
# verdict the pipeline can act on (docs/cd.md). Copy it into your application's repository
# (the examples next to it expect ci/switchyard-release.sh). Needs bash and jq.
#
#   switchyard-release.sh idle SERVICE
#       Prints the idle color of SERVICE: the one to deploy the new version to.
#   switchyard-release.sh release SERVICE COLOR [BACKEND...]
#       Points COLOR of SERVICE at BACKENDs (`releasectl backends`; skipped without any),
#       switches SERVICE to COLOR once COLOR's smoke checks pass and waits until the old
#       color drained (`releasectl switch COLOR --service SERVICE --wait-drain`), then
#       watches SERVICE for WATCH_S seconds: a rollback by Switchyard's SLO watch (or an
#       alarm) in that time fails the job.
#
# Environment:
#   RELEASECTL    how to run releasectl (default: `releasectl`, which reads RELEASECTL_ADMIN
#                 and RELEASECTL_TOKEN). Through the Switchyard pod, with the token that is
#                 already there and no network path to the admin port:
#                   RELEASECTL="kubectl -n switchyard exec deploy/switchyard -- releasectl --token-file /var/lib/switchyard/admin.token"
#   WATCH_S       seconds to watch after the switch (default 0: don't); use the service's
#                 slo.watch_s to see the whole watch through.
#   WATCH_POLL_S  seconds between two looks during the watch (default 5).
#
# Exit codes (releasectl's, docs/releasectl.md):
#   0  released (or SERVICE already was on COLOR)
#   1  refused or rolled back: a smoke check failed, a conflict with another release, or
#      the SLO watch rolled back. The previous color serves; nothing to undo.
#   2  usage or config error: unknown service, an address releasectl does not accept, ...
#   3  the admin API could not be reached or refused the token.
set -euo pipefail
shopt -s inherit_errexit # a failed $(…) inside $(…) ends the job with its exit code

read -r -a CTL <<<"${RELEASECTL:-releasectl}"
WATCH_S=${WATCH_S:-0}
WATCH_POLL_S=${WATCH_POLL_S:-5}

say() { printf 'switchyard-release: %s\n' "$*" >&2; }

usage() {
  sed -n '6,13p' "$0" >&2
  exit 2
}

# Ends the job with releasectl's exit code $1 and a line saying what it means for $2.
verdict() {
  local rc=$1 what=$2
  case $rc in
    0) return 0 ;;
    1) say "$what: refused; nothing changed, the active color keeps serving (see the lines above)" ;;
    2) say "$what: usage or config error (unknown service? an address releasectl does not accept?)" ;;
    3) say "$what: the admin API could not be reached or refused the token (RELEASECTL, RELEASECTL_ADMIN, RELEASECTL_TOKEN)" ;;
    *) say "$what: releasectl exited $rc" ;;
  esac
  exit "$rc"
}

# `releasectl --json status` (the whole answer), or the job ends with its verdict.
status_json() {
  local out rc=0
  out=$("${CTL[@]}" --json status) || rc=$?
  verdict "$rc" "status"
  printf '%s\n' "$out"
}

# The field $2 (active, alarm, ...) of service $1 in a status answer on stdin; empty if null.
field() {
  jq -r --arg s "$1" --arg f "$2" '.services[$s][$f] // empty'
}

active_color() {
  local service=$1 json active
  json=$(status_json) || exit $?
  if ! jq -e --arg s "$service" '.services | has($s)' <<<"$json" >/dev/null; then
    say "no service \`$service\` (releasectl status lists the services)"
    exit 2
  fi
  active=$(field "$service" active <<<"$json")
  if [ -z "$active" ]; then
    say "service \`$service\` is not releasable (one pool, no colors)"
    exit 2
  fi
  printf '%s\n' "$active"
}

idle() {
  [ $# -eq 1 ] || usage
  local active
  active=$(active_color "$1") || exit $?
  case $active in
    blue) echo green ;;
    green) echo blue ;;
    *) say "unexpected active color for $1"; exit 2 ;;
  esac
}

release() {
  [ $# -ge 2 ] || usage
  local service=$1 color=$2 rc
  shift 2
  case $color in blue | green) ;; *) say "COLOR must be blue or green, not \`$color\`"; exit 2 ;; esac

  if [ $# -gt 0 ]; then
    rc=0
    "${CTL[@]}" backends "$color" "$@" --service "$service" || rc=$?
    verdict "$rc" "backends $color of $service"
  fi

  rc=0
  "${CTL[@]}" switch "$color" --service "$service" --wait-drain || rc=$?
  verdict "$rc" "switch of $service to $color"

  if [ "$WATCH_S" -gt 0 ]; then
    say "watching $service on $color for ${WATCH_S}s (its SLO watch may roll it back)"
    local deadline=$((SECONDS + WATCH_S)) json active alarm
    while :; do
      json=$(status_json) || exit $?
      active=$(field "$service" active <<<"$json")
      alarm=$(field "$service" alarm <<<"$json")
      if [ "$active" != "$color" ]; then
        say "$service was rolled back to $active during the watch; the newest events:"
        "${CTL[@]}" history --limit 5 >&2 || true
        exit 1
      fi
      if [ -n "$alarm" ]; then
        say "$service: alarm: $alarm"
        exit 1
      fi
      [ "$SECONDS" -lt "$deadline" ] || break
      sleep "$WATCH_POLL_S"
    done
  fi
  say "released: $service serves $color"
}

[ $# -ge 1 ] || usage
verb=$1
shift
case $verb in
  idle) idle "$@" ;;
  release) release "$@" ;;
  *) usage ;;
esac
