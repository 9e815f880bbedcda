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
	hard := mapping{primary: ap("198.51.100.11:4000"), alternate: ap("198.51.100.11:4001")}
	easy := mapping{primary: ap("198.51.100.11:4000"), alternate: ap("198.51.100.11:4000")}
	unknown := mapping{primary: ap("198.51.100.11:4000")}
	peerHard := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.21:5000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.2.2:6000"), ap("198.51.100.21:5001")}}
	peerEasy := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.21:5000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.2.2:5000")}}
	peerPublic := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.20:5000"),
		PeerCandidates: []netip.AddrPort{ap("198.51.100.20:5000")}}
	for _, c := range []struct {
		name string
		ours mapping
		m    rendezvous.Match
		want birthdayRole
	}{
		{"hard-easy", hard, peerEasy, birthdayDial},
		{"easy-hard", easy, peerHard, birthdaySpray},
		{"unknown-hard", unknown, peerHard, birthdaySpray},
		{"hard-hard", hard, peerHard, birthdayNone},
		{"easy-easy", easy, peerEasy, birthdayNone},
		{"hard-public", hard, peerPublic, birthdayNone},
	} {
		if got := birthdayRoles(c.ours, c.m); got != c.want {
			t.Errorf("%s: role %d, want %d", c.name, got, c.want)
		}
	}
}

// TestBothIPv6: the peer's global IPv6 candidate counts, its IPv4 ones and
// link-local or private ones do not.
func TestBothIPv6(t *testing.T) {
	ap := netip.MustParseAddrPort
	weHave := bothIPv6(rendezvous.Match{PeerCandidates: []netip.AddrPort{ap("[2001:db8::1]:5000")}})
	for _, m := range []rendezvous.Match{
		{PeerCandidates: []netip.AddrPort{ap("198.51.100.20:5000")}},
		{PeerCandidates: []netip.AddrPort{ap("[fe80::1]:5000"), ap("10.0.0.1:5000")}},
		{},
	} {
		if bothIPv6(m) {
			t.Errorf("bothIPv6(%v) = true without a global IPv6 peer candidate", m.PeerCandidates)
		}
	}
	t.Logf("this host offers global IPv6: %v", weHave)
}
