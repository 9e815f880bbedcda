//go:build linux

package path

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// TestMovedOnNotice: a Probe that comes through the relay with our
// pairing id is the peer's moved-on notice: MovedOn fires, and it never
// reaches Recv; one with another pairing id moves nothing. SendMovedOn sends the notice through the relay
// only when the relay was offered.
func TestMovedOnNotice(t *testing.T) {
	id := [16]byte{7, 7}
	server := listenLoopback4(t)
	defer server.Close()
	serverAddr := server.LocalAddr().(*net.UDPAddr).AddrPort()
	peer := listenLoopback4(t)
	defer peer.Close()
	sock := listenLoopback4(t)
	c := New(sock, serverAddr, id, []netip.AddrPort{peer.LocalAddr().(*net.UDPAddr).AddrPort()}, nil, Options{Relay: true})
	defer c.Close()
	got := received(c)
	to := sock.LocalAddr().(*net.UDPAddr)
	relayed := func(pairing [16]byte, payload []byte) []byte {
		return append(wire.AppendRelayHeader(nil, pairing), payload...)
	}
	other := probeFor([16]byte{9})
	if _, err := server.WriteToUDP(relayed(id, other), to); err != nil { // another pairing's probe, inside ours
		t.Fatal(err)
	}
	if _, err := server.WriteToUDP(relayed(id, []byte{0xD1, 1, 2, 3}), to); err != nil { // a relayed datagram for the secure layer
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if !bytes.Equal(p, []byte{0xD1, 1, 2, 3}) {
			t.Fatalf("Recv got %x, want the relayed datagram", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relayed datagram never came")
	}
	if isClosed(c.MovedOn()) {
		t.Fatal("MovedOn fired for a probe of another pairing")
	}
	if _, err := server.WriteToUDP(relayed(id, probeFor(id)), to); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.MovedOn():
	case <-time.After(10 * time.Second):
		t.Fatal("MovedOn never fired for the relayed probe")
	}
	select {
	case p := <-got:
		t.Fatalf("the notice reached Recv: %x", p)
	case <-time.After(50 * time.Millisecond):
	}

	// SendMovedOn: through the relay, a probe with our pairing id.
	c.SendMovedOn()
	buf := make([]byte, 2048)
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, _, err := server.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no moved-on notice at the server: %v", err)
		}
		pid, payload, ok := wire.ParseRelay(buf[:n])
		if ok && pid == id && bytes.Equal(payload, probeFor(id)) {
			break
		}
	}
	noRelaySock := listenLoopback4(t)
	noRelay := New(noRelaySock, serverAddr, id, nil, nil, Options{})
	defer noRelay.Close()
	noRelay.SendMovedOn()
	_ = server.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		n, from, err := server.ReadFromUDP(buf)
		if err != nil {
			break // nothing: right
		}
		if _, _, ok := wire.ParseRelay(buf[:n]); ok && from.Port == noRelaySock.LocalAddr().(*net.UDPAddr).Port {
			t.Fatal("SendMovedOn used a relay that was not offered")
		}
	}
}

// TestPending: Pending sees a datagram waiting, from anyone but the
// server, without taking it, and answers at once while a Recv is blocked
// in another goroutine.
func TestPending(t *testing.T) {
	server := listenLoopback4(t)
	defer server.Close()
	peer := listenLoopback4(t)
	defer peer.Close()
	sock := listenLoopback4(t)
	c := New(sock, server.LocalAddr().(*net.UDPAddr).AddrPort(), [16]byte{3}, nil, nil, Options{NoOffload: true})
	defer c.Close()
	if c.Pending() {
		t.Fatal("Pending with nothing sent")
	}
	to := sock.LocalAddr().(*net.UDPAddr)
	if _, err := server.WriteToUDP([]byte("late answer"), to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !c.Pending() }, "a datagram from the server counts as pending")
	buf := make([]byte, 2048)
	if _, _, err := c.sock.ReadFromUDPAddrPort(buf); err != nil { // take the server's datagram away
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDP([]byte{0x01}, to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c.Pending, "a datagram from the peer is not seen")
	if !c.Pending() {
		t.Fatal("Pending took the datagram")
	}
	if _, _, err := c.sock.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		_, _, _ = c.Recv(buf)
	}()
	time.Sleep(20 * time.Millisecond) // the Recv is (likely) blocked by now
	start := time.Now()
	if c.Pending() {
		t.Fatal("Pending with nothing waiting")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Pending waited %v for the blocked Recv", took)
	}
	c.Close()
	<-blocked
}

func probeFor(id [16]byte) []byte {
	p := make([]byte, probeLen)
	p[0] = ProbeType
	copy(p[1:], id[:])
	return p
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal(what)
}
