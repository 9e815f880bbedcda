package secure

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
)

var _ Link = (*memLink)(nil)

// memNet joins two memLinks in memory. It can lose, duplicate and reorder
// datagrams (from a seeded generator, so runs are reproducible), record
// everything sent, and pass datagrams through a tap that may rewrite or
// drop them, playing a man in the middle.
type memNet struct {
	mu       sync.Mutex
	rng      *rand.Rand
	loss     float64 // probability a datagram is dropped
	dup      float64 // probability a datagram is delivered twice
	reorder  float64 // probability a datagram is held back behind the next one
	held     map[*memLink][]byte
	capture  bool
	captured [][]byte
	// tap, if set, sees each datagram sent by from and returns the
	// datagrams to deliver instead (nil drops it).
	tap func(from *memLink, b []byte) [][]byte
}

type memLink struct {
	net   *memNet
	peer  *memLink
	queue chan memPacket
	done  chan struct{}
	once  sync.Once

	mu        sync.Mutex
	addr      netip.AddrPort // source address of what this side sends
	confirmed []netip.AddrPort
}

type memPacket struct {
	from netip.AddrPort
	n    int
	b    [maxDatagram + 64]byte
}

func newMemPair(seed uint64) (*memNet, *memLink, *memLink) { return newMemPairDepth(seed, 1024) }

// newMemPairDepth is newMemPair with queues of depth datagrams, each
// taking 1.3 KB whether used or not: a fuzz target that creates a pair per
// input and sends two datagrams needs only a few.
func newMemPairDepth(seed uint64, depth int) (*memNet, *memLink, *memLink) {
	n := &memNet{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), held: map[*memLink][]byte{}}
	a := &memLink{net: n, queue: make(chan memPacket, depth), done: make(chan struct{}), addr: netip.MustParseAddrPort("192.0.2.1:1000")}
	b := &memLink{net: n, queue: make(chan memPacket, depth), done: make(chan struct{}), addr: netip.MustParseAddrPort("198.51.100.2:2000")}
	a.peer, b.peer = b, a
	return n, a, b
}

func (n *memNet) impair(loss, dup, reorder float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loss, n.dup, n.reorder = loss, dup, reorder
	// Release held datagrams so a clean phase starts clean.
	for l, b := range n.held {
		l.peer.enqueue(l.source(), b)
		delete(n.held, l)
	}
}

func (n *memNet) setTap(tap func(from *memLink, b []byte) [][]byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.tap = tap
}

func (n *memNet) startCapture() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.capture = true
}

func (n *memNet) capturedPackets() [][]byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([][]byte(nil), n.captured...)
}

func (l *memLink) source() netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// moveTo changes the address this side's datagrams come from (roaming).
func (l *memLink) moveTo(addr netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addr = addr
}

func (l *memLink) confirmations() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]netip.AddrPort(nil), l.confirmed...)
}

func (l *memLink) Send(b []byte) error {
	select {
	case <-l.done:
		return net.ErrClosed
	default:
	}
	if len(b) > maxDatagram {
		return net.ErrWriteToConnected // any error: the fake refuses jumbo datagrams
	}
	n := l.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.capture {
		n.captured = append(n.captured, bytes.Clone(b))
	}
	outs := [][]byte{b}
	if n.tap != nil {
		outs = n.tap(l, bytes.Clone(b))
	}
	from := l.source()
	for _, out := range outs {
		if n.loss > 0 && n.rng.Float64() < n.loss {
			continue
		}
		copies := 1
		if n.dup > 0 && n.rng.Float64() < n.dup {
			copies = 2
		}
		held, isHeld := n.held[l]
		if !isHeld && n.reorder > 0 && n.rng.Float64() < n.reorder {
			n.held[l] = bytes.Clone(out)
			continue
		}
		for range copies {
			l.peer.enqueue(from, out)
		}
		if isHeld {
			delete(n.held, l)
			l.peer.enqueue(from, held)
		}
	}
	return nil
}

// enqueue delivers a datagram; like UDP it drops it when the queue is full.
func (l *memLink) enqueue(from netip.AddrPort, b []byte) {
	var p memPacket
	p.from = from
	p.n = copy(p.b[:], b)
	select {
	case l.queue <- p:
	default:
	}
}

// inject delivers b to l as if sent from from, bypassing the network.
func (l *memLink) inject(from netip.AddrPort, b []byte) { l.enqueue(from, b) }

func (l *memLink) Recv(buf []byte) (int, netip.AddrPort, error) {
	select {
	case <-l.done:
		return 0, netip.AddrPort{}, net.ErrClosed
	default:
	}
	select {
	case p := <-l.queue:
		return copy(buf, p.b[:p.n]), p.from, nil
	case <-l.done:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (l *memLink) Confirm(from netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.confirmed = append(l.confirmed, from)
}

func (l *memLink) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// discardLink swallows everything sent; Recv blocks until Close.
type discardLink struct {
	done chan struct{}
	once sync.Once
}

func newDiscardLink() *discardLink { return &discardLink{done: make(chan struct{})} }

func (d *discardLink) Send([]byte) error { return nil }
func (d *discardLink) Recv([]byte) (int, netip.AddrPort, error) {
	<-d.done
	return 0, netip.AddrPort{}, net.ErrClosed
}
func (d *discardLink) Confirm(netip.AddrPort) {}
func (d *discardLink) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}
