#!/usr/bin/env bash
# Setup time of two builds, A/B: the working tree against a git revision
# (default HEAD~1), both sides started → the first line arrives at bob, on
# loopback, alternating the builds (A, B, B, A, ...) so both see the same
# load. Each build gets its own server (protocol versions may differ).
#
#   scripts/setup_ab.sh [REV]        RUNS=15 by default
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-HEAD~1}
RUNS=${RUNS:-15}
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	git worktree remove --force "$work/base" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach "$work/base" "$REV" >/dev/null 2>&1
(cd "$work/base" && go build -o "$work/p2pcat-A" .)
go build -o "$work/p2pcat-B" .
now() { date +%s.%N; }
for v in A B; do
	"$work/p2pcat-$v" serve --listen 127.0.0.1:0 --data "$work/data$v" --stun-alternate off --log-format json 2>"$work/serve$v.log" &
	pids+=($!)
done
for v in A B; do
	for _ in $(seq 50); do grep -q 'rendezvous server listening' "$work/serve$v.log" && break; sleep 0.1; done
	grep 'rendezvous server listening' "$work/serve$v.log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 >"$work/addr$v"
done
for r in $(seq "$RUNS"); do
	order="A B"; [ $((r % 2)) = 0 ] && order="B A" # A, B, B, A, ...: neither build always goes first
	for v in $order; do
		export P2PCAT_SERVER; P2PCAT_SERVER=$(cat "$work/addr$v")
		export P2PCAT_PASSWORD=pw
		t0=$(now)
		(timeout 30 "$work/p2pcat-$v" --name bob --find alice --session "ab$r" </dev/null | head -n1 >"$work/line"; now >"$work/t1") &
		bob=$!
		echo "first line" | timeout 30 "$work/p2pcat-$v" --name alice --find bob --session "ab$r" >/dev/null 2>&1 || true
		wait "$bob" || true
		grep -q "first line" "$work/line" || { echo "setup_ab: run $r of $v failed" >&2; exit 1; }
		echo "($(cat "$work/t1") - $t0) * 1000" | bc >>"$work/ms$v"
	done
done
for v in A B; do
	label=$([ "$v" = A ] && echo "$REV" || echo "working tree")
	sort -n "$work/ms$v" | awk -v l="$label" '{a[NR]=$1} END {printf "%-14s setup median %.0f ms (min %.0f, max %.0f, %d runs)\n", l, a[int((NR+1)/2)], a[1], a[NR], NR}'
done
