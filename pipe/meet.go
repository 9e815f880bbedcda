package pipe

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// The rendezvous side of an attempt (connect.go): our candidates, the
// question to the server, and the match it answers; in direct mode
// (--peer) a match made up from the names.

// reFindTimeout: how long the peer has to come back for another attempt.
const reFindTimeout = 5 * time.Second

// meet pairs us with the peer over udp: through the rendezvous server, or
// from the names alone in direct mode. It also returns what our Find
// offered and our NAT's mapping as the server's two STUN ports saw it
// (birthday.go).
func (cfg *Config) meet(ctx context.Context, udp *net.UDPConn, attempt int) (rendezvous.Match, ourSide, error) {
	if cfg.PeerAddr.IsValid() {
		return directMatch(*cfg), ourSide{}, nil
	}
	log := cfg.Logger
	port := udp.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	client := &rendezvous.Client{Conn: udp, Server: cfg.Server, Logger: log}
	fctx, cancel, onWaiting := cfg.findWait(ctx, attempt)
	defer cancel()
	cands := path.LocalCandidates(port, cfg.Server.Addr().IsLoopback())
	if cfg.STUN.IsValid() {
		cands = cfg.stunCandidate(ctx, udp, cands)
	}
	var ours ourSide
	cands, ours.mapping = cfg.learnMapping(ctx, udp, cands, wire.MaxCandidates)
	ours.offered = cands
	log.Debug("asking the rendezvous server", "server", cfg.Server.String(), "candidates", fmt.Sprint(cands), "attempt", attempt+1)
	warned := false
	match, err := client.Find(fctx, rendezvous.FindRequest{
		Session: cfg.Session, Name: cfg.Name, Peer: cfg.Peer, SessionKey: cfg.SessionKey,
		// A listener's first Find takes whoever finds our name; every
		// later attempt's Find is for the peer of the first, and never
		// pairs with a listener (the peer's next session may wait there).
		AnyPeer: cfg.Listen && attempt == 0, Again: attempt > 0,
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
		log.Debug("paired", "role", match.Role.String(), "peer", match.PeerName, "peer_observed", match.PeerObserved.String(), "peer_candidates", fmt.Sprint(match.PeerCandidates), "observed", match.Observed.String())
		if attempt == 0 {
			return match, ours, cfg.found(match)
		}
		return match, ours, nil
	case ctx.Err() != nil:
		return match, ours, ErrInterrupted
	case errors.Is(err, rendezvous.ErrPeerNotFound) && attempt == 0 && cfg.Listen:
		return match, ours, fmt.Errorf("no peer found %s within %s: %w", cfg.Name, cfg.Timeout, err)
	case errors.Is(err, rendezvous.ErrPeerNotFound) && attempt == 0:
		return match, ours, fmt.Errorf("%s did not show up within %s: %w", cfg.Peer, cfg.Timeout, err)
	}
	return match, ours, err
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
func (cfg *Config) stunCandidate(ctx context.Context, udp *net.UDPConn, cands []netip.AddrPort) []netip.AddrPort {
	log := cfg.Logger
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
