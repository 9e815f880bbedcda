//go:build linux

package path

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestLowTTLRound: LowTTLFirst's probes leave with TTL lowTTL, one to each
// candidate, while the socket's other datagrams keep the default TTL.
func TestLowTTLRound(t *testing.T) {
	checkGoroutinesEnd(t)
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pc := ipv4.NewPacketConn(peer)
	if err := pc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		t.Skipf("no IP_RECVTTL here: %v", err)
	}
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	c := New(sock, netip.MustParseAddrPort("127.0.0.1:9"), [16]byte{7}, []netip.AddrPort{to}, nil, Options{LowTTLFirst: true})
	defer c.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	var ttls []int
	for len(ttls) < 2 {
		n, cm, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after TTLs %v: %v", ttls, err)
		}
		if n != probeLen || cm == nil {
			continue
		}
		ttls = append(ttls, cm.TTL)
	}
	if ttls[0] != lowTTL {
		t.Errorf("first probe's TTL %d, want %d", ttls[0], lowTTL)
	}
	if ttls[1] <= lowTTL {
		t.Errorf("the next probe's TTL %d, want the default", ttls[1])
	}
}

// TestLowTTLRoundHeld: a side that holds back its first packets
// (ProbeDelay) sends its low-TTL round not at once but heldLowTTLAfter
// into the hold, and its full probes only after the hold.
func TestLowTTLRoundHeld(t *testing.T) {
	checkGoroutinesEnd(t)
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pc := ipv4.NewPacketConn(peer)
	if err := pc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		t.Skipf("no IP_RECVTTL here: %v", err)
	}
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	const hold = 250 * time.Millisecond
	start := time.Now()
	c := New(sock, netip.MustParseAddrPort("127.0.0.1:9"), [16]byte{7}, []netip.AddrPort{to}, nil, Options{LowTTLFirst: true, ProbeDelay: hold})
	defer c.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	var ttls []int
	var at []time.Duration
	for len(ttls) < 2 {
		n, cm, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after TTLs %v: %v", ttls, err)
		}
		if n != probeLen || cm == nil {
			continue
		}
		ttls, at = append(ttls, cm.TTL), append(at, time.Since(start))
	}
	// Lower bounds only: a loaded machine may send later, never earlier.
	if ttls[0] != lowTTL || at[0] < heldLowTTLAfter {
		t.Errorf("first probe: TTL %d after %v, want TTL %d no sooner than %v", ttls[0], at[0], lowTTL, heldLowTTLAfter)
	}
	if ttls[1] <= lowTTL || at[1] < hold {
		t.Errorf("next probe: TTL %d after %v, want the default TTL no sooner than %v", ttls[1], at[1], hold)
	}
}
