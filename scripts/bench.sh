#!/usr/bin/env bash
# Benchmarks p2pcat against nc over TCP on this machine, side by side in one
# run (issue 6, "a pipe as fast as TCP"):
#
#   (a) SIZE_MB (default 1024: 1 GiB) of random data alice→bob on loopback,
#       bytes checked with sha256: throughput of p2pcat and of nc, their
#       ratio per run (each p2pcat run is paired with the nc run right after
#       it, so both see the same load), CPU seconds per GiB of each side of
#       both tools (user+sys from GNU time, i.e. getrusage) and peak RSS.
#       p2pcat's end-to-end time includes its setup (rendezvous, RSA key,
#       handshake); "after connect" times the transfer alone.
#   (a') the same on the forced plain path (--no-offload --no-mtu-probe:
#       whole 1200-byte datagrams, batched with sendmmsg/recvmmsg but without
#       segmentation offload), so the gain from offload shows
#       (PLAIN=0 skips it).
#   (b) setup time: both sides started → the first line arrives at bob.
#   (b') the same step by step, on loopback and across a 40 ms RTT (each
#       client's path to the server through its own relay, then a --peer
#       pair through one), with the rendezvous's requests: the output of
#       scripts/setup_steps.sh.
#   (c) LOSSY_MB (default 32) across a path with 40 ms RTT and 1% random loss
#       each way (the userspace relay scripts/netem).
#
# Both tools read the input from a file (in the page cache) and write to a
# file on tmpfs (/dev/shm when there is one), so neither pays for a disk.
# RUNS (default 5) runs of each, after one unmeasured warm-up run of each;
# the table shows the median and the range, and each run's pair is printed.
# Installs netcat-openbsd and GNU time when missing (as root). Every run is
# bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-1024}
LOSSY_MB=${LOSSY_MB:-32}
RUNS=${RUNS:-5}
PLAIN=${PLAIN:-1}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	need=()
	command -v nc >/dev/null || need+=(netcat-openbsd)
	[ -x /usr/bin/time ] || need+=(time)
	command -v bc >/dev/null || need+=(bc)
	if [ ${#need[@]} -gt 0 ]; then
		apt-get update -qq >/dev/null 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	fi
fi
[ -x /usr/bin/time ] || { echo "bench: needs GNU time (/usr/bin/time)" >&2; exit 2; }

work=$(mktemp -d)
shm=$work
[ -d /dev/shm ] && [ -w /dev/shm ] && shm=$(mktemp -d -p /dev/shm)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work" "$shm"
}
trap cleanup EXIT

go build -o "$work/p2pcat" .
go build -o "$work/netem" ./scripts/netem
P="$work/p2pcat"
OUT="$shm/out.bin"
head -c $((SIZE_MB << 20)) /dev/urandom >"$work/in.bin"
head -c $((LOSSY_MB << 20)) /dev/urandom >"$work/lossy.bin"
# Write the inputs back now, so that no run shares the machine with the
# page cache's write-back of 1 GiB.
sync
want=$(sha256sum <"$work/in.bin" | cut -d' ' -f1)
wantl=$(sha256sum <"$work/lossy.bin" | cut -d' ' -f1)

port=$((20000 + RANDOM % 20000))
"$P" serve --listen "127.0.0.1:$port" --data "$work/data" 2>"$work/serve.log" &
pids+=($!)
export P2PCAT_SERVER="127.0.0.1:$port" P2PCAT_PASSWORD="bench-password"
for _ in $(seq 100); do grep -q "listening" "$work/serve.log" && break; sleep 0.05; done

now() { date +%s.%N; }
calc() { echo "$*" | bc -l; }
# GNU time's record of a finished run: "elapsed user sys maxrss_kib"
TIMEFMT="%e %U %S %M"
cpu_per_gib() { awk -v mb="$SIZE_MB" '{printf "%.2f", ($2+$3)*1024/mb}' "$1"; }
rss_mib() { awk '{printf "%.0f", $4/1024}' "$1"; }

# check FILE WANT WHAT: the bytes that arrived are exactly the bytes sent
check() {
	[ "$(sha256sum <"$1" | cut -d' ' -f1)" = "$2" ] || { echo "bench: $3: output differs from input!" >&2; cat "$work"/*.err >&2 2>/dev/null || true; exit 1; }
}

# p2pcat_pipe IN SESSION [ENV...]: alice sends IN, bob writes OUT. Sets
# SECS (end to end) and XFER (from alice's "connected" line to the end).
p2pcat_pipe() {
	local in=$1 s=$2
	shift 2
	rm -f "$OUT"
	local t0 t1 tc b
	t0=$(now)
	env "$@" /usr/bin/time -f "$TIMEFMT" -o "$work/bob.time" timeout 300 "$P" --name bob --find alice --session "$s" -vv </dev/null >"$OUT" 2>"$work/bob.err" &
	b=$!
	env "$@" /usr/bin/time -f "$TIMEFMT" -o "$work/alice.time" timeout 300 "$P" --name alice --find bob --session "$s" -vv <"$in" >/dev/null 2>"$work/alice.err"
	wait "$b"
	t1=$(now)
	tc=$(date -d "$(sed -n 's/^time=\([^ ]*\) .*msg=connected.*/\1/p' "$work/alice.err")" +%s.%N)
	SECS=$(calc "$t1 - $t0")
	XFER=$(calc "$t1 - $tc")
}

# nc_pipe IN: the same over TCP with netcat. Sets SECS.
nc_pipe() {
	local in=$1 np=$((30000 + RANDOM % 20000))
	rm -f "$OUT"
	local t0 t1 b
	/usr/bin/time -f "$TIMEFMT" -o "$work/bob.time" timeout 300 nc -l -d 127.0.0.1 "$np" >"$OUT" 2>/dev/null &
	b=$!
	for _ in $(seq 100); do ss -ltn | grep -q ":$np " && break; sleep 0.01; done
	t0=$(now)
	/usr/bin/time -f "$TIMEFMT" -o "$work/alice.time" timeout 300 nc -N 127.0.0.1 "$np" <"$in" 2>/dev/null
	wait "$b"
	t1=$(now)
	SECS=$(calc "$t1 - $t0")
}

# Per-run figures, one line per run in a file per test: MB/s, CPU s/GiB
# alice, bob, RSS MiB alice, bob (and for p2pcat: MB/s after connect).
record() { # FILE MBS [MORE]
	local f=$1
	shift
	echo "$* $(cpu_per_gib "$work/alice.time") $(cpu_per_gib "$work/bob.time") $(rss_mib "$work/alice.time") $(rss_mib "$work/bob.time")" >>"$work/runs.$f"
}
mbs() { calc "$SIZE_MB * 1.048576 / $1"; }

# median and range of column COL of FILE: "median (min–max)"
stat_col() {
	awk -v c="$2" -v fmt="${3:-%.0f}" '{print $c}' "$1" | sort -g | awk -v fmt="${3:-%.0f}" '
		{v[NR]=$1} END {m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2
		printf fmt " (" fmt "–" fmt ")", m, v[1], v[NR]}'
}
med_col() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

echo "p2pcat benchmark on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ): ${SIZE_MB} MiB, $RUNS runs each, median (range)"
# One unmeasured run of each first: on a virtual machine the first touch
# of fresh memory (the tmpfs output, the socket buffers) is much slower
# than any later one, and whichever tool ran first paid for it.
p2pcat_pipe "$work/in.bin" warm
nc_pipe "$work/in.bin"
for r in $(seq "$RUNS"); do
	# The pair's order alternates, so that neither tool always follows
	# the other's cleanup.
	if [ $((r % 2)) = 1 ]; then
		p2pcat_pipe "$work/in.bin" "tp$r"
		check "$OUT" "$want" "p2pcat"
		record p2pcat "$(mbs "$SECS")" "$(mbs "$XFER")"
		p=$(mbs "$SECS") px=$(mbs "$XFER")
	fi
	nc_pipe "$work/in.bin"
	check "$OUT" "$want" "nc"
	record nc "$(mbs "$SECS")"
	n=$(mbs "$SECS")
	if [ $((r % 2)) = 0 ]; then
		p2pcat_pipe "$work/in.bin" "tp$r"
		check "$OUT" "$want" "p2pcat"
		record p2pcat "$(mbs "$SECS")" "$(mbs "$XFER")"
		p=$(mbs "$SECS") px=$(mbs "$XFER")
	fi
	echo "$(calc "$p / $n") $(calc "$px / $n")" >>"$work/ratio"
	printf "  run %d: p2pcat %.0f MB/s (after connect %.0f), nc %.0f MB/s, ratio %.2f (%.2f)\n" "$r" "$p" "$px" "$n" "$(calc "$p / $n")" "$(calc "$px / $n")"
	if [ "$PLAIN" = 1 ]; then
		p2pcat_pipe "$work/in.bin" "plain$r" P2PCAT_NO_OFFLOAD=1 P2PCAT_NO_MTU_PROBE=1
		check "$OUT" "$want" "p2pcat (plain path)"
		record plain "$(mbs "$SECS")" "$(mbs "$XFER")"
	fi
done
rm -f "$OUT"

echo
printf "%-38s %-20s %-20s %-12s\n" "(a) ${SIZE_MB} MiB loopback, file → tmpfs" "MB/s" "CPU s/GiB alice/bob" "RSS MiB a/b"
row() { # LABEL FILE EXTRA: EXTRA columns sit between MB/s and the CPU figures
	local f="$work/runs.$2" c=$((2 + $3))
	printf "%-38s %-20s %-20s %-12s\n" "$1" "$(stat_col "$f" 1)" \
		"$(med_col "$f" $c)/$(med_col "$f" $((c + 1)))" \
		"$(med_col "$f" $((c + 2)))/$(med_col "$f" $((c + 3)))"
}
row "p2pcat, end to end" p2pcat 1
printf "%-38s %-20s\n" "p2pcat, after connect" "$(stat_col "$work/runs.p2pcat" 2)"
row "nc over TCP" nc 0
printf "%-38s %-20s\n" "ratio p2pcat/nc, end to end" "$(stat_col "$work/ratio" 1 %.2f)"
printf "%-38s %-20s\n" "ratio p2pcat/nc, after connect" "$(stat_col "$work/ratio" 2 %.2f)"
if [ "$PLAIN" = 1 ]; then
	row "p2pcat plain path (1200 B, no GSO)" plain 1
	printf "%-38s %-20s\n" "plain path, after connect" "$(stat_col "$work/runs.plain" 2)"
fi

# (b) setup: both started at once → the first line arrives at bob
for r in $(seq $((RUNS * 2))); do
	rm -f "$work/line" "$work/t1"
	t0=$(now)
	(timeout 30 "$P" --name bob --find alice --session "setup$r" </dev/null | head -n1 >"$work/line"; now >"$work/t1") &
	sb=$!
	echo "first line" | timeout 30 "$P" --name alice --find bob --session "setup$r" >/dev/null 2>&1 &
	sa=$!
	wait "$sb" "$sa" || true
	grep -q "first line" "$work/line" || { echo "bench: setup run $r failed" >&2; exit 1; }
	calc "($(cat "$work/t1") - $t0) * 1000" >>"$work/setup"
	np=$((30000 + RANDOM % 20000))
	rm -f "$work/line" "$work/t1"
	t0=$(now)
	(timeout 10 nc -l -d 127.0.0.1 "$np" 2>/dev/null | head -n1 >"$work/line"; now >"$work/t1") &
	sb=$!
	for _ in $(seq 200); do echo "first line" | nc -N 127.0.0.1 "$np" 2>/dev/null && break; sleep 0.005; done
	wait "$sb" || true
	# a port someone else holds fails the listener: that run does not count
	grep -q "first line" "$work/line" && calc "($(cat "$work/t1") - $t0) * 1000" >>"$work/ncsetup"
done
echo
printf "%-38s %-20s %-20s\n" "(b) setup (started → first line)" "p2pcat ms" "nc ms"
printf "%-38s %-20s %-20s\n" "" "$(stat_col "$work/setup" 1)" "$(stat_col "$work/ncsetup" 1)"

# (b') where the setup goes, step by step, on loopback and across 40 ms RTT
echo
echo "(b') setup step by step (scripts/setup_steps.sh), loopback:"
RUNS=$((RUNS * 2)) scripts/setup_steps.sh | sed 's/^/  /'
echo "(b') across 40 ms RTT:"
RUNS=$RUNS DELAY=20ms scripts/setup_steps.sh | sed 's/^/  /'

# (c) lossy path: 40 ms RTT, 1% loss each way, through the userspace relay
pa=$((40000 + RANDOM % 10000)); pb=$((pa + 1))
"$work/netem" -a "127.0.0.1:$pa" -b "127.0.0.1:$pb" -loss 0.01 -delay 20ms -seed 7 >"$work/netem.out" 2>"$work/netem.err" &
pids+=($!)
for _ in $(seq 100); do grep -q faceA "$work/netem.out" && break; sleep 0.05; done
faceA=$(sed -n 's/.*faceA=\([^ ]*\).*/\1/p' "$work/netem.out")
faceB=$(sed -n 's/.*faceB=\([^ ]*\).*/\1/p' "$work/netem.out")
for r in $(seq "$RUNS"); do
	t0=$(now)
	timeout 600 "$P" --name bob --find alice --port "$pb" --peer "$faceB" </dev/null >"$work/lossy.out" 2>"$work/bob.err" &
	b=$!
	timeout 600 "$P" --name alice --find bob --port "$pa" --peer "$faceA" <"$work/lossy.bin" >/dev/null 2>"$work/alice.err"
	wait "$b"
	t1=$(now)
	check "$work/lossy.out" "$wantl" "lossy path"
	calc "$LOSSY_MB * 1.048576 / ($t1 - $t0)" >>"$work/lossy"
done
echo
printf "%-38s %-20s %s\n" "(c) ${LOSSY_MB} MiB, 40 ms RTT, 1% loss" "$(stat_col "$work/lossy" 1 %.1f) MB/s" "(TCP BBR 16, CUBIC 0.46)"
echo
echo "CPU s/GiB is user+sys per side for the whole run (p2pcat's includes its RSA key, ~0.02-0.04 s)."
echo "Setup steps (b'): on loopback the two RSA keys, generated at once on the cores, are the"
echo "largest step (keys_ready); the key starts right after the flags, so that the password prompt"
echo "and the rendezvous run beside it. The rendezvous takes two requests per"
echo "side, Hello (its Challenge proves the address) and Find, so two round trips to the server;"
echo "the peers then need two round trips for the handshake and half of one for the first byte."
echo "Reference figures on this machine class: hyperbeam 189 MB/s, 217 ms setup, 93 MB RSS; croc 41 MB/s, 56 ms setup."
