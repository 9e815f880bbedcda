package pipe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// The connect step: find the peer, punch a path, and run the session's one
// handshake, over as many punch attempts as it takes.
//
// Attempts: the first punches at once from both sides and, when the
// server offers its relay, --relay is auto and a NAT changed either
// side's port (plan.relayFirst), races the relay: from relayFirstAfter on
// the relay carries copies of the handshake too, so when no direct path
// has carried it by then the session starts over the relay, and punching
// goes on over the same socket; a direct path found later takes the
// session over mid-transfer (pipe/path: Conn.Confirm).
// When no path appears at all (no relay offered, or the relay did not
// answer either), both sides (they fail at about the same moment) meet
// again from fresh ports and punch with one side holding back its first
// packets, then the other: on a NAT that lets the peer's early probe claim
// the port mapping (conntrack's port clash), the side behind it must send
// first, and neither side can tell which one that is. Where both sides'
// NATs kept their ports, those attempts first try a timed crossing
// (crossing.go): many fresh socket pairs whose first probes leave both
// sides at one moment, for when both NATs clash. The last attempt
// offers the relay after relayAfter (at once with RelayOnly, which is a
// single attempt); a direct path found later still takes over.
//
// The handshake is one secure.Handshaker for the whole run, whose roles come
// from the names, not from the server: every attempt continues it over the
// attempt's new path (the initiator sends the same Hello again, a responder
// answers only that one). So a responder gives at most one
// password-dependent answer per run, however many attempts there are, and
// when that answer is never confirmed the run ends with exit 4 (see
// secure.ErrUnconfirmed) instead of punching again in silence.
//
// An attempt ends at attemptTimeout unless the handshake shows the path
// works: an initiator that accepted the Reply (the path carried both ways)
// or a path that confirmed stays on it until --connect-timeout; a responder
// that answered a Hello waits answerGrace longer for the Finish, so that a
// Finish sent at the initiator's last moment still finds it.
//
// Reading order: Config.connect is the loop over attempts. A plan holds
// what the run tries and what the attempts so far found; an attempt is one
// try: its socket and rendezvous (plan.start, meet.go), its punch
// (attempt.punch: probes, and the relay in the first or last attempt) and
// its part of the handshake (attempt.handshake); plan.failed says whether
// another attempt follows. What each attempt tries is decided in one function,
// plan.attempt: a new way to connect (relay first, birthday-paradox
// punching from many ports, the timed crossing) is a change there, plus
// the path.Options that carry it to pipe/path.

// Punch attempts.
const (
	attemptTimeout = 2 * time.Second // for a path and handshake, except the last attempt
	// unheardTimeout: an attempt without the relay (and not a birthday
	// one) that has heard nothing at all from the peer by then, not even
	// a probe, is over: both sides probe from the moment they are paired,
	// so on a path that works their probes cross within a round trip; a
	// port clash (the NAT lab's "clash" router) silences both sides, who
	// see alike and meet again at once instead of at attemptTimeout.
	unheardTimeout = 800 * time.Millisecond
	// refusedGrace: an attempt that has heard nothing and got ICMP port
	// unreachable about a datagram to a peer candidate (path.Conn.Refused:
	// a clash router took our probe for itself, so this socket pair is
	// spoilt) is over this long after the first such ICMP, instead of at
	// unheardTimeout; the grace lets a LAN candidate's probes in (a router
	// answers probes to its own public address with the same ICMP).
	refusedGrace = 100 * time.Millisecond
	answerGrace  = time.Second // more for a responder that answered, before it moves on
	// relayAfter: in the last attempt, the relay carries copies of the
	// handshake from this long on, so a direct path still wins when both
	// work (its probes cross in a round trip); one found later still
	// takes the session over, as after relayFirstAfter.
	relayAfter = 300 * time.Millisecond
	// relayFirstAfter: in a first attempt that races the relay
	// (plan.relayFirst), the relay carries copies of the handshake from
	// this long after the punch starts. A direct path that works has
	// usually carried the handshake before (its probes cross in one round
	// trip, the handshake takes two more once the RSA keys are ready), and
	// when it has not, its copies still arrive before the relay's: the
	// delay bounds what a pair with no direct path waits, and spares the
	// relay the handshakes of the pairs that have one.
	relayFirstAfter = 300 * time.Millisecond
	// staggerDelay: how long the side that holds back its first packets
	// (see staggered) waits.
	staggerDelay = 250 * time.Millisecond
	// helloRetransmit: the initiator's first retransmission of its Hello
	// (doubling to 8 times that): punching loses the first packets often.
	helloRetransmit = 100 * time.Millisecond
)

// silentPeer: a peer we heard while connecting and that then stayed silent
// this long, until the connection attempts ran out, has stopped (it was
// killed, or its network went away), as opposed to a peer behind a NAT
// that lets none of its packets through.
const silentPeer = 2 * time.Second

// connect runs the connect step and returns the established secure Conn,
// the path it runs over, and how long its handshake took in the attempt
// that completed it.
func (cfg *Config) connect(ctx context.Context, keys <-chan keyResult) (_ *secure.Conn, _ *path.Conn, _ time.Duration, err error) {
	pl := newPlan(cfg)
	// The server's answers arrive stamped by the kernel (Match.Received,
	// which a timed crossing starts from) from the first Find on.
	defer udpio.HoldStamps()()
	var hs *secure.Handshaker // the run's one handshake, from the first attempt on
	defer func() { err = closeHandshake(ctx, hs, err) }()
	for n := 0; ; n++ {
		a, err := pl.start(ctx, n)
		if err != nil {
			if n > 0 && errors.Is(err, rendezvous.ErrPeerNotFound) {
				// The peer did not come back for another attempt: it gave
				// up on its side, or it is gone.
				return nil, nil, 0, pl.giveUp()
			}
			return nil, nil, 0, err
		}
		if hs == nil {
			// An attempt over for silence before the key came ends here
			// (ErrAttemptTimeout); the next one waits for the key again.
			if hs, err = a.awaitKey(ctx, keys); err != nil && !errors.Is(err, secure.ErrAttemptTimeout) {
				a.end()
				return nil, nil, 0, err
			}
		}
		var sconn *secure.Conn
		var took time.Duration
		if hs != nil {
			sconn, took, err = a.handshake(ctx, hs)
		}
		if err == nil {
			a.stopWatch()
			return sconn, a.link, took, nil
		}
		if err := pl.failed(ctx, a, err); err != nil {
			return nil, nil, 0, err
		}
		cfg.Logger.Info("no direct path yet; punching again from a new port", "attempt", n+2)
	}
}

// plan is what the connect step tries in one Run (how many attempts, until
// when, each one's settings: plan.attempt) and what the attempts so far
// found.
type plan struct {
	cfg *Config
	// attempts: three (at once, initiator first, responder first), the
	// first racing the relay when the server offers it (relayFirst) and
	// the last with the relay joining in late; without the relay one
	// more, initiator first again.
	attempts int
	// connectBy ends the attempts, ConnectTimeout after the peer was first
	// found.
	connectBy time.Time
	lastHeard time.Time // the peer's last datagram in any attempt (path.Stats.LastHeard)
	ours      ourSide   // what the current attempt's Find offered, and our mapping
	lastErr   error     // why the last attempt found no path
	// refused: the last attempt got ICMP port unreachable from a peer
	// candidate, on a socket that sees ICMP errors (seesICMP).
	refused, seesICMP bool
}

func newPlan(cfg *Config) *plan {
	pl := &plan{cfg: cfg, attempts: 3}
	if cfg.Relay == RelayNever {
		pl.attempts = 4
	}
	return pl
}

// start begins attempt n: a fresh socket, the rendezvous from it (meet),
// the attempt's settings, and its punch.
func (pl *plan) start(ctx context.Context, n int) (*attempt, error) {
	cfg := pl.cfg
	udp, err := path.Listen(cfg.Port, cfg.Logger)
	if err != nil {
		return nil, err
	}
	match, ours, err := cfg.meet(ctx, udp, n)
	if err != nil {
		udp.Close()
		return nil, err
	}
	if pl.connectBy.IsZero() {
		pl.connectBy = time.Now().Add(cfg.ConnectTimeout)
		cfg.Status("found %s, connecting…", cfg.Peer)
	}
	if cfg.Relay == RelayOnly && !match.Relay {
		udp.Close()
		return nil, fmt.Errorf("%w: %w (--relay only)", ErrNoPath, ErrNoRelay)
	}
	pl.ours = ours
	a := pl.attempt(n, match)
	udp = a.birthday(ctx, udp) // birthday.go: the spray's options, or the socket that met the peer
	if a.crossing {
		udp = a.cross(ctx, udp) // crossing.go: the socket whose first probes crossed the peer's
	}
	a.punch(udp)
	a.watchSilence()
	return a, nil
}

// attempt decides what attempt n tries once the peer is found: whether it
// is the last, which side holds back its first packets, whether and when
// the relay joins in. It is the place for a new way to connect.
func (pl *plan) attempt(n int, m rendezvous.Match) *attempt {
	cfg := pl.cfg
	last := cfg.PeerAddr.IsValid() || cfg.Relay == RelayOnly || n+1 >= pl.attempts || time.Until(pl.connectBy) < 2*attemptTimeout
	var probeDelay time.Duration
	if pl.holdsBack(n) {
		probeDelay = staggerDelay
	}
	var relayDelay time.Duration // 0: no relayed copies before a path is confirmed
	switch {
	case last || n > 0 && m.Relay && cfg.Relay == RelayAuto:
		relayDelay = relayAfter
	case pl.relayFirst(n, m):
		relayDelay = relayFirstAfter
	}
	return &attempt{
		cfg: cfg, n: n, last: last, connectBy: pl.connectBy, match: m, ours: pl.ours,
		crossing:   pl.crosses(n, m),
		candidates: append([]netip.AddrPort{m.PeerObserved}, m.PeerCandidates...),
		opts: path.Options{
			NoOffload: cfg.NoOffload, ProbeDelay: probeDelay,
			Relay: m.Relay && cfg.Relay != RelayNever, RelayAfter: relayDelay, RelayOnly: cfg.Relay == RelayOnly, Role: m.Role,
			RelayToken: m.RelayToken,
			// Open our NAT with low-TTL probes first, so that a router
			// of either side that lets an early probe claim a port (a
			// port clash) is not claimed: in the first attempt when a NAT
			// is in the way (without one, holding the full probes back
			// 60 ms would buy nothing), and in every later attempt.
			LowTTLFirst: cfg.Relay != RelayOnly && (n > 0 || pl.behindNAT(m)),
		},
	}
}

// relayFirst reports whether attempt n races the relay against punching:
// the first attempt, when the server offers the relay, --relay is auto,
// and the NAT in front of either side gave its socket another port than
// its own (portMoved): an endpoint-dependent mapping, likely (a symmetric
// NAT), where punching rarely works. Both sides decide alike: each sees
// the other's observed address and own addresses as the server passed
// them on.
//
// Where both sides kept their ports (no NAT, or one that keeps them, as
// Linux and most home routers do) the first attempt punches alone: on a
// router that lets the peer's early probe clash with our mapping
// (conntrack's port clash) that attempt's socket is spoilt for good, only
// a later attempt from a fresh port finds the direct path, and a session
// started on the relay would stay there.
func (pl *plan) relayFirst(n int, m rendezvous.Match) bool {
	if n != 0 || !m.Relay || pl.cfg.Relay != RelayAuto || pl.cfg.PeerAddr.IsValid() {
		return false
	}
	return portMoved(m.Observed, portsOf(pl.ours.offered)) || portMoved(m.PeerObserved, portsOf(m.PeerCandidates))
}

// behindNAT reports whether the server saw either side at an address
// that is not among the side's own (a NAT rewrote it); false when it
// cannot tell, or when the side offered its public address itself
// (--stun).
func (pl *plan) behindNAT(m rendezvous.Match) bool {
	return rewritten(m.Observed, pl.ours.offered) || rewritten(m.PeerObserved, m.PeerCandidates)
}

// rewritten reports whether the server saw a side at an address that is
// not among the side's own (a NAT rewrote it); false when it cannot tell.
func rewritten(observed netip.AddrPort, own []netip.AddrPort) bool {
	return observed.IsValid() && len(own) > 0 && !slices.Contains(own, observed)
}

// portMoved reports whether the server saw a side at a port that none of
// the side's own addresses has; false when it cannot tell.
func portMoved(observed netip.AddrPort, own []uint16) bool {
	if !observed.IsValid() || len(own) == 0 || own[0] == 0 {
		return false
	}
	return !slices.Contains(own, observed.Port())
}

func portsOf(addrs []netip.AddrPort) []uint16 {
	var ports []uint16
	for _, a := range addrs {
		ports = append(ports, a.Port())
	}
	return ports
}

// holdsBack reports whether this side holds back its first packets in
// attempt n. In the second, when this side can see ICMP errors, the first
// attempt's ICMP decides: the side that got port unreachable from the
// peer's address holds back, as its probes reached the peer's router
// before the peer had sent anything there (where such a router takes the
// probe for itself, the peer's own packets then clash: conntrack's port
// clash), and the other side sends first. Otherwise, and in later
// attempts, staggered alternates.
func (pl *plan) holdsBack(n int) bool {
	if n == 1 && pl.seesICMP {
		return pl.refused
	}
	return staggered(n, pl.cfg.Name < pl.cfg.Peer)
}

// staggered reports whether this side holds back its first packets in
// the given attempt: nobody in the first, then the side whose name sorts
// first, then the other, alternating.
func staggered(attempt int, nameFirst bool) bool {
	return attempt > 0 && (attempt%2 == 1) == nameFirst
}

// failed ends attempt a, whose handshake failed with err, and returns the
// error that ends the connect step, or nil when another attempt follows.
func (pl *plan) failed(ctx context.Context, a *attempt, err error) error {
	cfg := pl.cfg
	if !a.last && errors.Is(err, secure.ErrAttemptTimeout) && ctx.Err() == nil {
		a.link.SendMovedOn() // the peer's attempt ends too (path/movedon.go)
	}
	st, confirmed := a.end()
	if !st.LastHeard.IsZero() {
		pl.lastHeard = st.LastHeard
	}
	pl.refused, pl.seesICMP = st.PortUnreachable > 0 && a.refusalCounts(), a.link.SeesICMP()
	switch {
	case errors.Is(err, secure.ErrAuth):
		return err
	case ctx.Err() != nil:
		return ErrInterrupted
	case errors.Is(err, secure.ErrPeerCancelled):
		return cfg.peerCancelled()
	case errors.Is(err, secure.ErrPeerVersion):
		return err
	case errors.Is(err, path.ErrRelayEnded):
		return fmt.Errorf("connecting to %s: %w", cfg.Peer, err)
	case confirmed && a.last:
		if lost := cfg.lostWhileConnecting(pl.lastHeard); lost != nil {
			return lost
		}
		return fmt.Errorf("handshake with %s did not complete: %w", cfg.Peer, err)
	}
	cfg.Logger.Debug("no path", "attempt", a.n+1, "probes_sent", st.ProbesSent, "probes_received", st.ProbesReceived, "amp_limited", st.AmpLimited, "err", err)
	pl.lastErr = a.noPath(st)
	if a.last {
		return pl.giveUp()
	}
	return nil
}

// giveUp is the error when the attempts ran out: the peer fell silent, or
// there is no path.
func (pl *plan) giveUp() error {
	if lost := pl.cfg.lostWhileConnecting(pl.lastHeard); lost != nil {
		return lost
	}
	return pl.lastErr
}

// attempt is one try at a path: its socket, the punch over it (with the
// relay in the last attempt) and the handshake continued over it.
type attempt struct {
	cfg        *Config
	n          int  // from 0
	last       bool // no attempt follows: the handshake may take until connectBy, the relay joins in
	connectBy  time.Time
	match      rendezvous.Match
	ours       ourSide          // what our Find offered, and our mapping
	candidates []netip.AddrPort // the peer's addresses, observed first
	opts       path.Options
	link       *path.Conn // the attempt's path, from punch on
	// relayAt is when the relay starts carrying copies of the handshake
	// (zero: it does not before a path is confirmed, or from the start).
	relayAt time.Time
	// birthdayPunching: the attempt punches the birthday way (birthday.go), whose
	// first packets from the peer may take most of a second to come.
	birthdayPunching bool
	crossing         bool // the attempt tries a timed crossing (crossing.go)
	crossMissed      bool // it did, nothing crossed, and another attempt follows: this one is over
	// unheard is closed when the attempt is over for silence (watchSilence,
	// silence.go); nil when it does not end that way. stopWatch ends the
	// watch (any number of times).
	unheard   <-chan struct{}
	stopWatch func()
}

// punch starts the attempt's path over udp. Probing starts now, before the
// RSA key is ready: the sooner both NATs see outbound packets, the less
// the first ones clash.
func (a *attempt) punch(udp *net.UDPConn) {
	a.link = path.New(udp, a.cfg.Server, a.match.PairingID, a.candidates, a.cfg.Logger, a.opts)
	if a.opts.Relay && a.opts.RelayAfter > 0 && !a.opts.RelayOnly {
		a.relayAt = time.Now().Add(a.opts.RelayAfter) // no earlier than the path's own
	}
}

// handshake continues the run's handshake over the attempt's path until it
// completes or the attempt's time is up, and returns how long it took.
func (a *attempt) handshake(ctx context.Context, hs *secure.Handshaker) (*secure.Conn, time.Duration, error) {
	deadline := a.connectBy
	if !a.last {
		deadline = earlier(a.connectBy, time.Now().Add(attemptTimeout))
	}
	start := time.Now()
	extended := false
	// The relay's moment, when it comes before the deadline: a run ends
	// there, so that the next one sends the initiator's current message
	// again at once, through the relay too, instead of at its next
	// retransmission (which backs off to seconds).
	wake := a.relayAt
	if !wake.After(start) || !wake.Before(deadline) {
		wake = time.Time{}
	}
	over := a.unheard // nil when the attempt does not end for silence
	for {
		until := deadline
		if !wake.IsZero() {
			until = wake
		}
		if over != nil && isClosed(over) {
			if isClosed(a.link.MovedOn()) {
				return nil, 0, fmt.Errorf("%w: the peer moved on to another attempt", secure.ErrAttemptTimeout)
			}
			if a.link.Stats().LastHeard.IsZero() {
				return nil, 0, fmt.Errorf("%w: nothing heard from the peer", secure.ErrAttemptTimeout)
			}
			a.stopWatch() // heard at the last moment: the attempt goes on
			over = nil
		}
		sconn, err := hs.Run(ctx, a.link, until)
		if err == nil {
			return sconn, time.Since(start), nil
		}
		if over != nil && isClosed(over) && errors.Is(err, secure.ErrAttemptTimeout) {
			continue // cut by the watch: the loop's head says why
		}
		if !wake.IsZero() && errors.Is(err, secure.ErrAttemptTimeout) && !time.Now().Before(wake) {
			wake = time.Time{}
			continue
		}
		if !errors.Is(err, secure.ErrAttemptTimeout) || !deadline.Before(a.connectBy) {
			return nil, 0, err
		}
		if hs.HasKeys() || isClosed(a.link.Confirmed()) {
			// The path carries the handshake: stay on it.
			deadline = a.connectBy
			continue
		}
		if hs.Answered() && !extended {
			deadline, extended = earlier(a.connectBy, deadline.Add(answerGrace)), true
			continue
		}
		return nil, 0, err
	}
}

// end closes the attempt's path and returns what it saw: its counters,
// and whether a packet of the peer's authenticated over it.
func (a *attempt) end() (st path.Stats, confirmed bool) {
	a.stopWatch()
	confirmed = isClosed(a.link.Confirmed())
	st = a.link.Stats()
	a.link.Close()
	return st, confirmed
}

// noPath is the error of an attempt that found no path.
func (a *attempt) noPath(st path.Stats) error {
	arrived := "never arrived"
	if st.ProbesReceived > 0 {
		arrived = "did arrive"
	}
	return fmt.Errorf("%w to %s within %s (tried %d addresses in %d attempts; the peer's probes %s%s)", ErrNoPath, a.cfg.Peer, a.cfg.ConnectTimeout,
		len(a.candidates), a.n+1, arrived, a.cfg.relayNote(a.match))
}

// awaitKey waits for the session's RSA key, or for ctx, and starts the
// run's one handshake with it (newHandshaker); an attempt that is over for
// silence first (silence.go) ends with ErrAttemptTimeout and no handshake,
// and the next attempt waits for the key again.
func (a *attempt) awaitKey(ctx context.Context, keys <-chan keyResult) (*secure.Handshaker, error) {
	select {
	case kr := <-keys:
		if kr.err != nil {
			return nil, fmt.Errorf("generating the RSA key: %w", kr.err)
		}
		return a.cfg.newHandshaker(kr)
	case <-ctx.Done():
		return nil, ErrInterrupted
	case <-a.unheard: // never when nil
		return nil, fmt.Errorf("%w: nothing heard from the peer while the RSA key was generated", secure.ErrAttemptTimeout)
	}
}

// newHandshaker starts the run's one handshake with the session's RSA key.
func (cfg *Config) newHandshaker(kr keyResult) (*secure.Handshaker, error) {
	p := secure.Params{
		Role:    secure.RoleFor(cfg.Name, cfg.Peer),
		Session: cfg.Session, LocalName: cfg.Name, PeerName: cfg.Peer,
		Password: cfg.Password, RSABits: cfg.RSABits, RSAKey: kr.key,
		Retransmit: helloRetransmit,
		OnlyFrom:   cfg.PeerAddr, // direct mode: nobody else may take the responder's answer
	}
	if cfg.SessionKey != nil {
		p.SessionKey = cfg.SessionKey.CPaceInput()
	}
	return secure.NewHandshaker(p)
}

// closeHandshake ends the run's handshake (hs may be nil) and returns the
// connect step's error: a responder that answered a Hello and never got a
// valid Finish says so, whatever else ended the attempts (but an interrupt
// is reported as one), and so does an initiator that got the peer's own
// Hello (secure.BothInitiators).
func closeHandshake(ctx context.Context, hs *secure.Handshaker, err error) error {
	if hs == nil {
		return err
	}
	if cerr := hs.Close(); cerr != nil && err != nil && ctx.Err() == nil && !errors.Is(err, secure.ErrAuth) {
		return cerr
	}
	if err != nil && ctx.Err() == nil && hs.PeerAlsoInitiator() && !errors.Is(err, secure.ErrAuth) && !errors.Is(err, ErrInterrupted) && !errors.Is(err, secure.ErrBothInitiators) {
		return secure.BothInitiators(err)
	}
	return err
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// lostWhileConnecting explains a failed connection to a peer that we heard
// at first and that then fell silent; nil when we never heard it or heard
// it until the end (then there is no path: a NAT problem).
func (c *Config) lostWhileConnecting(lastHeard time.Time) error {
	if lastHeard.IsZero() {
		return nil
	}
	quiet := time.Since(lastHeard)
	if quiet < silentPeer {
		return nil
	}
	return fmt.Errorf("lost the connection to %s: no answer for %s (it fell silent while we were connecting)", c.Peer, quiet.Round(100*time.Millisecond))
}

// peerCancelled is the error when the peer gave the connection up.
func (c *Config) peerCancelled() error {
	return fmt.Errorf("%s gave up the connection before it was complete (it was interrupted): %w", c.Peer, secure.ErrPeerCancelled)
}

// relayNote explains, in a no-path error, why the relay did not help.
func (c *Config) relayNote(m rendezvous.Match) string {
	switch {
	case c.PeerAddr.IsValid():
		return ""
	case c.Relay == RelayNever:
		return "; the relay is off (--relay never)"
	case !m.Relay:
		return "; the rendezvous server offers no relay"
	}
	return "; the relay did not connect either"
}
