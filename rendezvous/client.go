package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/p2pcat/p2pcat/internal/textsafe"
	"github.com/p2pcat/p2pcat/rendezvous/wire"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// PacketConn is the socket the client talks through. *net.UDPConn
// satisfies it. The pipe passes the same socket it later punches with, so the
// address the server observes is the NAT mapping the peer must reach.
type PacketConn interface {
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	SetReadDeadline(t time.Time) error
}

var _ PacketConn = (*net.UDPConn)(nil)

// Errors a client call can return; the CLI maps them to exit codes.
var (
	// ErrSessionKeyRefused: the server refused our session key (a wrong key for a
	// registered session, or a Register whose signature it did not accept).
	ErrSessionKeyRefused = errors.New("authentication failed")
	// ErrTaken: Register of a session that is registered with another key.
	ErrTaken = errors.New("session taken: it is registered with another session key")
	// ErrSessionKeyNeeded: the server says the session is registered and
	// the user gave no session key. Nothing but the Hello was sent.
	ErrSessionKeyNeeded = errors.New("the session is registered on this server: give its session key")
	// ErrVersionMismatch: the server speaks another protocol version.
	ErrVersionMismatch = errors.New("the rendezvous server speaks another protocol version")
	ErrPeerNotFound    = errors.New("peer did not show up")
	ErrNoServer        = errors.New("rendezvous server did not answer")
	ErrServerLost      = errors.New("lost the rendezvous server")
	ErrServerRefused   = errors.New("rendezvous server refused the request")
	// ErrBadAnswer: the server's answer to a Find with our request id did
	// not decode, or named a peer we did not ask for (an invalid or
	// unexpected peer name): a broken or hostile server, never passed on.
	ErrBadAnswer = errors.New("the rendezvous server sent a malformed answer")
)

// keyNeededError is ErrSessionKeyNeeded for one session.
type keyNeededError struct{ session string }

func (e *keyNeededError) Error() string {
	return fmt.Sprintf("session %q is registered on this server: give its session key (P2PCAT_SESSION_KEY or --session-key-file)", e.session)
}

func (e *keyNeededError) Unwrap() error { return ErrSessionKeyNeeded }

// versionError is ErrVersionMismatch with what the server said.
type versionError struct {
	server  netip.AddrPort
	version int // the server's, from the Error's header; -1 when it did not say
	message string
}

func (e *versionError) Error() string {
	theirs := "another protocol version"
	if e.version >= 0 {
		theirs = fmt.Sprintf("protocol version %d", e.version)
	}
	return fmt.Sprintf("the rendezvous server at %s speaks %s, this p2pcat speaks %d (the server says: %s)",
		e.server, theirs, wire.Version, textsafe.Line(e.message))
}

func (e *versionError) Unwrap() error { return ErrVersionMismatch }

// DefaultServerTimeout is how long the server may leave everything we send
// unanswered before a call gives up: ErrNoServer when it never answered,
// ErrServerLost when it stopped. A waiting find is re-sent every 2 s and
// answered each time, so this is five unanswered re-sends in a row; a
// server that restarts within it is not noticed.
const DefaultServerTimeout = 10 * time.Second

// Client asks a rendezvous server for pairings and registrations.
type Client struct {
	Conn   PacketConn
	Server netip.AddrPort
	Logger *slog.Logger // nil discards
	// Retry is the first re-send interval; it doubles up to MaxRetry
	// (defaults 250 ms and 2 s). While a find is waiting for its peer it is
	// re-sent every MaxRetry, which also keeps the NAT mapping alive.
	Retry, MaxRetry time.Duration
	// ServerTimeout bounds the server's silence (DefaultServerTimeout when
	// zero).
	ServerTimeout time.Duration
}

func (c *Client) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Client) retries() (time.Duration, time.Duration) {
	r, m := c.Retry, c.MaxRetry
	if r <= 0 {
		r = 250 * time.Millisecond
	}
	if m <= 0 {
		m = 2 * time.Second
	}
	return r, max(r, m)
}

func (c *Client) serverTimeout() time.Duration {
	if c.ServerTimeout > 0 {
		return c.ServerTimeout
	}
	return DefaultServerTimeout
}

// ServerError is an Error reply from the server that has no sentinel of its
// own.
type ServerError struct {
	Code    wire.ErrorCode
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("rendezvous server: %s", textsafe.Line(e.Message))
}

func (e *ServerError) Unwrap() error { return ErrServerRefused }

// RegisterResult is a completed registration.
type RegisterResult struct {
	Refreshed bool // the session was already ours; its expiry moved
	Expires   time.Time
}

// MinRegisterTTL is the shortest registration a server accepts.
const MinRegisterTTL = time.Minute

// ValidSession checks a session name as the server will.
func ValidSession(s string) error { return wire.ValidName(s) }

// Register reserves session on the server for the holders of key, for ttl
// (which the server bounds: MinRegisterTTL and its own maximum). The server
// stores only key's verifier; a signature proves that we hold the key.
// Registering again with the same key refreshes the registration (its
// expiry becomes now+ttl); with another key it fails with ErrTaken while
// the registration lasts.
func (c *Client) Register(ctx context.Context, session string, key SessionKey, ttl time.Duration) (RegisterResult, error) {
	if err := wire.ValidName(session); err != nil {
		return RegisterResult{}, fmt.Errorf("session name: %w", err)
	}
	secs := uint32(math.MaxUint32) // the server refuses it: too long
	if s := ttl / time.Second; s >= 0 && s < math.MaxUint32 {
		secs = uint32(s)
	}
	ex := c.newExchange(ctx)
	ex.authErr = fmt.Errorf("%w: the server did not accept the session key's signature", ErrSessionKeyRefused)
	ch, err := ex.challenge(session)
	if err != nil {
		return RegisterResult{}, ex.final(err)
	}
	req := &wire.Register{ReqID: ex.reqID, Session: session, Verifier: key.Verifier(), TTLSeconds: secs}
	// The signature covers the cookie: a new cookie, a new signature.
	adopt := func(ch *wire.Challenge) {
		req.Cookie = ch.Cookie
		req.Signature = RegisterSignature(key, ch.ServerID, ch.Cookie, session, secs)
	}
	adopt(ch)
	for {
		reply, err := ex.roundTrip(req)
		if err != nil {
			return RegisterResult{}, ex.final(err)
		}
		switch r := reply.(type) {
		case *wire.RegisterResp:
			return RegisterResult{Refreshed: r.Status == wire.RegisterRefreshed, Expires: time.Unix(int64(r.Expires), 0)}, nil
		case *wire.Challenge: // our cookie went stale: same request, new cookie
			adopt(r)
		}
	}
}

// FindRequest says who we are and whom we want.
type FindRequest struct {
	Session, Name, Peer string
	// AnyPeer: wait for whoever finds Name (p2pcat --listen). Peer must be "".
	// The Match names the peer that found us.
	AnyPeer bool
	// Again: this Find continues a pairing this run already made (a punch
	// attempt after the first, from a fresh port). It pairs only with a Find
	// that names us, never with a listener's AnyPeer Find.
	Again bool
	// SessionKey is the session's key, when the user gave one; nil when
	// not. It is used only if the server says the session is registered:
	// then a Find without it is never sent (ErrSessionKeyNeeded).
	SessionKey *SessionKey
	Candidates []netip.AddrPort
	// OnWaiting is called once, when the server first confirms that we are
	// waiting for the peer.
	OnWaiting func()
	// OnUnregistered is called once when SessionKey is set but the server
	// says the session is not registered; the find goes on without a
	// signature.
	OnUnregistered func()
}

// Match is a completed pairing.
type Match struct {
	PairingID      [16]byte
	Role           wire.PairingRole
	Observed       netip.AddrPort // our address as the server saw it
	PeerObserved   netip.AddrPort
	PeerCandidates []netip.AddrPort
	Server         netip.AddrPort
	ServerID       [16]byte // the server's id, from its Challenge
	Relay          bool     // the server relays this pairing (rendezvous/server/relay.go)
	// RelayToken is our end's secret for the relay (wire.RelayBindMAC,
	// wire.RelayEnded.Verify); zero when the pairing is not relayed.
	RelayToken [16]byte
	// PeerName is the peer's name as it gave it to the server; always set
	// (also for normal finds), and always a wire.ValidName.
	PeerName string
	// Received is when the server's matched answer arrived (read from
	// the socket). The server sends both sides' answers together, so the
	// two sides' Received are about as far apart as the difference of
	// their one-way times from the server (a timed crossing starts from
	// it: pipe/path/crossing.go).
	Received time.Time
}

// check validates fr before anything is sent, and returns the flags its
// Find carries.
func (fr *FindRequest) check() (wire.FindFlags, error) {
	names := []string{fr.Session, fr.Name}
	var flags wire.FindFlags
	switch {
	case fr.AnyPeer && fr.Peer != "":
		return 0, fmt.Errorf("a find for any peer names no peer (got %q)", textsafe.Line(fr.Peer))
	case fr.AnyPeer && fr.Again:
		return 0, errors.New("a find for any peer cannot continue a pairing (AnyPeer and Again both set)")
	case fr.AnyPeer:
		flags |= wire.FindAnyPeer
	case fr.Peer == "":
		return 0, errors.New("no peer name: give the peer's name, or find any peer (AnyPeer)")
	default:
		names = append(names, fr.Peer)
	}
	if fr.Again {
		flags |= wire.FindAgain
	}
	for _, n := range names {
		if err := wire.ValidName(n); err != nil {
			return 0, fmt.Errorf("name %q: %w", textsafe.Line(n), err)
		}
	}
	if fr.Name == fr.Peer {
		return 0, fmt.Errorf("own name and peer name are both %q: they must differ", fr.Name)
	}
	return flags, nil
}

// Find waits until the server pairs us with the peer (with whoever finds
// fr.Name, for fr.AnyPeer) or ctx ends. When ctx ends it returns
// ErrPeerNotFound if the server was answering, ErrNoServer if it never did.
// A request that no server would accept (see FindRequest) fails before
// anything is sent.
//
// For a registered session (the Challenge says so) the Find carries a
// signature by fr.SessionKey; without a key Find returns
// ErrSessionKeyNeeded at once, having sent nothing but the Hello.
func (c *Client) Find(ctx context.Context, fr FindRequest) (_ Match, err error) {
	flags, err := fr.check()
	if err != nil {
		return Match{}, err
	}
	ex := c.newExchange(ctx)
	if udp, ok := c.Conn.(*net.UDPConn); ok {
		// The matched answer's arrival, to the microsecond (Match.Received).
		stop, ok := udpio.StampReceives(udp)
		defer stop()
		if ok {
			ex.stamped, ex.oob = udp, make([]byte, udpio.StampSpace)
		}
	}
	ex.authErr = fmt.Errorf("%w: wrong session key for registered session %q", ErrSessionKeyRefused, fr.Session)
	ch, err := ex.challenge(fr.Session)
	if err != nil {
		return Match{}, ex.final(err)
	}
	f := &finding{c: c, fr: fr, ex: ex,
		req: &wire.Find{ReqID: ex.reqID, Session: fr.Session, Name: fr.Name, Peer: fr.Peer, Flags: flags, Candidates: fr.Candidates}}
	if err := f.adopt(ch); err != nil {
		return Match{}, err
	}
	// From now on a datagram from anyone but the server is most likely the
	// peer's first probe: the server paired us, and its answer (or the
	// match it pushed to us, the first arrival) was lost or is late. Then
	// the find goes again at once, rather than at the next re-send, and the
	// server answers a matched find's re-send with the match (PROTOCOL.md
	// 2.8, rule 1). Such early re-sends are at most one per Retry: whoever
	// sends us datagrams makes us send no more than that, and only to the
	// server.
	ex.wakeOnStray = true
	matched := false
	defer func() {
		if !matched && !errors.Is(err, ErrVersionMismatch) {
			// We gave up (interrupted, --timeout, or the session turned
			// out to be registered): withdraw the find, so that the peer
			// is not paired with a client that is gone.
			ex.leave(&wire.Leave{ReqID: ex.reqID, Cookie: f.req.Cookie, Session: fr.Session, Name: fr.Name, Peer: fr.Peer})
		}
	}()
	for {
		reply, err := ex.roundTrip(f.req)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ex.heardAny {
				return Match{}, ErrPeerNotFound
			}
			return Match{}, ex.final(err)
		}
		switch r := reply.(type) {
		case *wire.Challenge:
			if err := f.adopt(r); err != nil {
				return Match{}, err
			}
		case *wire.FindResp:
			if r.Status == wire.FindMatched {
				matched = true
				c.log().Debug("rendezvous: matched", "requests", ex.sent, "took", time.Since(ex.start).String(), "waited", f.waiting)
				return f.match(r)
			}
			if err := f.wait(r); err != nil {
				return Match{}, err
			}
		}
	}
}

// finding is one Find in progress: the request as it stands and what the
// server's answers have said so far.
type finding struct {
	c        *Client
	fr       FindRequest
	ex       *exchange
	req      *wire.Find
	serverID [16]byte // from the last Challenge
	// toldUnregistered: fr.OnUnregistered has been called.
	toldUnregistered bool
	// waiting: the server has said we wait for the peer (fr.OnWaiting has
	// been called).
	waiting bool
}

// adopt takes a Challenge's cookie into the request, and signs it when the
// session is registered. Without a session key for a registered session it
// fails with ErrSessionKeyNeeded.
func (f *finding) adopt(ch *wire.Challenge) error {
	f.serverID = ch.ServerID
	f.req.Cookie = ch.Cookie
	f.req.Signature = [64]byte{}
	registered := ch.Flags&wire.ChallengeRegistered != 0
	switch {
	case registered && f.fr.SessionKey == nil:
		return &keyNeededError{f.fr.Session}
	case registered:
		f.req.Signature = FindSignatureFlags(*f.fr.SessionKey, ch.ServerID, ch.Cookie, f.fr.Session, f.fr.Name, f.fr.Peer, f.req.Flags)
	case f.fr.SessionKey != nil && !f.toldUnregistered:
		f.toldUnregistered = true
		if f.fr.OnUnregistered != nil {
			f.fr.OnUnregistered()
		}
	}
	return nil
}

// wait handles a "waiting" FindResp: it says so the first time, then
// re-sends the find at the slow pace until the peer arrives (the server
// pushes the match to us the moment it does) or another answer comes.
func (f *finding) wait(r *wire.FindResp) error {
	if !f.waiting {
		f.waiting = true
		f.c.log().Debug("waiting for peer", "observed", r.Observed.String())
		if f.fr.OnWaiting != nil {
			f.fr.OnWaiting()
		}
	}
	if err := f.ex.wait(f.req); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return ErrPeerNotFound
		}
		return f.ex.final(err)
	}
	return nil
}

// match is the Match a matched FindResp r makes. The peer's name must be a
// valid one (the decoder checks it too) and, unless we find any peer, the
// one we asked for.
func (f *finding) match(r *wire.FindResp) (Match, error) {
	if err := wire.ValidName(r.PeerName); err != nil {
		return Match{}, fmt.Errorf("%w from %s: peer name: %v", ErrBadAnswer, f.c.Server, err)
	}
	if !f.fr.AnyPeer && r.PeerName != f.fr.Peer {
		return Match{}, fmt.Errorf("%w from %s: it paired us with %q, we asked for %q",
			ErrBadAnswer, f.c.Server, textsafe.Line(r.PeerName), f.fr.Peer)
	}
	m := Match{
		PairingID: r.PairingID, Role: r.Role, Observed: r.Observed,
		PeerObserved: r.PeerObserved, PeerCandidates: r.PeerCandidates,
		Server: f.c.Server, ServerID: f.serverID, Relay: r.Relay,
		PeerName: r.PeerName, Received: f.ex.arrived,
	}
	if r.Relay {
		m.RelayToken = r.RelayToken
	}
	return m, nil
}
