#!/usr/bin/env bash
# The seeds' walkthrough, run with the CLI against a real tollgated:
#   day 1: the Team plan (4 seats × 100 pooled credits a month, a 1,000-credit top-up for a
#          year at priority 100, alerts at 10 credits and at zero); ana uses the assistant;
#   day 3: a fifth seat for eve, with credits prorated for the rest of the month; the team
#          spends through the included credits, then the top-up; the alert fires at 10
#          credits remaining; the gate refuses when nothing can cover an action.
# Day 3 is two days later by the server's clock: tollgated restarts with --clock-offset-seconds
# (the journal keeps everything in between).
#
#   examples/walkthrough.sh               # pooled (the Team plan)
#   examples/walkthrough.sh seat-scoped   # 100 credits per member, pooled add-on
#
# TOLLGATE_WALKTHROUGH_OUT=DIR also writes each balance as JSON there (the test reads them).
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-team}"
plan="examples/walkthrough-$variant.yaml"
[ -f "$plan" ] || { echo "no such variant: $variant (team or seat-scoped)" >&2; exit 2; }

# TOLLGATE_BIN=DIR uses binaries already built there (the tests do: they hold the build lock).
if [ -n "${TOLLGATE_BIN:-}" ]; then
  bin="$TOLLGATE_BIN"
else
  swift build --product tollgated >/dev/null
  swift build --product tollgate >/dev/null
  bin="$(swift build --show-bin-path)"
fi
port="${TOLLGATE_WALKTHROUGH_PORT:-7410}"
data="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-walkthrough.XXXXXX")"
out="${TOLLGATE_WALKTHROUGH_OUT:-}"
export TOLLGATE_SERVER="127.0.0.1:$port" TOLLGATE_TOKEN_FILE="$data/admin.token"
server=""
listener=""
cleanup() {
  [ -n "$listener" ] && kill "$listener" 2>/dev/null || true
  [ -n "$server" ] && { kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; }
  rm -rf "$data"
}
trap cleanup EXIT

start() { # $1: clock offset in seconds
  "$bin/tollgated" --data-dir "$data" --port "$port" --admin-port off --clock-offset-seconds "$1" --log-level error &
  server=$!
  for _ in $(seq 1 100); do "$bin/tollgate" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "tollgated did not start" >&2; exit 1
}
stop() { kill -TERM "$server"; wait "$server" || true; server=""; }
t() { echo; echo "\$ tollgate $*"; "$bin/tollgate" "$@"; }
snap() { # $1: name; $2: member (optional)
  if [ -n "$out" ]; then "$bin/tollgate" balance acme ${2:+--member "$2"} --json > "$out/$1.json"; fi
}

echo "== day 1"
start 0
t apply "$plan"
t balance acme
snap day1
t spend acme ai.assistant 1 --member ana
snap day1-after
stop

echo; echo "== day 3 (the server's clock two days on)"
start $((2 * 86400))
"$bin/tollgate" events --json > "$data/events.jsonl" &
listener=$!
if [ "$variant" = "team" ]; then
  t seats acme 5
else
  # Seat-scoped: ben's own credits get an alert of their own.
  t alert set acme ben-low --member ben --credits 10
fi
t member add acme eve
t balance acme
snap day3
snap day3-eve eve
# Through the included credits: 40 assistant calls by eve (480 credits; seat-scoped: eve's own,
# then the pooled add-on).
for _ in $(seq 1 40); do "$bin/tollgate" spend acme ai.assistant 1 --member eve --json >/dev/null || break; done
t balance acme
snap spent
echo
echo "\$ tollgate spend acme ai.summary 1 --member ben   # until the gate refuses"
count=0
while "$bin/tollgate" spend acme ai.summary 1 --member ben >/dev/null 2>&1; do count=$((count + 1)); done
echo "allowed $count summaries, then:"
set +e
"$bin/tollgate" spend acme ai.summary 1 --member ben
refusal=$?
set -e
echo "(exit status $refusal)"
t balance acme
snap end
sleep 0.5
kill "$listener" 2>/dev/null || true
listener=""
echo; echo "events:"; cat "$data/events.jsonl"
if [ -n "$out" ]; then
  cp "$data/events.jsonl" "$out/events.jsonl"
  echo "$count" > "$out/summaries"
  echo "$refusal" > "$out/refusal"
fi
stop
