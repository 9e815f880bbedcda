package path

import (
	"context"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// ProbeType is the first byte of a punch probe. It is outside the ranges
// that STUN, the rendezvous protocol (0x50) and the secure layer
// (0xD0-0xD2, 0xE1-0xE5) use.
const ProbeType = 0xF0

// probeLen is the size of a probe: type, pairing id and zero padding. The
// padding buys room under the amplification rule: toward an address that
// has not proven itself we send at most ampFactor times what came from it,
// so one probe from a peer behind a symmetric NAT lets a whole Hello go to
// the port it came from.
const probeLen = 128

// quietNudges: after the peer falls quiet on a direct path, for this many
// seconds a probe a second re-opens our NAT toward it.
const quietNudges = 5

// startPunch starts the punch routine, and birthday punching's spray
// beside it when opt asks for it (birthday.go); Close waits for both.
func (c *Conn) startPunch(ctx context.Context, opt Options) {
	sprayed := make(chan struct{})
	if !opt.Spray.IsValid() || c.relayOnly {
		close(sprayed)
	} else {
		go func() {
			defer close(sprayed)
			if opt.ProbeDelay > 0 && !c.punchWait(ctx, opt.ProbeDelay) {
				return
			}
			n := opt.SprayProbes
			if n <= 0 {
				n = DefaultSprayProbes
			}
			spray := udpio.Unmap(opt.Spray)
			sent := c.spray(ctx, spray.Addr(), spray.Port(), n)
			c.log.Info("birthday punching: sprayed the peer's ports", "ip", spray.Addr().String(), "probes", sent)
		}()
	}
	lowTTL := opt.LowTTLFirst && !c.relayOnly
	if lowTTL && opt.ProbeDelay == 0 {
		c.lowTTLRound()
	}
	go c.routinePunch(ctx, opt.ProbeDelay, lowTTL && opt.ProbeDelay > 0, sprayed)
}

// lowTTLRound sends Options.LowTTLFirst's probes: one to each candidate,
// within the anti-amplification budget like every probe.
func (c *Conn) lowTTLRound() {
	c.mu.Lock()
	targets := slices.Clone(c.candidates)
	c.mu.Unlock()
	probe := c.probe()
	sent := 0
	for _, t := range targets {
		if c.spend(t, len(probe)) && c.writeLowTTL(probe, t) {
			sent++
			c.count(func(s *Stats) { s.ProbesSent++ })
		}
	}
	c.log.Debug("punch: low-TTL probes", "ttl", lowTTL, "sent", sent)
}

// routinePunch sends probes to every candidate, quickly at first and then
// every 200 ms, until the path is confirmed; while the path is the relay,
// every second. It returns when the Conn closes, and after sprayed.
//
// A side that holds back (delay) and punches low-TTL first sends its
// low-TTL round heldLowTTLAfter into the delay, not at once: see
// heldLowTTLAfter.
func (c *Conn) routinePunch(ctx context.Context, delay time.Duration, heldLowTTL bool, sprayed <-chan struct{}) {
	defer func() {
		<-sprayed
		close(c.punchDone)
	}()
	if heldLowTTL {
		if !c.punchWait(ctx, heldLowTTLAfter) {
			return
		}
		c.lowTTLRound()
		delay -= heldLowTTLAfter
	}
	if delay > 0 && !c.punchWait(ctx, delay) {
		return
	}
	r := punchRounds{probe: c.probe(), interval: 20 * time.Millisecond}
	for {
		next := c.punchRound(&r)
		if !c.punchWait(ctx, r.interval) {
			return
		}
		r.interval = next
	}
}

// punchRounds is what the punch routine carries from one round to the
// next.
type punchRounds struct {
	probe              []byte
	interval           time.Duration // until the next round
	lastRelayKeepalive time.Time
	lastReceived       uint64
	lastSent           [2]uint64 // datagrams sent, one and two seconds ago
	quiet              int       // seconds without a datagram from the peer
	talking            bool      // we sent in the last two seconds
}

// punchWait waits d, or less if the path is confirmed meanwhile (the next
// round then goes at the confirmed pace at once). It reports false when
// the Conn closes.
func (c *Conn) punchWait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-c.unconfirmed():
	}
	return true
}

// punchRound sends one round of probes and keepalives, and returns the
// interval after the next round's.
func (c *Conn) punchRound(r *punchRounds) (next time.Duration) {
	c.mu.Lock()
	confirmed := c.peer.IsValid()
	direct := confirmed && c.peer != c.server
	targets := slices.Clone(c.candidates)
	c.mu.Unlock()
	next = min(2*r.interval, 200*time.Millisecond)
	r.talking = false
	if confirmed {
		next = time.Second
		r.tally(c)
	}
	switch {
	case direct:
		c.keepDirect(r)
	case !c.relayOnly:
		// Punching, or relaying: a direct path may still open.
		for _, t := range targets {
			c.write(r.probe, t)
			c.count(func(s *Stats) { s.ProbesSent++ })
		}
	}
	// We keep sending and hear nothing: perhaps our address changed
	// (a new network, a new public IP), which the relay only learns
	// from a RelayBind.
	if confirmed && c.relayUsable() && r.talking && r.quiet >= 2 && r.quiet%2 == 0 {
		c.sendRelayBind(nil)
	}
	return next
}

// tally counts, once a second on a confirmed path, the seconds the peer
// has been quiet and whether we sent in the last two.
func (r *punchRounds) tally(c *Conn) {
	if n := c.received.Load(); n != r.lastReceived {
		r.lastReceived, r.quiet = n, 0
	} else {
		r.quiet++
	}
	n := c.sent.Load()
	r.talking = n != r.lastSent[1]
	r.lastSent = [2]uint64{n, r.lastSent[0]}
}

// keepDirect is a round on a direct path. The session's own packets keep
// the NATs open; the round looks again every second in case the path falls
// back to the relay, and keeps the NAT open toward the relay meanwhile.
//
// When the peer went quiet, its packets may be stopped by our NAT, which
// forgot the mapping (a router reboot, a conntrack flush) while we, the
// receiving side, had nothing to send. A probe to the peer re-opens it;
// one through the relay re-opens the way for the relay too.
func (c *Conn) keepDirect(r *punchRounds) {
	nudge := r.quiet >= 1 && r.quiet <= quietNudges
	if nudge {
		c.write(r.probe, c.Peer())
	}
	if c.relayUsable() && (nudge || time.Since(r.lastRelayKeepalive) >= relayKeepaliveInterval) {
		r.lastRelayKeepalive = time.Now()
		c.write(wire.AppendRelayHeader(nil, c.pairingID), c.server)
	}
}

// unconfirmed returns the confirmation channel before confirmation, and
// nil (never ready) after it.
func (c *Conn) unconfirmed() <-chan struct{} {
	select {
	case <-c.confirmedC:
		return nil
	default:
		return c.confirmedC
	}
}

func (c *Conn) probe() []byte {
	p := make([]byte, probeLen)
	p[0] = ProbeType
	copy(p[1:], c.pairingID[:])
	return p
}
