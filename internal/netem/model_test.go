package netem

import (
	"math"
	"testing"
	"time"
)

func verdicts(imp Impairment, seed int64, dir Direction, n int) []verdict {
	m := newModel(imp, seed, dir)
	out := make([]verdict, n)
	for i := range out {
		out[i] = m.decide(time.Duration(i)*time.Millisecond, 1000)
	}
	return out
}

func TestModelIsDeterministic(t *testing.T) {
	imp := Impairment{Loss: 0.2, Duplicate: 0.2, Reorder: 0.2, Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}
	a := verdicts(imp, 7, AtoB, 1000)
	b := verdicts(imp, 7, AtoB, 1000)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("datagram %d: same seed gave %+v and %+v", i, a[i], b[i])
		}
	}
	differs := func(x, y []verdict) bool {
		for i := range x {
			if x[i] != y[i] {
				return true
			}
		}
		return false
	}
	if !differs(a, verdicts(imp, 8, AtoB, 1000)) {
		t.Error("seeds 7 and 8 gave identical decisions")
	}
	if !differs(a, verdicts(imp, 7, BtoA, 1000)) {
		t.Error("the two directions share one random sequence")
	}
}

// Every datagram takes the same number of draws, so tuning one probability
// leaves the other decisions where they were.
func TestModelLossDecisionsIgnoreOtherKnobs(t *testing.T) {
	plain := verdicts(Impairment{Loss: 0.3}, 1, AtoB, 2000)
	busy := verdicts(Impairment{Loss: 0.3, Duplicate: 0.5, Reorder: 0.5, Jitter: time.Millisecond}, 1, AtoB, 2000)
	for i := range plain {
		if plain[i].lost != busy[i].lost {
			t.Fatalf("datagram %d: loss decision changed with duplicate/reorder/jitter settings", i)
		}
	}
}

func TestModelProbabilities(t *testing.T) {
	const n = 20000
	vs := verdicts(Impairment{Loss: 0.1, Duplicate: 0.2, Reorder: 0.3}, 3, AtoB, n)
	var lost, dup, held, copies int
	for _, v := range vs {
		if v.lost {
			lost++
			continue
		}
		if v.copies == 2 {
			dup++
		}
		for _, c := range v.copy[:v.copies] {
			copies++
			if c.held {
				held++
			}
		}
	}
	// The seed is fixed, so these are exact reruns; the ranges are ±5σ so that
	// a change of generator does not break the test without a real bug.
	within(t, "lost", lost, 0.1*n, 5*sigma(n, 0.1))
	within(t, "duplicated", dup, 0.2*float64(n-lost), 5*sigma(n-lost, 0.2))
	within(t, "held", held, 0.3*float64(copies), 5*sigma(copies, 0.3))
}

func TestModelZeroImpairmentDeliversOnArrivalInOrder(t *testing.T) {
	m := newModel(Impairment{}, 1, AtoB)
	for i := range 100 {
		now := time.Duration(i) * time.Microsecond
		v := m.decide(now, 100)
		if v.lost || v.copies != 1 || v.copy[0].held || v.copy[0].queueDropped || v.copy[0].deliverAt != now {
			t.Fatalf("datagram %d: verdict %+v, want one copy delivered at %v", i, v, now)
		}
	}
}

func TestModelJitterKeepsOrder(t *testing.T) {
	const delay, jitter = 20 * time.Millisecond, 15 * time.Millisecond
	m := newModel(Impairment{Delay: delay, Jitter: jitter}, 1, AtoB)
	var last time.Duration
	var spread bool
	for i := range 1000 {
		now := time.Duration(i) * 100 * time.Microsecond
		at := m.decide(now, 100).copy[0].deliverAt
		if at < last {
			t.Fatalf("datagram %d delivered at %v, before its predecessor at %v", i, at, last)
		}
		if at < now+delay-jitter {
			t.Fatalf("datagram %d: delay %v is below Delay-Jitter", i, at-now)
		}
		if at != now+delay {
			spread = true
		}
		last = at
	}
	if !spread {
		t.Error("jitter never changed the delay")
	}
}

func TestModelReorderHoldsBackWithoutDelayingOthers(t *testing.T) {
	const reorderDelay = 8 * time.Millisecond
	m := newModel(Impairment{Reorder: 0.5, ReorderDelay: reorderDelay}, 1, AtoB)
	var held, inOrder int
	for i := range 1000 {
		now := time.Duration(i) * time.Microsecond
		c := m.decide(now, 100).copy[0]
		if c.held {
			held++
			if extra := c.deliverAt - now; extra < reorderDelay/2 || extra > reorderDelay {
				t.Fatalf("datagram %d held %v, want %v..%v", i, extra, reorderDelay/2, reorderDelay)
			}
		} else {
			inOrder++
			if c.deliverAt != now {
				t.Fatalf("datagram %d not held but delivered %v late: held datagrams delay others", i, c.deliverAt-now)
			}
		}
	}
	if held == 0 || inOrder == 0 {
		t.Errorf("held %d, in order %d: want both", held, inOrder)
	}
}

func TestModelBottleneckSerialisesAndTailDrops(t *testing.T) {
	const rate, size, queue = 100_000, 1000, 10_000 // 10 ms per datagram, 10 fit
	m := newModel(Impairment{Rate: rate, QueueBytes: queue}, 1, AtoB)
	var accepted []time.Duration
	dropped := 0
	for range 50 { // a burst: all arrive at once
		c := m.decide(0, size).copy[0]
		if c.queueDropped {
			dropped++
			continue
		}
		accepted = append(accepted, c.deliverAt)
	}
	if len(accepted) != queue/size || dropped != 50-queue/size {
		t.Fatalf("accepted %d, dropped %d of a burst of 50; want %d accepted", len(accepted), dropped, queue/size)
	}
	for i, at := range accepted {
		if want := time.Duration(i+1) * 10 * time.Millisecond; at != want {
			t.Errorf("copy %d leaves at %v, want %v", i, at, want)
		}
	}
	// Once the queue has drained, the link takes datagrams again.
	if c := m.decide(accepted[len(accepted)-1], size).copy[0]; c.queueDropped {
		t.Error("datagram dropped after the queue drained")
	}
}

func TestDefaultQueueIsBDPWithAFloor(t *testing.T) {
	if got := (Impairment{Rate: 1000}).withDefaults().QueueBytes; got != minDefaultQueueBytes {
		t.Errorf("slow link queue = %d, want the floor %d", got, minDefaultQueueBytes)
	}
	fast := Impairment{Rate: 100 << 20, Delay: 20 * time.Millisecond}
	if got, want := fast.withDefaults().QueueBytes, int(float64(100<<20)*0.04); got != want {
		t.Errorf("fast link queue = %d, want the BDP %d", got, want)
	}
	if got := (Impairment{}).withDefaults().ReorderDelay; got != defaultReorderDelay {
		t.Errorf("default reorder delay = %v, want %v", got, defaultReorderDelay)
	}
}

func TestDelayLineOrdersByDeadlineThenArrival(t *testing.T) {
	l := newDelayLine()
	deadlines := []time.Duration{30, 10, 20, 10, 0, 30, 5}
	for i, d := range deadlines {
		if !l.push(newPacket([]byte{byte(i)}, d)) {
			t.Fatal("push refused on an empty line")
		}
	}
	due, next, pending := l.popDue(10, nil)
	var got []byte
	for _, p := range due {
		got = append(got, p.data[0])
	}
	if want := []byte{4, 6, 1, 3}; string(got) != string(want) {
		t.Errorf("due by 10: %v, want %v", got, want)
	}
	if !pending || next != 20 {
		t.Errorf("next deadline %v (pending %v), want 20", next, pending)
	}
	due, _, pending = l.popDue(100, due[:0])
	got = got[:0]
	for _, p := range due {
		got = append(got, p.data[0])
	}
	if want := []byte{2, 0, 5}; string(got) != string(want) || pending {
		t.Errorf("rest: %v (pending %v), want %v", got, pending, want)
	}
}

func sigma(n int, p float64) float64 {
	return math.Sqrt(float64(n) * p * (1 - p))
}

func within(t *testing.T, what string, got int, want, tolerance float64) {
	t.Helper()
	if float64(got) < want-tolerance || float64(got) > want+tolerance {
		t.Errorf("%s = %d, want %.0f ± %.0f", what, got, want, tolerance)
	}
}

// The exported Model decides as the Proxy's own does: direction dir is
// stream dir+1, and a queue-dropped or held copy is counted, not lost.
func TestModelMatchesProxyModel(t *testing.T) {
	imp := Impairment{Loss: 0.2, Duplicate: 0.2, Reorder: 0.3, Delay: 5 * time.Millisecond, Jitter: time.Millisecond, Rate: 1 << 20, QueueBytes: 8000}
	m, err := NewModel(imp, 42, uint64(BtoA)+1)
	if err != nil {
		t.Fatal(err)
	}
	ref := newModel(imp, 42, BtoA)
	var lost, dup, queued, held int
	for i := range 2000 {
		now := time.Duration(i) * 500 * time.Microsecond
		f, v := m.Decide(now, 1200), ref.decide(now, 1200)
		if f.Lost != v.lost || f.Duplicated != (v.copies == 2) {
			t.Fatalf("datagram %d: %+v, want %+v", i, f, v)
		}
		k := 0
		for _, c := range v.copy[:v.copies] {
			if c.queueDropped {
				continue
			}
			if f.At[k] != c.deliverAt {
				t.Fatalf("datagram %d copy %d: at %v, want %v", i, k, f.At[k], c.deliverAt)
			}
			k++
		}
		if f.Copies != k || f.Copies+f.QueueDropped != v.copies {
			t.Fatalf("datagram %d: %+v, want %d copies of %d", i, f, k, v.copies)
		}
		lost, queued, held = lost+btoi(f.Lost), queued+f.QueueDropped, held+f.Reordered
		dup += btoi(f.Duplicated)
	}
	if lost == 0 || dup == 0 || queued == 0 || held == 0 {
		t.Fatalf("lost %d, duplicated %d, queue-dropped %d, held %d: some rule never applied", lost, dup, queued, held)
	}
	if _, err := NewModel(Impairment{Loss: 2}, 1, 1); err == nil {
		t.Fatal("a loss probability of 2 was accepted")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
