package pipe

import (
	"net/netip"
	"testing"

	"github.com/p2pcat/p2pcat/rendezvous"
)

// TestCrosses: a later attempt crosses when both sides are behind a NAT
// that kept their ports, on two public IPs, neither punching the birthday
// way, and nothing in the configuration rules it out; both sides decide
// alike.
func TestCrosses(t *testing.T) {
	ap := netip.MustParseAddrPort
	kept := ourSide{offered: []netip.AddrPort{ap("10.0.1.2:4000")}}
	moved := ourSide{offered: []netip.AddrPort{ap("10.0.1.2:4999")}}
	public := ourSide{offered: []netip.AddrPort{ap("198.51.100.11:4000")}}
	peerKept := rendezvous.Match{Observed: ap("198.51.100.11:4000"), PeerObserved: ap("198.51.100.21:5000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.2.2:5000")}}
	peerMoved := peerKept
	peerMoved.PeerCandidates = []netip.AddrPort{ap("10.0.2.2:5999")}
	peerHard := peerKept
	peerHard.PeerCandidates = []netip.AddrPort{ap("10.0.2.2:5000"), ap("198.51.100.21:5001")}
	sameLAN := peerKept
	sameLAN.PeerObserved = ap("198.51.100.11:5000")
	peerMirror := rendezvous.Match{Observed: ap("198.51.100.21:5000"), PeerObserved: ap("198.51.100.11:4000"),
		PeerCandidates: []netip.AddrPort{ap("10.0.1.2:4000")}}
	peerSide := ourSide{offered: []netip.AddrPort{ap("10.0.2.2:5000")}}
	for _, c := range []struct {
		name  string
		relay RelayMode
		ours  ourSide
		m     rendezvous.Match
		n     int
		want  bool
	}{
		{"both kept their ports", RelayAuto, kept, peerKept, 1, true},
		{"the last attempt too", RelayAuto, kept, peerKept, 2, true},
		{"the peer's side of it", RelayAuto, peerSide, peerMirror, 1, true},
		{"the first attempt punches plainly", RelayAuto, kept, peerKept, 0, false},
		{"our port moved", RelayAuto, moved, peerKept, 1, false},
		{"the peer's port moved", RelayAuto, kept, peerMoved, 1, false},
		{"we are public", RelayAuto, public, peerKept, 1, false},
		{"the peer punches the birthday way", RelayAuto, kept, peerHard, 1, false},
		{"one LAN", RelayAuto, kept, sameLAN, 1, false},
		{"relay only", RelayOnly, kept, peerKept, 1, false},
		{"no relay", RelayNever, kept, peerKept, 1, true},
	} {
		pl := &plan{cfg: &Config{Relay: c.relay}, ours: c.ours}
		if got := pl.crosses(c.n, c.m); got != c.want {
			t.Errorf("%s: crosses = %v, want %v", c.name, got, c.want)
		}
	}
	direct := &plan{cfg: &Config{PeerAddr: ap("198.51.100.21:5000")}, ours: kept}
	if direct.crosses(1, peerKept) {
		t.Error("direct mode (--peer): crosses = true")
	}
}
