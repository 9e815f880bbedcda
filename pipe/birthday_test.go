package pipe

import (
	"net/netip"
	"testing"

	"github.com/p2pcat/p2pcat/rendezvous"
)

// TestBirthdayRoles: the side whose mapping is endpoint-dependent opens
// the sockets, the other sprays, and nobody does either when both or
// neither are, or when a side is public.
func TestBirthdayRoles(t *testing.T) {
	ap := netip.MustParseAddrPort
	offered := []netip.AddrPort{ap("10.0.1.2:4000")}
	hard := ourSide{offered, mapping{primary: ap("198.51.100.11:4000"), alternate: ap("198.51.100.11:4001")}}
	easy := ourSide{offered, mapping{primary: ap("198.51.100.11:4000"), alternate: ap("198.51.100.11:4000")}}
	unknown := ourSide{offered, mapping{primary: ap("198.51.100.11:4000")}}
	peerHard := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.21:5000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.2.2:6000"), ap("198.51.100.21:5001")}}
	peerEasy := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.21:5000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.2.2:5000")}}
	peerPublic := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.20:5000"),
		PeerCandidates: []netip.AddrPort{ap("198.51.100.20:5000")}}
	for _, c := range []struct {
		name string
		ours ourSide
		m    rendezvous.Match
		want birthdayRole
	}{
		{"hard-easy", hard, peerEasy, birthdayDial},
		{"easy-hard", easy, peerHard, birthdaySpray},
		{"unknown-hard", unknown, peerHard, birthdaySpray},
		{"hard-hard", hard, peerHard, birthdayNone},
		{"easy-easy", easy, peerEasy, birthdayNone},
		{"hard-public", hard, peerPublic, birthdayNone},
		{"public-hard", ourSide{offered: []netip.AddrPort{ap("198.51.100.11:4000")}, mapping: easy.mapping}, peerHard, birthdayNone},
	} {
		if got := birthdayRoles(c.ours, c.m); got != c.want {
			t.Errorf("%s: role %d, want %d", c.name, got, c.want)
		}
	}
}

// TestBothIPv6: a global IPv6 address offered by both sides counts; IPv4,
// link-local, unique local (fc00::/7, routed nowhere beyond a LAN) or an
// IPv6 offer on one side only does not.
func TestBothIPv6(t *testing.T) {
	ap := netip.MustParseAddrPort
	v6 := ourSide{offered: []netip.AddrPort{ap("10.0.1.2:4000"), ap("[2001:db8:1::2]:4000")}}
	v4 := ourSide{offered: []netip.AddrPort{ap("10.0.1.2:4000")}}
	peer6 := rendezvous.Match{PeerCandidates: []netip.AddrPort{ap("10.0.2.2:5000"), ap("[2001:db8:2::2]:5000")}}
	if !bothIPv6(v6, peer6) {
		t.Error("both offer global IPv6: bothIPv6 = false")
	}
	if bothIPv6(v4, peer6) {
		t.Error("only the peer offers IPv6: bothIPv6 = true")
	}
	for _, m := range []rendezvous.Match{
		{PeerCandidates: []netip.AddrPort{ap("198.51.100.20:5000")}},
		{PeerCandidates: []netip.AddrPort{ap("[fe80::1]:5000"), ap("10.0.0.1:5000")}},
		{PeerCandidates: []netip.AddrPort{ap("[fd00::2]:5000"), ap("10.0.0.1:5000")}},
		{},
	} {
		if bothIPv6(v6, m) {
			t.Errorf("bothIPv6(%v) = true without a global IPv6 peer candidate", m.PeerCandidates)
		}
	}
}
