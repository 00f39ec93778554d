#!/usr/bin/env bash
# Starts tollgated on 127.0.0.1:7400 (admin on 7401), applies the Team plan of
# examples/team-plan.yaml, walks through a reserve, a commit and spends until the gate refuses
# at zero, shows the balance, and then keeps the server running until Ctrl-C.
# TOLLGATE_QUICKSTART_EXIT=1 stops the server after the walkthrough instead (used by CI).
set -euo pipefail
cd "$(dirname "$0")/.."

# The build's own progress is shown ([done/total] Compiling …): the first build compiles
# SwiftNIO, SwiftNIO SSL (BoringSSL) and the rest, which takes about 4 minutes on 2 cores;
# later builds take seconds.
echo "== building tollgated and tollgate (the first build takes about 4 minutes on 2 cores)"
started=$SECONDS
swift build --product tollgated
swift build --product tollgate
echo "== built in $((SECONDS - started)) s"
bin="$(swift build --show-bin-path)"
tollgate="$bin/tollgate"

data="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-quickstart.XXXXXX")"
"$bin/tollgated" --data-dir "$data" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
# With no credentials file, tollgated writes an admin token (mode 0600) to its data directory
# and accepts only that; the CLI reads it from TOLLGATE_TOKEN_FILE.
export TOLLGATE_TOKEN_FILE="$data/admin.token"
# Until it answers (at once, usually; at most 30 s on a busy machine).
for _ in $(seq 1 300); do
  if "$tollgate" ping >/dev/null 2>&1; then break; fi
  sleep 0.1
done

step() { echo; echo "\$ tollgate $*"; "$tollgate" "$@" || true; }

step ping
step apply examples/team-plan.yaml
step reserve acme ai.assistant 1 --member ana --ttl 30s
step commit acme 1 --credits 10
step check acme ai.summary 3 --member ben
echo
echo "\$ tollgate spend acme ai.summary 10 --member ben   # until the gate refuses"
count=0
while "$tollgate" spend acme ai.summary 10 --member ben >/dev/null; do count=$((count + 1)); done
echo "allowed $count times, then:"
"$tollgate" spend acme ai.summary 10 --member ben || true
step balance acme

if [ "${TOLLGATE_QUICKSTART_EXIT:-0}" = "1" ]; then
  # Checked in CI: 1,400 credits, 10 spent on the assistant, 70 per summary spend.
  if [ "$count" != "19" ]; then echo "quickstart: expected 19 spends before the refusal, saw $count" >&2; exit 1; fi
  "$tollgate" spend acme ai.summary 10 --member ben >/dev/null && { echo "quickstart: the gate did not refuse at zero" >&2; exit 1; }
  [ $? -eq 3 ] || { echo "quickstart: a refusal must exit with status 3" >&2; exit 1; }
  exit 0
fi
echo
echo "tollgated is running on 127.0.0.1:7400 (admin http://127.0.0.1:7401/metrics). Try:"
echo "  TOLLGATE_TOKEN_FILE=$data/admin.token $tollgate balance acme --member ana"
echo "Press Ctrl-C to stop it."
wait $server
