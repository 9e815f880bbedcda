package server_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// relayPair pairs two sockets, on 127.0.0.1 and 127.0.0.2, through srv,
// and returns a's match.
func relayPair(t *testing.T, srv *rendezvoustest.Server) (ua, ub *net.UDPConn, m rendezvous.Match) {
	ua, ub, m, _ = relayPair2(t, srv)
	return ua, ub, m
}

// relayPair2 is relayPair with both matches.
func relayPair2(t *testing.T, srv *rendezvoustest.Server) (ua, ub *net.UDPConn, m, mb rendezvous.Match) {
	t.Helper()
	ua = listenOn(t, "127.0.0.1")
	ub = listenOn(t, "127.0.0.2")
	ctx := ctxTimeout(t, 10*time.Second)
	var wg sync.WaitGroup
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
	if m.Relay && (m.RelayToken == [16]byte{} || mb.RelayToken == [16]byte{} || m.RelayToken == mb.RelayToken) {
		t.Fatalf("relay tokens %x and %x: want two different secrets", m.RelayToken, mb.RelayToken)
	}
	if !m.Relay && (m.RelayToken != [16]byte{} || mb.RelayToken != [16]byte{}) {
		t.Fatal("relay tokens without a relay")
	}
	return ua, ub, m, mb
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

// readWithin returns the next datagram on c, or nil after d. It skips the
// server's answers to the pairing's finds: on a loaded machine the client
// re-sends a find before the first answer arrives, and the second answer
// comes in later, among the relayed datagrams.
func readWithin(c *net.UDPConn, d time.Duration) ([]byte, netip.AddrPort) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, netip.AddrPort{}
		}
		if msg, err := wire.Decode(buf[:n]); err == nil {
			if _, stale := msg.(*wire.FindResp); stale {
				continue
			}
		}
		return buf[:n], from
	}
}

func TestRelayForwardsBetweenThePairOnly(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
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

	// Another port of a's IP (a's NAT moved it, or someone else behind
	// the same CGNAT address): not followed. Neither end hears from it,
	// and nothing is sent to it.
	ua2 := listenOn(t, "127.0.0.1")
	ua2.WriteToUDPAddrPort(relayed(m.PairingID, "from a new port"), srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatalf("b got %q from another port of a's IP", got)
	}
	ub.WriteToUDPAddrPort(relayed(m.PairingID, "to a"), srv.Addr)
	if got, _ := readWithin(ua, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "to a" {
		t.Fatalf("a got %q: its end moved", got)
	}
	if got, _ := readWithin(ua2, 300*time.Millisecond); got != nil {
		t.Fatalf("the other port of a's IP got %q", got)
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
	srv := rendezvoustest.Start(t, server.Config{RelayBytes: 3000})
	ua, ub, m, mb := relayPair2(t, srv)
	pkt := relayed(m.PairingID, string(make([]byte, 1000)))
	for range 2 {
		ua.WriteToUDPAddrPort(pkt, srv.Addr)
		if got, _ := readWithin(ub, 5*time.Second); !bytes.Equal(got, pkt) {
			t.Fatalf("b got %d bytes, want the relayed datagram", len(got))
		}
	}
	ua.WriteToUDPAddrPort(pkt, srv.Addr) // past 3000 bytes
	ends := map[string]struct {
		c           *net.UDPConn
		own, others [16]byte
	}{"a": {ua, m.RelayToken, mb.RelayToken}, "b": {ub, mb.RelayToken, m.RelayToken}}
	for name, end := range ends {
		// A late copy of the pairing answer (FindResp) may come first.
		var msg wire.Message
		var err error
		for {
			got, _ := readWithin(end.c, 5*time.Second)
			msg, err = wire.Decode(got)
			if _, late := msg.(*wire.FindResp); !late || err != nil {
				break
			}
		}
		e, ok := msg.(*wire.RelayEnded)
		if err != nil || !ok || e.PairingID != m.PairingID || !strings.Contains(e.Reason, "cap of 3000 bytes") {
			t.Fatalf("%s got %v (%v), want the relay-ended notice for this pairing", name, msg, err)
		}
		// Authentic for its recipient only: the other end's token (and
		// anyone who knows only the pairing id) cannot make one.
		if !e.Verify(end.own) || e.Verify(end.others) {
			t.Fatalf("%s: the notice verifies with its own token %v, with the other end's %v", name, e.Verify(end.own), e.Verify(end.others))
		}
	}
	ua.WriteToUDPAddrPort(pkt, srv.Addr)
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatal("relayed after the cap")
	}
}

func TestRelayRateLimit(t *testing.T) {
	// The bucket holds at least 256 KiB: send 600 KB at once.
	srv := rendezvoustest.Start(t, server.Config{RelayRate: 1000})
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
	srv := rendezvoustest.Start(t, server.Config{NoRelay: true})
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
	srv := rendezvoustest.Start(t, server.Config{})
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

// TestRelayBindMovesAnEnd: a client whose address changed moves its end of
// the relay with a RelayBind, which needs a cookie for the new address and
// a MAC under its own relay token.
func TestRelayBindMovesAnEnd(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	_, ub, m := relayPair(t, srv) // a is the initiator side on 127.0.0.1
	moved := listenOn(t, "127.0.0.3")
	bind := func(cookie []byte) []byte {
		return wire.Pad((&wire.RelayBind{ReqID: 77, Cookie: cookie, PairingID: m.PairingID, Role: m.Role,
			MAC: wire.RelayBindMAC(m.RelayToken, m.PairingID, m.Role, cookie)}).AppendTo(nil))
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

// TestRelayHijack: an attacker who saw a relayed session's pairing id (it
// is in every relayed datagram) and knows the roles, from another IP or
// from another port of an end's IP (a neighbour behind the same CGNAT
// address), with cookies of its own: no RelayBind of its moves an end, no
// datagram of the session reaches it, and the session goes on. Nor does a
// real end's RelayBind, captured and replayed from the attacker's address.
func TestRelayHijack(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	ua, ub, ma, mb := relayPair2(t, srv)
	// b sees a captured RelayBind of a (role initiator, its MAC for a's
	// cookie): the attacker has that too.
	captured := listenOn(t, "127.0.0.1")
	chA := ask(t, connected(t, captured, srv.Addr), &wire.Hello{ReqID: 5, Session: "relay"}).(*wire.Challenge)
	realBind := &wire.RelayBind{ReqID: 5, Cookie: chA.Cookie, PairingID: ma.PairingID, Role: ma.Role,
		MAC: wire.RelayBindMAC(ma.RelayToken, ma.PairingID, ma.Role, chA.Cookie)}

	// The ends' tokens by role (a and b looked for each other at once, so
	// either may be the initiator).
	var tokenOf [2][16]byte
	tokenOf[ma.Role], tokenOf[mb.Role] = ma.RelayToken, mb.RelayToken
	for _, ip := range []string{"127.0.0.3", "127.0.0.1", "127.0.0.2"} {
		attacker := listenOn(t, ip)
		ac := connected(t, attacker, srv.Addr)
		ch := ask(t, ac, &wire.Hello{ReqID: 9, Session: "relay"}).(*wire.Challenge)
		for _, role := range []wire.PairingRole{wire.RoleInitiator, wire.RoleResponder} {
			for name, mac := range map[string][32]byte{
				"no MAC":                          {},
				"the other end's token":           wire.RelayBindMAC(tokenOf[1-role], ma.PairingID, role, ch.Cookie),
				"a guessed token":                 wire.RelayBindMAC([16]byte{1}, ma.PairingID, role, ch.Cookie),
				"the real MAC for another cookie": wire.RelayBindMAC(tokenOf[role], ma.PairingID, role, chA.Cookie),
			} {
				ac.Write(wire.Pad((&wire.RelayBind{ReqID: 9, Cookie: ch.Cookie, PairingID: ma.PairingID, Role: role, MAC: mac}).AppendTo(nil)))
				if got, _ := readWithin(attacker, 200*time.Millisecond); got != nil {
					t.Fatalf("%s, role %v, %s: the bind was answered (% x)", ip, role, name, got)
				}
			}
		}
		// The captured bind, replayed from here: a Challenge for this
		// address, and nothing moves.
		if _, ok := ask(t, ac, realBind).(*wire.Challenge); !ok {
			t.Fatalf("%s: a replayed RelayBind was not answered with a Challenge", ip)
		}
		// Both ends still talk to each other, and the attacker hears
		// nothing of it, nor of anything it sends.
		attacker.WriteToUDPAddrPort(relayed(ma.PairingID, "injected"), srv.Addr)
		ua.WriteToUDPAddrPort(relayed(ma.PairingID, "a to b"), srv.Addr)
		ub.WriteToUDPAddrPort(relayed(ma.PairingID, "b to a"), srv.Addr)
		if got, _ := readWithin(ub, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "a to b" {
			t.Fatalf("%s: b got %q", ip, got)
		}
		if got, _ := readWithin(ua, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "b to a" {
			t.Fatalf("%s: a got %q", ip, got)
		}
		if got, _ := readWithin(attacker, 300*time.Millisecond); got != nil {
			t.Fatalf("%s: the attacker got %q", ip, got)
		}
	}
	if got := srv.Metric("p2pcat_rendezvous_relayed_packets_total"); got != 6 {
		t.Fatalf("relayed %v datagrams, want the session's 6", got)
	}

	// The real end, moved for real (a new port of its IP), with its MAC:
	// that works, and only the ends get the session's datagrams.
	moved := listenOn(t, "127.0.0.1")
	mc := connected(t, moved, srv.Addr)
	ch := ask(t, mc, &wire.Hello{ReqID: 10, Session: "relay"}).(*wire.Challenge)
	mc.Write(wire.Pad((&wire.RelayBind{ReqID: 10, Cookie: ch.Cookie, PairingID: ma.PairingID, Role: ma.Role,
		MAC: wire.RelayBindMAC(ma.RelayToken, ma.PairingID, ma.Role, ch.Cookie)}).AppendTo(nil)))
	if got, _ := readWithin(moved, 5*time.Second); !bytes.Equal(got, wire.AppendRelayHeader(nil, ma.PairingID)) {
		t.Fatalf("the real bind got % x", got)
	}
	ub.WriteToUDPAddrPort(relayed(ma.PairingID, "to a's new port"), srv.Addr)
	if got, _ := readWithin(moved, 5*time.Second); string(got[wire.RelayHeaderLen:]) != "to a's new port" {
		t.Fatalf("a's new port got %q", got)
	}
	if got, _ := readWithin(ua, 300*time.Millisecond); got != nil {
		t.Fatalf("a's old port still gets %q", got)
	}
	// An end cannot be bound onto the other end's address.
	bc := connected(t, ub, srv.Addr)
	chB := ask(t, bc, &wire.Hello{ReqID: 11, Session: "relay"}).(*wire.Challenge)
	bc.Write(wire.Pad((&wire.RelayBind{ReqID: 11, Cookie: chB.Cookie, PairingID: ma.PairingID, Role: ma.Role,
		MAC: wire.RelayBindMAC(ma.RelayToken, ma.PairingID, ma.Role, chB.Cookie)}).AppendTo(nil)))
	if got, _ := readWithin(ub, 300*time.Millisecond); got != nil {
		t.Fatalf("binding a's end onto b's address got % x", got)
	}
}

// connected lets ask talk to server through c, an unconnected socket.
func connected(t *testing.T, c *net.UDPConn, server netip.AddrPort) *askConn {
	return &askConn{c: c, server: server}
}

type askConn struct {
	c      *net.UDPConn
	server netip.AddrPort
}

func (a *askConn) Write(b []byte) (int, error) { return a.c.WriteToUDPAddrPort(b, a.server) }

func (a *askConn) Read(b []byte) (int, error) {
	for {
		n, from, err := a.c.ReadFromUDPAddrPort(b)
		if err != nil || from == a.server {
			return n, err
		}
	}
}

func (a *askConn) SetReadDeadline(d time.Time) error { return a.c.SetReadDeadline(d) }
