package pipe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/p2pcat/p2pcat/internal/textsafe"
	"github.com/p2pcat/p2pcat/pipe/stream"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// The listener's side of a session (Config.Listen): the wait for any
// peer, the name it learns from the server, and the hooks that let the
// command serve the peer only once the handshake authenticated it.
//
// The name comes from the server, which may lie: the handshake binds both
// names (secure.Params LocalName, PeerName), so a peer that found another
// name than the one the server told us fails the handshake. What the name
// can still do before the handshake is end up in a path (a script's
// `tar x -C /backups/"$P2PCAT_PEER_NAME"`): a listener refuses names that
// would leave their directory or hide in it.

// ErrPeerNameRefused is matched by a *PeerNameError.
var ErrPeerNameRefused = errors.New("not usable as a file name")

// PeerNameError: a listener refused the name the server paired it with.
type PeerNameError struct {
	Name string
	From netip.AddrPort // where the server saw the peer
}

func (e *PeerNameError) Error() string {
	return fmt.Sprintf("refused peer name %q from %s: %v", textsafe.Line(e.Name), e.From, ErrPeerNameRefused)
}

func (e *PeerNameError) Unwrap() error { return ErrPeerNameRefused }

// UsableAsFileName reports whether a peer's name can be one element of a
// path: no '/' or '\', and no leading '.' (which covers "." and "..").
func UsableAsFileName(name string) bool {
	return name != "" && !strings.ContainsAny(name, `/\`) && !strings.HasPrefix(name, ".")
}

// checkListen checks the listener's settings.
func (cfg *Config) checkListen() error {
	switch {
	case !cfg.Listen:
		return nil
	case cfg.Peer != "":
		return errors.New("a listener learns its peer's name from the server: Peer must be empty")
	case cfg.PeerAddr.IsValid():
		return errors.New("a listener needs the rendezvous server: it does not go with PeerAddr")
	}
	return nil
}

// findWait is the first Find's wait (Timeout, or none with WaitForever)
// or a later attempt's (reFindTimeout), and the status shown when the
// server confirms that we wait.
func (cfg *Config) findWait(ctx context.Context, attempt int) (context.Context, context.CancelFunc, func()) {
	if attempt > 0 {
		fctx, cancel := context.WithTimeout(ctx, reFindTimeout)
		return fctx, cancel, nil
	}
	onWaiting := func() { cfg.Status("waiting for %s…", cfg.Peer) }
	if cfg.Listen {
		onWaiting = func() { cfg.Status("waiting for a peer to find %s…", cfg.Name) }
	}
	if cfg.WaitForever {
		fctx, cancel := context.WithCancel(ctx)
		return fctx, cancel, onWaiting
	}
	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	return fctx, cancel, onWaiting
}

// found takes the first attempt's match: a listener learns the peer's
// name from it (or refuses it), and OnFound hears of it.
func (cfg *Config) found(m rendezvous.Match) error {
	if cfg.Listen {
		if !UsableAsFileName(m.PeerName) {
			return &PeerNameError{Name: m.PeerName, From: m.PeerObserved}
		}
		cfg.Peer = m.PeerName
	}
	if cfg.OnFound != nil {
		cfg.OnFound(cfg.Peer, m.PeerObserved)
	}
	return nil
}

// authenticated runs OnAuthenticated once the handshake succeeded; when it
// fails, the peer is told (its input failed, in the error's words) and
// the stream is closed.
func (cfg *Config) authenticated(st *stream.Conn) error {
	if cfg.OnAuthenticated == nil {
		return nil
	}
	if err := cfg.OnAuthenticated(cfg.Peer); err != nil {
		st.Abort(stream.AbortInputFailed, err.Error())
		return fmt.Errorf("serving %s: %w", cfg.Peer, err)
	}
	return nil
}
