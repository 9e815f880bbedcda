package pipe

import (
	"net/netip"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
)

// TestPlanAttempts: what each attempt tries, as plan.attempt decides it:
// which side holds back its first packets, which attempt is the last, and
// when the relay joins in (in the first attempt when the server offers it,
// --relay is auto and a NAT moved a side's port: relay first, then
// direct).
func TestPlanAttempts(t *testing.T) {
	type want struct {
		last              bool
		probeDelay        time.Duration
		relay             bool
		relayAfter        time.Duration
		relayOnly         bool
		candidatesOffered int
	}
	match := rendezvous.Match{
		Relay:          true,
		PeerObserved:   netip.MustParseAddrPort("192.0.2.1:1000"),
		PeerCandidates: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:1000")},
	}
	peerAddr := netip.MustParseAddrPort("192.0.2.1:1000")
	// A NAT gave the peer's socket (port 1000) the port 2000, or ours
	// (offered at port 4000) the port 3000.
	peerMoved := match
	peerMoved.PeerObserved = netip.MustParseAddrPort("192.0.2.1:2000")
	weMoved := match
	weMoved.Observed = netip.MustParseAddrPort("198.51.100.7:3000")
	offered := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:4000")}
	for _, tc := range []struct {
		name     string
		cfg      Config
		match    rendezvous.Match
		connect  time.Duration // left of ConnectTimeout
		attempts []want
	}{
		{"auto, alice", Config{Name: "alice", Peer: "bob", Relay: RelayAuto}, match, 15 * time.Second, []want{
			{false, 0, true, 0, false, 2},
			{false, staggerDelay, true, relayAfter, false, 2},
			{true, 0, true, relayAfter, false, 2},
		}},
		{"auto, bob", Config{Name: "bob", Peer: "alice", Relay: RelayAuto}, match, 15 * time.Second, []want{
			{false, 0, true, 0, false, 2},
			{false, 0, true, relayAfter, false, 2},
			{true, staggerDelay, true, relayAfter, false, 2},
		}},
		{"auto, the peer's NAT moved its port", Config{Name: "alice", Peer: "bob", Relay: RelayAuto}, peerMoved, 15 * time.Second, []want{
			{false, 0, true, relayFirstAfter, false, 2},
			{false, staggerDelay, true, relayAfter, false, 2},
			{true, 0, true, relayAfter, false, 2},
		}},
		{"auto, our NAT moved our port", Config{Name: "bob", Peer: "alice", Relay: RelayAuto}, weMoved, 15 * time.Second, []want{
			{false, 0, true, relayFirstAfter, false, 2},
			{false, 0, true, relayAfter, false, 2},
			{true, staggerDelay, true, relayAfter, false, 2},
		}},
		{"never, a NAT moved a port", Config{Name: "alice", Peer: "bob", Relay: RelayNever}, peerMoved, 15 * time.Second, []want{
			{false, 0, false, 0, false, 2},
			{false, staggerDelay, false, 0, false, 2},
			{false, 0, false, 0, false, 2},
			{true, staggerDelay, false, relayAfter, false, 2},
		}},
		{"never", Config{Name: "alice", Peer: "bob", Relay: RelayNever}, match, 15 * time.Second, []want{
			{false, 0, false, 0, false, 2},
			{false, staggerDelay, false, 0, false, 2},
			{false, 0, false, 0, false, 2},
			{true, staggerDelay, false, relayAfter, false, 2},
		}},
		{"only", Config{Name: "alice", Peer: "bob", Relay: RelayOnly}, match, 15 * time.Second, []want{
			{true, 0, true, relayAfter, true, 2},
		}},
		{"no relay offered", Config{Name: "alice", Peer: "bob", Relay: RelayAuto}, rendezvous.Match{PeerObserved: match.PeerObserved}, 15 * time.Second, []want{
			{false, 0, false, 0, false, 1},
			{false, staggerDelay, false, 0, false, 1},
			{true, 0, false, relayAfter, false, 1},
		}},
		{"direct", Config{Name: "alice", Peer: "bob", Relay: RelayAuto, PeerAddr: peerAddr}, rendezvous.Match{PeerObserved: peerAddr}, 15 * time.Second, []want{
			{true, 0, false, relayAfter, false, 1},
		}},
		{"little time left", Config{Name: "alice", Peer: "bob", Relay: RelayAuto}, match, 3 * time.Second, []want{
			{true, 0, true, relayAfter, false, 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := newPlan(&tc.cfg)
			pl.ours.offered = offered
			pl.connectBy = time.Now().Add(tc.connect)
			for n, w := range tc.attempts {
				a := pl.attempt(n, tc.match)
				got := want{a.last, a.opts.ProbeDelay, a.opts.Relay, a.opts.RelayAfter, a.opts.RelayOnly, len(a.candidates)}
				if got != w {
					t.Errorf("attempt %d: got %+v, want %+v", n+1, got, w)
				}
				if a.last != (n == len(tc.attempts)-1) {
					t.Errorf("attempt %d of %d: last = %v", n+1, len(tc.attempts), a.last)
				}
			}
		})
	}
}

// TestRelayFirstAlike: both sides decide from the same lists (each side's
// observed address and the candidates its Find offered), so they agree,
// also when a side offered a STUN reflexive address (--stun) whose port is
// the one the server saw while its socket's port is another.
func TestRelayFirstAlike(t *testing.T) {
	ap := netip.MustParseAddrPort
	aOffered := []netip.AddrPort{ap("10.0.1.2:4000"), ap("198.51.100.11:4000")}
	bOffered := []netip.AddrPort{ap("10.0.2.2:5000"), ap("198.51.100.21:6000")} // reflexive at the port seen
	for _, tc := range []struct {
		name   string
		aSeen  netip.AddrPort
		bSeen  netip.AddrPort
		racing bool
	}{
		{"nobody moved", ap("198.51.100.11:4000"), ap("198.51.100.21:6000"), false},
		{"a moved", ap("198.51.100.11:4444"), ap("198.51.100.21:6000"), true},
	} {
		side := func(offered []netip.AddrPort, seen, peerSeen netip.AddrPort, peerOffered []netip.AddrPort) bool {
			pl := newPlan(&Config{Name: "a", Peer: "b", Relay: RelayAuto})
			pl.ours.offered = offered
			return pl.relayFirst(0, rendezvous.Match{Relay: true, Observed: seen, PeerObserved: peerSeen, PeerCandidates: peerOffered})
		}
		a := side(aOffered, tc.aSeen, tc.bSeen, bOffered)
		b := side(bOffered, tc.bSeen, tc.aSeen, aOffered)
		if a != b || a != tc.racing {
			t.Errorf("%s: a races the relay %v, b %v; want both %v", tc.name, a, b, tc.racing)
		}
	}
}

// TestLowTTLFirst: the low-TTL first round is sent in the first attempt
// only when a NAT rewrote a side's address (the server saw it at an
// address that is not among its own), in every later attempt, and never
// with --relay only.
func TestLowTTLFirst(t *testing.T) {
	offered := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:4000")}
	peerOwn := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:1000")}
	natted := rendezvous.Match{
		Observed:       netip.MustParseAddrPort("198.51.100.7:4000"), // a NAT that kept the port
		PeerObserved:   netip.MustParseAddrPort("192.0.2.1:1000"),
		PeerCandidates: peerOwn,
	}
	public := rendezvous.Match{
		Observed:       offered[0],
		PeerObserved:   peerOwn[0],
		PeerCandidates: peerOwn,
	}
	peerNatted := public
	peerNatted.PeerObserved = netip.MustParseAddrPort("192.0.2.1:1000")
	for _, tc := range []struct {
		name  string
		relay RelayMode
		match rendezvous.Match
		want  []bool // by attempt
	}{
		{"both behind NATs", RelayAuto, natted, []bool{true, true}},
		{"only the peer behind one", RelayAuto, peerNatted, []bool{true, true}},
		{"no NAT", RelayAuto, public, []bool{false, true}},
		{"relay only", RelayOnly, natted, []bool{false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := newPlan(&Config{Name: "alice", Peer: "bob", Relay: tc.relay})
			pl.ours.offered = offered
			pl.connectBy = time.Now().Add(15 * time.Second)
			for n, w := range tc.want {
				if got := pl.attempt(n, tc.match).opts.LowTTLFirst; got != w {
					t.Errorf("attempt %d: LowTTLFirst %v, want %v", n+1, got, w)
				}
			}
		})
	}
}

// TestHoldsBackAfterICMP: in the second attempt, a side that sees ICMP
// errors holds back exactly when its first attempt got port unreachable
// from the peer's address (its probes reached the peer's router first),
// whatever its name; later attempts, and a side that cannot see ICMP,
// alternate by name.
func TestHoldsBackAfterICMP(t *testing.T) {
	for _, tc := range []struct {
		name              string
		seesICMP, refused bool
		want              [3]bool // attempts 1, 2, 3
	}{
		{"alice", false, false, [3]bool{false, true, false}},
		{"bob", false, false, [3]bool{false, false, true}},
		{"alice", true, false, [3]bool{false, false, false}},
		{"bob", true, false, [3]bool{false, false, true}},
		{"alice", true, true, [3]bool{false, true, false}},
		{"bob", true, true, [3]bool{false, true, true}},
	} {
		peer := map[string]string{"alice": "bob", "bob": "alice"}[tc.name]
		pl := newPlan(&Config{Name: tc.name, Peer: peer, Relay: RelayAuto})
		pl.seesICMP, pl.refused = tc.seesICMP, tc.refused
		for n, w := range tc.want {
			if got := pl.holdsBack(n); got != w {
				t.Errorf("%s, sees ICMP %v, refused %v: attempt %d holds back %v, want %v", tc.name, tc.seesICMP, tc.refused, n+1, got, w)
			}
		}
	}
}
