package path

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// A probe with a spoofed source (anyone can send one, with the pairing id
// it saw) makes an unconfirmed path send no more than ampFactor times its
// size there, however long the path goes on punching and sending its
// handshake: the path is no reflector.
func TestNoAmplificationTowardSpoofedProbe(t *testing.T) {
	forEachNet(t, testNoAmplificationTowardSpoofedProbe)
}

func testNoAmplificationTowardSpoofedProbe(t *testing.T, n testNet) {
	ua, _ := n.listen(t)
	victim, victimAddr := n.listen(t)
	_, server := n.listen(t)
	_, peer := n.listen(t) // the real candidate, which never answers
	id := [16]byte{7, 7, 7}
	c := New(ua, server, id, []netip.AddrPort{peer}, nil, Options{})
	defer c.Close()
	go func() { // the Recv loop the secure layer runs
		buf := make([]byte, 65536)
		for {
			if _, _, err := c.Recv(buf); err != nil {
				return
			}
		}
	}()
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			victim.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, _, err := victim.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			received.Add(int64(n))
		}
	}()
	probe := make([]byte, probeLen)
	probe[0] = ProbeType
	copy(probe[1:], id[:])
	if _, err := victim.WriteToUDPAddrPort(probe, ua.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	// The handshake's retransmissions: a 307-byte Hello to every candidate.
	hello := make([]byte, 307)
	hello[0] = 0xE8
	for range 20 {
		c.Send(hello)
		time.Sleep(100 * time.Millisecond)
	}
	<-done
	got := received.Load()
	t.Logf("a %d-byte probe from %s drew %d bytes back (%d datagrams held back)", probeLen, victimAddr, got, c.Stats().AmpLimited)
	if got > ampFactor*probeLen {
		t.Fatalf("%d bytes sent to the spoofed source of a %d-byte probe, more than %d times", got, probeLen, ampFactor)
	}
	if c.Stats().AmpLimited == 0 {
		t.Fatal("nothing was held back: the bound was never reached, so the test proves nothing")
	}
	// Once a packet from it authenticates (Confirm), the address is the
	// peer's: no bound.
	c.Confirm(victimAddr)
	if !c.spend(victimAddr, 1<<20) {
		t.Fatal("a confirmed address is still bounded")
	}
}

// Only the server's RelayEnded under our relay token ends the relay; one
// that does not verify (someone who saw the pairing id, or the notice
// meant for the other end) changes nothing.
func TestRelayEndedNeedsOurToken(t *testing.T) {
	forEachNet(t, testRelayEndedNeedsOurToken)
}

func testRelayEndedNeedsOurToken(t *testing.T, n testNet) {
	ua, aAddr := n.listen(t)
	srv, server := n.listen(t)
	id := [16]byte{3}
	token := [16]byte{0xaa, 0xbb}
	c := New(ua, server, id, nil, nil, Options{RelayOnly: true, Role: wire.RoleInitiator, RelayToken: token})
	defer c.Close()
	c.Confirm(server)
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := c.Recv(buf); err != nil {
				errc <- err
				return
			}
		}
	}()
	send := func(m wire.Message) {
		if _, err := srv.WriteToUDPAddrPort(m.AppendTo(nil), aAddr); err != nil {
			t.Fatal(err)
		}
	}
	forged := &wire.RelayEnded{PairingID: id, Reason: "forged", MAC: wire.RelayEndedMAC([16]byte{1}, id, "forged")}
	send(forged)
	select {
	case err := <-errc:
		t.Fatalf("a forged RelayEnded ended the relay: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	send(&wire.RelayEnded{PairingID: id, Reason: "cap reached", MAC: wire.RelayEndedMAC(token, id, "cap reached")})
	select {
	case err := <-errc:
		if !errors.Is(err, ErrRelayEnded) {
			t.Fatalf("err = %v, want ErrRelayEnded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's own RelayEnded did not end the relay")
	}
}

// Unauthenticated datagrams from the peer's address move nothing: they do
// not count as the peer heard (which would hold off the fallback to the
// relay); only Heard, which the secure layer calls for authentic packets,
// does.
func TestOnlyAuthenticPacketsMoveState(t *testing.T) {
	forEachNet(t, testOnlyAuthenticPacketsMoveState)
}

func testOnlyAuthenticPacketsMoveState(t *testing.T, n testNet) {
	ua, _ := n.listen(t)
	peerConn, peer := n.listen(t)
	_, server := n.listen(t)
	c := New(ua, server, [16]byte{5}, []netip.AddrPort{peer}, nil, Options{Relay: true})
	defer c.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := c.Recv(buf); err != nil {
				return
			}
		}
	}()
	c.Confirm(peer)
	c.Send([]byte("direct, unanswered"))
	time.Sleep(1100 * time.Millisecond)
	before := c.received.Load()
	for range 5 {
		peerConn.WriteToUDPAddrPort([]byte{0xD0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, ua.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	time.Sleep(100 * time.Millisecond)
	if c.received.Load() != before {
		t.Fatal("unauthenticated datagrams counted as the peer heard")
	}
	if !c.directLost(time.Now()) {
		t.Fatal("unauthenticated datagrams held off the direct path's loss")
	}
	c.Heard(peer)
	if c.directLost(time.Now()) || c.received.Load() == before {
		t.Fatal("an authentic packet did not count")
	}
}
