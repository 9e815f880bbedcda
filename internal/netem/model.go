package netem

// The impairment model. One model serves one direction and sees that
// direction's datagrams in arrival order, except those dropped before it by
// a cut (Proxy.SetCut) or by Config.Drop. For each datagram:
//
//  1. Loss: it is dropped with probability Loss.
//  2. Duplicate: with probability Duplicate a second copy follows the first.
//     Each copy then goes through the remaining steps on its own, as if a
//     duplicating element sat in front of the bottleneck.
//  3. Bottleneck: with Rate > 0 a copy is serialised at Rate bytes/s behind
//     the copies accepted before it. A copy that would find more than
//     QueueBytes waiting (the one being serialised included) is tail-dropped,
//     like a router's drop-tail queue.
//  4. Propagation: a copy leaves the bottleneck and arrives Delay ± Jitter
//     (uniform) later, but never before a copy that entered before it: jitter
//     varies the delay like a path's queues do, it does not reorder.
//  5. Reorder: with probability Reorder a copy is held back a further
//     ReorderDelay/2..ReorderDelay, so later copies overtake it. It does not
//     hold up the copies behind it.
//
// Every datagram consumes the same fixed number of random draws (drawsPerDatagram)
// whatever the outcome, from a generator seeded by (Seed, direction). So the
// same seed and the same input sequence give the same loss, duplicate, reorder
// and jitter decisions, and changing one probability does not reshuffle the
// others. Queue drops and exact delivery times also depend on when datagrams
// arrive, so they are reproducible only as far as the arrival times are.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

const (
	// defaultReorderDelay is how long a reordered copy is held at most when
	// Impairment.ReorderDelay is zero: long enough for a burst to overtake
	// it, short against typical retransmission timeouts.
	defaultReorderDelay = 10 * time.Millisecond

	// minDefaultQueueBytes is the floor of the default bottleneck queue, so
	// that a path with little or no delay still buffers a burst of full-size
	// datagrams instead of dropping all but the first.
	minDefaultQueueBytes = 64 << 10

	drawsPerDatagram = 2 + 3*2 // loss, duplicate, then (reorder, jitter, hold) per copy
)

// Impairment is what one direction of the path does to datagrams. The zero
// value is a perfect wire: no loss, no delay, no rate limit, order kept.
type Impairment struct {
	// Loss is the probability that a datagram is dropped.
	Loss float64
	// Duplicate is the probability that a datagram is delivered twice.
	Duplicate float64
	// Reorder is the probability that a copy is held back so that later
	// ones overtake it.
	Reorder float64
	// ReorderDelay is the longest extra hold of a reordered copy; it is held
	// between ReorderDelay/2 and ReorderDelay. Zero means 10 ms.
	ReorderDelay time.Duration
	// Delay is the one-way base delay (a 40 ms RTT is 20 ms each way).
	Delay time.Duration
	// Jitter spreads each copy's delay uniformly over Delay±Jitter (never
	// below zero). It does not reorder: see the model rules in model.go.
	Jitter time.Duration
	// Rate is the bottleneck in bytes per second; 0 means unlimited.
	Rate int64
	// QueueBytes bounds the bottleneck queue when Rate > 0; copies that do
	// not fit are tail-dropped. Zero means about one bandwidth-delay
	// product, Rate × 2×Delay, but at least 64 KiB.
	QueueBytes int
}

func (imp Impairment) validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{{"loss", imp.Loss}, {"duplicate", imp.Duplicate}, {"reorder", imp.Reorder}} {
		if !(p.v >= 0 && p.v <= 1) { // also rejects NaN
			return fmt.Errorf("%s probability %v is outside [0, 1]", p.name, p.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"delay", imp.Delay}, {"jitter", imp.Jitter}, {"reorder delay", imp.ReorderDelay}} {
		if d.v < 0 {
			return fmt.Errorf("%s %v is negative", d.name, d.v)
		}
	}
	if imp.Rate < 0 {
		return fmt.Errorf("rate %d is negative", imp.Rate)
	}
	if imp.QueueBytes < 0 {
		return fmt.Errorf("queue size %d is negative", imp.QueueBytes)
	}
	return nil
}

// withDefaults fills in the documented defaults of zero fields.
func (imp Impairment) withDefaults() Impairment {
	if imp.ReorderDelay == 0 {
		imp.ReorderDelay = defaultReorderDelay
	}
	if imp.Rate > 0 && imp.QueueBytes == 0 {
		bdp := float64(imp.Rate) * (2 * imp.Delay).Seconds()
		imp.QueueBytes = int(math.Min(math.Max(bdp, minDefaultQueueBytes), math.MaxInt32))
	}
	return imp
}

// copyVerdict is the fate of one copy of a datagram.
type copyVerdict struct {
	queueDropped bool
	held         bool          // reordered: held back behind later copies
	deliverAt    time.Duration // on the proxy's clock; meaningless if queueDropped
}

// verdict is the fate of one datagram: lost, or one or two copies.
type verdict struct {
	lost   bool
	copies int // 1, or 2 when duplicated; 0 when lost
	copy   [2]copyVerdict
}

// model applies one direction's Impairment. It is not safe for concurrent
// use; its direction's reader goroutine owns it.
type model struct {
	imp Impairment // with defaults filled in
	rng *rand.Rand

	linkFree    time.Duration // when the bottleneck finishes the last accepted copy
	lastInOrder time.Duration // latest delivery time of a copy that was not held back
}

func newModel(imp Impairment, seed int64, dir Direction) *model {
	return newStreamModel(imp, seed, uint64(dir)+1)
}

// newStreamModel is a model whose draws come from a generator seeded by
// (seed, stream).
func newStreamModel(imp Impairment, seed int64, stream uint64) *model {
	return &model{
		imp: imp.withDefaults(),
		rng: rand.New(rand.NewPCG(uint64(seed), stream)),
	}
}

// decide applies the rules at the top of this file to a datagram of size
// bytes arriving at now (on the proxy's clock, non-decreasing between calls).
func (m *model) decide(now time.Duration, size int) verdict {
	var draws [drawsPerDatagram]float64
	for i := range draws {
		draws[i] = m.rng.Float64()
	}
	var v verdict
	if draws[0] < m.imp.Loss {
		v.lost = true
		return v
	}
	v.copies = 1
	if draws[1] < m.imp.Duplicate {
		v.copies = 2
	}
	for i := range v.copies {
		reorder, jitter, hold := draws[2+3*i], draws[3+3*i], draws[4+3*i]
		v.copy[i] = m.route(now, size, reorder, jitter, hold)
	}
	return v
}

// route takes one copy through the bottleneck, the propagation delay and the
// reordering step. The u* arguments are uniform draws in [0, 1).
func (m *model) route(now time.Duration, size int, uReorder, uJitter, uHold float64) copyVerdict {
	leave := now
	if m.imp.Rate > 0 {
		start := max(now, m.linkFree)
		backlog := float64(m.linkFree-now) * float64(m.imp.Rate) / float64(time.Second)
		if backlog > 0 && backlog+float64(size) > float64(m.imp.QueueBytes) {
			return copyVerdict{queueDropped: true}
		}
		serialise := time.Duration(float64(size) * float64(time.Second) / float64(m.imp.Rate))
		m.linkFree = start + serialise
		leave = m.linkFree
	}

	delay := m.imp.Delay
	if m.imp.Jitter > 0 {
		delay += time.Duration((2*uJitter - 1) * float64(m.imp.Jitter))
		delay = max(delay, 0)
	}
	at := max(leave+delay, m.lastInOrder)

	if uReorder < m.imp.Reorder {
		// Held copies do not advance lastInOrder: later copies must be
		// free to overtake them.
		half := m.imp.ReorderDelay / 2
		extra := half + time.Duration(uHold*float64(m.imp.ReorderDelay-half))
		return copyVerdict{held: true, deliverAt: at + extra}
	}
	m.lastInOrder = at
	return copyVerdict{deliverAt: at}
}

// Model applies one direction's Impairment by the rules at the top of this
// file, for an emulator other than Proxy (internal/memnet's in-memory
// network): it decides each datagram's fate, and the caller delivers the
// copies. It is not safe for concurrent use.
type Model struct{ m *model }

// NewModel checks imp and returns its model. The random draws come from a
// generator seeded by (seed, stream), so one seed serves several
// directions that decide independently. (Proxy's direction dir is stream
// dir+1.)
func NewModel(imp Impairment, seed int64, stream uint64) (*Model, error) {
	if err := imp.validate(); err != nil {
		return nil, fmt.Errorf("netem: %w", err)
	}
	return &Model{newStreamModel(imp, seed, stream)}, nil
}

// Fate is what a Model made of one datagram.
type Fate struct {
	Lost         bool // dropped by Loss: no copy at all
	Duplicated   bool // a second copy was made (either may still be queue-dropped)
	QueueDropped int  // copies tail-dropped at the bottleneck
	Reordered    int  // copies to deliver that were held back behind later ones
	// Copies is how many copies to deliver, at At[:Copies] on the caller's
	// clock: in the order of At, which is not always the order of sending.
	Copies int
	At     [2]time.Duration
}

// Decide decides the fate of a datagram of size bytes that arrives at now,
// on the caller's clock (it must not go back between calls; the delivery
// times are on it too).
func (m *Model) Decide(now time.Duration, size int) Fate {
	v := m.m.decide(now, size)
	f := Fate{Lost: v.lost, Duplicated: v.copies == 2}
	for _, c := range v.copy[:v.copies] {
		switch {
		case c.queueDropped:
			f.QueueDropped++
			continue
		case c.held:
			f.Reordered++
		}
		f.At[f.Copies] = c.deliverAt
		f.Copies++
	}
	return f
}
