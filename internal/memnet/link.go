package memnet

import (
	"container/heap"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
)

// maxPendingBytes bounds what one impaired direction holds on its way, so
// that a sender outrunning a long Delay cannot exhaust memory; copies past
// it are counted as queue drops, as netem's delay line counts them.
const maxPendingBytes = 64 << 20

// link is one impaired direction, from one address to another: its model
// decides each datagram's fate, and the copies wait in a heap ordered by
// delivery time, drained by one timer. Delivering from the heap under one
// lock keeps the order the model chose, which a timer per datagram would
// not (their callbacks run in goroutines of their own).
type link struct {
	net      *Network
	from, to netip.AddrPort

	mu      sync.Mutex
	model   *netem.Model
	pending pendingHeap
	bytes   int // in pending
	seq     uint64
	timer   *time.Timer // armed for pending's earliest copy
	stopped bool
}

func newLink(n *Network, from, to netip.AddrPort, m *netem.Model) *link {
	l := &link{net: n, from: from, to: to, model: m}
	l.timer = time.AfterFunc(time.Hour, l.fire)
	l.timer.Stop()
	return l
}

// send decides the fate of b and delivers the copies that are due at once.
func (l *link) send(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	f := l.model.Decide(l.net.now(), len(b))
	for _, at := range f.At[:f.Copies] {
		if l.bytes+len(b) > maxPendingBytes {
			f.Copies--
			f.QueueDropped++
			continue
		}
		l.bytes += len(b)
		heap.Push(&l.pending, pending{at: at, seq: l.seq, data: b})
		l.seq++
	}
	l.net.count(f)
	l.flushLocked()
}

// fire is the timer's: it delivers what has become due.
func (l *link) fire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.flushLocked()
	}
}

// flushLocked delivers every copy due by now, in order, and arms the timer
// for the next one.
func (l *link) flushLocked() {
	now := l.net.now()
	for len(l.pending) > 0 && l.pending[0].at <= now {
		p := heap.Pop(&l.pending).(pending)
		l.bytes -= len(p.data)
		l.net.deliverTo(l.to, l.from, p.data)
	}
	if len(l.pending) > 0 {
		l.timer.Reset(l.pending[0].at - now)
	}
}

// stop drops what is still on its way; nothing is delivered after it.
func (l *link) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.timer.Stop()
	l.pending, l.bytes = nil, 0
}

// pending is a copy on its way.
type pending struct {
	at   time.Duration // on the network's clock
	seq  uint64        // equal times leave in the order they came
	data []byte
}

// pendingHeap is a min-heap on (at, seq), for container/heap.
type pendingHeap []pending

func (h pendingHeap) Len() int { return len(h) }
func (h pendingHeap) Less(i, j int) bool {
	return h[i].at < h[j].at || h[i].at == h[j].at && h[i].seq < h[j].seq
}
func (h pendingHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pendingHeap) Push(x any)   { *h = append(*h, x.(pending)) }
func (h *pendingHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = pending{}
	*h = old[:len(old)-1]
	return p
}
