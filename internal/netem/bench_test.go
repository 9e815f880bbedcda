package netem

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// BenchmarkProxy measures how many datagrams per second one direction of
// the proxy relays, with a window of datagrams in flight so that neither the
// test sockets nor the delay line overflow. The window (4096) allows 200k
// datagrams/s through a 20 ms delay, so the proxy, not the window, sets the
// pace.
func BenchmarkProxy(b *testing.B) {
	for _, bc := range []struct {
		name string
		imp  Impairment
	}{
		{"perfect", Impairment{}},
		{"delay=20ms", Impairment{Delay: 20 * time.Millisecond}},
		{"delay=20ms,jitter=5ms,reorder=1%", Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Reorder: 0.01}},
	} {
		b.Run(bc.name, func(b *testing.B) { benchmarkPath(b, bc.imp, 4096, 1200) })
	}
}

func benchmarkPath(b *testing.B, imp Impairment, window, size int) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		setSocketBuffers(c, socketBufferBytes)
		return c
	}
	sender, receiver := listen(), listen()
	defer sender.Close()
	defer receiver.Close()
	addr := func(c *net.UDPConn) netip.AddrPort { return udpio.Unmap(c.LocalAddr().(*net.UDPAddr).AddrPort()) }
	p, err := Start(context.Background(), Config{A: addr(sender), B: addr(receiver), AtoB: imp})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	face := p.FaceA()

	credit := make(chan struct{}, window)
	for range window {
		credit <- struct{}{}
	}
	finished := make(chan struct{})
	received := 0
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(finished)
		buf := make([]byte, 64<<10)
		for received < b.N {
			// A datagram lost on the way costs one idle second, then ends the run.
			_ = receiver.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := receiver.Read(buf); err != nil {
				return
			}
			received++
			select {
			case credit <- struct{}{}:
			default: // a duplicate: its credit was already returned
			}
		}
	})

	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
send:
	for i := range b.N {
		select {
		case <-credit:
		case <-finished:
			break send
		}
		binary.BigEndian.PutUint64(msg, uint64(i))
		if _, err := sender.WriteToUDPAddrPort(msg, face); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(received)/b.Elapsed().Seconds(), "datagrams/s")
	b.ReportMetric(float64(b.N-received), "lost")
}
