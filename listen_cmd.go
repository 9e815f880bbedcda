package main

// The listener: `p2pcat --listen [--keep-open] [--exec CMD]`, p2pcat as a
// tiny server in the netcat way (ncat -l -k -e). Without --keep-open it
// is one session with whoever finds our name; with it, peers one after
// another and several at once. The session itself is pipe's (Config.Listen
// and its hooks); this file decides when the next wait starts, and how
// failures delay it. --exec's command is listen_exec.go.
//
// Rules of the listener with --keep-open:
//   - One wait is pending in the server at any time; the next starts once
//     the pending one is paired (OnFound) and a slot is free: at most
//     --max-sessions sessions, the waiting one included, run at once.
//   - A failed handshake (a wrong password or session key, or an answer
//     of ours never confirmed: secure.ErrAuth) is logged with the peer's
//     name and address and delays the next wait by
//     min(2^(failures-1) s, maxAuthDelay); while delayed, no wait is
//     pending (the one pending is withdrawn), and while failures are
//     counted, the next wait starts only once the last paired session's
//     handshake is decided (one guess at a time). An authenticated
//     handshake resets the count.
//   - A wait that fails for the server (unreachable, lost, restarted)
//     starts again after a backoff (1 s doubling to maxServerBackoff);
//     a session's own failure is logged and the listener serves on. Only
//     what would fail every wait the same way ends it (a refused session
//     key, another protocol version, our stdout closed), or --timeout
//     given explicitly, when a wait times out (exit 3, once the sessions
//     running ended).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// The listener's bounds.
const (
	defaultMaxSessions = 8
	maxMaxSessions     = 1024
	maxAuthDelay       = 10 * time.Minute // the cap of the delay after failed handshakes
	maxServerBackoff   = 30 * time.Second // the cap of the backoff when the server is unreachable
)

func listenFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "listen", Aliases: []string{"l"}, EnvVars: []string{"P2PCAT_LISTENER"}, Usage: "wait for any peer that runs --find <your name> (no --find; its name shows in -v, the status and P2PCAT_PEER_NAME)"},
		&cli.BoolFlag{Name: "keep-open", Aliases: []string{"k"}, EnvVars: []string{"P2PCAT_KEEP_OPEN"}, Usage: "with --listen: serve peers one after another and several at once (without --exec: their data to stdout, whole lines at a time; nothing is sent)"},
		&cli.IntFlag{Name: "max-sessions", EnvVars: []string{"P2PCAT_MAX_SESSIONS"}, Value: defaultMaxSessions, Usage: fmt.Sprintf("with --keep-open: sessions at once, the waiting one included (1 to %d)", maxMaxSessions)},
		&cli.StringFlag{Name: "exec", Aliases: []string{"e"}, EnvVars: []string{"P2PCAT_EXEC"}, Usage: "run `CMD` through /bin/sh -c for each authenticated session: its stdin is what the peer sends, its stdout what we send (env P2PCAT_PEER_NAME, P2PCAT_SESSION)"},
	}
}

// listenMode reports whether the command line asks for the listener or
// --exec, which runListen handles instead of runPipe.
func listenMode(c *cli.Context) bool {
	return c.Bool("listen") || c.String("exec") != "" || c.Bool("keep-open") || c.IsSet("max-sessions")
}

// runListen is --listen (one session, or --keep-open's many) and --exec
// with --find (one session that runs the command).
func runListen(c *cli.Context) error {
	if err := checkListenFlags(c); err != nil {
		return err
	}
	// One session's data on our stdout: progress as runPipe's.
	st, err := setUp(c, !c.Bool("keep-open") && c.String("exec") == "")
	if err != nil {
		return err
	}
	cfg, prog, stderr, verbose := st.cfg, st.prog, st.stderr, st.verbose
	log := listenLogger(stderr, verbose)
	if !c.Bool("keep-open") {
		return explainPipeError(runOneSession(c, cfg, log, prog, stderr), cfg)
	}
	cfg.TransferProcs = 0 // GOMAXPROCS is process-wide: sessions run side by side
	cfg.Status = stderrStatus(c)
	l := newListener(c, cfg, log)
	return explainPipeError(l.serve(c.Context), cfg)
}

// checkListenFlags refuses the combinations that make no sense.
func checkListenFlags(c *cli.Context) error {
	listen := c.Bool("listen")
	switch n := c.Int("max-sessions"); {
	case !listen && c.Bool("keep-open"):
		return usagef("--keep-open serves one peer after another: it goes with --listen")
	case !c.Bool("keep-open") && c.IsSet("max-sessions"):
		return usagef("--max-sessions goes with --listen --keep-open")
	case n < 1 || n > maxMaxSessions:
		return usagef("--max-sessions %d: want 1 to %d", n, maxMaxSessions)
	case listen && c.String("find") != "":
		return usagef("--listen waits for whoever finds your --name: it does not go with --find")
	case listen && c.String("peer") != "":
		return usagef("--listen needs the rendezvous server: it does not go with --peer")
	case c.IsSet("exec") && strings.TrimSpace(c.String("exec")) == "":
		return usagef("--exec: give the command to run")
	}
	return nil
}

// listenLogger logs the listener's own events to w: failures (a wrong
// password, a failed session) always, sessions' starts and ends with -v.
func listenLogger(w io.Writer, verbose int) *slog.Logger {
	level := slog.LevelWarn
	switch {
	case verbose >= 2:
		level = slog.LevelDebug
	case verbose == 1:
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// runOneSession runs one session: --listen without --keep-open, or --exec
// with --find. It ends as a normal session does, with its exit codes.
// Without --exec, prog (nil for none) shows the transfer, and the status
// lines go to stderr.
func runOneSession(c *cli.Context, cfg pipe.Config, log *slog.Logger, prog *progress, stderr io.Writer) error {
	var name string // the peer's, as the server paired us
	var from netip.AddrPort
	cfg.OnFound = func(peer string, addr netip.AddrPort) {
		name, from = peer, addr
		log.Info("peer found", "peer", peer, "addr", addr.String())
	}
	var err error
	if command := c.String("exec"); command != "" {
		ex := newExecSession(command, cfg.Session, c.App.ErrWriter, log)
		ex.attach(&cfg)
		cfg.Status = stderrStatus(c)
		err = pipe.Run(c.Context, cfg)
		ex.finish()
	} else {
		closeChat, terr := listenTerminal(c, &cfg, stderr)
		if terr != nil {
			return terr
		}
		prog.watch(&cfg, verbosity(c))
		err = pipe.Run(c.Context, cfg)
		prog.finish(err)
		closeChat()
	}
	var failed *commandFailed
	switch {
	case errors.Is(err, secure.ErrAuth):
		log.Warn(wrongPassword(name, from), "err", err)
	case errors.As(err, &failed):
		return fmt.Errorf("%w (%s was told)", failed, name)
	}
	return err
}

// listenTerminal is pipeTerminal for a session whose peer's name is not
// known yet: the chat opens with the peer's lines labelled "peer" and
// names them once the handshake authenticated the peer. Not at OnFound:
// the server's word is trustworthy only once the handshake, which binds
// the name, succeeded; and no line arrives before it anyway.
func listenTerminal(c *cli.Context, cfg *pipe.Config, stderr io.Writer) (func(), error) {
	if !cfg.Listen {
		return pipeTerminal(c, cfg, stderr)
	}
	labelled := *cfg
	labelled.Peer = "peer"
	closeChat, err := pipeTerminal(c, &labelled, stderr)
	cfg.Chat, cfg.Status, cfg.EndOnPeerEOF = labelled.Chat, labelled.Status, labelled.EndOnPeerEOF
	if chat := cfg.Chat; chat != nil {
		cfg.OnAuthenticated = func(peer string) error { chat.SetPeer(peer); return nil }
	}
	return closeChat, err
}

// stderrStatus shows the sessions' status lines on stderr when it is a
// terminal (nil: nowhere), as pipeTerminal does without the chat.
func stderrStatus(c *cli.Context) func(format string, args ...any) {
	if !isTerminal(c.App.ErrWriter) {
		return nil
	}
	return func(format string, args ...any) {
		fmt.Fprintf(c.App.ErrWriter, "p2pcat: %s\n", fmt.Sprintf(format, args...))
	}
}

// wrongPassword is the log line of a failed handshake.
func wrongPassword(peer string, from netip.AddrPort) string {
	return fmt.Sprintf("wrong password from %s at %s", peer, from)
}

// listener serves peers with --keep-open (the rules at the top).
type listener struct {
	base    pipe.Config
	command string // --exec; "" puts the peers' data on out
	log     *slog.Logger
	stderr  io.Writer
	out     *lineWriter
	slots   chan struct{} // one per session running or waiting
	fatal   chan error    // an error that ends the listener; the first one counts
	wg      sync.WaitGroup

	mu             sync.Mutex
	pending        *wait     // the wait in the server, nil when none
	failures       int       // failed handshakes since the last authenticated one
	serverFailures int       // waits in a row that failed before a pairing
	notBefore      time.Time // the next wait starts no earlier
}

func newListener(c *cli.Context, cfg pipe.Config, log *slog.Logger) *listener {
	return &listener{
		base: cfg, command: c.String("exec"), log: log, stderr: c.App.ErrWriter,
		out:   &lineWriter{w: c.App.Writer},
		slots: make(chan struct{}, c.Int("max-sessions")),
		fatal: make(chan error, 1),
	}
}

// wait is one session of the listener, from its wait in the server on.
type wait struct {
	n         int // from 1
	ctx       context.Context
	cancel    context.CancelFunc
	found     chan struct{} // closed when the server paired it
	decided   chan struct{} // closed when its handshake succeeded or the session ended
	ended     chan struct{} // closed when the session ended
	decide    sync.Once
	paired    bool // guarded by listener.mu, as withdrawn
	withdrawn bool // cancelled before a pairing: a failed handshake delays the next wait
	peer      string
	from      netip.AddrPort
}

// serve runs waits until ctx ends or an error ends the listener. It
// returns once every session ended.
func (l *listener) serve(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		l.wg.Wait()
	}()
	for n := 1; ; n++ {
		select {
		case l.slots <- struct{}{}:
		case <-ctx.Done():
			return pipe.ErrInterrupted
		case err := <-l.fatal:
			return l.stop(err)
		}
		if err := l.pause(ctx); err != nil {
			return l.stop(err)
		}
		w := l.start(sctx, n)
		if err := l.await(ctx, w); err != nil {
			return l.stop(err)
		}
	}
}

// stop is serve's error: a timed-out wait (--timeout) lets the sessions
// running end first.
func (l *listener) stop(err error) error {
	if errors.Is(err, rendezvous.ErrPeerNotFound) {
		l.wg.Wait()
	}
	return err
}

// pause waits until the next wait may start (notBefore, which may move
// while we wait).
func (l *listener) pause(ctx context.Context) error {
	for {
		l.mu.Lock()
		d := time.Until(l.notBefore)
		l.mu.Unlock()
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return pipe.ErrInterrupted
		case err := <-l.fatal:
			t.Stop()
			return err
		}
	}
}

// await returns once the next wait may start after w: w was paired (and,
// while failures are counted, its handshake decided) or it ended.
func (l *listener) await(ctx context.Context, w *wait) error {
	for _, ch := range []chan struct{}{w.found, w.decided} {
		select {
		case <-ch:
		case <-w.ended:
			return nil
		case <-ctx.Done():
			return pipe.ErrInterrupted
		case err := <-l.fatal:
			return err
		}
		l.mu.Lock()
		oneAtATime := l.failures > 0
		l.mu.Unlock()
		if !oneAtATime {
			return nil
		}
	}
	return nil
}

// start begins session n: its wait in the server, then whatever comes.
func (l *listener) start(ctx context.Context, n int) *wait {
	w := &wait{n: n, found: make(chan struct{}), decided: make(chan struct{}), ended: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(ctx)
	l.mu.Lock()
	l.pending = w
	l.mu.Unlock()
	l.wg.Add(1)
	go l.run(w)
	return w
}

// run is session w's goroutine.
func (l *listener) run(w *wait) {
	defer l.wg.Done()
	defer func() { <-l.slots }()
	defer close(w.ended)
	defer w.cancel()
	cfg := l.base
	cfg.Key = nil // each session its own RSA key (the first one's began at the start)
	if w.n == 1 {
		cfg.Key = l.base.Key
	}
	cfg.Logger = l.base.Logger.With("n", w.n)
	cfg.OnFound = func(peer string, from netip.AddrPort) { l.paired(w, peer, from) }
	authenticated := func(string) error { l.authenticated(w); return nil }
	var ex *execSession
	if l.command != "" {
		ex = newExecSession(l.command, cfg.Session, l.stderr, l.log.With("n", w.n))
		ex.attach(&cfg)
		start := cfg.OnAuthenticated
		authenticated = func(peer string) error { l.authenticated(w); return start(peer) }
	} else {
		cfg.Stdin, cfg.Stdout = strings.NewReader(""), l.out
	}
	cfg.OnAuthenticated = authenticated
	err := pipe.Run(w.ctx, cfg)
	if ex != nil {
		ex.finish()
	}
	w.decide.Do(func() { close(w.decided) })
	l.ended(w, err)
}

// paired: the server paired w with a peer.
func (l *listener) paired(w *wait, peer string, from netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w.peer, w.from, w.paired = peer, from, true
	l.serverFailures = 0
	if l.pending == w {
		l.pending = nil
	}
	close(w.found)
	l.log.Info("peer found", "n", w.n, "peer", peer, "addr", from.String())
}

// authenticated: w's handshake succeeded.
func (l *listener) authenticated(w *wait) {
	l.mu.Lock()
	l.failures = 0
	l.mu.Unlock()
	w.decide.Do(func() { close(w.decided) })
	l.log.Info("authenticated", "n", w.n, "peer", w.peer, "addr", w.from.String())
}

// ended logs how session w ended and draws the consequences: the delay of
// the next wait, or the end of the listener.
func (l *listener) ended(w *wait, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == w {
		l.pending = nil
	}
	switch {
	case err == nil:
		l.log.Info("session ended", "n", w.n, "peer", w.peer)
	case w.withdrawn && !w.paired:
		l.log.Debug("wait withdrawn: a failed handshake delays the next one", "n", w.n)
	case errors.Is(err, pipe.ErrInterrupted):
		// the listener is stopping
	case errors.Is(err, secure.ErrAuth):
		l.authFailedLocked(w, err)
	case errors.Is(err, pipe.ErrPeerNameRefused):
		l.log.Warn(err.Error(), "n", w.n)
	case fatalForListener(err, l.command != ""):
		select {
		case l.fatal <- err:
		default:
		}
	case !w.paired:
		l.serverFailures++
		d := min(time.Second<<min(l.serverFailures-1, 10), maxServerBackoff)
		l.notBefore = later(l.notBefore, time.Now().Add(d))
		l.log.Warn("waiting for a peer failed; waiting again after a pause", "n", w.n, "pause", d.String(), "err", err)
	default:
		l.log.Warn(fmt.Sprintf("session with %s failed", w.peer), "n", w.n, "addr", w.from.String(), "err", err)
	}
}

// authFailedLocked counts w's failed handshake, delays the next wait and
// withdraws the one pending, if it is not paired yet.
func (l *listener) authFailedLocked(w *wait, err error) {
	l.failures++
	d := authDelay(l.failures)
	l.notBefore = later(l.notBefore, time.Now().Add(d))
	if p := l.pending; p != nil && !p.paired {
		p.withdrawn = true
		p.cancel()
		l.pending = nil
	}
	l.log.Warn(wrongPassword(w.peer, w.from), "n", w.n, "failures", l.failures, "next_wait_in", d.String(), "err", err)
}

// authDelay is the pause before the next wait after failures failed
// handshakes in a row: 1 s, 2 s, 4 s, … up to maxAuthDelay.
func authDelay(failures int) time.Duration {
	if failures < 1 {
		return 0
	}
	return min(time.Second<<min(failures-1, 20), maxAuthDelay)
}

// fatalForListener reports whether err would end every wait the same way,
// so that the listener stops: our session key refused or missing, another
// protocol version, our own stdout closed (without --exec), a --timeout
// that ran out.
func fatalForListener(err error, exec bool) bool {
	switch {
	case errors.Is(err, rendezvous.ErrSessionKeyRefused), errors.Is(err, rendezvous.ErrSessionKeyNeeded),
		errors.Is(err, rendezvous.ErrVersionMismatch), errors.Is(err, rendezvous.ErrPeerNotFound):
		return true
	case errors.Is(err, pipe.ErrOutputClosed):
		return !exec
	}
	return false
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// lineWriter is the listener's stdout, shared by its sessions: each Write
// is whole lines (pipe/frame's rules), and the lock keeps one session's
// lines from breaking into another's.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lineWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.Write(p)
}
