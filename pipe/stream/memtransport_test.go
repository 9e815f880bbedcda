package stream

import (
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// linkConfig describes one direction of the in-memory fake network.
// Random decisions come from a PCG seeded with seed, so a run with the same
// sequence of sends makes the same decisions.
type linkConfig struct {
	loss    float64       // probability a datagram is dropped
	dup     float64       // probability a datagram is delivered twice
	reorder float64       // probability a datagram is held back by up to jitter
	jitter  time.Duration // extra delay of held-back datagrams
	delay   time.Duration // one-way propagation delay
	rate    float64       // bottleneck bandwidth, bytes/s; 0: unlimited
	queue   time.Duration // bottleneck buffer, as time to drain it; default 2×delay+5ms
	// A token-bucket policer, as relays and ISPs run them, between the
	// random loss and the bottleneck: a datagram passes when the bucket
	// holds its size in tokens, which refill at police bytes/s up to
	// policeBurst (default one second's worth, full at the start);
	// otherwise it is dropped, never queued. 0: no policer.
	police      float64
	policeBurst float64
	seed        uint64
	drop        func(p []byte) bool // test hook: drop datagrams it selects
}

type memPacket struct {
	due time.Time
	seq uint64
	buf []byte
}

// memLink is one direction: a priority queue ordered by delivery time.
type memLink struct {
	cfg linkConfig

	mu        sync.Mutex
	rng       *rand.Rand
	q         []memPacket // min-heap on (due, seq)
	seq       uint64
	busyUntil time.Time
	tokens    float64   // of the policer
	refilled  time.Time // when tokens was last brought up to date
	free      [][]byte
	closed    bool
	notify    chan struct{}
	timer     *time.Timer

	sent, dropped, overflow, policed uint64
}

// linkCounts is a snapshot of a memLink's counters.
type linkCounts struct {
	sent, dropped, overflow, policed uint64
}

func (l *memLink) counts() linkCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	return linkCounts{l.sent, l.dropped, l.overflow, l.policed}
}

func newMemLink(cfg linkConfig) *memLink {
	if cfg.queue == 0 {
		cfg.queue = 2*cfg.delay + 5*time.Millisecond
	}
	if cfg.policeBurst == 0 {
		cfg.policeBurst = cfg.police
	}
	return &memLink{
		cfg:      cfg,
		tokens:   cfg.policeBurst, // a policer starts with a full bucket
		refilled: time.Now(),
		rng:      rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)),
		notify:   make(chan struct{}, 1),
		timer:    time.NewTimer(time.Hour),
	}
}

const memMaxQueued = 1 << 16

func (l *memLink) send(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent++
	if l.closed {
		return
	}
	if l.cfg.drop != nil && l.cfg.drop(p) {
		l.dropped++
		return
	}
	if l.cfg.loss > 0 && l.rng.Float64() < l.cfg.loss {
		l.dropped++
		return
	}
	now := time.Now()
	if l.cfg.police > 0 {
		l.tokens = min(l.cfg.policeBurst, l.tokens+now.Sub(l.refilled).Seconds()*l.cfg.police)
		l.refilled = now
		if l.tokens < float64(len(p)) {
			l.policed++
			return
		}
		l.tokens -= float64(len(p))
	}
	depart := now
	if l.cfg.rate > 0 {
		depart = l.busyUntil
		if depart.Before(now) {
			depart = now
		}
		depart = depart.Add(time.Duration(float64(len(p)) / l.cfg.rate * 1e9))
		if depart.Sub(now) > l.cfg.queue {
			l.overflow++ // tail drop at the bottleneck
			return
		}
		l.busyUntil = depart
	}
	due := depart.Add(l.cfg.delay)
	copies := 1
	if l.cfg.dup > 0 && l.rng.Float64() < l.cfg.dup {
		copies = 2
	}
	for i := 0; i < copies; i++ {
		if len(l.q) >= memMaxQueued {
			l.overflow++
			return
		}
		d := due
		if l.cfg.reorder > 0 && l.rng.Float64() < l.cfg.reorder {
			d = d.Add(time.Duration(l.rng.Int64N(int64(l.cfg.jitter) + 1)))
		}
		var b []byte
		if n := len(l.free); n > 0 {
			b, l.free = l.free[n-1], l.free[:n-1]
		}
		b = append(b[:0], p...)
		l.seq++
		l.pushLocked(memPacket{due: d, seq: l.seq, buf: b})
	}
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *memLink) less(i, j int) bool {
	if l.q[i].due.Equal(l.q[j].due) {
		return l.q[i].seq < l.q[j].seq
	}
	return l.q[i].due.Before(l.q[j].due)
}

func (l *memLink) pushLocked(p memPacket) {
	l.q = append(l.q, p)
	for i := len(l.q) - 1; i > 0; {
		parent := (i - 1) / 2
		if !l.less(i, parent) {
			break
		}
		l.q[i], l.q[parent] = l.q[parent], l.q[i]
		i = parent
	}
}

func (l *memLink) popLocked() memPacket {
	top := l.q[0]
	n := len(l.q) - 1
	l.q[0] = l.q[n]
	l.q = l.q[:n]
	for i := 0; ; {
		small, left, right := i, 2*i+1, 2*i+2
		if left < n && l.less(left, small) {
			small = left
		}
		if right < n && l.less(right, small) {
			small = right
		}
		if small == i {
			break
		}
		l.q[i], l.q[small] = l.q[small], l.q[i]
		i = small
	}
	return top
}

var errMemClosed = errors.New("memtransport: closed")

// recv blocks until a datagram is due. Only one goroutine may call it.
func (l *memLink) recv(buf []byte) (int, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return 0, errMemClosed
		}
		var wait time.Duration = -1
		if len(l.q) > 0 {
			if wait = time.Until(l.q[0].due); wait <= 0 {
				p := l.popLocked()
				n := copy(buf, p.buf)
				l.free = append(l.free, p.buf)
				l.mu.Unlock()
				return n, nil
			}
		}
		l.mu.Unlock()
		if wait < 0 {
			<-l.notify
			continue
		}
		l.timer.Reset(wait)
		select {
		case <-l.notify:
		case <-l.timer.C:
		}
	}
}

func (l *memLink) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// memTransport is one end of an in-memory pair.
type memTransport struct {
	out, in    *memLink
	maxPayload int
}

var _ Transport = (*memTransport)(nil)

func (t *memTransport) Send(p []byte) error {
	if len(p) > t.maxPayload {
		return errors.New("memtransport: datagram too large")
	}
	t.out.send(p)
	return nil
}

func (t *memTransport) Recv(buf []byte) (int, error) { return t.in.recv(buf) }
func (t *memTransport) MaxPayload() int              { return t.maxPayload }

// Close unblocks Recv. Datagrams already sent to the peer are still
// delivered, as on a real network.
func (t *memTransport) Close() error {
	t.in.close()
	return nil
}

// newMemPair returns two connected transports: ab carries a→b, ba b→a.
func newMemPair(ab, ba linkConfig) (a, b *memTransport, abLink, baLink *memLink) {
	abLink, baLink = newMemLink(ab), newMemLink(ba)
	const payload = 1150
	a = &memTransport{out: abLink, in: baLink, maxPayload: payload}
	b = &memTransport{out: baLink, in: abLink, maxPayload: payload}
	return a, b, abLink, baLink
}
