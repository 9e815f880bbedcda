package path

import (
	"net/netip"
	"testing"
	"time"
)

// TestHoldSendsLatestAtEnd: while Options.ProbeDelay holds datagrams back,
// the secure layer's latest one is kept and sent when the hold ends (no
// sooner), and the earlier ones are lost; after the hold, Send sends at
// once.
func TestHoldSendsLatestAtEnd(t *testing.T) {
	forEachNet(t, func(t *testing.T, n testNet) {
		const hold = 150 * time.Millisecond
		peer, peerAddr := n.listen(t)
		defer peer.Close()
		sock, _ := n.listen(t)
		start := time.Now()
		c := New(sock, netip.MustParseAddrPort("127.0.0.1:9"), [16]byte{4}, []netip.AddrPort{peerAddr}, nil, Options{ProbeDelay: hold})
		defer c.Close()
		if err := c.Send([]byte{0x01, 'a'}); err != nil {
			t.Fatal(err)
		}
		if err := c.Send([]byte{0x01, 'b'}); err != nil {
			t.Fatal(err)
		}
		next := func() ([]byte, time.Duration) {
			t.Helper()
			buf := make([]byte, 2048)
			_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				k, _, err := peer.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("nothing from the Conn: %v", err)
				}
				if buf[0] != ProbeType {
					return append([]byte(nil), buf[:k]...), time.Since(start)
				}
			}
		}
		got, at := next()
		if string(got) != "\x01b" {
			t.Fatalf("first datagram after the hold %q, want the latest (\"\\x01b\")", got)
		}
		if at < hold {
			t.Fatalf("the held datagram left after %v, within the %v hold", at, hold)
		}
		if err := c.Send([]byte{0x01, 'c'}); err != nil {
			t.Fatal(err)
		}
		if got, _ := next(); string(got) != "\x01c" {
			t.Fatalf("after the hold got %q, want \"\\x01c\" (the earlier one is lost)", got)
		}
	})
}

// TestHoldOpensTowardProbingPeer: a probe with our pairing id that comes
// during the hold ends it for its source at once: that address gets the
// kept datagram and our probe, and later datagrams too, while another
// candidate that sent nothing gets nothing until the hold ends.
func TestHoldOpensTowardProbingPeer(t *testing.T) {
	forEachNet(t, func(t *testing.T, n testNet) {
		const hold = 3 * time.Second
		pairing := [16]byte{7}
		peer, peerAddr := n.listen(t)
		defer peer.Close()
		quiet, quietAddr := n.listen(t)
		defer quiet.Close()
		sock, addr := n.listen(t)
		start := time.Now()
		c := New(sock, netip.MustParseAddrPort("127.0.0.1:9"), pairing, []netip.AddrPort{peerAddr, quietAddr}, nil, Options{ProbeDelay: hold})
		defer c.Close()
		received(c)                                       // handles the probe
		if err := c.Send([]byte{0x01, 'a'}); err != nil { // kept
			t.Fatal(err)
		}
		probe := make([]byte, probeLen)
		probe[0] = ProbeType
		copy(probe[1:], pairing[:])
		if _, err := peer.WriteToUDPAddrPort(probe, addr); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		read := func(want byte) []byte {
			t.Helper()
			_ = peer.SetReadDeadline(time.Now().Add(hold / 2))
			for {
				k, _, err := peer.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("after %v, within the hold: no datagram of type %#x to the probing peer: %v", time.Since(start), want, err)
				}
				if buf[0] == want {
					return append([]byte(nil), buf[:k]...)
				}
			}
		}
		if got := read(0x01); string(got) != "\x01a" {
			t.Fatalf("the kept datagram arrived as %q", got)
		}
		read(ProbeType)
		if err := c.Send([]byte{0x01, 'b'}); err != nil {
			t.Fatal(err)
		}
		if got := read(0x01); string(got) != "\x01b" {
			t.Fatalf("a datagram sent after the probe arrived as %q", got)
		}
		_ = quiet.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if k, _, err := quiet.ReadFromUDPAddrPort(buf); err == nil && time.Since(start) < hold {
			t.Fatalf("the candidate that sent nothing got %q within the hold", buf[:k])
		}
	})
}
