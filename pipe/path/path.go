package path

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Stats counts what the path layer saw.
type Stats struct {
	ProbesSent, ProbesReceived uint64
	Dropped                    uint64 // from the server, or malformed/stray probes
	Switches                   uint64 // times the confirmed address changed
	AmpLimited                 uint64 // datagrams not sent to an unproven address (ampFactor)
	// LastHeard is when the last datagram that looked like the peer's
	// arrived (a valid probe, a peer packet, a relayed datagram), zero if
	// none did. It is not authenticated: only a diagnosis uses it (did the
	// peer fall silent, or was it never reachable?).
	LastHeard time.Time
	// PortUnreachable counts ICMP port unreachable errors about datagrams
	// sent to a candidate (Linux, icmp_linux.go).
	PortUnreachable uint64
}

// Conn is the punched path to one peer. It implements the secure layer's
// Link. Send is safe for concurrent use with itself and Recv.
type Conn struct {
	sock      Socket
	udp       *net.UDPConn // sock, when it is a real UDP socket (the kernel's fast paths); else nil
	server    netip.AddrPort
	pairingID [16]byte
	log       *slog.Logger

	mu         sync.Mutex
	candidates []netip.AddrPort // probed until confirmed
	peer       netip.AddrPort   // confirmed address; invalid until Confirm
	confirmedC chan struct{}    // closed at the first Confirm
	refusedC   chan struct{}    // closed at the first ICMP port unreachable naming a candidate (Refused)
	movedOnC   chan struct{}    // closed when the peer's moved-on notice came through the relay (MovedOn)
	movedOn    sync.Once
	recvErr    bool // the socket queues ICMP errors (IP_RECVERR), set by New
	stats      Stats

	// The relay (see the package comment).
	relayAllowed bool           // set by New, never changed
	relayEnded   atomic.Bool    // the server ended the relay
	relayAt      time.Time      // when the relay starts carrying copies before confirmation (zero: never)
	relayOnly    bool           // no direct path is tried
	directHint   netip.AddrPort // where the peer's probes came from while relaying
	hintAt       time.Time
	lastTrial    time.Time                      // last copy sent to directHint
	noTrialUntil time.Time                      // after falling back to the relay
	relayedAt    time.Time                      // when the relay last became the confirmed path
	relayErr     error                          // the server ended the relay
	unanswered   atomic.Int64                   // unix ns of the first direct send not followed by an authentic receive, or 0
	received     atomic.Uint64                  // authentic datagrams from the peer, for the quiet check
	sent         atomic.Uint64                  // datagrams sent to the peer, likewise
	ampLimited   atomic.Uint64                  // Stats.AmpLimited
	provenPeer   atomic.Pointer[netip.AddrPort] // the last address Confirm proved (spend's fast path)
	heardAt      atomic.Int64                   // unix ns of the last datagram that looked like the peer's (Stats.LastHeard)
	isConfirmed  atomic.Bool                    // a packet from the peer authenticated (confirmedC is closed)
	role         wire.PairingRole               // ours in the pairing, for RelayBind
	relayToken   [16]byte                       // authenticates RelayBind and RelayEnded
	bindReqID    uint64                         // of the last RelayBind
	relayMu      sync.Mutex
	relayBuf     []byte // guarded by relayMu

	// Every address we may send to but the server's: the candidates given
	// and learned, with the bytes received from and sent to each until a
	// packet from it authenticates (ampFactor).
	ampMu sync.Mutex
	known map[netip.AddrPort]*ampBudget
	// holdUntil: nothing leaves before it (Options.ProbeDelay): holding
	// is set until holdTimer fires then; the secure layer's latest
	// datagram meanwhile (held) goes out at that moment (hold.go).
	holdUntil time.Time
	holding   atomic.Bool
	held      []byte // guarded by mu
	holdTimer *time.Timer
	// holdOpen, during the hold, are the known addresses a probe of the
	// peer came from (at most MaxCandidates): its NAT sends to us from
	// there, so our datagrams to them go out at once (hold.go). Guarded
	// by mu.
	holdOpen []netip.AddrPort

	stopPunch context.CancelFunc
	punchDone chan struct{}
	closeOnce sync.Once

	// Batched sends (GSO) and coalesced receives (GRO), where the kernel
	// has them; see offload_linux.go.
	sendMu sync.Mutex
	gso    bool // guarded by sendMu: turned off after the first failure
	gsoBuf []byte
	oobOut []byte

	recvMu  sync.Mutex
	gro     bool
	groBuf  []byte
	oobIn   []byte
	segs    []byte // the rest of a coalesced receive, not yet returned
	segSize int
	segFrom netip.AddrPort

	// Without GSO or GRO, sendmmsg and recvmmsg still carry many
	// datagrams per system call where the system has them
	// (batch_linux.go); elsewhere one datagram per call.
	plainOut plainSender   // guarded by sendMu
	plainIn  plainReceiver // guarded by recvMu
}

// Options tune a Conn. The zero value uses every offload the kernel has.
type Options struct {
	// NoOffload does without UDP GSO/GRO (for comparison, or a device that
	// mishandles them): datagrams still go out and come in many per system
	// call where the system has sendmmsg/recvmmsg, one per call elsewhere.
	NoOffload bool
	// ProbeDelay holds back every datagram, probes and handshake alike,
	// for this long. Two NATs that punch at each other can trip over each
	// other's first packets (a conntrack entry created by the peer's probe
	// makes our own mapping change port); on a second attempt one side
	// waits so that the other's packets go first.
	ProbeDelay time.Duration
	// Relay allows the server's relay (the server offered it for this
	// pairing): a confirmed session falls back to it when the direct path
	// is lost. With RelayAfter > 0 it also carries copies of what is sent
	// before confirmation from RelayAfter after New on, so it carries the
	// session when no direct path authenticates.
	Relay      bool
	RelayAfter time.Duration
	// RelayOnly uses the relay alone, from the start, without probing.
	RelayOnly bool
	// Role is ours in the pairing: the relay knows the two ends by role.
	Role wire.PairingRole
	// RelayToken is our end's secret from the server's pairing answer: it
	// authenticates our RelayBind and the server's RelayEnded, so nobody
	// who only saw the pairing id can move or end our end of the relay.
	RelayToken [16]byte
	// Spray, when valid, is the observed address of a peer behind an
	// endpoint-dependent NAT while ours is not: birthday punching's easy
	// side (birthday.go) sends SprayProbes (0: DefaultSprayProbes) probes
	// to random ports of its IP before the punch rounds find the port.
	Spray       netip.AddrPort
	SprayProbes int
	// LowTTLFirst sends a first round of probes with a small TTL (lowTTL):
	// they open our NAT's mapping toward each candidate and die a few hops
	// out, before they reach the peer's router. Every other datagram is
	// held back for lowTTLLead, so that the peer's low-TTL round (it does
	// the same) has opened its NAT before our first full probe arrives
	// there. This keeps a router that lets an unsolicited packet claim a
	// port mapping (a port clash) from being claimed by our first packets.
	LowTTLFirst bool
	// RebindRelay: the socket is not the one the server paired (a timed
	// crossing's or a birthday punch's), so New moves our end of the
	// relay to it (RelayBind) at once.
	RebindRelay bool
}

// lowTTL is the TTL (IPv6 hop limit) of LowTTLFirst's probes: past a home
// router and the first hops of its ISP (a carrier-grade NAT among them),
// and short of a peer that is further away, as peers almost always are.
// lowTTLLead is how long the other datagrams wait after them.
//
// heldLowTTLAfter: a side that holds back its first packets (ProbeDelay,
// the staggered attempts) sends its low-TTL round this long after the
// attempt starts, not at once: between the peer's low-TTL round (at 0) and
// the peer's first full probes (at lowTTLLead), with half the lead of
// slack either way for the two sides' start times. Where the routers are
// so close that a low-TTL probe reaches the peer's router after all (no
// routed hop between the NATs, as in the plain NAT lab), the side that
// sends first is then the one that does not hold back, which is what the
// staggered attempts are for; where they are further apart, both NATs
// are open before the first full probe arrives, as before.
const (
	lowTTL          = 3
	lowTTLLead      = 60 * time.Millisecond
	heldLowTTLAfter = lowTTLLead / 2
)

// New starts punching to candidates (in order of preference) over sock,
// which the Conn now owns. server is the rendezvous server, whose late
// datagrams are ignored. When sock is a *net.UDPConn the Conn uses the
// kernel's fast paths (see Socket).
func New(sock Socket, server netip.AddrPort, pairingID [16]byte, candidates []netip.AddrPort, log *slog.Logger, opt Options) *Conn {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Conn{
		sock: sock, server: udpio.Unmap(server), pairingID: pairingID, log: log,
		confirmedC: make(chan struct{}),
		refusedC:   make(chan struct{}),
		movedOnC:   make(chan struct{}),
		punchDone:  make(chan struct{}),
		known:      make(map[netip.AddrPort]*ampBudget),
	}
	if opt.ProbeDelay > 0 {
		c.holdUntil = time.Now().Add(opt.ProbeDelay)
	}
	if opt.LowTTLFirst && opt.ProbeDelay < lowTTLLead {
		c.holdUntil = time.Now().Add(lowTTLLead)
	}
	if !c.holdUntil.IsZero() {
		c.holding.Store(true)
		c.holdTimer = time.AfterFunc(time.Until(c.holdUntil), c.sendHeld)
	}
	if udp, ok := sock.(*net.UDPConn); ok {
		c.useKernel(udp, opt)
	}
	if opt.Relay || opt.RelayOnly {
		c.allowRelay(opt)
		if opt.RebindRelay {
			c.sendRelayBind(nil)
		}
	}
	if !c.relayOnly {
		for _, a := range candidates {
			if c.addCandidateLocked(a) {
				c.knowGiven(udpio.Unmap(a))
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopPunch = cancel
	c.startPunch(ctx, opt)
	return c
}

// useKernel sets up the kernel's fast paths on a real UDP socket: no
// fragmentation, and unless opt says otherwise GSO and GRO.
func (c *Conn) useKernel(udp *net.UDPConn, opt Options) {
	c.udp = udp
	// Datagrams must not be fragmented: a size the path cannot carry
	// whole should be lost, so that path MTU probing above (pipe/stream)
	// learns the truth; fragments would also multiply the loss rate.
	setDontFragment(udp)
	c.enableRecvErr()
	if !opt.NoOffload {
		c.gso = gsoSupported(udp)
		c.gro = enableGRO(udp)
	}
	if c.gso {
		c.gsoBuf = make([]byte, 0, 65535)
		c.oobOut = make([]byte, 64)
	}
	if c.gro {
		c.groBuf = make([]byte, 65535)
		c.oobIn = make([]byte, 64)
	}
	c.log.Debug("udp offload", "gso", c.gso, "gro", c.gro)
}

// allowRelay lets the relay carry the session as opt says (see the
// package comment).
func (c *Conn) allowRelay(opt Options) {
	c.relayAllowed = true
	c.role = opt.Role
	c.relayToken = opt.RelayToken
	c.relayOnly = opt.RelayOnly
	switch {
	case opt.RelayOnly:
		c.relayAt = time.Now()
	case opt.RelayAfter > 0:
		c.relayAt = time.Now().Add(opt.RelayAfter)
	}
	c.relayBuf = make([]byte, 0, wire.MaxRelayDatagram)
}

func (c *Conn) count(f func(*Stats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

// Heard notes an authentic packet from from (the secure layer calls it for
// every one): the peer is alive, and a direct path that carries it works.
// Nothing unauthenticated moves these.
func (c *Conn) Heard(from netip.AddrPort) {
	c.received.Add(1)
	if from != c.server && c.unanswered.Load() != 0 {
		c.unanswered.Store(0)
	}
}

// Confirm makes from the peer's address: a packet from it authenticated.
func (c *Conn) Confirm(from netip.AddrPort) {
	from = udpio.Unmap(from)
	c.proven(from)
	c.mu.Lock()
	old := c.peer
	if old == from {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	if from == c.server && old.IsValid() {
		// Direct to relay: only when the direct path is lost; a relayed
		// copy that arrives while it works changes nothing.
		if !c.directLost(now) {
			c.mu.Unlock()
			return
		}
		c.noTrialUntil = now.Add(10 * time.Second)
	}
	c.peer = from
	if old.IsValid() {
		c.stats.Switches++
	}
	onRelay := now.Sub(c.relayedAt)
	if from == c.server {
		c.relayedAt = now
	}
	c.mu.Unlock()
	switch {
	case !old.IsValid():
		c.isConfirmed.Store(true)
		close(c.confirmedC)
		c.log.Debug("path confirmed", "peer", from.String(), "relay", from == c.server)
	case from == c.server:
		c.log.Info("the direct path was lost; moved to the relay", "was", old.String())
	case old == c.server:
		c.unanswered.Store(0)
		c.log.Info("moved to a direct path", "peer", from.String(), "after", onRelay.Round(time.Millisecond).String())
	default:
		c.log.Info("peer moved", "from", old.String(), "to", from.String())
	}
}

// SetReadDeadline bounds a blocked Recv (the handshake's attempts, which
// stop at a deadline and may go on over the same path). The zero time
// removes the bound.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.sock.SetReadDeadline(t) }

// Confirmed is closed once a packet from the peer authenticated.
func (c *Conn) Confirmed() <-chan struct{} { return c.confirmedC }

// PathSwitches counts the times the confirmed address changed.
func (c *Conn) PathSwitches() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats.Switches
}

// RelayError returns why the server ended the relay (wrapping
// ErrRelayEnded), or nil.
func (c *Conn) RelayError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.relayErr
}

// Relayed reports whether the session goes through the relay.
func (c *Conn) Relayed() bool { return c.relaying() }

// Peer returns the confirmed peer address (invalid before Confirm): the
// server's when relayed.
func (c *Conn) Peer() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peer
}

// heard notes a datagram that looks like the peer's (Stats.LastHeard)
// while the path is not confirmed; after that the stream above watches the
// peer's liveness, and the data path is spared a clock read per datagram.
func (c *Conn) heard() {
	if !c.isConfirmed.Load() {
		c.heardAt.Store(time.Now().UnixNano())
	}
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	st := c.stats
	c.mu.Unlock()
	if ns := c.heardAt.Load(); ns != 0 {
		st.LastHeard = time.Unix(0, ns)
	}
	st.AmpLimited = c.ampLimited.Load()
	return st
}

// Close stops punching and closes the socket, which unblocks Recv.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.holdTimer != nil {
			c.holdTimer.Stop()
		}
		c.stopPunch()
		err = c.sock.Close()
		<-c.punchDone
	})
	return err
}
