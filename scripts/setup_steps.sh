#!/usr/bin/env bash
# Where the setup time goes, step by step: both sides started → the first
# line arrives at bob, as in scripts/setup_ab.sh, but each step timed from
# the -vv log (its debug lines carry microseconds):
#
#   command ready   process start, runtime and package initialisation,
#                   flags, password (the "command ready" line)
#   asking          the session's start: socket, candidates (meet.go)
#   challenge       Hello → Challenge (the cookie's round trip)
#   matched         Find → FindResp matched (pushed to the first arrival)
#   keys ready      the later side's RSA key, or its match if later (the
#                   handshake starts: "connected" minus its handshake=)
#   connected       punch and handshake, the later side
#   first line      the first line written by bob
#
# Each figure is the median over the runs of the later side's time since
# both were started, and the median of each step's own duration. With
# DELAY (a one-way delay, 20ms gives a 40 ms RTT) each client reaches the
# server through its own scripts/netem relay while the peers reach each
# other directly on loopback, so the rendezvous's round trips show; then a
# --peer pair (no rendezvous) through one relay shows the peers' own round
# trips (punch, handshake, first byte).
#
#   scripts/setup_steps.sh            RUNS=20 by default, loopback
#   DELAY=20ms scripts/setup_steps.sh
#   BIN=/tmp/p2pcat-old scripts/setup_steps.sh   another build (an older
#                                     one logs fewer steps, in milliseconds)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
DELAY=${DELAY:-}
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
P=${BIN:-$work/p2pcat}
[ -n "${BIN:-}" ] || go build -o "$P" .
go build -o "$work/netem" ./scripts/netem
export P2PCAT_PASSWORD=pw

# sod: now as seconds of the day (UTC), as the log's times are read.
sod() { date -u +%H:%M:%S.%6N | awk -F: '{printf "%.6f\n", $1*3600 + $2*60 + $3}'; }

# relay A B: a netem relay between A and B with DELAY each way; prints
# "faceA faceB".
relay() {
	local out=$work/netem.$RANDOM
	"$work/netem" -a "$1" -b "$2" -delay "$DELAY" >"$out" 2>/dev/null &
	pids+=($!)
	for _ in $(seq 100); do grep -q faceA "$out" && break; sleep 0.02; done
	sed -n 's/faceA=\([^ ]*\) faceB=\([^ ]*\)/\1 \2/p' "$out"
}

"$P" serve --listen 127.0.0.1:0 --data "$work/data" --stun-alternate off --log-format json 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'rendezvous server listening' "$work/serve.log" && break; sleep 0.05; done
server=$(grep -o '"addr":"[^"]*"' "$work/serve.log" | head -1 | cut -d'"' -f4)

# pair RUN [FLAGS_ALICE] [FLAGS_BOB]: one session, alice sends a line to
# bob; leaves t0 and bob's first line time in $work/t, the logs in
# $work/{alice,bob}.log.
pair() {
	local r=$1 fa=$2 fb=$3
	echo "$(sod)" >"$work/t"
	# shellcheck disable=SC2086
	(timeout 30 "$P" --name bob --find alice --session "st$r" -vv $fb </dev/null 2>"$work/bob.log" |
		{ read -r line && sod >>"$work/t"; cat >/dev/null; }) &
	local b=$!
	# shellcheck disable=SC2086
	echo "first line" | timeout 30 "$P" --name alice --find bob --session "st$r" -vv $fa >/dev/null 2>"$work/alice.log" || true
	wait "$b" || true
	[ "$(wc -l <"$work/t")" = 2 ] || { echo "setup_steps: run $r failed" >&2; cat "$work/alice.log" "$work/bob.log" >&2; exit 1; }
}

# steps: one line of step times (ms since t0, the later side) for the
# last pair: ready asking challenge matched keys connected first.
steps() {
	awk -v t0="$(head -1 "$work/t")" -v first="$(sed -n 2p "$work/t")" '
		function at(line) { split(substr(line, 17, 15), h, ":"); return h[1]*3600 + h[2]*60 + h[3] }
		function later(k, v) { if (!(k in t) || v > t[k]) t[k] = v }
		function dur(s) { if (s ~ /µs$/) return s / 1e6; if (s ~ /ms$/) return s / 1e3; return s + 0 }
		/msg="command ready"/ { later("ready", at($0)) }
		/msg="asking the rendezvous server"/ && !(FILENAME in asked) { asked[FILENAME] = 1; later("asking", at($0)) }
		/msg="rendezvous: challenge"/ && !(FILENAME in ch) { ch[FILENAME] = 1; later("challenge", at($0)) }
		/msg=paired/ && !(FILENAME in pd) { pd[FILENAME] = 1; later("matched", at($0)) }
		/msg=connected/ {
			c = at($0); later("connected", c)
			match($0, /handshake=[^ ]*/); later("keys", c - dur(substr($0, RSTART + 10, RLENGTH - 10)))
		}
		END {
			n = split("ready asking challenge matched keys connected", k, " ")
			for (i = 1; i <= n; i++) printf "%.2f ", (k[i] in t) ? (t[k[i]] - t0) * 1000 : -1
			printf "%.2f\n", (first - t0) * 1000
		}' "$work/alice.log" "$work/bob.log"
}

# report FILE: the medians of the step times and of each step's duration.
report() {
	# A step an older build does not log is "-", and the next one's
	# duration counts from the last step before it that was logged.
	awk '{p = 0; for (i = 1; i <= NF; i++) { v[i, NR] = $i; d[i, NR] = ($i < 0) ? -1 : $i - p; if ($i >= 0) p = $i } n = NF}
		function med(a, col,   m, i, j, tmp, x) {
			m = 0; for (j = 1; j <= NR; j++) if (a[col, j] >= 0) x[++m] = a[col, j]
			if (m == 0) return "-"
			for (i = 2; i <= m; i++) { tmp = x[i]; for (j = i - 1; j >= 1 && x[j] > tmp; j--) x[j+1] = x[j]; x[j+1] = tmp }
			return sprintf("%.1f", (m % 2) ? x[(m+1)/2] : (x[m/2] + x[m/2+1]) / 2)
		}
		END {
			split("command_ready asking challenge matched keys_ready connected first_line", name, " ")
			printf "  %-16s %10s %10s\n", "step", "at (ms)", "takes (ms)"
			for (i = 1; i <= n; i++) printf "  %-16s %10s %10s\n", name[i], med(v, i), med(d, i)
		}' "$1"
}

echo "setup steps on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $RUNS runs, median of the later side"
GODEBUG=inittrace=1 "$P" --version 2>&1 >/dev/null |
	awk '/^init / {ms += $5; n++} END {printf "package initialisation: %d packages, %.2f ms of clock in all (GODEBUG=inittrace=1)\n", n, ms}'

fa="" fb=""
if [ -n "$DELAY" ]; then
	pa=$((40000 + RANDOM % 10000)) pb=$((pa + 1))
	read -r faceA _ < <(relay "127.0.0.1:$pa" "$server")
	read -r faceB _ < <(relay "127.0.0.1:$pb" "$server")
	fa="--port $pa --server $faceA" fb="--port $pb --server $faceB"
	echo "each client reaches the server through a relay with $DELAY each way; the peers meet directly on loopback"
else
	export P2PCAT_SERVER=$server
fi
for r in $(seq "$RUNS"); do
	pair "$r" "$fa" "$fb"
	steps >>"$work/steps"
	grep -ho 'msg="rendezvous: matched" requests=[0-9]*' "$work/alice.log" "$work/bob.log" | sed 's/.*=//' >>"$work/requests" || true
done
report "$work/steps"
[ ! -s "$work/requests" ] ||
	echo "  rendezvous requests per side until matched (Hello, Find, re-sends): $(sort -n "$work/requests" | uniq -c | awk '{printf "%s×%d ", $2, $1}')"

if [ -n "$DELAY" ]; then
	pa=$((40000 + RANDOM % 10000)) pb=$((pa + 1))
	read -r faceA faceB < <(relay "127.0.0.1:$pa" "127.0.0.1:$pb")
	rm -f "$work/steps"
	for r in $(seq "$RUNS"); do
		pair "d$r" "--port $pa --peer $faceA" "--port $pb --peer $faceB"
		steps >>"$work/steps"
	done
	echo
	echo "--peer pair (no rendezvous) through one relay with $DELAY each way:"
	report "$work/steps"
fi
