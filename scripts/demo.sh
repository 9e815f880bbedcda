#!/usr/bin/env bash
# The quick start: builds p2pcat, starts a rendezvous server on 127.0.0.1
# (database in a temporary directory), connects two peers, pipes a line each
# way and then a file alice→bob, and shows what arrived. Needs only Go.
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
"$p2pcat" serve --listen "127.0.0.1:$port" --data "$work/data" 2>"$work/server.log" &
srv=$!
for _ in $(seq 100); do grep -q "rendezvous server listening" "$work/server.log" && break; sleep 0.05; done
export P2PCAT_SERVER="127.0.0.1:$port"

echo "== registering session 'demo' (a new session key in demo.key)"
"$p2pcat" register demo --session-key-file "$work/demo.key" --ttl 1h 2>"$work/register.log"
sed 's/^/   /' "$work/register.log"
# Everyone in session 'demo' needs its key, and the peers a shared password.
export P2PCAT_SESSION_KEY_FILE="$work/demo.key"
export P2PCAT_PASSWORD="correct horse battery staple"

echo "== a line each way: alice and bob find each other in session 'demo'"
echo "hello bob, this is alice" | "$p2pcat" --session demo --name alice --find bob -v >"$work/alice.out" 2>"$work/alice.log" &
a=$!
echo "hi alice, bob here" | "$p2pcat" --session demo --name bob --find alice >"$work/bob.out" 2>"$work/bob.log"
wait "$a"
grep -o 'msg=connected.*' "$work/alice.log" | sed 's/^/   alice: /'
echo "   bob received:   $(cat "$work/bob.out")"
echo "   alice received: $(cat "$work/alice.out")"

echo "== a 20 MiB file alice → bob, encrypted end to end"
head -c $((20 << 20)) /dev/urandom >"$work/file.bin"
start=$(date +%s.%N)
"$p2pcat" --session demo --name bob --find alice </dev/null >"$work/received.bin" 2>"$work/bob.log" &
b=$!
"$p2pcat" --session demo --name alice --find bob <"$work/file.bin" >/dev/null 2>"$work/alice.log"
wait "$b"
end=$(date +%s.%N)
sent=$(sha256sum <"$work/file.bin" | cut -d' ' -f1)
got=$(sha256sum <"$work/received.bin" | cut -d' ' -f1)
echo "   sent     sha256 $sent"
echo "   received sha256 $got ($(stat -c %s "$work/received.bin") bytes, $(echo "$start $end" | awk '{printf "%.2f", $2-$1}') s including setup)"
[ "$sent" = "$got" ] && echo "   identical" || { echo "   MISMATCH"; exit 1; }

echo "== a wrong password is refused on both sides (exit code 4)"
set +e
echo x | P2PCAT_SESSION_KEY_FILE= P2PCAT_PASSWORD=wrong "$p2pcat" --session open --name alice --find bob 2>"$work/alice.log" &
a=$!
echo x | P2PCAT_SESSION_KEY_FILE= P2PCAT_PASSWORD=right "$p2pcat" --session open --name bob --find alice 2>"$work/bob.log"
cb=$?
wait "$a"; ca=$?
set -e
echo "   alice: exit $ca: $(cat "$work/alice.log")"
echo "   bob:   exit $cb: $(cat "$work/bob.log")"
