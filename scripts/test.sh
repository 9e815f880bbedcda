#!/usr/bin/env bash
# Runs every test of p2pcat: formatting, go vet, the race-enabled test suite
# (unit, end-to-end with real processes and sockets, CLI scripts, the NAT
# lab in network namespaces when run as root), and a short smoke run of
# every fuzz target. Installs what it needs on a fresh machine (Go modules;
# tmux, iproute2, nftables, conntrack, coturn (for its STUN client), zsh,
# fish, mandoc and groff from Debian when running as root).
#
#   scripts/test.sh            everything
#   FUZZTIME=30s scripts/test.sh   longer fuzzing (default: 3000 inputs per target;
#                                  a count, not a duration, so a slow input at the
#                                  deadline cannot fail the run)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-3000x}
export GOFLAGS=${GOFLAGS:-}

step() { printf '\n=== %s\n' "$*"; }

step "installing dependencies"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	need=()
	command -v tmux >/dev/null || need+=(tmux)
	# the NAT lab (TestNATLab, scripts/natlab.sh): namespaces and netfilter
	command -v ip >/dev/null || need+=(iproute2)
	command -v nft >/dev/null || need+=(nftables)
	command -v conntrack >/dev/null || need+=(conntrack)
	# a real third-party STUN client against our server (TestTurnutilsStunclient)
	command -v turnutils_stunclient >/dev/null || need+=(coturn)
	# the completion scripts' syntax (zsh -n, fish -n, fish's own completion)
	# and the man page's lint (TestZshAndFishCompletion, TestManPageRenders)
	command -v zsh >/dev/null || need+=(zsh)
	command -v fish >/dev/null || need+=(fish)
	command -v mandoc >/dev/null || need+=(mandoc)
	command -v groff >/dev/null || need+=(groff-base)
	# sshd's stand-in in the ProxyCommand test (TestListenProxyCommand; Debian nc is netcat-openbsd)
	command -v nc >/dev/null || need+=(netcat-openbsd)
	if [ ${#need[@]} -gt 0 ]; then
		apt-get update -qq >/dev/null 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || echo "warning: could not install ${need[*]}; the tests that need them will say so"
	fi
fi
go mod download

step "gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then
	echo "gofmt wants to change:"; echo "$bad"; exit 1
fi

step "go vet"
go vet ./...

step "cross-build (the binary on other systems: no Linux-only call outside a build-tagged file)"
for target in windows/amd64 darwin/arm64 linux/arm64; do
	GOOS=${target%/*} GOARCH=${target#*/} go build -o /dev/null . || { echo "p2pcat does not build for $target"; exit 1; }
done

step "go test -race"
# The command's package (the real binary: the NAT lab among its tests) goes
# after the others, not beside them: the lab's clash-clash row needs sends
# within microseconds of each other (natlab_matrix_test.go, "alone").
go test -race -count=1 -timeout 20m $(go list ./... | grep -vx github.com/p2pcat/p2pcat)
go test -race -count=1 -timeout 20m .

step "fuzz smoke ($FUZZTIME per target)"
# Every Fuzz target, found from the source so new ones are never forgotten.
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
	pkg="./$(dirname "${file#./}")"
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
		echo "fuzz $pkg $target"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/p2pcat-fuzz.log 2>&1 || { cat /tmp/p2pcat-fuzz.log; exit 1; }
	done
done

echo
echo "all tests passed"
