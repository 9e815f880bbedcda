#!/usr/bin/env bash
# natlab.sh builds throwaway network topologies with real Linux NAT
# (netfilter conntrack + nftables) in network namespaces, so that p2pcat
# can be run across them. Needs root, iproute2, nftables and conntrack.
#
#   scripts/natlab.sh up TYPE_A TYPE_B PREFIX   build a lab, print its addresses
#   scripts/natlab.sh down PREFIX               remove it (idempotent)
#
# Topology. "The internet" is a bridge in its own namespace PREFIX-inet,
# 198.51.100.0/24 (TEST-NET-2). The rendezvous host PREFIX-srv is
# 198.51.100.1. The two clients PREFIX-a and PREFIX-b are each either on the
# internet directly or behind their own router namespace PREFIX-ra /
# PREFIX-rb (WAN 198.51.100.11 / .21, LAN 10.0.1.0/24 / 10.0.2.0/24 with
# the host at .2 and the router at .1). Public clients are 198.51.100.10
# (a) and 198.51.100.20 (b).
#
# Types:
#   public     no NAT: the client is on the internet.
#   cone       nftables masquerade on the WAN side (endpoint-independent
#              mapping: Linux keeps the source port when it is free) plus a
#              stateful firewall whose forward and input chains drop what
#              arrives unsolicited from the WAN (address-and-port-dependent
#              filtering).
#   clash      cone without the input-chain drop: an unsolicited packet to
#              the router's WAN address is delivered locally, so conntrack
#              confirms an entry for it, and the client's own outbound flow
#              to that peer then clashes with it and is masqueraded to
#              another port.
#   symmetric  masquerade fully-random (a new port for every destination)
#              plus the firewall.
#   samelan    both clients behind one cone router PREFIX-r (WAN
#              198.51.100.11, LAN 10.0.1.0/24 on a bridge: a is 10.0.1.2,
#              b is 10.0.1.3) that does not hairpin. Give it as both types.
#
# IPv6 is disabled in every namespace so that only the addresses above
# exist. Every command is bounded by timeout(1).
set -euo pipefail

readonly NET=198.51.100
readonly SERVER=$NET.1
readonly STEP_TIMEOUT=10

die() {
	echo "natlab: error: $*" >&2
	exit 1
}

# run runs one bounded command and names it if it fails.
run() {
	local out
	if ! out=$(timeout "$STEP_TIMEOUT" "$@" 2>&1); then
		die "'$*' failed: ${out//$'\n'/ }"
	fi
}

# in runs a bounded command inside namespace $1.
nsrun() {
	local ns=$1
	shift
	run ip netns exec "$ns" "$@"
}

usage() {
	echo "usage: $0 up TYPE_A TYPE_B PREFIX | down PREFIX" >&2
	echo "       TYPE is public, cone, clash, symmetric (or samelan for both)" >&2
	exit 2
}

check_prefix() {
	[[ $1 =~ ^[a-zA-Z0-9_]{1,32}$ ]] || die "prefix '$1' must be 1-32 letters, digits or _"
}

# lab_namespaces lists the namespaces of lab $1 that exist.
lab_namespaces() {
	local p=$1
	timeout "$STEP_TIMEOUT" ip netns list | awk '{print $1}' |
		grep -E "^${p}-(inet|srv|a|b|ra|rb|r)\$" || true
}

down() {
	local p=$1 ns
	check_prefix "$p"
	for ns in $(lab_namespaces "$p"); do
		# Deleting a namespace deletes its veth ends (and their peers).
		timeout "$STEP_TIMEOUT" ip netns delete "$ns" 2>/dev/null || true
	done
	local left
	left=$(lab_namespaces "$p")
	[ -z "$left" ] || die "could not delete namespaces: $left"
}

# new_ns creates namespace $1 with loopback up and IPv6 off.
new_ns() {
	run ip netns add "$1"
	nsrun "$1" ip link set dev lo up
	nsrun "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
	nsrun "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
}

# plug NS IFNAME ADDR/LEN connects NS to the internet bridge with address ADDR.
plug() {
	local ns=$1 ifname=$2 addr=$3 port=$4
	run ip -n "$P-inet" link add name "$port" type veth peer name "$ifname" netns "$ns"
	nsrun "$P-inet" ip link set dev "$port" master br0 up
	nsrun "$ns" ip addr add "$addr" dev "$ifname"
	nsrun "$ns" ip link set dev "$ifname" up
}

# router NS TYPE: the netfilter rules of a NAT router whose WAN is "wan".
router_rules() {
	local ns=$1 type=$2 masq=masquerade input_drop='iifname "wan" drop'
	case $type in
	cone | samelan) ;;
	clash) input_drop='' ;;
	symmetric) masq='masquerade fully-random' ;;
	*) die "unknown NAT type '$type'" ;;
	esac
	nsrun "$ns" sysctl -qw net.ipv4.ip_forward=1
	local rules
	rules=$(
		cat <<-EOF
			table ip nat {
				chain postrouting {
					type nat hook postrouting priority srcnat; policy accept;
					oifname "wan" $masq
				}
			}
			table inet filter {
				chain forward {
					type filter hook forward priority filter; policy accept;
					ct state established,related accept
					iifname "wan" drop
				}
				chain input {
					type filter hook input priority filter; policy accept;
					ct state established,related accept
					$input_drop
				}
			}
		EOF
	)
	printf '%s\n' "$rules" >"$TMPRULES"
	nsrun "$ns" nft -f "$TMPRULES"
	nsrun "$ns" conntrack -F
}

# client SIDE TYPE WAN_HOST PUBLIC_HOST SUBNET builds client SIDE (a or b).
client() {
	local side=$1 type=$2 wan=$3 pub=$4 subnet=$5
	local host=$P-$side router=$P-r$side
	new_ns "$host"
	if [ "$type" = public ]; then
		plug "$host" eth0 "$NET.$pub/24" "port_$side"
		echo "$side: namespace $host, public $NET.$pub"
		return
	fi
	new_ns "$router"
	plug "$router" wan "$NET.$wan/24" "port_r$side"
	run ip -n "$router" link add name lan type veth peer name eth0 netns "$host"
	nsrun "$router" ip addr add "10.0.$subnet.1/24" dev lan
	nsrun "$router" ip link set dev lan up
	nsrun "$host" ip addr add "10.0.$subnet.2/24" dev eth0
	nsrun "$host" ip link set eth0 up
	nsrun "$host" ip route add default via "10.0.$subnet.1"
	router_rules "$router" "$type"
	echo "$side: namespace $host, 10.0.$subnet.2 behind $type NAT $router (WAN $NET.$wan)"
}

# samelan builds one cone router with both clients on its LAN bridge.
samelan() {
	local router=$P-r side i=2
	new_ns "$router"
	plug "$router" wan "$NET.11/24" port_r
	nsrun "$router" ip link add name lan type bridge
	nsrun "$router" ip addr add 10.0.1.1/24 dev lan
	nsrun "$router" ip link set dev lan up
	for side in a b; do
		new_ns "$P-$side"
		run ip -n "$router" link add name "p$side" type veth peer name eth0 netns "$P-$side"
		nsrun "$router" ip link set dev "p$side" master lan up
		nsrun "$P-$side" ip addr add "10.0.1.$i/24" dev eth0
		nsrun "$P-$side" ip link set eth0 up
		nsrun "$P-$side" ip route add default via 10.0.1.1
		echo "$side: namespace $P-$side, 10.0.1.$i behind cone NAT $router (WAN $NET.11, no hairpin)"
		i=$((i + 1))
	done
	router_rules "$router" samelan
}

up() {
	local ta=$1 tb=$2
	P=$3
	check_prefix "$P"
	for t in "$ta" "$tb"; do
		case $t in public | cone | clash | symmetric | samelan) ;; *) die "unknown NAT type '$t' (public, cone, clash, symmetric, samelan)" ;; esac
	done
	if [ "$ta" = samelan ] || [ "$tb" = samelan ]; then
		[ "$ta" = "$tb" ] || die "samelan puts both clients behind one NAT: give it as both types"
	fi
	for tool in ip nft conntrack timeout; do
		command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install iproute2 nftables conntrack)"
	done
	[ -z "$(lab_namespaces "$P")" ] || die "a lab with prefix $P exists; run: $0 down $P"

	TMPRULES=$(mktemp)
	# On any failure, leave nothing half-built behind.
	trap 'rm -f "$TMPRULES"; [ "${built:-}" = 1 ] || down "$P" >/dev/null 2>&1 || true' EXIT

	new_ns "$P-inet"
	nsrun "$P-inet" ip link add name br0 type bridge
	nsrun "$P-inet" ip link set br0 up
	new_ns "$P-srv"
	plug "$P-srv" eth0 "$SERVER/24" port_srv
	echo "srv: namespace $P-srv, $SERVER"
	if [ "$ta" = samelan ]; then
		samelan
	else
		client a "$ta" 11 10 1
		client b "$tb" 21 20 2
	fi
	built=1
}

[ $# -ge 1 ] || usage
case $1 in
up)
	[ $# -eq 4 ] || usage
	[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
	up "$2" "$3" "$4"
	;;
down)
	[ $# -eq 2 ] || usage
	down "$2"
	;;
*) usage ;;
esac
