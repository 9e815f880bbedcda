package rendezvous_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// relayPair pairs two sockets, on 127.0.0.1 and 127.0.0.2, through srv.
func relayPair(t *testing.T, srv *rendezvoustest.Server) (ua, ub *net.UDPConn, m rendezvous.Match) {
	t.Helper()
	ua = listenOn(t, "127.0.0.1")
	ub = listenOn(t, "127.0.0.2")
	ctx := ctxTimeout(t, 10*time.Second)
	var wg sync.WaitGroup
	var mb rendezvous.Match
	var errA, errB error
	wg.Go(func() {
		m, errA = (&rendezvous.Client{Conn: ua, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "relay", Name: "a", Peer: "b"})
	})
	wg.Go(func() {
		mb, errB = (&rendezvous.Client{Conn: ub, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "relay", Name: "b", Peer: "a"})
	})
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("find: %v / %v", errA, errB)
	}
	if m.PairingID != mb.PairingID {
		t.Fatal("different pairing ids")
	}
	return ua, ub, m
}

func listenOn(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func relayed(id [16]byte, payload string) []byte {
	return append(wire.AppendRelayHeader(nil, id), payload...)
}

// readWithin returns the next datagram on c, or nil after d.
func readWithin(c *net.UDPConn, d time.Duration) ([]byte, netip.AddrPort) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], from
}

func TestRelayForwardsBetweenThePairOnly(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	ua, ub, m := relayPair(t, srv)
	if !m.Relay {
		t.Fatal("relay not offered")
	}
	pkt := relayed(m.PairingID, "ciphertext")
	ua.WriteToUDPAddrPort(pkt, srv.Addr)
	got, from := readWithin(ub, 5*time.Second)
	if !bytes.Equal(got, pkt) || from != srv.Addr {
		t.Fatalf("b got %q from %s, want the same datagram from the server", got, from)
	}
	ub.WriteToUDPAddrPort(relayed(m.PairingID, "answer"), srv.Addr)
	if got, _ := readWithin(ua, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "answer" {
		t.Fatalf("a got %q", got)
	}

	// Another address (another IP) with the right pairing id: refused.
	stranger := listenOn(t, "127.0.0.3")
	stranger.WriteToUDPAddrPort(relayed(m.PairingID, "injected"), srv.Addr)
	// A wrong pairing id from a real end: refused.
	ua.WriteToUDPAddrPort(relayed([16]byte{9}, "lost"), srv.Addr)
	// A datagram too large for the relay: refused.
	ua.WriteToUDPAddrPort(relayed(m.PairingID, string(make([]byte, wire.MaxRelayDatagram))), srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatalf("b got %q from a refused datagram", got)
	}
	waitMetric(t, srv, "p2pcat_rendezvous_drops_total", 3)

	// a's NAT moves it to another port of the same IP: the relay follows.
	ua2 := listenOn(t, "127.0.0.1")
	ua2.WriteToUDPAddrPort(relayed(m.PairingID, "from a new port"), srv.Addr)
	if got, _ := readWithin(ub, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "from a new port" {
		t.Fatalf("b got %q", got)
	}
	ub.WriteToUDPAddrPort(relayed(m.PairingID, "to the new port"), srv.Addr)
	if got, _ := readWithin(ua2, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "to the new port" {
		t.Fatalf("a's new port got %q", got)
	}
}

func waitMetric(t *testing.T, srv *rendezvoustest.Server, name string, atLeast float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Metric(name) < atLeast {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want at least %v", name, srv.Metric(name), atLeast)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRelayByteCapEndsTheRelay(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{RelayBytes: 3000})
	ua, ub, m := relayPair(t, srv)
	pkt := relayed(m.PairingID, string(make([]byte, 1000)))
	for range 2 {
		ua.WriteToUDPAddrPort(pkt, srv.Addr)
		if got, _ := readWithin(ub, 5*time.Second); !bytes.Equal(got, pkt) {
			t.Fatalf("b got %d bytes, want the relayed datagram", len(got))
		}
	}
	ua.WriteToUDPAddrPort(pkt, srv.Addr) // past 3000 bytes
	for name, c := range map[string]*net.UDPConn{"a": ua, "b": ub} {
		// A late copy of the pairing answer (FindResp) may come first.
		var msg wire.Message
		var err error
		for {
			got, _ := readWithin(c, 5*time.Second)
			msg, err = wire.Decode(got)
			if _, late := msg.(*wire.FindResp); !late || err != nil {
				break
			}
		}
		e, ok := msg.(*wire.Error)
		if err != nil || !ok || e.Code != wire.CodeRelayEnded || e.ReqID != binary.BigEndian.Uint64(m.PairingID[:8]) {
			t.Fatalf("%s got %v (%v), want the relay-ended notice for this pairing", name, msg, err)
		}
	}
	ua.WriteToUDPAddrPort(pkt, srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatal("relayed after the cap")
	}
}

func TestRelayRateLimit(t *testing.T) {
	// The bucket holds at least 256 KiB: send 600 KB at once.
	srv := rendezvoustest.Start(t, rendezvous.Config{RelayRate: 1000})
	ua, ub, m := relayPair(t, srv)
	pkt := relayed(m.PairingID, string(make([]byte, 1200)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	received := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if got, _ := readWithin(ub, 300*time.Millisecond); got == nil {
				break
			}
			n++
		}
		received <- n
	}()
	for range 500 {
		ua.WriteToUDPAddrPort(pkt, srv.Addr)
		time.Sleep(50 * time.Microsecond) // stay within the socket buffers
	}
	n := <-received
	if max := (256<<10)/len(pkt) + 2; n > max || n == 0 {
		t.Fatalf("b received %d of 500 datagrams, want 1..%d (the bucket)", n, max)
	}
	waitMetric(t, srv, "p2pcat_rendezvous_drops_total", 1)
}

func TestNoRelay(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{NoRelay: true})
	ua, ub, m := relayPair(t, srv)
	if m.Relay {
		t.Fatal("relay offered by a server without one")
	}
	ua.WriteToUDPAddrPort(relayed(m.PairingID, "x"), srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatal("relayed without a relay")
	}
}

func TestRelayKeepaliveIsEchoedNotForwarded(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	ua, ub, m := relayPair(t, srv)
	keepalive := wire.AppendRelayHeader(nil, m.PairingID)
	ua.WriteToUDPAddrPort(keepalive, srv.Addr)
	if got, from := readWithin(ua, 5*time.Second); !bytes.Equal(got, keepalive) || from != srv.Addr {
		t.Fatalf("a got %x from %s, want its keepalive echoed", got, from)
	}
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatalf("the keepalive was forwarded: b got %x", got)
	}
	// From a stranger it is refused like any relayed datagram.
	stranger := listenOn(t, "127.0.0.3")
	stranger.WriteToUDPAddrPort(keepalive, srv.Addr)
	if got, _ := readWithin(stranger, 300*time.Millisecond); got != nil {
		t.Fatal("a stranger's keepalive was answered")
	}
}

// TestRelayBindMovesAnEnd: a client whose IP changed moves its end of the
// relay with a RelayBind, which needs a cookie for the new address.
func TestRelayBindMovesAnEnd(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	_, ub, m := relayPair(t, srv) // a is the initiator side on 127.0.0.1
	moved := listenOn(t, "127.0.0.3")
	bind := func(cookie []byte) []byte {
		return wire.Pad((&wire.RelayBind{ReqID: 77, Cookie: cookie, PairingID: m.PairingID, Role: m.Role}).AppendTo(nil))
	}
	moved.WriteToUDPAddrPort(bind(nil), srv.Addr)
	got, _ := readWithin(moved, 5*time.Second)
	msg, err := wire.Decode(got)
	ch, ok := msg.(*wire.Challenge)
	if err != nil || !ok || ch.ReqID != 77 {
		t.Fatalf("a RelayBind without cookie got %v (%v), want a Challenge", msg, err)
	}
	// Before the bind, the new address is refused.
	moved.WriteToUDPAddrPort(relayed(m.PairingID, "too early"), srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatal("relayed from an unbound address")
	}
	moved.WriteToUDPAddrPort(bind(ch.Cookie), srv.Addr)
	if got, _ := readWithin(moved, 5*time.Second); !bytes.Equal(got, wire.AppendRelayHeader(nil, m.PairingID)) {
		t.Fatalf("the bind got %x, want the keepalive-shaped acknowledgement", got)
	}
	ub.WriteToUDPAddrPort(relayed(m.PairingID, "to the new address"), srv.Addr)
	if got, _ := readWithin(moved, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "to the new address" {
		t.Fatalf("the moved end got %q", got)
	}
	moved.WriteToUDPAddrPort(relayed(m.PairingID, "from the new address"), srv.Addr)
	if got, _ := readWithin(ub, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "from the new address" {
		t.Fatalf("b got %q", got)
	}
}
