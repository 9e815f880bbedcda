#!/usr/bin/env bash
# natlab.sh builds throwaway network topologies with real Linux NAT
# (netfilter conntrack + nftables) in network namespaces, so that p2pcat
# can be run across them. Needs root, iproute2, nftables and conntrack.
#
#   scripts/natlab.sh up TYPE_A TYPE_B PREFIX [ipv6|ipv6open] [tap]
#                                               build a lab, print its addresses
#   scripts/natlab.sh down PREFIX               remove it (idempotent)
#
# Options of up:
#   ipv6  every host also has a global IPv6 address (2001:db8::/32, the
#         documentation space), routed without NAT; the routers' stateful
#         firewall (the same inet table as for IPv4) drops what arrives
#         unsolicited from the WAN, as home routers do.
#   ipv6open  ipv6 with routers that forward IPv6 unfiltered (no firewall
#         on IPv6; IPv4 is NATed and filtered as before).
#   hop   each NAT router reaches the internet through an ISP router of
#         its own (PREFIX-ia / PREFIX-ib, 198.51.100.111 / .121 on the
#         bridge, proxy ARP for the router's WAN address), so a packet from
#         a client crosses a routed hop past its NAT before the internet,
#         as on every real path: a probe sent with a small TTL then opens
#         our NAT's mapping and dies before the peer's router. IPv4 only.
#   tap   each client's link to the internet (its router's WAN, or its own
#         link when public) is a pair of TAP devices, one in the client's
#         or router's namespace and one on the internet bridge, instead of
#         a veth pair. Nothing passes until a process attaches to both and
#         copies frames between them: the NAT lab test does, delaying each
#         frame (the kernel here has no sch_netem). The frames are the real
#         ones, so conntrack on both sides sees the real flows.
#
# Events to run in a lab while a session is up (the recovery tests):
#
#   scripts/natlab.sh flush PREFIX
#       the routers and the server host forget their conntrack entries, as
#       when NAT mappings expire
#   scripts/natlab.sh readdress PREFIX SIDE ADDR
#       client SIDE (a or b) moves to ADDR in its /24, as with a new DHCP
#       lease or a new public address; its sockets stay open
#   scripts/natlab.sh cut PREFIX
#       the internet drops every packet: nobody reaches anybody
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
# IPv6 addresses (with ipv6): the internet is 2001:db8:100::/64 with the
# server at ::1, public clients at ::10 (a) and ::20 (b) and the routers'
# WANs at ::11 and ::21; the LANs are 2001:db8:1::/64 and 2001:db8:2::/64
# (router ::1, host ::2; samelan b is 2001:db8:1::3). Every host on the
# internet routes each LAN through its router. Without ipv6, IPv6 is
# disabled in every namespace so that only the IPv4 addresses exist.
# Every command is bounded by timeout(1).
set -euo pipefail

readonly NET=198.51.100
readonly SERVER=$NET.1
readonly NET6=2001:db8:100
IPV6=0
IPV6_OPEN=0
TAP=0
HOP=0
ISPS=()
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

# nsrun runs a bounded command inside namespace $1.
nsrun() {
	local ns=$1
	shift
	run ip netns exec "$ns" "$@"
}

# nsip runs ip(8) on namespace $1: the same as nsrun "$1" ip, without the
# mount namespace that ip netns exec sets up (a lab runs dozens of these).
nsip() {
	local ns=$1
	shift
	run ip -n "$ns" "$@"
}

usage() {
	echo "usage: $0 up TYPE_A TYPE_B PREFIX [ipv6|ipv6open] [tap] | down PREFIX | flush PREFIX | readdress PREFIX SIDE ADDR | cut PREFIX" >&2
	echo "       TYPE is public, cone, clash, symmetric (or samelan for both)" >&2
	exit 2
}

check_prefix() {
	[[ $1 =~ ^[a-zA-Z0-9_]{1,32}$ ]] || die "prefix '$1' must be 1-32 letters, digits or _"
}

# lab_namespaces lists the namespaces of lab $1 that exist.
lab_namespaces() {
	local p=$1
	timeout "$STEP_TIMEOUT" ip netns list 2>/dev/null | awk '{print $1}' |
		grep -E "^${p}-(inet|srv|a|b|ra|rb|r|ia|ib)\$" || true
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

# A lab is built in two steps. The functions below plan it: the namespaces
# in the order they are configured (a veth's far end must exist before its
# namespace is configured, so a router comes before the host behind it)
# and, for each, the ip(8) commands that configure it. build then runs one
# ip -batch per namespace: a lab is some fifty commands, and the tests
# build many labs at once.
NAMESPACES=()
declare -A LINES
ROUTERS=() # "NS TYPE" of each NAT router
INET=()    # the namespaces on the internet bridge
ROUTES6=() # "PREFIX VIA OWNER": a LAN's IPv6 route, for all but its router

# add_ns NS plans a namespace with loopback up.
add_ns() {
	NAMESPACES+=("$1")
	LINES[$1]="link set dev lo up"$'\n'
}

# cmd NS ARGS... plans the command "ip ARGS" in NS.
cmd() {
	local ns=$1
	shift
	LINES[$ns]+="$*"$'\n'
}

# addr6 NS IFNAME ADDR/LEN plans an IPv6 address when the lab has them.
addr6() {
	[ "$IPV6" = 1 ] || return 0
	cmd "$1" addr add "$3" dev "$2" nodad
}

# plug NS IFNAME ADDR/LEN PORT HOST6 connects NS to the internet bridge
# with address ADDR (and $NET6::HOST6 with ipv6); PORT is the bridge's end.
# A client's link (any but the server's) is a TAP pair with tap.
plug() {
	local ns=$1 ifname=$2 addr=$3 port=$4 host6=$5
	INET+=("$ns")
	if [ "$TAP" = 1 ] && [ "$ns" != "$P-srv" ]; then
		cmd "$P-inet" tuntap add dev "$port" mode tap
		cmd "$ns" tuntap add dev "$ifname" mode tap
	else
		cmd "$P-inet" link add name "$port" type veth peer name "$ifname" netns "$ns"
	fi
	cmd "$P-inet" link set dev "$port" master br0 up
	cmd "$ns" addr add "$addr" dev "$ifname"
	addr6 "$ns" "$ifname" "$NET6::$host6/64"
	cmd "$ns" link set dev "$ifname" up
}

# lan6 NS ROUTER SUBNET HOST plans the IPv6 side of host NS on LAN
# 2001:db8:SUBNET::/64 behind ROUTER.
lan6() {
	[ "$IPV6" = 1 ] || return 0
	addr6 "$1" eth0 "2001:db8:$3::$4/64"
	cmd "$1" route add default via "2001:db8:$3::1"
}

# router6 ROUTER IFNAME SUBNET WAN plans the router's IPv6 LAN address and
# the route every other host on the internet takes to its LAN.
router6() {
	[ "$IPV6" = 1 ] || return 0
	addr6 "$1" "$2" "2001:db8:$3::1/64"
	ROUTES6+=("2001:db8:$3::/64 $NET6::$4 $1")
}

# client SIDE TYPE WAN_HOST PUBLIC_HOST SUBNET plans client SIDE (a or b).
client() {
	local side=$1 type=$2 wan=$3 pub=$4 subnet=$5
	local host=$P-$side router=$P-r$side
	if [ "$type" = public ]; then
		add_ns "$host"
		plug "$host" eth0 "$NET.$pub/24" "port_$side" "$pub"
		echo "$side: namespace $host, public $NET.$pub$(v6note " and $NET6::$pub")"
		return
	fi
	add_ns "$router"
	add_ns "$host"
	ROUTERS+=("$router $type")
	if [ "$HOP" = 1 ]; then
		isp "$side" "$router" "$wan"
	else
		plug "$router" wan "$NET.$wan/24" "port_r$side" "$wan"
	fi
	cmd "$router" link add name lan type veth peer name eth0 netns "$host"
	cmd "$router" addr add "10.0.$subnet.1/24" dev lan
	router6 "$router" lan "$subnet" "$wan"
	cmd "$router" link set dev lan up
	cmd "$host" addr add "10.0.$subnet.2/24" dev eth0
	cmd "$host" link set eth0 up
	cmd "$host" route add default via "10.0.$subnet.1"
	lan6 "$host" "$router" "$subnet" 2
	echo "$side: namespace $host, 10.0.$subnet.2 behind $type NAT $router (WAN $NET.$wan)$(v6note "; 2001:db8:$subnet::2 behind its $(v6filter)")"
}

# isp SIDE ROUTER WAN plans the ISP router between ROUTER and the internet
# (option hop): the ISP is on the bridge at $NET.(WAN+100) and answers ARP
# there for the router's WAN address $NET.WAN, which it routes to the
# router over a link of their own; the router routes everything to it.
isp() {
	local side=$1 router=$2 wan=$3 ns=$P-i$1
	add_ns "$ns"
	ISPS+=("$ns")
	plug "$ns" up "$NET.$((wan + 100))/24" "port_i$side" "$((wan + 100))"
	# The router's plan runs first (its namespace was added first).
	cmd "$router" link add name wan type veth peer name cust netns "$ns"
	cmd "$ns" link set dev cust up
	cmd "$ns" route add "$NET.$wan/32" dev cust
	cmd "$router" addr add "$NET.$wan/32" dev wan
	cmd "$router" link set dev wan up
	cmd "$router" route add default dev wan
}

# v6filter names what the routers do with IPv6 from the WAN.
v6filter() {
	if [ "$IPV6_OPEN" = 1 ]; then echo "router, unfiltered"; else echo "firewall"; fi
}

# v6note prints its argument when the lab has IPv6.
v6note() {
	[ "$IPV6" = 1 ] && printf '%s' "$1"
	return 0
}

# samelan plans one cone router with both clients on its LAN bridge.
samelan() {
	local router=$P-r side i=2
	add_ns "$router"
	ROUTERS+=("$router samelan")
	plug "$router" wan "$NET.11/24" port_r 11
	cmd "$router" link add name lan type bridge mcast_snooping 0
	cmd "$router" addr add 10.0.1.1/24 dev lan
	router6 "$router" lan 1 11
	cmd "$router" link set dev lan up
	for side in a b; do
		add_ns "$P-$side"
		cmd "$router" link add name "p$side" type veth peer name eth0 netns "$P-$side"
		cmd "$router" link set dev "p$side" master lan up
		cmd "$P-$side" addr add "10.0.1.$i/24" dev eth0
		cmd "$P-$side" link set eth0 up
		cmd "$P-$side" route add default via 10.0.1.1
		lan6 "$P-$side" "$router" 1 "$i"
		echo "$side: namespace $P-$side, 10.0.1.$i behind cone NAT $router (WAN $NET.11, no hairpin)$(v6note "; 2001:db8:1::$i")"
		i=$((i + 1))
	done
}

# router_rules NS TYPE loads the netfilter rules of a NAT router whose WAN
# is "wan". (A new namespace tracks no connection before its first rule
# that needs conntrack: there is nothing to flush.) The filter table is
# inet: with ipv6 it is the IPv6 firewall too, and the router's own input
# takes ICMPv6 (neighbour discovery) from the WAN.
router_rules() {
	local ns=$1 type=$2 masq=masquerade input_drop='iifname "wan" drop' open6=''
	[ "$IPV6_OPEN" = 0 ] || open6='meta nfproto ipv6 accept'
	case $type in
	cone | samelan) ;;
	clash) input_drop='' ;;
	symmetric) masq='masquerade fully-random' ;;
	*) die "unknown NAT type '$type'" ;;
	esac
	nsrun "$ns" sysctl -qw net.ipv4.ip_forward=1
	if [ "$IPV6" = 1 ]; then
		nsrun "$ns" sysctl -qw net.ipv6.conf.all.forwarding=1
	fi
	nsrun "$ns" nft -f - <<-EOF
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
				$open6
				iifname "wan" drop
			}
			chain input {
				type filter hook input priority filter; policy accept;
				ct state established,related accept
				meta l4proto ipv6-icmp accept
				$input_drop
			}
		}
	EOF
}

# build creates the planned namespaces (IPv6 off unless ipv6, so that
# only the addresses above exist; with it, no duplicate address detection
# to wait for), configures them in order, then the routers' rules.
build() {
	local ns r
	plan_routes6
	printf 'netns add %s\n' "${NAMESPACES[@]}" | run ip -batch -
	for ns in "${NAMESPACES[@]}"; do
		if [ "$IPV6" = 1 ]; then
			nsrun "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
		else
			nsrun "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		fi
	done
	for ns in "${NAMESPACES[@]}"; do
		printf '%s' "${LINES[$ns]}" | nsip "$ns" -batch -
	done
	for r in "${ROUTERS[@]}"; do
		# shellcheck disable=SC2086 # "NS TYPE"
		router_rules $r
	done
	# The ISP answers ARP for its customer's address at once: Linux delays
	# proxy ARP answers by up to neigh.*.proxy_delay (0.8 s by default),
	# which held back every new peer's first packets to the router by most
	# of a second, as no real ISP does.
	for ns in "${ISPS[@]}"; do
		nsrun "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.proxy_arp=1 net.ipv4.conf.up.proxy_arp=1 net.ipv4.conf.cust.proxy_arp=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.up.rp_filter=0 net.ipv4.conf.cust.rp_filter=0 net.ipv4.neigh.up.proxy_delay=0 net.ipv4.neigh.cust.proxy_delay=0
	done
}

# plan_routes6 plans, on every host of the internet but the LAN's own
# router, the IPv6 route to each LAN.
plan_routes6() {
	local r ns pfx via owner
	for r in "${ROUTES6[@]}"; do
		read -r pfx via owner <<<"$r"
		for ns in "${INET[@]}"; do
			[ "$ns" = "$owner" ] || cmd "$ns" route add "$pfx" via "$via"
		done
	done
}

up() {
	local ta=$1 tb=$2 opt
	P=$3
	shift 3
	check_prefix "$P"
	for opt in "$@"; do
		case $opt in
		ipv6) IPV6=1 ;;
		ipv6open) IPV6=1 IPV6_OPEN=1 ;;
		tap) TAP=1 ;;
		hop) HOP=1 ;;
		*) die "unknown option '$opt' (ipv6, ipv6open, tap, hop)" ;;
		esac
	done
	for t in "$ta" "$tb"; do
		case $t in public | cone | clash | symmetric | samelan) ;; *) die "unknown NAT type '$t' (public, cone, clash, symmetric, samelan)" ;; esac
	done
	if [ "$ta" = samelan ] || [ "$tb" = samelan ]; then
		[ "$ta" = "$tb" ] || die "samelan puts both clients behind one NAT: give it as both types"
	fi
	[ "$HOP" = 0 ] || [ "$IPV6" = 0 ] || die "hop is for IPv4 labs only"
	[ "$HOP" = 0 ] || [ "$ta" != samelan ] || die "hop needs a router per client, not samelan"
	for tool in ip nft conntrack timeout; do
		command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install iproute2 nftables conntrack)"
	done
	[ -z "$(lab_namespaces "$P")" ] || die "a lab with prefix $P exists; run: $0 down $P"

	add_ns "$P-inet"
	# No multicast snooping: with no MLD querier it could hold back the
	# neighbour solicitations of IPv6.
	cmd "$P-inet" link add name br0 type bridge mcast_snooping 0
	cmd "$P-inet" link set br0 up
	add_ns "$P-srv"
	plug "$P-srv" eth0 "$SERVER/24" port_srv 1
	echo "srv: namespace $P-srv, $SERVER$(v6note " and $NET6::1")"
	if [ "$ta" = samelan ]; then
		samelan
	else
		client a "$ta" 11 10 1
		client b "$tb" 21 20 2
	fi
	# On any failure, leave nothing half-built behind.
	trap '[ "${built:-}" = 1 ] || down "$P" >/dev/null 2>&1 || true' EXIT
	build
	built=1
}

# need_lab fails unless lab $1 has namespace $1-$2.
need_lab() {
	check_prefix "$1"
	lab_namespaces "$1" | grep -x "$1-$2" >/dev/null || die "no namespace $1-$2: is lab $1 up?"
}

# flush deletes the conntrack entries of every router and of the server
# host. The routers' next outbound packets create new mappings: a cone NAT
# keeps the port when it is free, a symmetric one picks a new random port.
# Unsolicited packets are dropped again until the client behind the
# router sends.
flush() {
	local p=$1 ns flushed=()
	need_lab "$p" srv
	for ns in $(lab_namespaces "$p" | grep -E -- "-(srv|ra|rb|r)\$"); do
		nsrun "$ns" conntrack -F
		flushed+=("$ns")
	done
	echo "flushed conntrack in ${flushed[*]}"
}

# readdress moves client $2 of lab $1 to address $3, as a new DHCP lease
# would: the new address comes first, then the old one goes, and the
# default route (behind a router) is put back through the new one. The
# client's sockets stay open; their packets leave from the new address.
readdress() {
	local p=$1 side=$2 new=$3 ns old
	[[ $side =~ ^[ab]$ ]] || die "side '$side' must be a or b"
	[[ $new =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "address '$new' is not an IPv4 address"
	need_lab "$p" "$side"
	ns=$p-$side
	old=$(timeout "$STEP_TIMEOUT" ip -n "$ns" -4 -o addr show dev eth0 | awk 'NR == 1 {print $4}')
	old=${old%/*}
	[ -n "$old" ] || die "$ns has no IPv4 address on eth0"
	[ "${old%.*}" = "${new%.*}" ] || die "$new is not in the /24 of $old"
	[ "$old" != "$new" ] || die "$ns already has $new"
	local gw
	gw=$(timeout "$STEP_TIMEOUT" ip -n "$ns" -4 route show default | awk 'NR == 1 {print $3}')
	# Deleting an interface's first address deletes the others of its
	# subnet unless they are promoted.
	nsrun "$ns" sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1
	nsip "$ns" addr add "$new/24" dev eth0
	nsip "$ns" addr del "$old/24" dev eth0
	if [ -n "$gw" ]; then
		nsip "$ns" route replace default via "$gw" dev eth0 src "$new"
	fi
	echo "$side: $ns moved from $old to $new"
}

# cut makes the internet bridge drop every frame between its ports.
cut() {
	local p=$1
	need_lab "$p" inet
	nsrun "$p-inet" nft -f - <<-EOF
		table bridge natlab_cut {
			chain forward {
				type filter hook forward priority filter; policy drop;
			}
		}
	EOF
	echo "cut: $p-inet drops everything"
}

[ $# -ge 1 ] || usage
case $1 in
up)
	[ $# -ge 4 ] && [ $# -le 6 ] || usage
	[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
	shift
	up "$@"
	;;
down)
	[ $# -eq 2 ] || usage
	down "$2"
	;;
flush | cut)
	[ $# -eq 2 ] || usage
	"$1" "$2"
	;;
readdress)
	[ $# -eq 4 ] || usage
	readdress "$2" "$3" "$4"
	;;
*) usage ;;
esac
