// Package pipe is the client session of p2pcat: it finds the peer through
// the rendezvous server, punches a UDP path (pipe/path), authenticates and
// keys the session (pipe/secure), runs a reliable byte stream over it
// (pipe/stream), and links it to stdin/stdout with line framing
// (pipe/frame) or to the interactive chat (pipe/term).
//
// It owns the session's story and nothing below it: Run (this file), the
// connect step with its attempts and the run's one handshake (connect.go),
// the rendezvous side of an attempt (meet.go), a listener's side of it
// (listen.go: the name learned from the server, the hooks that serve an
// authenticated peer), and the link of the stream to stdin/stdout
// (transfer.go). It may import its layers (pipe/path,
// pipe/secure, pipe/stream, pipe/frame, pipe/term), the rendezvous client
// and its wire messages, and internal/ helpers; never the server side,
// and no layer imports pipe back. Only the command (package main) uses it.
//
// Data flows one way through the layers: path → secure → stream → frame.
package pipe

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous"
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
	// SessionKey is the registered session's key (nil: the session is not
	// registered). Finds prove it to the server; the handshake binds it
	// with the password, so the peer must have it too.
	SessionKey *rendezvous.SessionKey
	// Key, when set, is an RSA key StartKey began earlier, which the
	// session uses if it is of RSABits (else it generates its own); Run
	// stops a Key it took when it returns (Key.Stop).
	Key *Key

	Timeout        time.Duration // for the peer to show up (default 2 min)
	ConnectTimeout time.Duration // for a path and handshake once paired (default 15 s)
	IdleTimeout    time.Duration // peer silence that ends the session (default 30 s)
	RSABits        int           // ephemeral RSA key size (default 2048)
	Port           int           // local UDP port (default: any)
	NoOffload      bool          // no UDP GSO/GRO: sendmmsg/recvmmsg batches of whole datagrams
	// ProbeMTU lets the stream probe for datagrams larger than 1200 bytes
	// (path MTU discovery, pipe/stream/pmtu.go): up to 64 KiB on loopback,
	// which saves CPU per byte there (fewer datagrams for the same bytes).
	// The command line turns it on unless --no-mtu-probe.
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
	// wake-ups, which cost a good part of the CPU per byte on loopback
	// (README, Performance; scripts/bench.sh). GOMAXPROCS is process-wide:
	// only a process that runs one session at a time (the command line)
	// should set this.
	TransferProcs int

	// Listen waits for any peer that finds our Name (Peer must be ""): the
	// first Find asks the server for whoever comes, and the name it pairs
	// us with becomes Peer for the handshake (which binds it), the roles,
	// the logs and the status. A name that contains '/' or '\\' or starts
	// with '.' is refused before the handshake (a *PeerNameError): scripts
	// put it in paths (listen.go).
	Listen bool
	// WaitForever: the first Find waits until ctx ends, not Timeout (a
	// listener without --timeout).
	WaitForever bool
	// OnFound, if set, is called once, when the server paired us with the
	// peer (before the handshake), with its name and the address the
	// server saw it at.
	OnFound func(peer string, from netip.AddrPort)
	// OnAuthenticated, if set, is called once the handshake succeeded,
	// before the transfer starts: nothing that serves the peer (a command
	// to run) may start before it. An error ends the session: the peer is
	// told its input failed, with the error's text.
	OnAuthenticated func(peer string) error
	// OnPeerEOF, if set, is called once the peer finished sending and
	// every byte of its was written to Stdout: a command reading it sees
	// its end of input when Stdout is closed then.
	OnPeerEOF func()

	// Stdin and Stdout are the session's input and output. Run returns
	// with no goroutine of its own left when it can end a pending Read of
	// Stdin or Write of Stdout: where they have SetReadDeadline or
	// SetWriteDeadline (os.Pipe, net.Conn, a non-blocking *os.File), Run
	// ends that call with a past deadline, then clears the deadline (one
	// the caller set is lost); what the call got is dropped. A call that
	// nothing can interrupt (a blocking fd such as a terminal, whose
	// SetReadDeadline fails with os.ErrNoDeadline; any other io.Reader;
	// the chat) is left pending: its goroutine, the only one of Run's that
	// can outlive it, ends when the call returns, touching nothing else.
	Stdin  io.Reader
	Stdout io.Writer
	// Chat, when set, replaces Stdin/Stdout with the interactive chat.
	Chat *term.Chat
	// EndOnPeerEOF ends the session when the peer finishes sending, as a
	// chat ends when the other side leaves (stdin is a terminal).
	EndOnPeerEOF bool
	// Status shows progress to a human (nil: nowhere).
	Status func(format string, args ...any)
	// Warn shows a warning on stderr, even in a script (nil: nowhere).
	Warn   func(format string, args ...any)
	Logger *slog.Logger
	// OnConnected, if set, watches the session once connected (observe.go).
	OnConnected func(Session)

	// testOnlyConnected, if set, is called with the path once the session
	// is connected (the soak test closes it: a peer that dies).
	testOnlyConnected func(*path.Conn)
	// testOnlyGenerateKey, if set, generates the RSA key instead of
	// secure.GenerateKey (the leak test holds it back).
	testOnlyGenerateKey func(ctx context.Context, bits int) (*rsa.PrivateKey, error)
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
		return DefaultRelay, nil
	}
	return "", fmt.Errorf("relay mode %q: want auto, never or only", s)
}

// Defaults of Config's zero values. The command line's flags show the
// same values: they are written here only.
const (
	DefaultTimeout        = 2 * time.Minute       // for the peer to show up
	DefaultConnectTimeout = 15 * time.Second      // for a path and handshake once paired
	DefaultIdleTimeout    = 30 * time.Second      // peer silence that ends a session
	DefaultRSABits        = secure.DefaultRSABits // the ephemeral RSA key's size
	DefaultRelay          = RelayAuto             // when the relay may carry the session
)

func (c *Config) setDefaults() {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.RSABits == 0 {
		c.RSABits = DefaultRSABits
	}
	if c.Relay == "" {
		c.Relay = DefaultRelay
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Status == nil {
		c.Status = func(string, ...any) {}
	}
	if c.Warn == nil {
		c.Warn = func(string, ...any) {}
	}
}

// Run performs one session and returns nil only when every byte was
// delivered and acknowledged both ways: find the peer, connect (punch,
// handshake, relay fallback: connect.go), transfer. Every goroutine it
// starts has ended when it returns, but for a read of Stdin or a write of
// Stdout that nothing can interrupt (see Config.Stdin); a key generation
// it did not need (Config.Key, or its own) is stopped.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	if err := secure.CheckRSABits(cfg.RSABits); err != nil {
		return err
	}
	if err := cfg.checkListen(); err != nil {
		return err
	}
	key := cfg.generateKey() // while the rendezvous runs
	defer key.Stop()
	sconn, link, took, err := cfg.connect(ctx, key.result)
	if err != nil {
		return err
	}
	cfg.connected(link, took)
	if cfg.Chat != nil {
		if err := cfg.Chat.Start(); err != nil {
			sconn.Close()
			return err
		}
	}
	st := cfg.newStream(sconn)
	if err := cfg.authenticated(st); err != nil {
		logSessionEnd(cfg.Logger, st, sconn, err)
		return err
	}
	if n := cfg.TransferProcs; n > 0 && n < runtime.GOMAXPROCS(0) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
	}
	err = transfer(ctx, st, cfg)
	if rerr := link.RelayError(); rerr != nil && errors.Is(err, path.ErrRelayEnded) {
		err = fmt.Errorf("lost the connection to %s: %w", cfg.Peer, rerr)
	}
	logSessionEnd(cfg.Logger, st, sconn, err)
	return err
}

// connected tells that the session is connected: the log's "connected"
// line, the status, and testOnlyConnected.
func (cfg *Config) connected(link *path.Conn, took time.Duration) {
	if cfg.testOnlyConnected != nil {
		cfg.testOnlyConnected(link)
	}
	kind := "direct"
	if link.Relayed() {
		kind = "relay"
	}
	cfg.Logger.Info("connected", "path", kind, "peer", link.Peer().String(), "handshake", took.Round(time.Microsecond).String(), "role", secure.RoleFor(cfg.Name, cfg.Peer).String())
	cfg.Status("connected to %s (%s, %s)", cfg.Peer, kind, link.Peer())
	cfg.observeConnected(link)
}

// newStream starts the session's reliable stream over the secure Conn.
func (cfg *Config) newStream(sconn *secure.Conn) *stream.Conn {
	var tr stream.Transport = sconn
	if !cfg.ProbeMTU {
		tr = safeSizeOnly{sconn}
	}
	// Keepalives come often enough that a quiet session outlives an idle
	// timeout shorter than the stream's default interval.
	return stream.New(tr, stream.Config{IdleTimeout: cfg.IdleTimeout, KeepaliveInterval: min(10*time.Second, cfg.IdleTimeout/3), Logger: cfg.Logger})
}

// logSessionEnd logs the counters of the stream and of the secure Conn.
func logSessionEnd(log *slog.Logger, st *stream.Conn, sconn *secure.Conn, err error) {
	s := st.Stats()
	ss := sconn.Stats()
	log.Debug("session ended", "sent", s.BytesSent, "received", s.BytesReceived, "packets_sent", s.PacketsSent, "packets_received", s.PacketsReceived,
		"retransmits", s.Retransmits, "lost", s.LostPackets, "srtt", s.SRTT.String(), "min_rtt", s.MinRTT.String(), "cwnd", s.Cwnd, "pacing_mbps", int(s.PacingRate*8/1e6), "inflight", s.BytesInFlight,
		"sealed", ss.Sealed, "opened", ss.Opened, "forged", ss.Forged, "replayed", ss.Replayed, "malformed", ss.Malformed, "err", err)
}

// safeSizeOnly keeps the stream to datagrams every path carries: with
// PayloadLimit equal to MaxPayload there is nothing to probe for.
type safeSizeOnly struct{ *secure.Conn }

func (s safeSizeOnly) PayloadLimit() int { return s.MaxPayload() }
