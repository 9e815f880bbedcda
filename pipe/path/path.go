// Package path owns the session's UDP socket: it gathers this host's
// candidate addresses, punches a path to the peer's candidates, learns the
// peer's real address from the packets that authenticate (ICE's
// peer-reflexive candidates), and carries the secure layer's datagrams.
//
// Rules of the punch:
//
//   - Until a packet from the peer authenticates (the secure layer calls
//     Confirm), every datagram the secure layer sends goes to every
//     candidate, public ones first: whichever path works carries it.
//   - Both sides also send Probe datagrams (0xF0 | pairing id) to every
//     candidate at a short interval, so each NAT sees outbound traffic to the
//     other and lets the other's packets in. A probe that arrives teaches us a
//     candidate (the address the peer's NAT really uses) and is answered
//     with a probe, but it is never trusted: only Confirm picks the path.
//   - After Confirm, datagrams go to the confirmed address only. A later
//     authentic packet from another address moves the path there (roaming).
//
// The relay (when the server offers it and Options allow):
//
//   - The relay is one more path, through the rendezvous server: datagrams
//     are wrapped in a relay header (rendezvous/wire/relay.go) and sent to
//     the server, which forwards them to the peer. A relayed datagram is
//     reported to the secure layer as coming from the server's address, and
//     Confirm with that address selects the relay.
//   - Before confirmation the relay carries copies of what is sent once
//     Options.RelayAfter has passed (at once with RelayOnly).
//   - A direct path is preferred: while relaying, both sides go on probing
//     the direct candidates (every second); a probe from the peer shows a
//     direct path that may work, and then a copy of a datagram goes there
//     too, at most every 200 ms. When it authenticates at the peer, the
//     peer moves to the direct path, and we follow when its packets come
//     direct. A relayed packet moves a direct path back to the relay only
//     when nothing came direct for a second (the NAT mapping was lost).
//
// Datagrams from the rendezvous server (late answers) and stray probes are
// dropped here and never reach the secure layer.
package path

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/p2pcat/p2pcat/internal/textsafe"
	"github.com/p2pcat/p2pcat/rendezvous/wire"

	"github.com/p2pcat/p2pcat/internal/udpio"
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

// Until a packet from an address authenticates, what we send there is
// bounded, as QUIC bounds a server before address validation (RFC 9000
// section 8.1): at most ampFactor times the bytes received from it, plus,
// for a candidate the rendezvous server gave (we must send first to punch),
// a first allowance of givenAllowance bytes (some 25 probes and the Hello's
// first copies). An address learned from a probe, which anyone can claim
// by spoofing a probe's source, has no allowance; an address we know
// nothing of gets nothing at all. So neither a spoofed probe nor a
// malicious peer's or server's list of candidates makes a path a
// reflector: per address named, at most givenAllowance bytes, then three
// times what came back.
const (
	ampFactor      = 3
	givenAllowance = 4096
)

// MaxCandidates bounds the addresses probed, learned ones included.
const MaxCandidates = 16

// Listen opens the session's UDP socket on port (0: any), dual-stack where
// the system allows, with large buffers so bursts are not dropped.
func Listen(port int, log *slog.Logger) (*net.UDPConn, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, fmt.Errorf("opening UDP port %d: %w", port, err)
	}
	RaiseBuffers(conn, 8<<20, log)
	return conn, nil
}

// RaiseBuffers asks for socket buffers of size bytes, as root past
// net.core.rmem_max, and logs when the system grants less.
func RaiseBuffers(conn *net.UDPConn, size int, log *slog.Logger) {
	got, known := raiseBuffers(conn, size)
	if known && got < size && log != nil {
		log.Info("socket receive buffer capped by the system; raise net.core.rmem_max for bursty loads", "bytes", got, "wanted", size)
	}
}

// LocalCandidates lists this host's addresses with port: every up,
// non-loopback interface address (IPv4 and global IPv6), and loopback too
// when withLoopback (the server and peer are on this machine).
func LocalCandidates(port uint16, withLoopback bool) []netip.AddrPort {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			switch {
			case ip.IsLoopback() && !withLoopback:
				continue
			case ip.Is6() && (ip.IsLinkLocalUnicast() || !ip.IsGlobalUnicast() && !ip.IsLoopback()):
				continue // link-local needs a zone the peer cannot know
			case ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified():
				continue
			}
			out = append(out, netip.AddrPortFrom(ip, port))
		}
	}
	// IPv4 first: it is what most NATs and most peers have.
	slices.SortStableFunc(out, func(a, b netip.AddrPort) int {
		if a.Addr().Is4() == b.Addr().Is4() {
			return 0
		}
		if a.Addr().Is4() {
			return -1
		}
		return 1
	})
	if len(out) > 8 {
		out = out[:8]
	}
	return out
}

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
}

// Conn is the punched path to one peer. It implements the secure layer's
// Link. Send is safe for concurrent use with itself and Recv.
type Conn struct {
	udp       *net.UDPConn
	server    netip.AddrPort
	pairingID [16]byte
	log       *slog.Logger

	mu         sync.Mutex
	candidates []netip.AddrPort // probed until confirmed
	peer       netip.AddrPort   // confirmed address; invalid until Confirm
	confirmedC chan struct{}    // closed at the first Confirm
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
	relayErr     error                          // the server ended the relay
	unanswered   atomic.Int64                   // unix ns of the first direct send not followed by an authentic receive, or 0
	received     atomic.Uint64                  // authentic datagrams from the peer, for the quiet check
	sent         atomic.Uint64                  // datagrams sent to the peer, likewise
	ampLimited   atomic.Uint64                  // Stats.AmpLimited
	provenPeer   atomic.Pointer[netip.AddrPort] // the last address Confirm proved (spend's fast path)
	heardAt      atomic.Int64                   // unix ns of the last datagram that looked like the peer's (Stats.LastHeard)
	isConfirmed  atomic.Bool                    // a packet from the peer authenticated (confirmedC is closed)
	role         wire.Role                      // ours in the pairing, for RelayBind
	relayToken   [16]byte                       // authenticates RelayBind and RelayEnded
	bindReqID    uint64                         // of the last RelayBind
	relayMu      sync.Mutex
	relayBuf     []byte // guarded by relayMu

	// Every address we may send to but the server's: the candidates given
	// and learned, with the bytes received from and sent to each until a
	// packet from it authenticates (ampFactor).
	ampMu sync.Mutex
	known map[netip.AddrPort]*ampBudget
	// holdUntil: nothing leaves before it (Options.ProbeDelay).
	holdUntil time.Time

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
	Role wire.Role
	// RelayToken is our end's secret from the server's pairing answer: it
	// authenticates our RelayBind and the server's RelayEnded, so nobody
	// who only saw the pairing id can move or end our end of the relay.
	RelayToken [16]byte
}

// quietNudges: after the peer falls quiet on a direct path, for this many
// seconds a probe a second re-opens our NAT toward it.
const quietNudges = 5

// relayKeepaliveInterval: on a direct path, how often an empty relayed
// datagram keeps our NAT mapping toward the relay open (NATs forget idle UDP
// mappings after 30 s or more).
const relayKeepaliveInterval = 10 * time.Second

// ErrRelayEnded: the server stopped relaying this session.
var ErrRelayEnded = errors.New("the rendezvous server ended the relay")

// New starts punching to candidates (in order of preference) over udp,
// which the Conn now owns. server is the rendezvous server, whose late
// datagrams are ignored.
func New(udp *net.UDPConn, server netip.AddrPort, pairingID [16]byte, candidates []netip.AddrPort, log *slog.Logger, opt Options) *Conn {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Conn{
		udp: udp, server: udpio.Unmap(server), pairingID: pairingID, log: log,
		confirmedC: make(chan struct{}),
		punchDone:  make(chan struct{}),
		known:      make(map[netip.AddrPort]*ampBudget),
	}
	if opt.ProbeDelay > 0 {
		c.holdUntil = time.Now().Add(opt.ProbeDelay)
	}
	// Datagrams must not be fragmented: a size the path cannot carry
	// whole should be lost, so that path MTU probing above (pipe/stream)
	// learns the truth; fragments would also multiply the loss rate.
	setDontFragment(udp)
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
	log.Debug("udp offload", "gso", c.gso, "gro", c.gro)
	if opt.Relay || opt.RelayOnly {
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
	if !c.relayOnly {
		for _, a := range candidates {
			if c.addCandidateLocked(a) {
				c.knowGiven(udpio.Unmap(a))
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopPunch = cancel
	go c.routinePunch(ctx, opt.ProbeDelay)
	return c
}

func (c *Conn) addCandidateLocked(a netip.AddrPort) bool {
	a = udpio.Unmap(a)
	if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() || slices.Contains(c.candidates, a) || len(c.candidates) >= MaxCandidates {
		return false
	}
	c.candidates = append(c.candidates, a)
	return true
}

// routinePunch sends probes to every candidate, quickly at first and then
// every 200 ms, until the path is confirmed; while the path is the relay,
// every second. It returns when the Conn closes.
func (c *Conn) routinePunch(ctx context.Context, delay time.Duration) {
	defer close(c.punchDone)
	wait := func(d time.Duration) bool {
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
	if delay > 0 && !wait(delay) {
		return
	}
	probe := c.probe()
	interval := 20 * time.Millisecond
	var (
		lastRelayKeepalive time.Time
		lastReceived       uint64
		lastSent           [2]uint64 // datagrams sent, one and two seconds ago
		quiet              int       // seconds without a datagram from the peer
	)
	for {
		c.mu.Lock()
		confirmed := c.peer.IsValid()
		direct := confirmed && c.peer != c.server
		targets := slices.Clone(c.candidates)
		c.mu.Unlock()
		next := min(2*interval, 200*time.Millisecond)
		talking := false // we sent in the last two seconds
		if confirmed {
			next = time.Second
			if n := c.received.Load(); n != lastReceived {
				lastReceived, quiet = n, 0
			} else {
				quiet++
			}
			n := c.sent.Load()
			talking = n != lastSent[1]
			lastSent = [2]uint64{n, lastSent[0]}
		}
		switch {
		case direct:
			// The session's own packets keep the NATs open; look again
			// every second in case the path falls back to the relay, and
			// keep the NAT open toward the relay meanwhile.
			//
			// The peer went quiet: its packets may be stopped by our NAT,
			// which forgot the mapping (a router reboot, a conntrack
			// flush) while we, the receiving side, had nothing to send.
			// A probe to the peer re-opens it; one through the relay
			// re-opens the way for the relay too.
			nudge := quiet >= 1 && quiet <= quietNudges
			if nudge {
				c.write(probe, c.Peer())
			}
			if c.relayUsable() && (nudge || time.Since(lastRelayKeepalive) >= relayKeepaliveInterval) {
				lastRelayKeepalive = time.Now()
				c.write(wire.AppendRelayHeader(nil, c.pairingID), c.server)
			}
		case !c.relayOnly:
			// Punching, or relaying: a direct path may still open.
			for _, t := range targets {
				c.write(probe, t)
				c.count(func(s *Stats) { s.ProbesSent++ })
			}
		}
		// We keep sending and hear nothing: perhaps our address changed
		// (a new network, a new public IP), which the relay only learns
		// from a RelayBind.
		if confirmed && c.relayUsable() && talking && quiet >= 2 && quiet%2 == 0 {
			c.sendRelayBind(nil)
		}
		if !wait(interval) {
			return
		}
		interval = next
	}
}

// sendRelayBind asks the server to move our end of the relay to the
// address this socket has now. Without a cookie the server answers with a
// Challenge, and fromServer sends it again with the cookie.
func (c *Conn) sendRelayBind(cookie []byte) {
	c.mu.Lock()
	if cookie == nil {
		c.bindReqID = randUint64()
	}
	m := &wire.RelayBind{ReqID: c.bindReqID, Cookie: cookie, PairingID: c.pairingID, Role: c.role}
	m.MAC = wire.RelayBindMAC(c.relayToken, c.pairingID, c.role, cookie)
	c.mu.Unlock()
	c.write(wire.Pad(m.AppendTo(nil)), c.server)
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

// relayUsable reports whether the relay may carry datagrams now.
func (c *Conn) relayUsable() bool { return c.relayAllowed && !c.relayEnded.Load() }

// relaying reports whether the confirmed path is the relay.
func (c *Conn) relaying() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peer.IsValid() && c.peer == c.server
}

func (c *Conn) probe() []byte {
	p := make([]byte, probeLen)
	p[0] = ProbeType
	copy(p[1:], c.pairingID[:])
	return p
}

func (c *Conn) count(f func(*Stats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

func (c *Conn) write(b []byte, to netip.AddrPort) error {
	if !c.holdUntil.IsZero() && time.Now().Before(c.holdUntil) {
		return nil // held back: lost, as a datagram the network dropped
	}
	if !c.spend(to, len(b)) {
		return nil
	}
	_, err := c.udp.WriteToUDPAddrPort(b, to)
	return err
}

// ampBudget is what came from and went to an address that has not proven
// itself yet (proven: no bound).
type ampBudget struct {
	allowance, received, sent int
	proven                    bool
}

// knowGiven makes a a known address with the first allowance of a
// candidate the server gave.
func (c *Conn) knowGiven(a netip.AddrPort) {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	if c.known[a] == nil {
		c.known[a] = &ampBudget{allowance: givenAllowance}
	}
}

// learn makes a, the source of an n-byte probe, a known address (without
// allowance) or adds n to what came from it. It reports whether a was new.
// At most 2*MaxCandidates addresses are known; past that a probe from a new
// one is not learned.
func (c *Conn) learn(a netip.AddrPort, n int) (isNew bool) {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	b := c.known[a]
	if b == nil {
		if len(c.known) >= 2*MaxCandidates {
			return false
		}
		b = &ampBudget{}
		c.known[a] = b
		isNew = true
	}
	b.received += n
	return isNew
}

// isKnown reports whether a is one of the addresses we may send to.
func (c *Conn) isKnown(a netip.AddrPort) bool {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	return c.known[a] != nil
}

// receivedFrom adds n bytes that came from a to its budget.
func (c *Conn) receivedFrom(a netip.AddrPort, n int) {
	c.ampMu.Lock()
	if b := c.known[a]; b != nil {
		b.received += n
	}
	c.ampMu.Unlock()
}

// spend reports whether n more bytes may go to a, and counts them: always
// to the server and to a proven address, within the budget to a known one,
// never to an address we know nothing of.
func (c *Conn) spend(a netip.AddrPort, n int) bool {
	if a == c.server {
		return true
	}
	if p := c.provenPeer.Load(); p != nil && *p == a {
		return true // the data path's case: no lock
	}
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	b := c.known[a]
	switch {
	case b == nil:
		c.ampLimited.Add(1)
		return false
	case b.proven:
		return true
	case b.sent+n > b.allowance+ampFactor*b.received:
		c.ampLimited.Add(1)
		return false
	}
	b.sent += n
	return true
}

// proven lifts the bound on a: a packet from it authenticated.
func (c *Conn) proven(a netip.AddrPort) {
	c.ampMu.Lock()
	if b := c.known[a]; b != nil {
		b.proven = true
	} else {
		c.known[a] = &ampBudget{proven: true}
	}
	c.ampMu.Unlock()
	c.provenPeer.Store(&a)
}

// Send sends b to the confirmed peer address, or before confirmation to
// every candidate (and through the relay once it may carry copies).
func (c *Conn) Send(b []byte) error {
	r := c.route()
	if r.peer.IsValid() {
		if err := c.write(b, r.peer); err != nil && errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	for _, t := range r.targets {
		if err := c.write(b, t); errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	if r.relay {
		return c.sendRelay(b)
	}
	return nil // a lost datagram is the reliability layer's business
}

// route says where the next datagram goes.
type route struct {
	peer    netip.AddrPort   // the confirmed direct peer, or a direct trial
	targets []netip.AddrPort // before confirmation: every candidate
	relay   bool             // through the relay (too)
}

func (c *Conn) route() route {
	c.sent.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	var r route
	switch {
	case !c.peer.IsValid():
		r.targets = slices.Clone(c.candidates)
		r.relay = c.relayUsable() && !c.relayAt.IsZero() && !time.Now().Before(c.relayAt)
	case c.peer == c.server:
		r.relay = true
		now := time.Now()
		if c.directHint.IsValid() && now.Sub(c.hintAt) < 3*time.Second && now.Sub(c.lastTrial) >= 200*time.Millisecond && now.After(c.noTrialUntil) {
			c.lastTrial = now
			r.peer = c.directHint // a copy, to move the peer to the direct path
		}
	default:
		r.peer = c.peer
		if c.relayUsable() {
			now := time.Now()
			c.sentDirect(now)
			r.relay = c.directLost(now) // a copy, to fall back to the relay
		}
	}
	return r
}

// sentDirect notes a datagram sent on the direct path: if nothing comes
// back for a second, the path is lost.
func (c *Conn) sentDirect(now time.Time) {
	if c.unanswered.Load() == 0 {
		c.unanswered.CompareAndSwap(0, now.UnixNano())
	}
}

// directLost reports that what we sent on the direct path for more than a
// second got no datagram back.
func (c *Conn) directLost(now time.Time) bool {
	since := c.unanswered.Load()
	return since != 0 && now.UnixNano()-since > int64(time.Second)
}

// sendRelay sends b through the relay.
func (c *Conn) sendRelay(b []byte) error {
	if len(b) > wire.MaxRelayPayload {
		return nil // too large for the relay: lost, like any oversized datagram
	}
	c.relayMu.Lock()
	defer c.relayMu.Unlock()
	pkt := append(wire.AppendRelayHeader(c.relayBuf[:0], c.pairingID), b...)
	if err := c.write(pkt, c.server); errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// SendBatch sends bufs in order, with as few system calls as the kernel
// allows: runs of equal-size datagrams to the confirmed peer go out as one
// GSO send, or without GSO the whole batch as one sendmmsg. A datagram the
// kernel refuses is lost, like any other; only a closed socket is an error.
// It does not retain bufs.
func (c *Conn) SendBatch(bufs [][]byte) error {
	c.mu.Lock()
	peer := c.peer
	c.mu.Unlock()
	if !peer.IsValid() || peer == c.server || c.relayUsable() && c.directLost(time.Now()) {
		// Fan-out, the relay, or a fallback in progress: one by one.
		for _, b := range bufs {
			if err := c.Send(b); err != nil {
				return err
			}
		}
		return nil
	}
	c.sent.Add(1)
	if c.relayUsable() {
		c.sentDirect(time.Now())
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if !c.gso {
		return c.sendPlainLocked(bufs, peer)
	}
	for len(bufs) > 0 {
		// A run: datagrams of one size, the last may be shorter.
		size := len(bufs[0])
		n := 1
		for n < len(bufs) && n < maxGSOSegments && len(bufs[n]) == size && (n+1)*size <= maxGSOBytes {
			n++
		}
		if n < len(bufs) && n < maxGSOSegments && len(bufs[n]) < size && (n+1)*size <= maxGSOBytes {
			n++
		}
		if err := c.sendRunLocked(bufs[:n], size, peer); err != nil {
			return err
		}
		bufs = bufs[n:]
	}
	return nil
}

func (c *Conn) sendRunLocked(run [][]byte, size int, peer netip.AddrPort) error {
	if len(run) == 1 {
		if err := c.write(run[0], peer); errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
	b, ok := contiguous(run)
	if !ok {
		b = c.gsoBuf[:0]
		for _, d := range run {
			b = append(b, d...)
		}
	}
	_, _, err := c.udp.WriteMsgUDPAddrPort(b, gsoControl(c.oobOut, size), peer)
	if err == nil || errors.Is(err, net.ErrClosed) {
		return err
	}
	if errors.Is(err, syscall.EMSGSIZE) {
		return nil // too large for the path: lost, like any oversized datagram
	}
	// Some devices refuse segmentation offload (EIO without checksum
	// offload): turn it off for this socket and send the run without it,
	// losing nothing.
	c.gso = false
	c.log.Debug("udp GSO failed; sending without it from now on", "err", err)
	return c.sendPlainLocked(run, peer)
}

// sendEachLocked sends bufs to peer one datagram per system call: the
// last resort, where the system has no sendmmsg.
func (c *Conn) sendEachLocked(bufs [][]byte, peer netip.AddrPort) error {
	for _, b := range bufs {
		if err := c.write(b, peer); errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return nil
}

// Recv returns the next datagram for the secure layer. A buf of 64 KiB
// holds any datagram; a shorter one gets a datagram's first len(buf) bytes.
func (c *Conn) Recv(buf []byte) (int, netip.AddrPort, error) {
	if c.gro {
		return c.recvGRO(buf)
	}
	return c.recvPlain(buf)
}

// recvEach reads one datagram per system call: the last resort, where the
// system has no recvmmsg.
func (c *Conn) recvEach(buf []byte) (int, netip.AddrPort, error) {
	for {
		n, from, err := c.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			// Any error but an ICMP report ends Recv, rather than a loop
			// that spins on it.
			if icmpError(err) {
				continue
			}
			return 0, netip.AddrPort{}, err
		}
		from = udpio.Unmap(from)
		p, err := c.inbound(buf[:n], from)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if p != nil {
			return copy(buf, p), from, nil
		}
	}
}

// inbound sorts one received datagram p: it returns what the secure layer
// gets (p itself, or the payload of a relayed datagram), or nil for a
// datagram handled or dropped here.
func (c *Conn) inbound(p []byte, from netip.AddrPort) ([]byte, error) {
	switch {
	case len(p) == 0:
	case from == c.server:
		return c.fromServer(p)
	case p[0] == ProbeType:
		c.handleProbe(p, from)
		return nil, nil
	default:
		// Not yet authentic: only the secure layer's Heard, for the packets
		// that authenticate, moves the path's state. Before the path is
		// confirmed, only the addresses we know (the candidates the server
		// gave, and those that sent a probe with the pairing id) are heard
		// at all: someone who merely knows our port cannot put a Hello in
		// front of the peer's. After it, a packet from anywhere may be the
		// peer roaming, and the secure layer authenticates it.
		if !c.isConfirmed.Load() && !c.isKnown(from) {
			break
		}
		c.receivedFrom(from, len(p))
		c.heard()
		return p, nil
	}
	c.count(func(s *Stats) { s.Dropped++ })
	return nil, nil
}

// fromServer handles a datagram from the rendezvous server: a relayed
// datagram of this pairing, or the relay's end; late rendezvous answers
// are dropped.
func (c *Conn) fromServer(p []byte) ([]byte, error) {
	if !c.relayAllowed {
		c.count(func(s *Stats) { s.Dropped++ })
		return nil, nil
	}
	if id, payload, ok := wire.ParseRelay(p); ok && id == c.pairingID {
		if len(payload) == 0 {
			return nil, nil // the echo of our relay keepalive, or a bind's answer
		}
		c.heard()
		return payload, nil
	}
	if m, err := wire.Decode(p); err == nil {
		if ch, ok := m.(*wire.Challenge); ok {
			c.mu.Lock()
			ours := ch.ReqID == c.bindReqID && c.bindReqID != 0
			c.mu.Unlock()
			if ours {
				c.sendRelayBind(ch.Cookie)
				return nil, nil
			}
		}
		if e, ok := m.(*wire.RelayEnded); ok && e.PairingID == c.pairingID && e.Verify(c.relayToken) {
			// Believed only under our token: the server, which gave it to
			// us alone, ended the relay.
			reason := textsafe.Line(e.Reason)
			c.mu.Lock()
			defer c.mu.Unlock()
			c.relayEnded.Store(true)
			c.relayErr = fmt.Errorf("%w: %q", ErrRelayEnded, reason)
			if c.peer == c.server || !c.peer.IsValid() {
				return nil, c.relayErr
			}
			c.log.Info("the server ended the relay; the direct path goes on", "reason", reason)
			return nil, nil
		}
	}
	c.count(func(s *Stats) { s.Dropped++ })
	return nil, nil
}

// contiguous returns the datagrams of run as one slice when they lie back
// to back in memory (the secure layer seals a batch that way), so a GSO send
// needs no copy.
func contiguous(run [][]byte) ([]byte, bool) {
	total := 0
	for i, d := range run {
		if len(d) == 0 || i > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(d))) != uintptr(unsafe.Pointer(unsafe.SliceData(run[i-1])))+uintptr(len(run[i-1])) {
			return nil, false
		}
		total += len(d)
	}
	return unsafe.Slice(unsafe.SliceData(run[0]), total), true
}

// icmpError reports a read error that only relays an ICMP message about an
// earlier send (Linux reports "connection refused" after we probed a closed
// candidate): not fatal to the socket.
func icmpError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// recvGRO reads coalesced datagrams and returns them one at a time.
func (c *Conn) recvGRO(buf []byte) (int, netip.AddrPort, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for {
		if len(c.segs) > 0 {
			seg := c.segs[:min(c.segSize, len(c.segs))]
			c.segs = c.segs[len(seg):]
			p, err := c.inbound(seg, c.segFrom)
			if err != nil {
				return 0, netip.AddrPort{}, err
			}
			if p != nil {
				return copy(buf, p), c.segFrom, nil
			}
			continue
		}
		// With room for a whole coalesced read, read straight into buf
		// and keep only what follows the first datagram: large datagrams
		// (one per read) are then never copied.
		direct := len(buf) >= len(c.groBuf)
		rb := c.groBuf
		if direct {
			rb = buf[:len(c.groBuf)]
		}
		n, oobn, _, from, err := c.udp.ReadMsgUDPAddrPort(rb, c.oobIn)
		if err != nil {
			if icmpError(err) {
				continue
			}
			return 0, netip.AddrPort{}, err
		}
		from = udpio.Unmap(from)
		if n == 0 {
			continue
		}
		size := groSegmentSize(c.oobIn[:oobn])
		if size <= 0 || size > n {
			size = n
		}
		if !direct {
			c.segs, c.segSize, c.segFrom = c.groBuf[:n], size, from
			continue
		}
		c.segs, c.segSize, c.segFrom = c.groBuf[:copy(c.groBuf, buf[size:n])], size, from
		p, err := c.inbound(buf[:size], from)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if p != nil {
			return copy(buf, p), from, nil
		}
	}
}

func (c *Conn) handleProbe(p []byte, from netip.AddrPort) {
	if len(p) != probeLen || !bytes.Equal(p[1:17], c.pairingID[:]) || !allZero(p[17:]) {
		c.count(func(s *Stats) { s.Dropped++ })
		return
	}
	c.heard()
	// Anyone can claim this address by spoofing a probe: what we send there
	// is bounded by what comes from it until it authenticates (spend).
	isNew := c.learn(from, len(p))
	known := c.isKnown(from)
	c.mu.Lock()
	c.stats.ProbesReceived++
	confirmed := c.peer.IsValid()
	relaying := confirmed && c.peer == c.server
	learned := (!confirmed || relaying) && c.addCandidateLocked(from)
	if relaying && known {
		// A direct path may work: try it (see route).
		c.directHint, c.hintAt = from, time.Now()
	}
	c.mu.Unlock()
	if learned {
		c.log.Debug("learned a peer candidate from its probe", "addr", from.String())
	}
	if !confirmed && isNew {
		// Open our NAT toward it, and tell it about us, once: the punch
		// routine probes every candidate anyway, and answering every
		// probe would make two unconfirmed sides answer each other's
		// answers forever. (While relaying, both sides probe every second
		// anyway.)
		c.write(c.probe(), from)
	}
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
		c.log.Info("moved to a direct path", "peer", from.String())
	default:
		c.log.Info("peer moved", "from", old.String(), "to", from.String())
	}
}

// SetReadDeadline bounds a blocked Recv (the handshake's attempts, which
// stop at a deadline and may go on over the same path). The zero time
// removes the bound.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.udp.SetReadDeadline(t) }

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
		c.stopPunch()
		err = c.udp.Close()
		<-c.punchDone
	})
	return err
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

func randUint64() uint64 {
	var b [8]byte
	crand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}
