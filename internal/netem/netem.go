// Package netem is a userspace UDP path emulator for tests and benchmarks:
// a relay between two peers that drops, duplicates, reorders, delays and
// rate-limits their datagrams, for kernels without sch_netem.
//
// The proxy listens on two sockets. Peer A sends to FaceA, which stands for B
// as A sees it; peer B sends to FaceB. A datagram arriving at FaceA is
// impaired per Config.AtoB and sent from FaceB to B; one arriving at FaceB is
// impaired per Config.BtoA and sent from FaceA to A. Each peer thus talks to
// a single address, and replies find their way back.
//
// The rules that decide each datagram's fate are at the top of model.go;
// Model exports them, so that internal/memnet's in-memory network impairs
// datagrams by the same rules. netem imports only the standard library,
// x/net, x/sys and internal/udpio.
package netem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// Direction names one direction of the path.
type Direction int

const (
	AtoB Direction = iota // datagrams from A (arriving at FaceA) to B
	BtoA                  // datagrams from B (arriving at FaceB) to A
)

func (d Direction) String() string {
	switch d {
	case AtoB:
		return "a->b"
	case BtoA:
		return "b->a"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Config describes the emulated path.
type Config struct {
	// A and B are the peers' UDP addresses. A zero address is learned
	// instead: it becomes the source of the latest datagram arriving at that
	// peer's face (A's at FaceA), and datagrams for a peer not yet heard from
	// are counted as Undelivered.
	A, B netip.AddrPort

	// Listen is the address both faces bind, on ephemeral ports. Zero means
	// loopback, in the family of the peer each face talks to.
	Listen netip.Addr

	AtoB, BtoA Impairment

	// Seed makes the random decisions reproducible; see model.go.
	Seed int64

	// Capture, if set, is given a copy of every datagram the proxy receives,
	// before any impairment. It runs on the proxy's reader goroutines, one per
	// direction, possibly concurrently; it may keep the slice and should
	// return quickly, as it delays the datagram it sees.
	Capture func(dir Direction, datagram []byte)

	// Drop, if set, is asked about every datagram after Capture and before
	// the impairment: a datagram it reports true for is dropped and counted
	// as DroppedLoss, and the impairment model never sees it (it consumes no
	// random draws), like a firewall in front of the path. It lets a test
	// drop packets by content, say one protocol message type. It runs on
	// the reader goroutines like Capture, must not keep the slice, and
	// should return quickly.
	Drop func(dir Direction, datagram []byte) bool
}

// DirStats counts what happened to one direction's datagrams.
type DirStats struct {
	Received     uint64 // datagrams read from the face
	Delivered    uint64 // copies sent to the peer
	DroppedLoss  uint64 // datagrams dropped by Loss
	DroppedQueue uint64 // copies tail-dropped at the bottleneck queue (or a full delay line)
	Duplicated   uint64 // extra copies made by Duplicate
	Reordered    uint64 // copies held back by Reorder (overtaken only if others followed closely)
	Undelivered  uint64 // copies whose send failed, or whose peer was not yet known
}

func (s DirStats) String() string {
	return fmt.Sprintf("received=%d delivered=%d dropped_loss=%d dropped_queue=%d duplicated=%d reordered=%d undelivered=%d",
		s.Received, s.Delivered, s.DroppedLoss, s.DroppedQueue, s.Duplicated, s.Reordered, s.Undelivered)
}

// Stats counts both directions. Once the proxy is idle,
// Received + Duplicated = Delivered + DroppedLoss + DroppedQueue + Undelivered
// in each direction; copies still in the delay line make up the difference.
type Stats struct {
	AtoB, BtoA DirStats
}

func (s Stats) String() string {
	return fmt.Sprintf("%v %v; %v %v", AtoB, s.AtoB, BtoA, s.BtoA)
}

// socketBufferBytes is the send and receive buffer the proxy asks for on
// its sockets, so a burst at tens of thousands of datagrams per second is not
// dropped by the kernel while a goroutine is descheduled.
const socketBufferBytes = 8 << 20

// Proxy is a running path emulator. Its methods are safe for concurrent use.
type Proxy struct {
	faceA, faceB *net.UDPConn
	dirs         [2]*direction
	clockStart   time.Time

	stopping context.Context // done once the proxy begins to stop
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	errMu sync.Mutex
	err   error // first fatal socket error
}

// Start binds the two faces and starts relaying. The proxy runs until Close,
// until ctx is done, or until a socket fails; Close must be called in every
// case to release it and learn the failure.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	for _, d := range []struct {
		dir Direction
		imp Impairment
	}{{AtoB, cfg.AtoB}, {BtoA, cfg.BtoA}} {
		if err := d.imp.validate(); err != nil {
			return nil, fmt.Errorf("netem: %v impairment: %w", d.dir, err)
		}
	}
	cfg.A = udpio.Unmap(cfg.A)
	cfg.B = udpio.Unmap(cfg.B)
	if cfg.Listen.IsValid() {
		cfg.Listen = cfg.Listen.Unmap()
	}

	faceA, err := listenFace(cfg.Listen, cfg.A, cfg.B)
	if err != nil {
		return nil, fmt.Errorf("netem: listen for A: %w", err)
	}
	faceB, err := listenFace(cfg.Listen, cfg.B, cfg.A)
	if err != nil {
		faceA.Close()
		return nil, fmt.Errorf("netem: listen for B: %w", err)
	}

	peerA, peerB := newPeer(cfg.A), newPeer(cfg.B)
	ctx, cancel := context.WithCancel(ctx)
	p := &Proxy{
		faceA:      faceA,
		faceB:      faceB,
		clockStart: time.Now(),
		stopping:   ctx,
		cancel:     cancel,
	}
	p.dirs[AtoB] = newDirection(AtoB, cfg, faceA, faceB, peerA, peerB)
	p.dirs[BtoA] = newDirection(BtoA, cfg, faceB, faceA, peerB, peerA)

	// Closing the sockets is what unblocks the readers and a writer stuck
	// in a full send buffer.
	p.wg.Go(func() {
		<-ctx.Done()
		p.faceA.Close()
		p.faceB.Close()
	})
	for _, d := range p.dirs {
		p.wg.Go(func() { p.routineRead(ctx, d) })
		p.wg.Go(func() { p.routineWrite(ctx, d) })
	}
	return p, nil
}

// FaceA is the address peer A must send to, and the one B's datagrams reach A from.
func (p *Proxy) FaceA() netip.AddrPort {
	return udpio.Unmap(p.faceA.LocalAddr().(*net.UDPAddr).AddrPort())
}

// FaceB is the address peer B must send to, and the one A's datagrams reach B from.
func (p *Proxy) FaceB() netip.AddrPort {
	return udpio.Unmap(p.faceB.LocalAddr().(*net.UDPAddr).AddrPort())
}

// Stats returns the counters so far. The fields are read one by one, so a
// snapshot taken while datagrams flow may be off by the ones in transit.
func (p *Proxy) Stats() Stats {
	return Stats{AtoB: p.dirs[AtoB].stats.snapshot(), BtoA: p.dirs[BtoA].stats.snapshot()}
}

// SetCut cuts direction dir (cut true) or restores it (false). While a
// direction is cut, every datagram arriving in it is dropped and counted as
// DroppedLoss, before Drop and the impairment (which never see it); Capture
// still does. Copies already in the delay line are still delivered. A test
// uses it to make a peer fall silent mid-session.
func (p *Proxy) SetCut(dir Direction, cut bool) { p.dirs[dir].cut.Store(cut) }

// Done is closed once the proxy begins to stop: on Close, when the context
// given to Start is done, or on a socket failure. Close still has to be
// called; it waits for the proxy's goroutines to return.
func (p *Proxy) Done() <-chan struct{} { return p.stopping.Done() }

// Close stops the proxy, discards datagrams still in the delay lines, waits
// for all its goroutines and returns the first socket failure, if any.
// Further calls return the same.
func (p *Proxy) Close() error {
	p.cancel()
	p.wg.Wait()
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

func (p *Proxy) fail(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
	p.cancel()
}

// now is the proxy's clock: monotonic, and cheap to compare.
func (p *Proxy) now() time.Duration { return time.Since(p.clockStart) }

// direction is the state of one direction of the path.
type direction struct {
	dir     Direction
	in, out *net.UDPConn
	from    *peer // the sender, learned from in if not configured
	to      *peer // where out sends
	capture func(Direction, []byte)
	drop    func(Direction, []byte) bool
	cut     atomic.Bool // Proxy.SetCut
	model   *model      // owned by routineRead
	line    *delayLine
	stats   counters
}

func newDirection(dir Direction, cfg Config, in, out *net.UDPConn, from, to *peer) *direction {
	imp := cfg.AtoB
	if dir == BtoA {
		imp = cfg.BtoA
	}
	return &direction{
		dir:     dir,
		in:      in,
		out:     out,
		from:    from,
		to:      to,
		capture: cfg.Capture,
		drop:    cfg.Drop,
		model:   newModel(imp, cfg.Seed, dir),
		line:    newDelayLine(),
	}
}

// routineRead receives datagrams on d.in, decides their fate and queues the
// surviving copies on d's delay line.
func (p *Proxy) routineRead(ctx context.Context, d *direction) {
	in := udpio.NewBatchConn(d.in)
	msgs := newReadBatch()
	for {
		n, err := in.ReadBatch(msgs, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if isTransient(err) {
				continue
			}
			p.fail(fmt.Errorf("netem: %v: read: %w", d.dir, err))
			return
		}
		// Every datagram of the batch had arrived by now, so delays counted
		// from here are never short.
		now := p.now()
		for _, m := range msgs[:n] {
			if src, ok := m.Addr.(*net.UDPAddr); ok {
				d.from.learn(udpio.Unmap(src.AddrPort()))
			}
			p.admit(d, now, m.Buffers[0][:m.N])
		}
	}
}

// admit applies d's impairment to one received datagram.
func (p *Proxy) admit(d *direction, now time.Duration, datagram []byte) {
	// Counted last, so that once Received reaches n, the drops and copies of
	// those n datagrams are counted too.
	defer d.stats.received.Add(1)
	if d.capture != nil {
		d.capture(d.dir, bytes.Clone(datagram))
	}
	if d.cut.Load() || (d.drop != nil && d.drop(d.dir, datagram)) {
		d.stats.droppedLoss.Add(1)
		return
	}
	v := d.model.decide(now, len(datagram))
	if v.lost {
		d.stats.droppedLoss.Add(1)
		return
	}
	if v.copies == 2 {
		d.stats.duplicated.Add(1)
	}
	for _, c := range v.copy[:v.copies] {
		if c.queueDropped {
			d.stats.droppedQueue.Add(1)
			continue
		}
		pkt := newPacket(datagram, c.deliverAt)
		if !d.line.push(pkt) {
			pkt.free()
			d.stats.droppedQueue.Add(1)
			continue
		}
		if c.held {
			d.stats.reordered.Add(1)
		}
	}
}

// routineWrite sends each packet of d's delay line when its time comes,
// sleeping on one timer armed for the earliest deadline.
func (p *Proxy) routineWrite(ctx context.Context, d *direction) {
	out := udpio.NewBatchConn(d.out)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*packet
	var msgs []ipv4.Message
	for {
		if ctx.Err() != nil {
			return
		}
		now := p.now()
		var next time.Duration
		var pending bool
		due, next, pending = d.line.popDue(now, due[:0])
		if len(due) > 0 {
			msgs = p.send(d, out, due, msgs)
			for i, pkt := range due {
				pkt.free()
				due[i] = nil
			}
			continue // sending took time: more may be due already
		}
		if pending {
			timer.Reset(next - now)
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-d.line.wake:
		case <-timer.C:
		}
	}
}

// send delivers due to d's peer. msgs is scratch space kept between calls,
// so that a busy writer does not allocate per datagram; send returns it.
func (p *Proxy) send(d *direction, out udpio.BatchConn, due []*packet, msgs []ipv4.Message) []ipv4.Message {
	to, ok := d.to.addr()
	if !ok {
		d.stats.undelivered.Add(uint64(len(due)))
		return msgs
	}
	addr := net.UDPAddrFromAddrPort(to)
	for len(msgs) < len(due) {
		msgs = append(msgs, ipv4.Message{Buffers: make([][]byte, 1)})
	}
	batch := msgs[:len(due)]
	for i, pkt := range due {
		batch[i].Buffers[0] = pkt.data
		batch[i].Addr = addr
	}
	sent := writeAll(out, batch)
	d.stats.delivered.Add(uint64(sent))
	d.stats.undelivered.Add(uint64(len(due) - sent))
	for i := range batch {
		batch[i].Buffers[0] = nil // the packets go back to the pool
	}
	return msgs
}

type counters struct {
	received, delivered, droppedLoss, droppedQueue, duplicated, reordered, undelivered atomic.Uint64
}

func (c *counters) snapshot() DirStats {
	return DirStats{
		Received:     c.received.Load(),
		Delivered:    c.delivered.Load(),
		DroppedLoss:  c.droppedLoss.Load(),
		DroppedQueue: c.droppedQueue.Load(),
		Duplicated:   c.duplicated.Load(),
		Reordered:    c.reordered.Load(),
		Undelivered:  c.undelivered.Load(),
	}
}

// peer is one side's address: fixed by Config, or learned from traffic.
type peer struct {
	fixed   bool
	current atomic.Pointer[netip.AddrPort]
}

func newPeer(configured netip.AddrPort) *peer {
	pr := &peer{fixed: configured.IsValid()}
	if pr.fixed {
		pr.current.Store(&configured)
	}
	return pr
}

// learn records src as the peer's address unless it was configured.
func (pr *peer) learn(src netip.AddrPort) {
	if pr.fixed {
		return
	}
	if cur := pr.current.Load(); cur != nil && *cur == src {
		return // the common case: no allocation per datagram
	}
	pr.current.Store(&src)
}

func (pr *peer) addr() (netip.AddrPort, bool) {
	cur := pr.current.Load()
	if cur == nil {
		return netip.AddrPort{}, false
	}
	return *cur, true
}

// listenFace binds a face that talks to peer (other is the opposite peer,
// consulted for the address family when peer is to be learned).
func listenFace(listen netip.Addr, peer, other netip.AddrPort) (*net.UDPConn, error) {
	if !listen.IsValid() {
		listen = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		switch {
		case peer.IsValid():
			if peer.Addr().Is6() {
				listen = netip.IPv6Loopback()
			}
		case other.IsValid() && other.Addr().Is6():
			listen = netip.IPv6Loopback()
		}
	}
	if peer.IsValid() && peer.Addr().Is4() != listen.Is4() {
		return nil, fmt.Errorf("peer %v and listen address %v are of different families", peer, listen)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen, 0)))
	if err != nil {
		return nil, err
	}
	setSocketBuffers(conn, socketBufferBytes)
	return conn, nil
}

// isTransient reports read errors that an unconnected UDP socket can return
// for earlier sends (ICMP errors queued on the socket) and that say nothing
// about the socket itself.
func isTransient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EMSGSIZE)
}
