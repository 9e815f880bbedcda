package secure

import (
	"net/netip"
	"testing"
)

// BenchmarkSend seals full-size payloads into a link that discards them.
func BenchmarkSend(b *testing.B) {
	k1, k2 := make([]byte, 32), make([]byte, 32)
	c, err := newConn(newDiscardLink(), testID, dirKeys{k1, k2}, dirKeys{k2, k1}, netip.AddrPort{}, -1)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := make([]byte, c.MaxPayload())
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSendRecv sends full-size payloads over the in-memory link and
// receives each on the same goroutine: one seal, one open, and the fake
// link's copies.
func BenchmarkSendRecv(b *testing.B) {
	_, _, _, a, r := connPair(b, 1)
	p := make([]byte, a.MaxPayload())
	buf := make([]byte, r.MaxPayload())
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Send(p); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Recv(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSendRecvParallel runs the receiver on its own goroutine, as a
// session does. A window of credits keeps the fake link's queue, which
// drops when full like UDP, from overflowing.
func BenchmarkSendRecvParallel(b *testing.B) {
	_, _, _, a, r := connPair(b, 2)
	p := make([]byte, a.MaxPayload())
	credits := make(chan struct{}, 512)
	done := make(chan error, 1)
	n := b.N
	go func() {
		buf := make([]byte, r.MaxPayload())
		for range n {
			if _, err := r.Recv(buf); err != nil {
				done <- err
				return
			}
			<-credits
		}
		done <- nil
	}()
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for range n {
		credits <- struct{}{}
		if err := a.Send(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
