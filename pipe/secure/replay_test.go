package secure

import (
	"math/rand/v2"
	"testing"
)

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	steps := []struct {
		counter uint64
		want    bool
	}{
		{0, true}, {0, false}, {1, true}, {3, true}, {2, true}, {2, false},
		{100, true}, {64, true}, {64, false},
		{replayWindowSize + 100, true},
		{101, true},  // replayWindowSize-1 behind: the oldest still accepted
		{100, false}, // already seen
		{99, false},  // replayWindowSize behind: too old
		{1 << 40, true}, {1<<40 - replayWindowSize, false}, {1<<40 - replayWindowSize + 1, true},
		{1<<40 + 1, true}, {rejectAfterMessages - 1, true}, {rejectAfterMessages, false}, {1<<64 - 1, false},
	}
	for i, s := range steps {
		if got := w.accept(s.counter); got != s.want {
			t.Fatalf("step %d: accept(%d) = %v, want %v", i, s.counter, got, s.want)
		}
	}
}

// TestReplayWindowModel compares the window with a map of every counter
// seen, on random sequences with reordering and duplicates.
func TestReplayWindowModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for run := range 20 {
		var w replayWindow
		seen := map[uint64]bool{}
		var highest uint64
		next := uint64(0)
		for range 20000 {
			var c uint64
			switch r := rng.IntN(100); {
			case r < 60:
				c = next
				next++
			case r < 90 && next > 0:
				c = next - 1 - rng.Uint64N(min(next, 2*replayWindowSize))
			default:
				next += rng.Uint64N(3 * replayWindowSize)
				c = next
			}
			fresh := !seen[c] && (c > highest || highest-c < replayWindowSize)
			if len(seen) == 0 {
				fresh = true
			}
			if w.fresh(c) != fresh {
				t.Fatalf("run %d: fresh(%d) = %v, model says %v (highest %d)", run, c, !fresh, fresh, highest)
			}
			if got := w.accept(c); got != fresh {
				t.Fatalf("run %d: accept(%d) = %v, want %v", run, c, got, fresh)
			}
			if fresh {
				seen[c] = true
				highest = max(highest, c)
			}
		}
	}
}
