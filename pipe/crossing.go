package pipe

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Timed crossing, the pipe's part: when an attempt tries one, and the
// moment (pipe/path/crossing.go sends the probes).
//
// A later attempt (the first punches the plain way, which is all most
// pairs need) tries a timed crossing when both sides are behind a NAT
// that kept their ports (so each side can tell the other's next ports),
// they are not on one LAN (one public IP) and neither needs birthday
// punching. Both sides send from Match.Received + crossDelay on, by their
// own clocks: the server sends the two sides' answers in one batch, so
// the two moments differ by the difference of the server's one-way times
// to the two sides, which is less than the one-way time between them
// (the triangle inequality, where routing keeps it): the probes are in
// flight toward each other at the same time, which is what a router that
// lets an unsolicited packet claim a port mapping (a port clash) needs.
// Where the two routers are microseconds apart (the NAT lab without
// delay) the vernier of path.Crossing covers the rest of the error; the
// pairing's initiator end (wire.RoleInitiator) leads it.

// crossDelay: both sides send this long after the server's answer came:
// time to open the sockets, with slack for a busy machine.
const crossDelay = 15 * time.Millisecond

// crossWait: the sockets wait this long after the last timed probe for
// the peer's.
const crossWait = 30 * time.Millisecond

// crosses reports whether attempt n tries a timed crossing, from what we
// offered and what the match says of both sides; both sides decide alike.
func (pl *plan) crosses(n int, m rendezvous.Match) bool {
	cfg := pl.cfg
	if n == 0 || cfg.Relay == RelayOnly || cfg.PeerAddr.IsValid() {
		return false
	}
	switch {
	case !rewritten(m.Observed, pl.ours.offered) || !rewritten(m.PeerObserved, m.PeerCandidates):
		return false // a side without a NAT filters nothing: plain punching does it
	case portMoved(m.Observed, portsOf(pl.ours.offered)) || portMoved(m.PeerObserved, portsOf(m.PeerCandidates)):
		return false // ports we cannot tell
	case !m.Observed.Addr().Is4() || !m.PeerObserved.Addr().Is4() || m.Observed.Addr() == m.PeerObserved.Addr():
		return false // one LAN (its own candidates do it), or IPv6 (no NAT)
	}
	return birthdayRoles(pl.ours, m) == birthdayNone
}

// cross runs our side of attempt a's timed crossing and returns the socket
// the attempt's path runs over: the crossed tuple's (udp, the attempt's
// socket, is then closed, and the tuple's peer end is the first
// candidate), or udp.
func (a *attempt) cross(ctx context.Context, udp *net.UDPConn) *net.UDPConn {
	log := a.cfg.Logger
	m := a.match
	x := path.Crossing{
		At:    m.Received.Add(crossDelay),
		Ports: path.CrossPorts(m.Observed.Port(), m.PairingID), PeerPorts: path.CrossPorts(m.PeerObserved.Port(), m.PairingID),
		Lead: m.Role == wire.RoleInitiator,
	}
	start := time.Now()
	budget := time.Until(x.At) + path.CrossDuration + crossWait

	res, err := path.CrossPunch(ctx, m.PeerObserved.Addr(), m.PairingID, x, budget, log)
	if err != nil {
		log.Warn("timed crossing: could not open its sockets", "err", err)
		return udp
	}
	log.Info("timed crossing: probed the peer from many sockets at the agreed moment",
		"sockets", res.Sockets, "probes", res.Probes, "crossed", res.Heard, "moment", x.At.UTC().Format("15:04:05.000000"), "late", res.Late.Round(time.Microsecond).String(), "took", res.Took.Round(time.Millisecond).String())
	if a.opts.RelayAfter > 0 {
		// The relay's moment counts from before the crossing, not from
		// the path's start: a pair with no direct path waits no longer.
		a.opts.RelayAfter = max(time.Millisecond, a.opts.RelayAfter-time.Since(start))
	}
	if res.Sock == nil {
		if !a.last {
			// Nothing crossed: this attempt is over (the socket pair it
			// would punch from clashes the same way), the next one
			// crosses again from a fresh moment, and the last one has
			// the relay.
			a.crossMissed = true
			a.opts.RelayAfter = 0
		}
		return udp
	}
	// The tuple is open both ways: nothing to hold back.
	a.opts.ProbeDelay, a.opts.LowTTLFirst, a.opts.RebindRelay = 0, false, true
	a.candidates = append([]netip.AddrPort{res.Peer}, a.candidates...)
	udp.Close()
	return res.Sock
}
