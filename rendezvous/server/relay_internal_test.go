package server

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// BenchmarkRelayMemory measures what the relay keeps per pairing it
// offers (the README's figure for --relay-sessions).
func BenchmarkRelayMemory(b *testing.B) {
	const n = 100_000
	for range b.N {
		r := newRelay(Config{RelayRate: 10_000_000, RelayBytes: 1 << 30, MaxRelays: 2 * n, RelayIdle: time.Minute})
		now := time.Now()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range n {
			var id [16]byte
			binary.BigEndian.PutUint64(id[:], uint64(i))
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
			r.offer(id, a, netip.AddrPortFrom(a.Addr(), 40001), [2][16]byte{{1}, {2}}, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if r.count() != n {
			b.Fatalf("%d pairings kept, want %d", r.count(), n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/pairing")
		runtime.KeepAlive(r)
	}
}

// TestRelayEvictsOldestUnused: at MaxRelays, a new offer pushes out the
// oldest pairing that is not relaying, and keeps the relaying ones.
func TestRelayEvictsOldestUnused(t *testing.T) {
	r := newRelay(Config{RelayRate: 1e9, RelayBytes: 1 << 40, MaxRelays: 3, RelayIdle: time.Minute})
	now := time.Now()
	addr := func(i int) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 1) }
	ids := [][16]byte{{1}, {2}, {3}, {4}}
	for i, id := range ids[:3] {
		r.offer(id, addr(2*i), addr(2*i+1), [2][16]byte{}, now)
	}
	// The first is relaying, the second only offered.
	if _, _, v := r.route(ids[0], addr(0), 100, now); v != relayForward {
		t.Fatalf("verdict %v, want forward", v)
	}
	r.offer(ids[3], addr(6), addr(7), [2][16]byte{}, now)
	for i, want := range []bool{true, false, true, true} {
		r.mu.RLock()
		_, ok := r.pairs[ids[i]]
		r.mu.RUnlock()
		if ok != want {
			t.Errorf("pairing %d kept=%v, want %v", i+1, ok, want)
		}
	}
}

// TestRelayEvictsWhenAllRelaying: at MaxRelays with every pairing
// relaying, a new offer still returns, pushing out the oldest (it used to
// spin for ever with the relay's lock held, which stopped every reader).
func TestRelayEvictsWhenAllRelaying(t *testing.T) {
	r := newRelay(Config{RelayRate: 1e9, RelayBytes: 1 << 40, MaxRelays: 2, RelayIdle: time.Minute})
	now := time.Now()
	addr := func(i int) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 1) }
	ids := [][16]byte{{1}, {2}, {3}}
	for i, id := range ids[:2] {
		r.offer(id, addr(2*i), addr(2*i+1), [2][16]byte{}, now)
		if _, _, v := r.route(id, addr(2*i), 100, now); v != relayForward {
			t.Fatalf("verdict %v, want forward", v)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.offer(ids[2], addr(4), addr(5), [2][16]byte{}, now)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("offer did not return with every pairing relaying")
	}
	for i, want := range []bool{false, true, true} {
		r.mu.RLock()
		_, ok := r.pairs[ids[i]]
		r.mu.RUnlock()
		if ok != want {
			t.Errorf("pairing %d kept=%v, want %v", i+1, ok, want)
		}
	}
}
