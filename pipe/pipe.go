// Package pipe is the client session of p2pcat: it finds the peer through
// the rendezvous server, punches a UDP path (pipe/path), authenticates and
// keys the session (pipe/secure), runs a reliable byte stream over it
// (pipe/stream), and links it to stdin/stdout with line framing
// (pipe/frame) or to the interactive chat (pipe/term).
//
// Data flows one way through the layers: path → secure → stream → frame.
package pipe

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Errors that decide p2pcat's exit code (besides rendezvous.ErrPeerNotFound
// and secure.ErrAuth, which pass through).
var (
	// ErrNoPath: the peer was found but no packet of its ever authenticated
	// over any candidate path.
	ErrNoPath = errors.New("no path to the peer could be established")
	// ErrNoRelay: --relay only, and the server offers no relay.
	ErrNoRelay = errors.New("the rendezvous server offers no relay")
	// ErrInterrupted: the user interrupted the session (Ctrl-C, SIGTERM).
	ErrInterrupted = errors.New("interrupted")
	// ErrOutputClosed: the reader of stdout went away (EPIPE: `| head`)
	// before the session was complete. The peer is told.
	ErrOutputClosed = errors.New("stdout was closed by its reader before the session was complete")
)

// Config describes one session. Zero values mean the documented defaults.
type Config struct {
	Server netip.AddrPort // rendezvous server
	// STUN, when valid, is a STUN server (RFC 5389) asked for this host's
	// reflexive address, which is then offered to the peer as a candidate.
	STUN netip.AddrPort
	// PeerAddr, when valid, skips the rendezvous: the peer is known to be
	// reachable there (a LAN, a forwarded port). Both sides must set it.
	PeerAddr netip.AddrPort

	Session, Name, Peer string
	Password            []byte

	Timeout        time.Duration // for the peer to show up (default 2 min)
	ConnectTimeout time.Duration // for a path and handshake once paired (default 15 s)
	IdleTimeout    time.Duration // peer silence that ends the session (default 30 s)
	RSABits        int           // ephemeral RSA key size (default 2048)
	Port           int           // local UDP port (default: any)
	NoOffload      bool          // no UDP GSO/GRO: sendmmsg/recvmmsg batches of whole datagrams
	// ProbeMTU lets the stream probe for datagrams larger than 1200 bytes
	// (path MTU discovery, pipe/stream/pmtu.go): up to 64 KiB on loopback,
	// which roughly halves the CPU per byte there. The command line turns
	// it on unless --no-mtu-probe.
	ProbeMTU bool
	// Relay says when the session may go through the server's relay:
	// RelayAuto (the default) when no direct path appears, RelayNever, or
	// RelayOnly.
	Relay RelayMode
	// TransferProcs, when positive and below the current GOMAXPROCS, is the
	// number of Go Ps the transfer runs on, from the handshake's end until
	// Run returns (the setup keeps them all: the RSA key, argon2id). One P
	// keeps the pipe's goroutines (stdin, send, receive, stdout) on one
	// thread: their hand-offs become cheap switches instead of thread
	// wake-ups, which on loopback cost about a third of the CPU per byte
	// (scripts/bench.sh). GOMAXPROCS is process-wide: only a process that
	// runs one session at a time (the command line) should set this.
	TransferProcs int

	Stdin  io.Reader
	Stdout io.Writer
	// Chat, when set, replaces Stdin/Stdout with the interactive chat.
	Chat *term.Chat
	// EndOnPeerEOF ends the session when the peer finishes sending, as a
	// chat ends when the other side leaves (stdin is a terminal).
	EndOnPeerEOF bool
	// Status shows progress to a human (nil: nowhere).
	Status func(format string, args ...any)
	Logger *slog.Logger
}

// RelayMode says when a session may use the server's relay.
type RelayMode string

const (
	RelayAuto  RelayMode = "auto"  // when the direct attempts find no path
	RelayNever RelayMode = "never" // direct or nothing
	RelayOnly  RelayMode = "only"  // through the relay from the start
)

// ParseRelayMode parses the --relay flag.
func ParseRelayMode(s string) (RelayMode, error) {
	switch m := RelayMode(s); m {
	case RelayAuto, RelayNever, RelayOnly:
		return m, nil
	case "":
		return RelayAuto, nil
	}
	return "", fmt.Errorf("relay mode %q: want auto, never or only", s)
}

func (c *Config) setDefaults() {
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 15 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.RSABits == 0 {
		c.RSABits = secure.DefaultRSABits
	}
	if c.Relay == "" {
		c.Relay = RelayAuto
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Status == nil {
		c.Status = func(string, ...any) {}
	}
}

// Run performs one session and returns nil only when every byte was
// delivered and acknowledged both ways.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	log := cfg.Logger
	if cfg.RSABits < 2048 || cfg.RSABits > 4096 {
		return fmt.Errorf("RSA key size %d: must be 2048 to 4096 bits", cfg.RSABits)
	}
	// The ephemeral RSA key is generated while the rendezvous answers, so
	// it adds no latency.
	keyc := make(chan keyResult, 1)
	go func() {
		k, err := rsa.GenerateKey(rand.Reader, cfg.RSABits)
		keyc <- keyResult{k, err}
	}()
	var key *rsa.PrivateKey

	// Attempts: the first punches at once from both sides. When no path
	// appears, both sides (they fail at about the same moment) meet again
	// from fresh ports and punch with one side holding back its first
	// packets, then the other: on a NAT that lets the peer's early probe
	// claim the port mapping (conntrack's port clash), the side behind it
	// must send first, and neither side can tell which one that is. The
	// last attempt also offers the server's relay after relayAfter (at
	// once with RelayOnly, which is a single attempt); a direct path found
	// later still takes over (pipe/path).
	connectBy := time.Time{}
	var (
		sconn     *secure.Conn
		link      *path.Conn
		role      secure.Role
		start     time.Time
		lastErr   error
		lastHeard time.Time // the peer's last datagram in any attempt (path.Stats.LastHeard)
	)
	for attempt := 0; ; attempt++ {
		udp, err := path.Listen(cfg.Port, log)
		if err != nil {
			return err
		}
		match, err := cfg.meet(ctx, udp, attempt, log)
		if err != nil {
			udp.Close()
			if attempt > 0 && errors.Is(err, rendezvous.ErrPeerNotFound) {
				// The peer did not come back for another attempt: it gave
				// up on its side, or it is gone.
				if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
					return lost
				}
				return lastErr
			}
			return err
		}
		if connectBy.IsZero() {
			connectBy = time.Now().Add(cfg.ConnectTimeout)
			cfg.Status("found %s, connecting…", cfg.Peer)
		}
		role = secure.Initiator
		if match.Role == wire.RoleResponder {
			role = secure.Responder
		}
		waits := staggered(attempt, cfg.Name < cfg.Peer)
		candidates := append([]netip.AddrPort{match.PeerObserved}, match.PeerCandidates...)
		var delay time.Duration
		if waits {
			delay = 250 * time.Millisecond
		}
		last := cfg.PeerAddr.IsValid() || cfg.Relay == RelayOnly || attempt+1 >= cfg.maxAttempts() || time.Until(connectBy) < 2*attemptTimeout
		if cfg.Relay == RelayOnly && !match.Relay {
			udp.Close()
			return fmt.Errorf("%w: %w (--relay only)", ErrNoPath, ErrNoRelay)
		}
		var relayDelay time.Duration // 0: no relayed copies before a path is confirmed
		if last {
			relayDelay = relayAfter
		}
		// Probing starts now, before the RSA key is ready: the sooner both
		// NATs see outbound packets, the less the first ones clash.
		link = path.New(udp, cfg.Server, match.PairingID, candidates, log, path.Options{
			NoOffload: cfg.NoOffload, ProbeDelay: delay,
			Relay: match.Relay && cfg.Relay != RelayNever, RelayAfter: relayDelay, RelayOnly: cfg.Relay == RelayOnly, Role: match.Role,
		})
		if key == nil {
			kr := <-keyc
			if kr.err != nil {
				link.Close()
				return fmt.Errorf("generating the RSA key: %w", kr.err)
			}
			key = kr.key
		}
		timeout := time.Until(connectBy)
		if !last {
			timeout = attemptTimeout
		}
		if waits && role == secure.Initiator {
			// The initiator's Hello is its first packet to the peer.
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
		}
		start = time.Now()
		sconn, err = secure.Handshake(ctx, link, secure.Params{
			Role: role, PairingID: match.PairingID,
			Session: cfg.Session, LocalName: cfg.Name, PeerName: cfg.Peer,
			Password: cfg.Password, RSABits: cfg.RSABits, RSAKey: key,
			Timeout: timeout, Retransmit: 100 * time.Millisecond,
		})
		if err == nil {
			break
		}
		confirmed := false
		select {
		case <-link.Confirmed():
			confirmed = true
		default:
		}
		st := link.Stats()
		link.Close()
		if !st.LastHeard.IsZero() {
			lastHeard = st.LastHeard
		}
		switch {
		case errors.Is(err, secure.ErrAuth):
			return err
		case ctx.Err() != nil:
			return ErrInterrupted
		case errors.Is(err, secure.ErrPeerCancelled):
			return cfg.peerCancelled()
		case confirmed && last:
			if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
				return lost
			}
			return fmt.Errorf("handshake with %s did not complete: %w", cfg.Peer, err)
		case confirmed:
			// A path, but the handshake was too slow (a loaded machine):
			// the peer gives up on this attempt too, so meet again.
			log.Info("the handshake did not complete in time; trying again", "attempt", attempt+2)
		}
		log.Debug("no path", "attempt", attempt+1, "probes_sent", st.ProbesSent, "probes_received", st.ProbesReceived, "err", err)
		lastErr = fmt.Errorf("%w to %s within %s (tried %d addresses in %d attempts; the peer's probes %s%s)", ErrNoPath, cfg.Peer, cfg.ConnectTimeout,
			len(candidates), attempt+1, map[bool]string{true: "did arrive", false: "never arrived"}[st.ProbesReceived > 0], cfg.relayNote(match))
		if last {
			if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
				return lost
			}
			return lastErr
		}
		log.Info("no direct path yet; punching again from a new port", "attempt", attempt+2)
	}
	key = nil
	elapsed := time.Since(start)
	kind := "direct"
	if link.Relayed() {
		kind = "relay"
	}
	log.Info("connected", "path", kind, "peer", link.Peer().String(), "handshake", elapsed.Round(time.Microsecond).String(), "role", role.String())
	cfg.Status("connected to %s (%s, %s)", cfg.Peer, kind, link.Peer())

	if cfg.Chat != nil {
		if err := cfg.Chat.Start(); err != nil {
			sconn.Close()
			return err
		}
	}
	var tr stream.Transport = sconn
	if !cfg.ProbeMTU {
		tr = safeSizeOnly{sconn}
	}
	// Keepalives come often enough that a quiet session outlives an idle
	// timeout shorter than the stream's default interval.
	st := stream.New(tr, stream.Config{IdleTimeout: cfg.IdleTimeout, KeepaliveInterval: min(10*time.Second, cfg.IdleTimeout/3), Logger: log})
	if n := cfg.TransferProcs; n > 0 && n < runtime.GOMAXPROCS(0) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
	}
	err := transfer(ctx, st, cfg)
	if rerr := link.RelayError(); rerr != nil && errors.Is(err, path.ErrRelayEnded) {
		err = fmt.Errorf("lost the connection to %s: %w", cfg.Peer, rerr)
	}
	s := st.Stats()
	ss := sconn.Stats()
	log.Debug("session ended", "sent", s.BytesSent, "received", s.BytesReceived, "packets_sent", s.PacketsSent, "packets_received", s.PacketsReceived,
		"retransmits", s.Retransmits, "lost", s.LostPackets, "srtt", s.SRTT.String(), "min_rtt", s.MinRTT.String(), "cwnd", s.Cwnd, "pacing_mbps", int(s.PacingRate*8/1e6), "inflight", s.BytesInFlight,
		"sealed", ss.Sealed, "opened", ss.Opened, "forged", ss.Forged, "replayed", ss.Replayed, "malformed", ss.Malformed, "err", err)
	return err
}

// silentPeer: a peer we heard while connecting and that then stayed silent
// this long, until the connection attempts ran out, has stopped (it was
// killed, or its network went away), as opposed to a peer behind a NAT
// that lets none of its packets through.
const silentPeer = 2 * time.Second

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

// Punch attempts (see Run).
const (
	attemptTimeout = 2 * time.Second // for a path and handshake, except the last attempt
	reFindTimeout  = 5 * time.Second // for the peer to come back for another attempt
	// relayAfter: in the last attempt, the relay carries copies of the
	// handshake from this long on, so a direct path still wins when both
	// work.
	relayAfter = time.Second
)

// maxAttempts: three (at once, initiator first, responder first) before
// the relay joins in; without the relay one more, initiator first again.
func (c *Config) maxAttempts() int {
	if c.Relay == RelayNever {
		return 4
	}
	return 3
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

// staggered reports whether this side holds back its first packets in
// the given attempt: nobody in the first, then the side whose name sorts
// first, then the other, alternating. (Not by role: the server hands out
// roles afresh in every attempt.)
func staggered(attempt int, nameFirst bool) bool {
	return attempt > 0 && (attempt%2 == 1) == nameFirst
}

// meet pairs us with the peer over udp: through the rendezvous server, or
// from the names alone in direct mode.
func (cfg *Config) meet(ctx context.Context, udp *net.UDPConn, attempt int, log *slog.Logger) (rendezvous.Match, error) {
	if cfg.PeerAddr.IsValid() {
		return directMatch(*cfg), nil
	}
	port := udp.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	client := &rendezvous.Client{Conn: udp, Server: cfg.Server, Logger: log}
	timeout, onWaiting := cfg.Timeout, func() { cfg.Status("waiting for %s…", cfg.Peer) }
	if attempt > 0 {
		timeout, onWaiting = reFindTimeout, nil
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cands := path.LocalCandidates(port, cfg.Server.Addr().IsLoopback())
	if cfg.STUN.IsValid() {
		cands = cfg.stunCandidate(ctx, udp, cands, log)
	}
	log.Debug("asking the rendezvous server", "server", cfg.Server.String(), "candidates", fmt.Sprint(cands), "attempt", attempt+1)
	match, err := client.Find(fctx, rendezvous.FindRequest{
		Session: cfg.Session, Name: cfg.Name, Peer: cfg.Peer, Password: cfg.Password,
		Candidates: cands, OnWaiting: onWaiting,
	})
	switch {
	case err == nil:
		log.Debug("paired", "role", match.Role.String(), "peer_observed", match.PeerObserved.String(), "peer_candidates", fmt.Sprint(match.PeerCandidates), "observed", match.Observed.String())
		return match, nil
	case ctx.Err() != nil:
		return match, ErrInterrupted
	case errors.Is(err, rendezvous.ErrPeerNotFound) && attempt == 0:
		return match, fmt.Errorf("%s did not show up within %s: %w", cfg.Peer, cfg.Timeout, err)
	}
	return match, err
}

// stunTimeout bounds the question to the --stun server.
const stunTimeout = 2 * time.Second

// stunCandidate asks the STUN server for our reflexive address and puts it
// first among the candidates; without an answer the session goes on
// without it.
func (cfg *Config) stunCandidate(ctx context.Context, udp *net.UDPConn, cands []netip.AddrPort, log *slog.Logger) []netip.AddrPort {
	sctx, cancel := context.WithTimeout(ctx, stunTimeout)
	defer cancel()
	addr, err := rendezvous.STUNBinding(sctx, udp, cfg.STUN)
	if err != nil {
		log.Warn("the STUN server did not answer; going on without its address", "stun", cfg.STUN.String(), "err", err)
		return cands
	}
	log.Debug("reflexive address from STUN", "stun", cfg.STUN.String(), "addr", addr.String())
	if slices.Contains(cands, addr) {
		return cands
	}
	cands = append([]netip.AddrPort{addr}, cands...)
	return cands[:min(len(cands), wire.MaxCandidates)]
}

type keyResult struct {
	key *rsa.PrivateKey
	err error
}

// directMatch stands in for the rendezvous when the peer's address is
// given: both sides derive the same pairing id and roles from the names.
func directMatch(cfg Config) rendezvous.Match {
	lo, hi := cfg.Name, cfg.Peer
	if hi < lo {
		lo, hi = hi, lo
	}
	h := sha256.Sum256([]byte("p2pcat direct v1\x00" + cfg.Session + "\x00" + lo + "\x00" + hi))
	role := wire.RoleResponder
	if cfg.Name == lo {
		role = wire.RoleInitiator
	}
	return rendezvous.Match{PairingID: [16]byte(h[:16]), Role: role, PeerObserved: cfg.PeerAddr}
}

// safeSizeOnly keeps the stream to datagrams every path carries: with
// PayloadLimit equal to MaxPayload there is nothing to probe for.
type safeSizeOnly struct{ *secure.Conn }

func (s safeSizeOnly) PayloadLimit() int { return s.MaxPayload() }
