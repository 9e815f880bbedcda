package netem

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
)

// marked is the first byte of the datagrams the Drop tests filter: the
// test peers put a big-endian sequence number first, so seq|markedSeq
// starts with it.
const (
	marked    = 0xE1
	markedSeq = uint64(marked) << 56
)

func TestSetCutDropsOneDirectionUntilRestored(t *testing.T) {
	var captured atomic.Uint64
	p, a, b := startPair(t, Config{Capture: func(Direction, []byte) { captured.Add(1) }})
	const n = 10
	a.send(t, p.FaceA(), 0, n, 64)
	for i, arr := range b.receive(t, n) {
		if arr.seq != uint64(i) {
			t.Fatalf("before the cut: arrival %d is seq %d", i, arr.seq)
		}
	}

	p.SetCut(AtoB, true)
	a.send(t, p.FaceA(), n, n, 64)
	b.send(t, p.FaceB(), 100, n, 64) // the other direction still flows
	for i, arr := range a.receive(t, n) {
		if arr.seq != uint64(100+i) {
			t.Fatalf("b->a during the cut: arrival %d is seq %d", i, arr.seq)
		}
	}
	waitFor(t, "the cut datagrams to settle", func() bool {
		s := p.Stats().AtoB
		return s.Received == 2*n && settled(s)
	})
	if s := p.Stats().AtoB; s.DroppedLoss != n || s.Delivered != n {
		t.Fatalf("a->b after cutting %d datagrams: %v", n, s)
	}
	if s := p.Stats().BtoA; s.DroppedLoss != 0 || s.Delivered != n {
		t.Fatalf("b->a was not cut but: %v", s)
	}
	if got := captured.Load(); got != 3*n {
		t.Fatalf("Capture saw %d datagrams, want all %d (cut ones included)", got, 3*n)
	}

	p.SetCut(AtoB, false)
	a.send(t, p.FaceA(), 2*n, n, 64)
	for i, arr := range b.receive(t, n) {
		if arr.seq != uint64(2*n+i) {
			t.Fatalf("after restoring: arrival %d is seq %d (a cut datagram leaked, or one was lost)", i, arr.seq)
		}
	}
	select {
	case arr := <-b.arrivals:
		t.Fatalf("unexpected extra arrival seq %d", arr.seq)
	default:
	}
}

func TestDropFiltersByContentBeforeTheModel(t *testing.T) {
	t.Run("only the matching datagrams, only in its direction", func(t *testing.T) {
		var asked atomic.Uint64
		drop := func(dir Direction, d []byte) bool {
			asked.Add(1)
			return dir == AtoB && d[0] == marked
		}
		p, a, b := startPair(t, Config{Drop: drop})
		const n = 10
		for i := range uint64(n) {
			a.send(t, p.FaceA(), i, 1, 64)
			a.send(t, p.FaceA(), markedSeq|i, 1, 64)
		}
		b.send(t, p.FaceB(), markedSeq, n, 64)
		for i, arr := range b.receive(t, n) {
			if arr.seq != uint64(i) {
				t.Fatalf("a->b arrival %d is seq %#x, want %d", i, arr.seq, i)
			}
		}
		for i, arr := range a.receive(t, n) {
			if arr.seq != markedSeq|uint64(i) {
				t.Fatalf("b->a arrival %d is seq %#x: Drop matched the wrong direction", i, arr.seq)
			}
		}
		waitFor(t, "a->b to settle", func() bool {
			s := p.Stats().AtoB
			return s.Received == 2*n && settled(s)
		})
		if s := p.Stats().AtoB; s.DroppedLoss != n || s.Delivered != n {
			t.Fatalf("a->b: %v, want %d dropped and %d delivered", s, n, n)
		}
		if got := asked.Load(); got != 3*n {
			t.Fatalf("Drop was asked about %d datagrams, want %d", got, 3*n)
		}
	})

	// Filtered datagrams take no random draws: the same seed drops the same
	// unfiltered datagrams whether or not filtered ones are interleaved.
	t.Run("the model never sees the dropped ones", func(t *testing.T) {
		const n, window = 400, 50
		run := func(interleave bool) []uint64 {
			p, a, b := startPair(t, Config{AtoB: Impairment{Loss: 0.5}, Seed: 7,
				Drop: func(_ Direction, d []byte) bool { return d[0] == marked }})
			per := uint64(1)
			if interleave {
				per = 2
			}
			for sent := 0; sent < n; sent += window {
				for i := range uint64(window) {
					seq := uint64(sent) + i
					a.send(t, p.FaceA(), seq, 1, 64)
					if interleave {
						a.send(t, p.FaceA(), markedSeq|seq, 1, 64)
					}
				}
				waitFor(t, fmt.Sprintf("%d datagrams to settle", sent+window), func() bool {
					s := p.Stats().AtoB
					return s.Received == per*uint64(sent+window) && settled(s)
				})
			}
			s := p.Stats().AtoB
			var got []uint64
			for _, arr := range b.receive(t, int(s.Delivered)) {
				got = append(got, arr.seq)
			}
			return got
		}
		plain, interleaved := run(false), run(true)
		if len(plain) == 0 || len(plain) == n {
			t.Fatalf("Loss 0.5 delivered %d of %d", len(plain), n)
		}
		if !slices.Equal(plain, interleaved) {
			t.Fatalf("filtered datagrams changed the model's decisions: %d survivors alone, %d interleaved", len(plain), len(interleaved))
		}
	})
}
