package pipe

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// Birthday-paradox punching, the pipe's part: learning each side's NAT
// mapping behaviour without a change to the wire, and choosing the roles
// (pipe/path/birthday.go does the punching).
//
// Before the Find, a side asks the server's primary STUN port and its
// alternate (the server's port + 1, what `p2pcat serve` opens by default)
// from the session's socket, in one round trip (mapping). Two different
// mapped ports mean an endpoint-dependent ("symmetric") mapping; the side
// then offers the alternate's mapped address as a candidate, so the peer
// sees two public addresses of ours on one IP with different ports, and
// knows it too.
//
// Roles, from the match (birthdayRoles): when exactly one side's mapping
// is endpoint-dependent and neither side is public, the hard side opens
// many sockets and probes the peer from each (birthdayDial, in up to
// birthdayBatches batches), the easy side
// sprays probes to random ports of the hard side's IP (path.Options.Spray).
// When both are endpoint-dependent nothing here helps (the relay carries
// the session); when one side is public its probes' real source port is
// learned from them as always.

// mappingTimeout bounds the STUN round trip to the server's two ports: a
// server without an alternate costs this much once per attempt.
const mappingTimeout = 300 * time.Millisecond

// birthdayWait: the hard side's sockets send only after the easy side's
// spray (path.SprayDuration) plus this margin for the two sides' clocks
// (the server answers both Finds at the same moment).
const birthdayWait = 80 * time.Millisecond

// birthdayBatches, birthdayBatchSockets, birthdayBatchTime: the hard side
// tries this many batches of that many fresh sockets, each for this long
// after its first probes (path.BirthdayPunch: three probe rounds). The
// peer's NAT keeps the mappings its spray opened, so a second batch is
// another chance without another spray. Against the spray's 1024 ports
// of 64,512, the first batch misses in about 2 of 1,000 tries
// (e^(−384·1024/64512)); one of 256 missed in 2 of 100, and the 500 ms of
// a second batch then took the pair past a second. Both together (the
// path.MaxBirthdaySockets cap) miss in about 3 of 10,000. The first batch
// waits longer: the peer answers a probe only once its handshake reads
// the socket, after its RSA key is ready, which a loaded machine delays.
const birthdayBatches = 2

var (
	birthdayBatchSockets = [birthdayBatches]int{384, 128}
	birthdayBatchTime    = [birthdayBatches]time.Duration{800 * time.Millisecond, 500 * time.Millisecond}
)

// mapping is what the STUN round trip to the server's two ports found:
// our public address as the primary and as the alternate see it (invalid
// without an answer).
type mapping struct {
	primary, alternate netip.AddrPort
}

// ourSide is what a side knows of itself after the rendezvous: the
// candidates its Find offered (the very list the peer received, so that
// both sides decide from the same data) and its mapping.
type ourSide struct {
	offered []netip.AddrPort
	mapping
}

// endpointDependent reports whether the two answers show a mapping that
// depends on the destination.
func (m mapping) endpointDependent() bool {
	return m.primary.IsValid() && m.alternate.IsValid() && m.primary.Addr() == m.alternate.Addr() && m.primary.Port() != m.alternate.Port()
}

// learnMapping asks the server's two STUN ports from udp and, when our
// mapping is endpoint-dependent, adds the alternate's mapped address to
// cands (within wire.MaxCandidates: it replaces the last one).
func (cfg *Config) learnMapping(ctx context.Context, udp *net.UDPConn, cands []netip.AddrPort, limit int) ([]netip.AddrPort, mapping) {
	srv := cfg.Server
	if srv.Addr().IsLoopback() || srv.Port() == 65535 {
		return cands, mapping{}
	}
	mctx, cancel := context.WithTimeout(ctx, mappingTimeout)
	defer cancel()
	var m mapping
	m.primary, m.alternate, _ = rendezvous.MappingPair(mctx, udp, srv, netip.AddrPortFrom(srv.Addr(), srv.Port()+1))
	cfg.Logger.Debug("mapping", "primary", m.primary.String(), "alternate", m.alternate.String(), "endpoint_dependent", m.endpointDependent())
	if m.endpointDependent() && !slices.Contains(cands, m.alternate) {
		if len(cands) >= limit {
			cands = cands[:limit-1]
		}
		cands = append(cands, m.alternate)
	}
	return cands, m
}

// birthdayRole is a side's part in birthday punching.
type birthdayRole int

const (
	birthdayNone  birthdayRole = iota
	birthdayDial               // our mapping is endpoint-dependent: many sockets
	birthdaySpray              // the peer's is: probes to many of its ports
)

// birthdayRoles decides our part from what we offered, our mapping and
// what the match says of the peer.
func birthdayRoles(ours ourSide, m rendezvous.Match) birthdayRole {
	weHard := ours.endpointDependent()
	peerHard, peerPublic := false, false
	for _, c := range m.PeerCandidates {
		switch {
		case c == m.PeerObserved:
			peerPublic = true
		case c.Addr() == m.PeerObserved.Addr():
			peerHard = true
		}
	}
	wePublic := slices.Contains(ours.offered, m.Observed)
	switch {
	case peerPublic || wePublic || weHard == peerHard:
		return birthdayNone
	case weHard:
		return birthdayDial
	}
	return birthdaySpray
}

// bothIPv6 reports whether both sides offered a global IPv6 address
// (not a unique local one, fc00::/7, which many home routers hand out
// with no route beyond the LAN). Both sides see the same two lists, so
// they decide alike.
func bothIPv6(ours ourSide, m rendezvous.Match) bool {
	global6 := func(as []netip.AddrPort) bool {
		return slices.ContainsFunc(as, func(a netip.AddrPort) bool {
			return a.Addr().Is6() && !a.Addr().Is4In6() && a.Addr().IsGlobalUnicast() && !a.Addr().IsPrivate()
		})
	}
	return global6(m.PeerCandidates) && global6(ours.offered)
}

// birthday prepares attempt a for birthday punching as ours and the
// match say, and returns the socket its path runs over: udp, or on the
// hard side the socket that met the peer (udp is then closed).
func (a *attempt) birthday(ctx context.Context, udp *net.UDPConn) *net.UDPConn {
	if a.opts.RelayOnly || a.cfg.PeerAddr.IsValid() {
		return udp
	}
	log := a.cfg.Logger
	role := birthdayRoles(a.ours, a.match)
	if role != birthdayNone && a.n == 0 && bothIPv6(a.ours, a.match) {
		// No NAT on IPv6 (stateful firewalls open to our own probes): the
		// first attempt punches over it, without a thousand probes; a later
		// attempt, if it comes to that, tries the birthday way.
		log.Debug("birthday punching: both sides offer global IPv6, punching over it first")
		role = birthdayNone
	}
	if role != birthdayNone {
		a.birthdayPunching = true
		// The spray, then the sockets, is the order that keeps a "clash"
		// router from being claimed by the peer's first packets; holding
		// one side back (staggered) would undo it.
		a.opts.ProbeDelay = 0
	}
	switch role {
	case birthdaySpray:
		a.opts.Spray = a.match.PeerObserved
		log.Info("birthday punching: the peer's NAT maps each destination to a new port; probing many of its ports", "peer", a.match.PeerObserved.String())
	case birthdayDial:
		if sock := a.dialBirthday(ctx); sock != nil {
			a.opts.RebindRelay = true
			udp.Close()
			return sock
		}
	}
	return udp
}

// dialBirthday is the hard side's part: batches of sockets that probe the
// peer, the first after the peer's spray. It returns the socket that met
// the peer, or nil.
func (a *attempt) dialBirthday(ctx context.Context) *net.UDPConn {
	log := a.cfg.Logger
	wait := path.SprayDuration + birthdayWait
	var sockets, probes int
	var took time.Duration
	var met *net.UDPConn
	for i, batch := range birthdayBatchTime {
		res, err := path.BirthdayPunch(ctx, a.match.PeerObserved, a.match.PairingID, birthdayBatchSockets[i], wait, wait+batch, log)
		if err != nil {
			log.Warn("birthday punching: could not open its sockets", "err", err)
			break
		}
		sockets, probes, took, met = sockets+res.Sockets, probes+res.Probes, took+res.Took, res.Sock
		if met != nil || ctx.Err() != nil {
			break
		}
		wait = 0
	}
	log.Info("birthday punching: our NAT maps each destination to a new port; probed the peer from many sockets",
		"sockets", sockets, "probes", probes, "met", met != nil, "took", took.Round(time.Millisecond).String())
	return met
}
