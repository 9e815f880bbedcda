package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// BenchmarkPairings measures completed pairings per second over loopback:
// many concurrent client pairs, each pairing a full client exchange (Hello,
// Challenge, Find, waiting, match pushed to both sides) on fresh request ids,
// as separate p2pcat runs would do.
//
//	go test -run XXX -bench Pairings -benchtime 40000x ./rendezvous/server/
func BenchmarkPairings(b *testing.B) {
	for _, conc := range []int{64, 256} {
		b.Run(fmt.Sprintf("clients=%d", 2*conc), func(b *testing.B) {
			srv := rendezvoustest.Start(b, server.Config{RatePerIP: -1, MaxPendingPerIP: 1 << 20, MaxPending: 1 << 20})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Int64
			b.ResetTimer()
			start := time.Now()
			for w := range conc {
				ca, cb := srv.Client(b), srv.Client(b)
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						a, bb := fmt.Sprintf("a%d-%d", w, i), fmt.Sprintf("b%d-%d", w, i)
						var inner sync.WaitGroup
						inner.Go(func() {
							if _, err := ca.Find(ctx, rendezvous.FindRequest{Session: "bench", Name: a, Peer: bb}); err != nil {
								failed.Add(1)
							}
						})
						if _, err := cb.Find(ctx, rendezvous.FindRequest{Session: "bench", Name: bb, Peer: a}); err != nil {
							failed.Add(1)
						}
						inner.Wait()
					}
				})
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d finds failed", failed.Load())
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "pairings/s")
			if got := srv.Metric("p2pcat_rendezvous_pairings_total"); got != float64(b.N) {
				b.Fatalf("server counted %v pairings, want %d", got, b.N)
			}
		})
	}
}

// BenchmarkServerPairings measures the server's packet path alone: a lean
// load generator of many client sockets that, like long-lived clients, keep
// their address cookies and pipeline their finds, so the client side costs
// little and the figure is what one server sustains.
//
//	go test -run XXX -bench ServerPairings -benchtime 200000x ./rendezvous/server/
func BenchmarkServerPairings(b *testing.B) {
	srv := rendezvoustest.Start(b, server.Config{RatePerIP: -1, MaxPendingPerIP: 1 << 20, MaxPending: 1 << 20})
	const workers, window = 8, 64
	var next atomic.Int64
	var wg sync.WaitGroup
	var matched atomic.Int64
	gens := make([]*loadGen, workers)
	for w := range gens {
		gens[w] = newLoadGen(b, srv.Addr)
	}
	b.ResetTimer()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			g := gens[w]
			for {
				lo := next.Add(window) - window
				if lo >= int64(b.N) {
					return
				}
				n := min(window, int(int64(b.N)-lo))
				matched.Add(int64(g.pairs(b, w, lo, n)))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	// UDP under overload loses some answers in socket buffers (a real
	// client re-sends); count only completed pairings, and demand nearly all.
	if matched.Load() < int64(b.N)*99/100 {
		b.Fatalf("only %d of %d pairs matched", matched.Load(), b.N)
	}
	b.ReportMetric(float64(matched.Load())/el.Seconds(), "pairings/s")
}
