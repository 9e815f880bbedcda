package pipe

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// The connect step: find the peer, punch a path, and run the session's one
// handshake, over as many punch attempts as it takes.
//
// Attempts: the first punches at once from both sides. When no path
// appears, both sides (they fail at about the same moment) meet again from
// fresh ports and punch with one side holding back its first packets, then
// the other: on a NAT that lets the peer's early probe claim the port
// mapping (conntrack's port clash), the side behind it must send first, and
// neither side can tell which one that is. The last attempt also offers the
// server's relay after relayAfter (at once with RelayOnly, which is a
// single attempt); a direct path found later still takes over (pipe/path).
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

// Punch attempts.
const (
	attemptTimeout = 2 * time.Second // for a path and handshake, except the last attempt
	answerGrace    = time.Second     // more for a responder that answered, before it moves on
	reFindTimeout  = 5 * time.Second // for the peer to come back for another attempt
	// relayAfter: in the last attempt, the relay carries copies of the
	// handshake from this long on, so a direct path still wins when both
	// work.
	relayAfter = time.Second
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
func (cfg *Config) connect(ctx context.Context, keys <-chan keyResult, log *slog.Logger) (sconn *secure.Conn, link *path.Conn, took time.Duration, err error) {
	var (
		hs        *secure.Handshaker
		connectBy time.Time
		lastErr   error
		lastHeard time.Time // the peer's last datagram in any attempt (path.Stats.LastHeard)
	)
	defer func() {
		if hs == nil {
			return
		}
		// A responder that answered a Hello and never got a valid Finish
		// says so, whatever else ended the attempts (but an interrupt is
		// reported as one).
		if cerr := hs.Close(); cerr != nil && err != nil && ctx.Err() == nil && !errors.Is(err, secure.ErrAuth) {
			err = cerr
		}
	}()
	for attempt := 0; ; attempt++ {
		udp, err := path.Listen(cfg.Port, log)
		if err != nil {
			return nil, nil, 0, err
		}
		match, err := cfg.meet(ctx, udp, attempt, log)
		if err != nil {
			udp.Close()
			if attempt > 0 && errors.Is(err, rendezvous.ErrPeerNotFound) {
				// The peer did not come back for another attempt: it gave
				// up on its side, or it is gone.
				if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
					return nil, nil, 0, lost
				}
				return nil, nil, 0, lastErr
			}
			return nil, nil, 0, err
		}
		if connectBy.IsZero() {
			connectBy = time.Now().Add(cfg.ConnectTimeout)
			cfg.Status("found %s, connecting…", cfg.Peer)
		}
		if cfg.Relay == RelayOnly && !match.Relay {
			udp.Close()
			return nil, nil, 0, fmt.Errorf("%w: %w (--relay only)", ErrNoPath, ErrNoRelay)
		}
		last := cfg.PeerAddr.IsValid() || cfg.Relay == RelayOnly || attempt+1 >= cfg.maxAttempts() || time.Until(connectBy) < 2*attemptTimeout
		var delay time.Duration
		if staggered(attempt, cfg.Name < cfg.Peer) {
			delay = 250 * time.Millisecond
		}
		var relayDelay time.Duration // 0: no relayed copies before a path is confirmed
		if last {
			relayDelay = relayAfter
		}
		// Probing starts now, before the RSA key is ready: the sooner both
		// NATs see outbound packets, the less the first ones clash.
		candidates := append([]netip.AddrPort{match.PeerObserved}, match.PeerCandidates...)
		p := path.New(udp, cfg.Server, match.PairingID, candidates, log, path.Options{
			NoOffload: cfg.NoOffload, ProbeDelay: delay,
			Relay: match.Relay && cfg.Relay != RelayNever, RelayAfter: relayDelay, RelayOnly: cfg.Relay == RelayOnly, Role: match.Role,
			RelayToken: match.RelayToken,
		})
		if hs == nil {
			if hs, err = cfg.newHandshaker(ctx, keys); err != nil {
				p.Close()
				return nil, nil, 0, err
			}
		}
		deadline := connectBy
		if !last {
			deadline = earlier(connectBy, time.Now().Add(attemptTimeout))
		}
		start := time.Now()
		extended := false
		for {
			sconn, err = hs.Run(ctx, p, deadline)
			if err == nil {
				return sconn, p, time.Since(start), nil
			}
			if !errors.Is(err, secure.ErrAttemptTimeout) || !deadline.Before(connectBy) {
				break
			}
			if hs.HasKeys() || isClosed(p.Confirmed()) {
				// The path carries the handshake: stay on it.
				deadline = connectBy
				continue
			}
			if hs.Answered() && !extended {
				deadline, extended = earlier(connectBy, deadline.Add(answerGrace)), true
				continue
			}
			break
		}
		confirmed := isClosed(p.Confirmed())
		st := p.Stats()
		p.Close()
		if !st.LastHeard.IsZero() {
			lastHeard = st.LastHeard
		}
		switch {
		case errors.Is(err, secure.ErrAuth):
			return nil, nil, 0, err
		case ctx.Err() != nil:
			return nil, nil, 0, ErrInterrupted
		case errors.Is(err, secure.ErrPeerCancelled):
			return nil, nil, 0, cfg.peerCancelled()
		case errors.Is(err, secure.ErrPeerVersion):
			return nil, nil, 0, err
		case errors.Is(err, path.ErrRelayEnded):
			return nil, nil, 0, fmt.Errorf("connecting to %s: %w", cfg.Peer, err)
		case confirmed && last:
			if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
				return nil, nil, 0, lost
			}
			return nil, nil, 0, fmt.Errorf("handshake with %s did not complete: %w", cfg.Peer, err)
		}
		log.Debug("no path", "attempt", attempt+1, "probes_sent", st.ProbesSent, "probes_received", st.ProbesReceived, "amp_limited", st.AmpLimited, "err", err)
		lastErr = fmt.Errorf("%w to %s within %s (tried %d addresses in %d attempts; the peer's probes %s%s)", ErrNoPath, cfg.Peer, cfg.ConnectTimeout,
			len(candidates), attempt+1, map[bool]string{true: "did arrive", false: "never arrived"}[st.ProbesReceived > 0], cfg.relayNote(match))
		if last {
			if lost := cfg.lostWhileConnecting(lastHeard); lost != nil {
				return nil, nil, 0, lost
			}
			return nil, nil, 0, lastErr
		}
		log.Info("no direct path yet; punching again from a new port", "attempt", attempt+2)
	}
}

// newHandshaker waits for the session's RSA key and starts the run's one
// handshake.
func (cfg *Config) newHandshaker(ctx context.Context, keys <-chan keyResult) (*secure.Handshaker, error) {
	var kr keyResult
	select {
	case kr = <-keys:
	case <-ctx.Done():
		return nil, ErrInterrupted
	}
	if kr.err != nil {
		return nil, fmt.Errorf("generating the RSA key: %w", kr.err)
	}
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
// first, then the other, alternating.
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
	warned := false
	match, err := client.Find(fctx, rendezvous.FindRequest{
		Session: cfg.Session, Name: cfg.Name, Peer: cfg.Peer, SessionKey: cfg.SessionKey,
		Candidates: cands, OnWaiting: onWaiting,
		OnUnregistered: func() {
			if !warned && attempt == 0 {
				warned = true
				cfg.Warn("session %q is not registered on %s (did its registration expire?); going on with its key, which the peer needs too", cfg.Session, cfg.Server)
			}
		},
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

// A Find offers at most wire.MaxCandidates addresses, ours and the peer's
// alike; the path probes the peer's observed address, the
// wire.MaxCandidates it offered, and addresses it learns from the peer's
// probes, up to path.MaxCandidates in all. This fails to compile when
// path's bound leaves no room for what the rendezvous hands it.
const _ uint = path.MaxCandidates - (1 + wire.MaxCandidates)

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
// given: both sides derive the same pairing id (for the probes) from the
// names.
func directMatch(cfg Config) rendezvous.Match {
	lo, hi := cfg.Name, cfg.Peer
	if hi < lo {
		lo, hi = hi, lo
	}
	h := sha256.Sum256([]byte("p2pcat direct v2\x00" + cfg.Session + "\x00" + lo + "\x00" + hi))
	role := wire.RoleResponder
	if cfg.Name == lo {
		role = wire.RoleInitiator
	}
	return rendezvous.Match{PairingID: [16]byte(h[:16]), Role: role, PeerObserved: cfg.PeerAddr}
}
