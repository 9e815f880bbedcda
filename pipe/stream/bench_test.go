package stream

import (
	"context"
	"io"
	"testing"
	"time"
)

// benchStream measures one-way throughput from a to b: b.N chunks of
// 1 MiB, MB/s from b.SetBytes.
func benchStream(b *testing.B, ta, tb Transport) {
	a, c := newConnPair(b, ta, tb, Config{})
	chunk := randomBytes(1<<20, 1)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		got <- n
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := a.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if n := <-got; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("received %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
	st := a.Stats()
	b.ReportMetric(float64(st.Retransmits), "retx")
	b.Logf("sender %+v", st)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	go c.Shutdown(ctx)
	if err := a.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMemPair(b *testing.B) {
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	benchStream(b, ta, tb)
}

func BenchmarkUDPLoopback(b *testing.B) {
	ta, tb := newUDPPair(b)
	benchStream(b, ta, tb)
}

// BenchmarkLossyPath emulates a 100 MB/s link with 40 ms RTT and 1% random
// loss each way, and reports the goodput of a 64 MiB transfer in MB/s.
// (TCP with CUBIC, halving its window at every loss, gets far less on such
// a path.)
func BenchmarkLossyPath(b *testing.B) {
	const size = 64 << 20
	data := randomBytes(size, 3)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		link := func(seed uint64) linkConfig {
			return linkConfig{loss: 0.01, delay: 20 * time.Millisecond, rate: 100e6,
				queue: 40 * time.Millisecond, seed: seed}
		}
		ta, tb, _, _ := newMemPair(link(uint64(2*i+1)), link(uint64(2*i+2)))
		a, c := New(ta, Config{}), New(tb, Config{})
		got := make(chan int64, 1)
		go func() {
			n, _ := io.Copy(io.Discard, c)
			got <- n
		}()
		start := time.Now()
		if _, err := a.Write(data); err != nil {
			b.Fatal(err)
		}
		a.CloseWrite()
		if n := <-got; n != size {
			b.Fatalf("got %d bytes", n)
		}
		total += time.Since(start)
		st := a.Stats()
		b.ReportMetric(float64(st.LostPackets)/float64(st.PacketsSent)*100, "%lost")
		b.ReportMetric(float64(st.SRTT.Milliseconds()), "srtt-ms")
		a.Close()
		c.Close()
	}
	b.ReportMetric(float64(size)*float64(b.N)/total.Seconds()/1e6, "MB/s")
}
