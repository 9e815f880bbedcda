package path

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
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
// i-th socket to the peer's i-th port. Every probe is the first packet
// of its socket: the first packets of a flow take the routers' slow path,
// which keeps them in flight longest. The sends go in bursts (tupleOf,
// Crossing.sprayAt), and one side (Crossing.Lead) sends each tuple
// crossStep·(i−CrossSockets/2) earlier or later than the other: a vernier
// over the error of the two clocks.
//
// A tuple whose two probes crossed carries both, so both sides hear the
// same tuples; each takes the one sent first (the lowest send slot) that
// it heard within crossGrace of the first it heard, and closes every other
// socket. That is the same tuple on both sides unless a probe was lost
// after the tuple opened; then the attempt finds no path and the next one
// starts over.
//
// The bounds, which nothing raises: CrossSockets sockets on each side,
// each sending one probe, to the one peer IP the server saw, to the port
// of its tuple, all within CrossDuration; then the sockets wait at most
// the budget their caller gives.
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

// CrossDuration is how long a crossing's sends take from Crossing.At.
const CrossDuration = crossBursts*crossBurstGap + CrossSockets/2*crossStep

// perBurst is how many tuples a burst sends.
const perBurst = CrossSockets / crossBursts

// Crossing is one side's plan of a timed crossing.
type Crossing struct {
	// At is the moment of the first send, by this side's clock.
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
// own when its NAT keeps ports): the ones after it, or before it when
// they would pass 65535. Both sides compute each other's alike, from the
// port the server saw.
func CrossPorts(primary uint16) []uint16 {
	ports := make([]uint16, CrossSockets)
	for i := range ports {
		if int(primary)+CrossSockets <= 65535 {
			ports[i] = primary + 1 + uint16(i)
		} else {
			ports[i] = primary - 1 - uint16(i)
		}
	}
	return ports
}

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
// the two sides take, within budget (counted from the call): the leading
// side's choice, the earliest it heard, and on the other side the tuple
// the leader's first plain probe (its path's) arrives on. It closes every
// other socket and leaves no goroutine behind.
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
		first: make(chan struct{}), chosen: make(chan int, 1), probe: newProbe(pairingID)}
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
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, start.Add(budget))
	defer cancel()
	for i, s := range c.socks {
		if s != nil {
			c.wg.Add(1)
			go c.listen(ctx, i, netip.AddrPortFrom(ip, x.PeerPorts[i]))
		}
	}
	res := CrossResult{Sockets: opened}
	res.Probes, res.Late = sendTimed(CrossSockets, x.sendAt, func(k int) error {
		i := tupleOf(k)
		if c.socks[i] == nil {
			return net.ErrClosed
		}
		_, err := c.socks[i].WriteToUDPAddrPort(c.mark, netip.AddrPortFrom(ip, x.PeerPorts[i]))
		return err
	}, c.settled)
	winner := -1
	if x.Lead {
		select {
		case <-c.first:
			// The earliest tuple heard within the grace, by send slot.
			t := time.NewTimer(crossGrace)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			winner = c.earliest()
		case <-ctx.Done():
		}
	} else {
		select {
		case winner = <-c.chosen:
		case <-ctx.Done():
			if c.firstHeard.Load() && parent.Err() == nil {
				// A tuple crossed: the leader's choice comes after its
				// grace, and its path's first probe after that.
				t := time.NewTimer(crossFollow)
				select {
				case winner = <-c.chosen:
				case <-t.C:
				case <-parent.Done():
				}
				t.Stop()
			}
		}
	}
	for i, s := range c.socks {
		if s != nil && i != winner {
			s.Close()
		}
	}
	cancel()
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
	lead         bool
	socks        []*net.UDPConn // by tuple; nil: the port was taken
	probe, mark  []byte         // the plain probe and the crossing's
	wg           sync.WaitGroup
	mu           sync.Mutex
	heard        map[int]bool  // tuples whose peer crossing probe arrived
	first        chan struct{} // closed at the first crossing probe heard
	firstOnce    sync.Once
	firstHeard   atomic.Bool
	chosen       chan int // the follower's: the tuple the leader's plain probe came on
	chosenOnce   sync.Once
	chosenClosed atomic.Bool
}

// settled reports whether the timed sends can stop: the leader heard a
// tuple, the follower knows the leader's choice.
func (c *crossing) settled() bool {
	if c.lead {
		return c.firstHeard.Load()
	}
	return c.chosenClosed.Load()
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
	stop := context.AfterFunc(ctx, func() { s.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, probeLen+1)
	answered := false
	for {
		n, got, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue // an ICMP error surfacing on the socket
		}
		if netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != from {
			continue
		}
		switch {
		case isProbe(buf[:n], c.mark):
			c.mu.Lock()
			c.heard[i] = true
			c.mu.Unlock()
			c.firstOnce.Do(func() { c.firstHeard.Store(true); close(c.first) })
			if !c.lead && !answered {
				answered = true
				s.WriteToUDPAddrPort(c.mark, from)
			}
		case isProbe(buf[:n], c.probe) && !c.lead:
			c.chosenOnce.Do(func() {
				c.chosen <- i
				c.chosenClosed.Store(true)
			})
			return
		}
	}
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
// once. It stops early when done reports true (asked before each send),
// and returns the sends that succeeded and the latest one's delay.
func sendTimed(n int, at func(int) time.Time, send func(int) error, done func() bool) (sent int, late time.Duration) {
	restore := preciseThread()
	defer restore()
	for k := range n {
		if done() {
			break
		}
		due := at(k)
		if d := time.Until(due) - time.Millisecond - crossSpin; d > 0 {
			time.Sleep(d)
		}
		if d := time.Until(due) - crossSpin; d > 0 {
			sleepPrecise(d)
		}
		for time.Now().Before(due) {
		}
		if done() {
			break
		}
		late = max(late, time.Since(due))
		if send(k) == nil {
			sent++
		}
	}
	return sent, late
}
