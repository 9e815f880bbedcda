package path

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Timed crossing, for a pair whose NATs both keep a socket's port (so its
// public port is predictable) but let an unsolicited packet claim a
// mapping: the NAT lab's "clash" router, Linux masquerading without an
// input filter. A probe that reaches such a router before its own host
// has sent on that very tuple (the two addresses and ports) is taken by
// the router, and the host's own packet on the tuple then leaves from
// another port: only the two sides' first packets crossing in flight
// open a tuple both ways. Between two routers on one link (no delay, no
// routed hop) that takes sends within some microseconds of each other.
//
// So both sides send at one moment, each by its own clock, that they
// derive alike from the server's pairing answer (pipe/crossing.go), over
// CrossSockets fresh tuples: each side opens CrossSockets sockets on the
// ports CrossPorts derives from its primary port, and tuple i joins our
// i-th socket to the peer's i-th port. Every probe is the first packet of
// its socket: in the NAT lab one socket probing many ports of the peer
// crossed with its first probe only, fresh sockets with any of theirs.
// The sends go in bursts (tupleOf, Crossing.sendAt), and one side
// (Crossing.Lead) sends each tuple crossStep·(i−CrossSockets/2) earlier or
// later than the other: a vernier over the error of the two clocks.
//
// A tuple whose two probes crossed is open both ways. The leading side
// takes the one sent first (the lowest send slot) among those it heard by
// crossGrace after the first, and starts its path there; the other side
// answers each tuple's first crossing probe once (so that a tuple whose
// first packet one router dropped, in the race of the two directions'
// conntrack entries, is heard by the leader too) and takes the tuple on
// which the leader's first plain probe arrives. Each closes every other
// socket.
//
// The bounds, which nothing raises: CrossSockets sockets on each side,
// each sending one probe (on the follower, one more answering the first
// the peer's tuple sent it), to the one peer IP the server saw, to the
// port of its tuple, all within CrossDuration; then the sockets wait at
// most the budget their caller gives, and crossGrace or crossFollow
// after it.
const (
	CrossSockets = 48
	// The sends go in crossBursts bursts, crossBurstGap apart, of
	// CrossSockets/crossBursts tuples each, crossSpacing apart: one
	// timed send holds the sending thread for some tens of microseconds
	// (the packet's way through the kernel), and a burst's last one must
	// still leave on time.
	crossBursts   = 12
	crossBurstGap = 3 * time.Millisecond
	crossSpacing  = 100 * time.Microsecond
	crossStep     = 2 * time.Microsecond
	// crossSpin: the last stretch before a send is waited by spinning on
	// the clock, not by a timer (whose wake-up is late by some
	// microseconds, more on a busy machine). Short, so that a busy
	// machine's scheduler has little reason to take the CPU mid-burst.
	crossSpin = 100 * time.Microsecond
	// crossGrace: how long after the first tuple it hears a side waits
	// for an earlier one's probe (its reader may have run late).
	crossGrace = 3 * time.Millisecond
	// crossFollow: when a tuple crossed, the follower waits this much
	// past the budget for the leader's choice.
	crossFollow = 100 * time.Millisecond
)

// CrossDuration is how long after Crossing.At a crossing's last send goes
// (the leader's: its vernier puts the last tuple latest).
const CrossDuration = (crossBursts-1)*crossBurstGap + (perBurst-1)*crossSpacing + (CrossSockets-1-CrossSockets/2)*crossStep

// perBurst is how many tuples a burst sends.
const perBurst = CrossSockets / crossBursts

// Crossing is one side's plan of a timed crossing.
type Crossing struct {
	// At is the moment the schedule counts from, by this side's clock:
	// the non-leading side's first send (the leader's vernier moves each
	// of its sends around its moment).
	At time.Time
	// Ports are ours (CrossPorts of our public port), PeerPorts the
	// peer's (of its public port): tuple i joins Ports[i] to
	// PeerPorts[i].
	Ports, PeerPorts []uint16
	// Lead: this side's sends are offset by the vernier (one side's are,
	// the other's not).
	Lead bool
}

// tupleOf is the tuple that goes in send slot k: a burst's tuples are
// crossBursts apart, so that every burst spans the vernier's whole range.
func tupleOf(k int) int {
	return (k%perBurst)*crossBursts + k/perBurst
}

// sendAt is when this side sends slot k.
func (x Crossing) sendAt(k int) time.Time {
	t := x.At.Add(time.Duration(k/perBurst)*crossBurstGap + time.Duration(k%perBurst)*crossSpacing)
	if x.Lead {
		t = t.Add(time.Duration(tupleOf(k)-CrossSockets/2) * crossStep)
	}
	return t
}

// CrossPorts returns the CrossSockets ports a side opens for a timed
// crossing, from the public port of its primary socket (the same as its
// own when its NAT keeps ports) and the pairing id: a run of
// CrossSockets ports, crossRunOf(pairingID) runs after it, or before it
// when that would pass 65535. Each attempt's pairing (and so its run)
// differs, so that a retry from a fixed port (--port) does not meet the
// conntrack entries its last crossing left. Both sides compute each
// other's alike, from the port the server saw.
func CrossPorts(primary uint16, pairingID [16]byte) []uint16 {
	off := 1 + crossRunOf(pairingID)*CrossSockets
	step := 1
	if int(primary)+off+CrossSockets-1 > 65535 {
		step = -1
	}
	ports := make([]uint16, CrossSockets)
	for i := range ports {
		ports[i] = uint16(int(primary) + step*(off+i))
	}
	return ports
}

// crossRuns is how many runs of ports a crossing may take (crossRunOf).
const crossRuns = 8

func crossRunOf(pairingID [16]byte) int { return int(pairingID[0] % crossRuns) }

// CrossResult is the outcome of CrossPunch.
type CrossResult struct {
	Sock    *net.UDPConn   // the tuple's socket (nil: none crossed), now the caller's
	Peer    netip.AddrPort // the peer's end of the tuple
	Heard   int            // tuples that crossed
	Sockets int            // sockets opened
	Probes  int            // probes sent
	Late    time.Duration  // the latest send's delay past its moment
	Took    time.Duration
}

// CrossPunch is one side of a timed crossing with the peer at ip: it
// opens a socket on each of x.Ports (one that is taken is left out),
// sends each one's crossing probe at its moment, and returns the tuple
// the two sides take: the leading side's choice, the earliest it heard,
// crossGrace after the first it heard; on the other side the tuple the
// leader's first plain probe (its path's) arrives on, within budget
// (counted from the call) or, when a tuple crossed, crossFollow more. It
// closes every other socket and leaves no goroutine behind; ctx ends it
// early.
func CrossPunch(ctx context.Context, ip netip.Addr, pairingID [16]byte, x Crossing, budget time.Duration, log *slog.Logger) (CrossResult, error) {
	start := time.Now()
	if len(x.Ports) != CrossSockets || len(x.PeerPorts) != CrossSockets {
		return CrossResult{}, fmt.Errorf("a timed crossing needs %d ports on each side", CrossSockets)
	}
	network := "udp4"
	if !ip.Is4() {
		network = "udp6"
	}
	c := &crossing{lead: x.Lead, socks: make([]*net.UDPConn, CrossSockets), heard: make(map[int]bool),
		first: make(chan struct{}), chosen: make(chan struct{}), choice: -1, probe: newProbe(pairingID)}
	c.mark = crossProbe(c.probe)
	opened := 0
	for i, p := range x.Ports {
		if s, err := net.ListenUDP(network, &net.UDPAddr{Port: int(p)}); err == nil {
			c.socks[i] = s
			opened++
		}
	}
	if opened == 0 {
		return CrossResult{}, fmt.Errorf("opening sockets for a timed crossing: none of the ports %d-%d is free", x.Ports[0], x.Ports[len(x.Ports)-1])
	}
	// The readers run past the budget by what a side may wait after it.
	extra := crossGrace
	if !x.Lead {
		extra = crossFollow
	}
	readCtx, stopReading := context.WithDeadline(ctx, start.Add(budget+extra))
	defer stopReading()
	for i, s := range c.socks {
		if s != nil {
			c.wg.Add(1)
			go c.listen(readCtx, i, netip.AddrPortFrom(ip, x.PeerPorts[i]))
		}
	}
	waitCtx, stopWaiting := context.WithDeadline(ctx, start.Add(budget))
	defer stopWaiting()
	settled := c.first // the leader sends no more once it heard a tuple
	if !x.Lead {
		settled = c.chosen // the other side, once it knows the leader's choice
	}
	res := CrossResult{Sockets: opened}
	res.Probes, res.Late = sendTimed(waitCtx, CrossSockets, x.sendAt, func(k int) error {
		i := tupleOf(k)
		if c.socks[i] == nil {
			return net.ErrClosed
		}
		_, err := c.socks[i].WriteToUDPAddrPort(c.mark, netip.AddrPortFrom(ip, x.PeerPorts[i]))
		return err
	}, settled)
	winner := c.settle(ctx, waitCtx)
	for i, s := range c.socks {
		if s != nil && i != winner {
			s.Close()
		}
	}
	stopReading()
	c.wg.Wait()
	c.mu.Lock()
	res.Heard = len(c.heard)
	c.mu.Unlock()
	res.Took = time.Since(start)
	if winner >= 0 {
		res.Sock, res.Peer = c.socks[winner], netip.AddrPortFrom(ip, x.PeerPorts[winner])
		res.Sock.SetReadDeadline(time.Time{})
		RaiseBuffers(res.Sock, 8<<20, log)
	}
	return res, nil
}

// settle waits for this side's tuple after the sends, and returns it (-1:
// none): the leader's earliest heard, crossGrace after the first; the
// follower's choice of the leader's, until waitCtx ends or, when a tuple
// crossed, crossFollow after that. ctx ends every wait.
func (c *crossing) settle(ctx, waitCtx context.Context) int {
	if c.lead {
		select {
		case <-c.first:
		case <-waitCtx.Done():
			return -1
		}
		c.mu.Lock()
		grace := crossGrace - time.Since(c.firstAt)
		c.mu.Unlock()
		wait(ctx, grace)
		return c.earliest()
	}
	select {
	case <-c.chosen:
	case <-waitCtx.Done():
		if isClosed(c.first) && ctx.Err() == nil {
			// A tuple crossed: the leader's choice comes after its grace,
			// and its path's first probe after that.
			t := time.NewTimer(crossFollow)
			defer t.Stop()
			select {
			case <-c.chosen:
			case <-t.C:
			case <-ctx.Done():
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.choice
}

// wait waits d, or until ctx ends.
func wait(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// crossProbe is the crossing's probe: the pairing's, with crossMark in its
// first padding byte (so the path, which drops it, never takes it for a
// plain one).
func crossProbe(probe []byte) []byte {
	p := slices.Clone(probe)
	p[1+16] = crossMark
	return p
}

const crossMark = 0x01

// crossing is the state CrossPunch's readers share.
type crossing struct {
	lead        bool
	socks       []*net.UDPConn // by tuple; nil: the port was taken
	probe, mark []byte         // the plain probe and the crossing's
	wg          sync.WaitGroup
	first       chan struct{} // closed at the first crossing probe heard
	chosen      chan struct{} // the follower's: closed when the leader's choice came
	firstOnce   sync.Once
	chosenOnce  sync.Once
	mu          sync.Mutex
	heard       map[int]bool // tuples whose peer crossing probe arrived
	firstAt     time.Time    // when the first did
	choice      int          // the follower's: the tuple the leader's plain probe came on, -1 before
}

// listen reads tuple i's socket, whose peer end is from, until ctx ends or
// the socket closes (on the follower, until the leader's choice). The
// follower answers the first crossing probe of a tuple with its own: the
// first packets of a crossing can lose the race in a router (each
// direction's conntrack entry is made at once), while the tuple is open
// both ways after it.
func (c *crossing) listen(ctx context.Context, i int, from netip.AddrPort) {
	defer c.wg.Done()
	s := c.socks[i]
	answered := false
	readProbes(ctx, s, func(p []byte, got netip.AddrPort) bool {
		if got != from {
			return true
		}
		switch {
		case isProbe(p, c.mark):
			c.mu.Lock()
			c.heard[i] = true
			c.mu.Unlock()
			c.firstOnce.Do(func() {
				c.mu.Lock()
				c.firstAt = time.Now()
				c.mu.Unlock()
				close(c.first)
			})
			if !c.lead && !answered {
				answered = true
				s.WriteToUDPAddrPort(c.mark, from)
			}
		case isProbe(p, c.probe) && !c.lead:
			c.chosenOnce.Do(func() {
				c.mu.Lock()
				c.choice = i
				c.mu.Unlock()
				close(c.chosen)
			})
			return false
		}
		return true
	})
}

// earliest returns the heard tuple sent first, -1 when none was.
func (c *crossing) earliest() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range CrossSockets {
		if c.heard[tupleOf(k)] {
			return tupleOf(k)
		}
	}
	return -1
}

// sendTimed calls send(k) for k from 0 to n-1, each at its moment at(k)
// (in increasing order), as close to it as the clock allows: it sleeps on
// the runtime's timers until a millisecond before, in the kernel until
// crossSpin before, then spins. A send whose moment has passed goes at
// once. It stops early when ctx ends or stop is closed, and returns the
// sends that succeeded and the latest one's delay.
func sendTimed(ctx context.Context, n int, at func(int) time.Time, send func(int) error, stop <-chan struct{}) (sent int, late time.Duration) {
	restore := preciseThread()
	defer restore()
	stopped := func() bool { return ctx.Err() != nil || isClosed(stop) }
	for k := range n {
		due := at(k)
		if d := time.Until(due) - time.Millisecond - crossSpin; d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
			case <-stop:
			}
			t.Stop()
		}
		if stopped() {
			break
		}
		if d := time.Until(due) - crossSpin; d > 0 {
			sleepPrecise(d)
		}
		for time.Now().Before(due) {
		}
		if stopped() {
			break
		}
		late = max(late, time.Since(due))
		if send(k) == nil {
			sent++
		}
	}
	return sent, late
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
