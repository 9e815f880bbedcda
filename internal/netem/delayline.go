package netem

import (
	"sync"
	"time"
)

// maxLineBytes bounds what one direction's delay line holds, so that a
// sender outrunning a long Delay cannot exhaust memory; datagrams beyond it
// are counted as queue drops. 64 MiB is 20 ms at 25 Gbit/s.
const maxLineBytes = 64 << 20

// smallPacket is the buffer size pooled packets start with: a full-size
// datagram on a 1500-byte MTU path fits without reallocating.
const smallPacket = 2048

// packet is one copy waiting in a delay line.
type packet struct {
	data      []byte
	deliverAt time.Duration
	seq       uint64 // tie-break so equal deadlines leave in arrival order
}

var packetPool = sync.Pool{New: func() any { return &packet{data: make([]byte, 0, smallPacket)} }}

func newPacket(datagram []byte, deliverAt time.Duration) *packet {
	p := packetPool.Get().(*packet)
	p.data = append(p.data[:0], datagram...)
	p.deliverAt = deliverAt
	return p
}

func (p *packet) free() {
	if cap(p.data) > 4*smallPacket {
		// Don't let one jumbo datagram pin 64 KiB per pooled packet.
		p.data = make([]byte, 0, smallPacket)
	}
	packetPool.Put(p)
}

// delayLine is a time-ordered queue of packets: a binary min-heap on
// (deliverAt, seq). One writer goroutine drains it with a single timer, so
// the cost per datagram is a heap push and pop, not a timer or goroutine.
type delayLine struct {
	mu    sync.Mutex
	heap  []*packet
	seq   uint64
	bytes int

	// wake has room for one signal. push sends on it when the new packet
	// became the earliest, so the writer re-arms its timer for it.
	wake chan struct{}
}

func newDelayLine() *delayLine {
	return &delayLine{wake: make(chan struct{}, 1)}
}

// push adds p, or reports false (and keeps nothing) if the line is full.
func (l *delayLine) push(p *packet) bool {
	l.mu.Lock()
	if l.bytes+len(p.data) > maxLineBytes {
		l.mu.Unlock()
		return false
	}
	l.bytes += len(p.data)
	p.seq = l.seq
	l.seq++
	l.heap = append(l.heap, p)
	earliest := l.upLocked(len(l.heap)-1) == 0
	l.mu.Unlock()

	if earliest {
		select {
		case l.wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	return true
}

// popDue appends to due every packet whose deadline is at or before now, in
// delivery order. It also reports the earliest remaining deadline, if any.
func (l *delayLine) popDue(now time.Duration, due []*packet) (_ []*packet, next time.Duration, pending bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.heap) > 0 && l.heap[0].deliverAt <= now {
		p := l.heap[0]
		last := len(l.heap) - 1
		l.heap[0] = l.heap[last]
		l.heap[last] = nil
		l.heap = l.heap[:last]
		if last > 0 {
			l.downLocked(0)
		}
		l.bytes -= len(p.data)
		due = append(due, p)
	}
	if len(l.heap) == 0 {
		return due, 0, false
	}
	return due, l.heap[0].deliverAt, true
}

func (l *delayLine) lessLocked(i, j int) bool {
	a, b := l.heap[i], l.heap[j]
	return a.deliverAt < b.deliverAt || (a.deliverAt == b.deliverAt && a.seq < b.seq)
}

// upLocked restores the heap after an append at i and returns the final index.
func (l *delayLine) upLocked(i int) int {
	for i > 0 {
		parent := (i - 1) / 2
		if !l.lessLocked(i, parent) {
			break
		}
		l.heap[i], l.heap[parent] = l.heap[parent], l.heap[i]
		i = parent
	}
	return i
}

func (l *delayLine) downLocked(i int) {
	n := len(l.heap)
	for {
		smallest := i
		if left := 2*i + 1; left < n && l.lessLocked(left, smallest) {
			smallest = left
		}
		if right := 2*i + 2; right < n && l.lessLocked(right, smallest) {
			smallest = right
		}
		if smallest == i {
			return
		}
		l.heap[i], l.heap[smallest] = l.heap[smallest], l.heap[i]
		i = smallest
	}
}
