package server_test

// The server's guards for addresses that have not proven themselves: no
// answer larger than its request, other versions told so within that
// bound, and a cookie from before a restart answered with a fresh
// Challenge.

import (
	"net"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// TestNoAmplification sends every kind of request from an address that has
// not proven itself and checks that no answer is larger than its request.
func TestNoAmplification(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reqs := [][]byte{
		(&wire.Hello{ReqID: 1, Session: "s"}).AppendTo(nil), // unpadded: smaller than a Challenge
		wire.Pad((&wire.Hello{ReqID: 2, Session: "s"}).AppendTo(nil)),
		(&wire.Find{ReqID: 3, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil),
		wire.Pad((&wire.Find{ReqID: 4, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil)),
		(&wire.Register{ReqID: 5, Session: "s"}).AppendTo(nil),
		[]byte("P2PC\x01\x01\x00\x00\x00\x00\x00\x00\x00\x06"), // another version
		[]byte("P2PC\x02\x7f\x00\x00\x00\x00\x00\x00\x00\x07"), // unknown type
		[]byte("P2PC\x02\x01\x00"),                             // truncated
		wire.Pad([]byte("P2PC\x02\x7f\x00\x00\x00\x00\x00\x00\x00\x08")),
		wire.Pad([]byte("P2PC\x01\x01\x00\x00\x00\x00\x00\x00\x00\x09\x01s")), // a version-1 client's Hello
		wire.Pad((&wire.RelayBind{ReqID: 10, PairingID: [16]byte{1}}).AppendTo(nil)),
		wire.Pad((&wire.Leave{ReqID: 11, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil)),
	}
	answered := 0
	buf := make([]byte, 2048)
	for _, req := range reqs {
		conn.Write(req)
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			continue // dropped: fine
		}
		answered++
		if n > len(req) {
			t.Errorf("request of %d bytes (%x...) got a %d-byte answer", len(req), req[:6], n)
		}
	}
	if answered < 3 {
		t.Fatalf("only %d of %d requests answered: padded requests must get their (small) answers", answered, len(reqs))
	}
	if got := srv.Metric("p2pcat_rendezvous_drops_total"); got == 0 {
		t.Fatal("no drops counted")
	}
}

// TestVersionMismatchAnswered: a version-1 client's padded Hello gets an
// Error in version 1's encoding (which a version-1 client decodes and
// prints), no larger than the request; another version's gets ours.
func TestVersionMismatchAnswered(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	conn := dial(t, srv.Addr)
	buf := make([]byte, 2048)
	for _, version := range []byte{1, 0, 3, 255} {
		// A version-1 Hello, as a version-1 client sends it: padded to
		// 96 bytes.
		req := wire.Pad([]byte("P2PC\x00\x01\x00\x00\x00\x00\x00\x00\x00\x2a\x04team"))
		req[4] = version
		conn.Write(req)
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("version %d: %v", version, err)
		}
		want := uint8(wire.Version)
		if version == 1 {
			want = 1
		}
		e, v, ok := wire.DecodeAnyVersionError(buf[:n])
		if !ok || v != want || e.Code != wire.CodeVersion || e.ReqID != 0x2a || e.Message != server.VersionMessage {
			t.Fatalf("version %d: answer % x (%#v, version %d)", version, buf[:n], e, v)
		}
		if n > len(req) {
			t.Fatalf("version %d: a %d-byte answer to a %d-byte request from an unproven address", version, n, len(req))
		}
	}
	if got := srv.Metric("p2pcat_rendezvous_drops_total"); got != 4 {
		t.Fatalf("drops = %v, want the 4 version mismatches", got)
	}
}

// TestCookieFromBeforeRestart: a client holding a cookie from a server that
// restarted (new cookie key) gets a fresh Challenge and goes on, instead of
// being ignored until it times out.
func TestCookieFromBeforeRestart(t *testing.T) {
	dir := t.TempDir()
	srv := rendezvoustest.Start(t, server.Config{DataDir: dir})
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	ask := func(m wire.Message) wire.Message {
		t.Helper()
		conn.Write(wire.Pad(m.AppendTo(nil)))
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no answer to %T: %v", m, err)
		}
		reply, err := wire.Decode(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return reply
	}
	old := ask(&wire.Hello{ReqID: 1, Session: "s"}).(*wire.Challenge).Cookie
	// The same server, restarted: the address stays (same port), the key changes.
	srv.Stop()
	again := rendezvoustest.Start(t, server.Config{DataDir: dir})
	conn.Close()
	conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(again.Addr))
	if err != nil {
		t.Fatal(err)
	}
	reply := ask(&wire.Find{ReqID: 2, Cookie: old, Session: "s", Name: "a", Peer: "b"})
	ch, ok := reply.(*wire.Challenge)
	if !ok || len(ch.Cookie) == 0 {
		t.Fatalf("find with an old cookie got %#v, want a fresh Challenge", reply)
	}
	if r, ok := ask(&wire.Find{ReqID: 2, Cookie: ch.Cookie, Session: "s", Name: "a", Peer: "b"}).(*wire.FindResp); !ok || r.Status != wire.FindWaiting {
		t.Fatalf("find with the fresh cookie: %#v", r)
	}
}
