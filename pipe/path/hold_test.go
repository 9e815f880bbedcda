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
