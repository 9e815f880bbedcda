#!/usr/bin/env bash
# The quick start: builds p2pcat, starts a rendezvous server on 127.0.0.1
# (database in a temporary directory), and shows what it does. Needs only Go.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
cleanup() { [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== building p2pcat"
go build -o "$work/p2pcat" .
p2pcat="$work/p2pcat"

port=$(( 20000 + RANDOM % 20000 ))
echo "== starting the rendezvous server on 127.0.0.1:$port"
"$p2pcat" serve --listen "127.0.0.1:$port" --data "$work/data" --metrics "127.0.0.1:0" 2>"$work/server.log" &
srv=$!
for _ in $(seq 50); do grep -q "rendezvous server listening" "$work/server.log" && break; sleep 0.1; done
export P2PCAT_SERVER="127.0.0.1:$port"

echo "== registering session 'demo' with a generated passphrase"
pass=$("$p2pcat" register demo --generate --ttl 1h)
echo "passphrase: $pass"
echo "== registering again with the same passphrase refreshes it"
P2PCAT_PASSWORD="$pass" "$p2pcat" register demo --ttl 2h
echo "== another password is refused (exit 6)"
set +e
P2PCAT_PASSWORD=wrong "$p2pcat" register demo; echo "exit code: $?"
set -e
echo "== server log"
cat "$work/server.log"
