#!/usr/bin/env bash
# Throughput and CPU of two builds, A/B: the working tree (B) against a git
# revision (A, default HEAD~1), SIZE_MB (default 1024) of random data
# alice→bob on loopback, file → tmpfs, bytes checked with sha256. The runs
# alternate A, B, B, A, ... so both builds see the same load; each build
# has its own server. For a refactor that must not move performance; setup
# time has its own A/B script (scripts/setup_ab.sh).
#
#   scripts/bench_ab.sh [REV]        RUNS=6 by default (runs of each build)
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-HEAD~1}
RUNS=${RUNS:-6}
SIZE_MB=${SIZE_MB:-1024}
[ -x /usr/bin/time ] || { echo "bench_ab: needs GNU time (/usr/bin/time)" >&2; exit 2; }

work=$(mktemp -d)
shm=$work
[ -d /dev/shm ] && [ -w /dev/shm ] && shm=$(mktemp -d -p /dev/shm)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	git worktree remove --force "$work/base" >/dev/null 2>&1 || true
	rm -rf "$work" "$shm"
}
trap cleanup EXIT
git worktree add --detach "$work/base" "$REV" >/dev/null 2>&1
(cd "$work/base" && go build -o "$work/p2pcat-A" .)
go build -o "$work/p2pcat-B" .
head -c $((SIZE_MB << 20)) /dev/urandom >"$work/in.bin"
sync
want=$(sha256sum <"$work/in.bin" | cut -d' ' -f1)
OUT="$shm/out.bin"

for v in A B; do
	"$work/p2pcat-$v" serve --listen 127.0.0.1:0 --data "$work/data$v" --stun-alternate off --log-format json 2>"$work/serve$v.log" &
	pids+=($!)
done
for v in A B; do
	for _ in $(seq 50); do grep -q 'rendezvous server listening' "$work/serve$v.log" && break; sleep 0.1; done
	grep 'rendezvous server listening' "$work/serve$v.log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 >"$work/addr$v"
done
export P2PCAT_PASSWORD="bench-password"
now() { date +%s.%N; }
calc() { echo "$*" | bc -l; }

# one V SESSION: a transfer with build V; appends "MB/s cpu_alice cpu_bob" (CPU s/GiB)
one() {
	local v=$1 s=$2 t0 t1 b
	rm -f "$OUT"
	t0=$(now)
	P2PCAT_SERVER=$(cat "$work/addr$v") /usr/bin/time -f "%U %S" -o "$work/bob.time" timeout 300 "$work/p2pcat-$v" --name bob --find alice --session "$s" </dev/null >"$OUT" 2>"$work/bob.err" &
	b=$!
	P2PCAT_SERVER=$(cat "$work/addr$v") /usr/bin/time -f "%U %S" -o "$work/alice.time" timeout 300 "$work/p2pcat-$v" --name alice --find bob --session "$s" <"$work/in.bin" >/dev/null 2>"$work/alice.err"
	wait "$b"
	t1=$(now)
	[ "$(sha256sum <"$OUT" | cut -d' ' -f1)" = "$want" ] || { echo "bench_ab: build $v: output differs from input" >&2; cat "$work"/*.err >&2; exit 1; }
	local ca cb
	ca=$(awk -v mb="$SIZE_MB" '{printf "%.2f", ($1+$2)*1024/mb}' "$work/alice.time")
	cb=$(awk -v mb="$SIZE_MB" '{printf "%.2f", ($1+$2)*1024/mb}' "$work/bob.time")
	echo "$(calc "$SIZE_MB * 1.048576 / ($t1 - $t0)") $ca $cb" >>"$work/runs.$v"
}

# med FILE COL FMT: "median (min–max)" of a column
med() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk -v f="$3" '{v[NR]=$1} END {m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf f " (" f "–" f ")", m, v[1], v[NR]}'; }

echo "A = $(git rev-parse --short "$REV"), B = working tree; ${SIZE_MB} MiB loopback, $RUNS runs each, $(nproc) cores"
one A warmA
one B warmB
rm -f "$work/runs.A" "$work/runs.B"
for r in $(seq "$RUNS"); do
	if [ $((r % 2)) = 1 ]; then one A "a$r"; one B "b$r"; else one B "b$r"; one A "a$r"; fi
	printf "  run %d: A %.0f MB/s, B %.0f MB/s\n" "$r" "$(tail -1 "$work/runs.A" | cut -d' ' -f1)" "$(tail -1 "$work/runs.B" | cut -d' ' -f1)"
done
printf "%-6s %-28s %-24s %-24s\n" build "MB/s median (range)" "CPU s/GiB alice" "CPU s/GiB bob"
for v in A B; do
	printf "%-6s %-28s %-24s %-24s\n" "$v" "$(med "$work/runs.$v" 1 %.0f)" "$(med "$work/runs.$v" 2 %.2f)" "$(med "$work/runs.$v" 3 %.2f)"
done
