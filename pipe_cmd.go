package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous"
)

func pipeFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "find", Aliases: []string{"f"}, EnvVars: []string{"P2PCAT_FIND"}, Usage: "the peer's `NAME`: pair with the p2pcat that runs --find <your name>"},
		&cli.StringFlag{Name: "name", Aliases: []string{"n"}, EnvVars: []string{"P2PCAT_NAME"}, Usage: "your `NAME` as the peer finds you (default: your login name)"},
		&cli.StringFlag{Name: "session", EnvVars: []string{"P2PCAT_SESSION"}, Value: "default", Usage: "session `NAME` to meet in (register one with 'p2pcat register')"},
		&cli.StringFlag{Name: "session-key-file", Aliases: []string{"K"}, EnvVars: []string{"P2PCAT_SESSION_KEY_FILE"}, Usage: "the registered session's key, from `FILE` (or the key itself in P2PCAT_SESSION_KEY)"},
		serverFlag(),
		&cli.DurationFlag{Name: "timeout", Aliases: []string{"t"}, EnvVars: []string{"P2PCAT_TIMEOUT"}, Value: pipe.DefaultTimeout, Usage: "how long to wait for the peer to show up (exit 3 after)"},
		&cli.DurationFlag{Name: "connect-timeout", EnvVars: []string{"P2PCAT_CONNECT_TIMEOUT"}, Value: pipe.DefaultConnectTimeout, Usage: "how long to try to reach the peer once it is found (exit 5 after)"},
		&cli.DurationFlag{Name: "idle-timeout", EnvVars: []string{"P2PCAT_IDLE_TIMEOUT"}, Value: pipe.DefaultIdleTimeout, Usage: "peer silence that ends the session (exit 1)"},
		&cli.IntFlag{Name: "rsa-bits", EnvVars: []string{"P2PCAT_RSA_BITS"}, Value: pipe.DefaultRSABits, Usage: "size of the ephemeral RSA key (2048 to 4096)"},
		&cli.IntFlag{Name: "port", Aliases: []string{"p"}, EnvVars: []string{"P2PCAT_PORT"}, Usage: "local UDP port (default: any free port)"},
		&cli.StringFlag{Name: "peer", EnvVars: []string{"P2PCAT_PEER"}, Usage: "skip the rendezvous: the peer is reachable at `HOST:PORT` (both sides give it, with --port)"},
		&cli.StringFlag{Name: "stun", EnvVars: []string{"P2PCAT_STUN"}, Usage: "also learn this host's public address from the STUN server at `HOST[:PORT]` (any RFC 5389 server) and offer it to the peer"},
		&cli.StringFlag{Name: "relay", EnvVars: []string{"P2PCAT_RELAY"}, Value: string(pipe.DefaultRelay), Usage: "use the server's relay: auto (when no direct path appears), never (exit 5 then), only (relay from the start)"},
		&cli.BoolFlag{Name: "no-offload", EnvVars: []string{"P2PCAT_NO_OFFLOAD"}, Usage: "no UDP GSO/GRO: batches of whole datagrams (sendmmsg/recvmmsg) instead of segmentation offload"},
		&cli.BoolFlag{Name: "no-mtu-probe", EnvVars: []string{"P2PCAT_NO_MTU_PROBE"}, Usage: "keep datagrams at 1200 bytes instead of probing the path for larger ones"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, EnvVars: []string{"P2PCAT_VERBOSE"}, Usage: "log to stderr: -v progress and the 'connected' line, -vv debug"},
		&cli.BoolFlag{Name: "progress", EnvVars: []string{"P2PCAT_PROGRESS"}, Usage: "show bytes sent and received, rate, elapsed time and path on stderr: a line redrawn in place on a terminal (the default when stderr is one and stdout is not), else a log line every 5 s (also with -v); a summary at the end; never in the chat"},
		&cli.BoolFlag{Name: "no-progress", EnvVars: []string{"P2PCAT_NO_PROGRESS"}, Usage: "no progress line or progress log lines, whatever --progress and -v say"},
	}, listenFlags()...)
}

// runPipe is the command without a subcommand: one session with the peer.
func runPipe(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("unknown command %q", c.Args().First())
	}
	if c.String("find") == "" && c.NumFlags() == 0 {
		return cli.ShowAppHelp(c)
	}
	if listenMode(c) {
		return runListen(c) // listen_cmd.go
	}
	st, err := setUp(c, true)
	if err != nil {
		return err
	}
	cfg, prog, stderr, verbose := st.cfg, st.prog, st.stderr, st.verbose
	defer cfg.Key.Stop() // Run's job, unless we fail before it
	closeChat, err := pipeTerminal(c, &cfg, stderr)
	if err != nil {
		return err
	}
	defer closeChat()
	prog.watch(&cfg, verbose)
	// scripts/setup_steps.sh reads this line: the command's own share of
	// the setup, from package main's initialisation to the session's start.
	cfg.Logger.Debug("command ready", "since_init", time.Since(processStart).String())
	err = pipe.Run(c.Context, cfg)
	prog.finish(err)
	return explainPipeError(err, cfg)
}

// setup is what a session's command has before it runs: the session's
// configuration, its progress line (nil: none) and the stderr that keeps
// that line out of the way of the log.
type setup struct {
	cfg     pipe.Config
	prog    *progress
	stderr  io.Writer
	verbose int
}

// setUp is the start runPipe and runListen share. The RSA key grows from
// its first line on, while we look up the server's name, read the session
// key and ask for the password; pipe.Run takes it, and stops it when it
// returns. (An invalid size starts nothing; pipeConfig says what is
// wrong.) A setUp that fails stops the key, which nobody will take.
// withProgress asks for the progress line (newProgress decides whether
// there is one).
func setUp(c *cli.Context, withProgress bool) (_ *setup, err error) {
	key := pipe.StartKey(c.Int("rsa-bits"))
	defer func() {
		if err != nil {
			key.Stop()
		}
	}()
	cfg, err := pipeConfig(c)
	if err != nil {
		return nil, err
	}
	cfg.Key = key
	st := &setup{verbose: verbosity(c)}
	if withProgress {
		st.prog = newProgress(c, st.verbose)
	}
	st.stderr = st.prog.stderr(c.App.ErrWriter)
	cfg.Logger = pipeLogger(st.stderr, st.verbose)
	if cfg.SessionKey, err = pipeSessionKey(c.String("session-key-file")); err != nil {
		return nil, err
	}
	cfg.Warn = func(format string, args ...any) {
		fmt.Fprintf(st.stderr, "p2pcat: warning: %s\n", fmt.Sprintf(format, args...))
	}
	prompt := "Password for " + cfg.Peer + " (session " + cfg.Session + "): "
	if c.Bool("listen") {
		cfg.Listen, cfg.WaitForever = true, !c.IsSet("timeout")
		prompt = "Password for the peers of " + cfg.Name + " (session " + cfg.Session + "): "
	}
	if cfg.Password, err = term.Password(c.Context, prompt, false); err != nil {
		return nil, err
	}
	st.cfg = cfg
	return st, nil
}

// pipeConfig turns the flags into the session's configuration, with a
// usage error for the first one that is wrong.
func pipeConfig(c *cli.Context) (pipe.Config, error) {
	name, peer, session, err := pipeNames(c)
	if err != nil {
		return pipe.Config{}, err
	}
	bits := c.Int("rsa-bits")
	if err := secure.CheckRSABits(bits); err != nil {
		return pipe.Config{}, usagef("--rsa-bits: %v", err)
	}
	port := c.Int("port")
	if port < 0 || port > 65535 {
		return pipe.Config{}, usagef("--port %d: not a port number", port)
	}
	for _, f := range []string{"timeout", "connect-timeout", "idle-timeout"} {
		if c.Duration(f) <= 0 {
			return pipe.Config{}, usagef("--%s must be positive", f)
		}
	}
	relay, err := pipe.ParseRelayMode(c.String("relay"))
	if err != nil {
		return pipe.Config{}, usagef("--relay: %v", err)
	}
	cfg := pipe.Config{
		Session: session, Name: name, Peer: peer, Relay: relay,
		Timeout: c.Duration("timeout"), ConnectTimeout: c.Duration("connect-timeout"), IdleTimeout: c.Duration("idle-timeout"),
		RSABits: bits, Port: port, NoOffload: c.Bool("no-offload"), ProbeMTU: !c.Bool("no-mtu-probe"),
		Stdin: c.App.Reader, Stdout: c.App.Writer,
	}
	// The transfer runs on one P unless GOMAXPROCS says otherwise: a pipe
	// is one stage of a shell pipeline, whose other processes (and, on
	// loopback, the peer) want the other cores, and one P saves CPU per
	// byte (README, Performance).
	if os.Getenv("GOMAXPROCS") == "" {
		cfg.TransferProcs = 1
	}
	if err := pipeAddresses(c, &cfg); err != nil {
		return pipe.Config{}, err
	}
	return cfg, nil
}

// pipeNames returns --name (default: the login name), --find and
// --session, checked.
func pipeNames(c *cli.Context) (name, peer, session string, err error) {
	peer = c.String("find")
	if peer == "" && !c.Bool("listen") {
		return "", "", "", usagef("whom to connect to? give --find PEER or set P2PCAT_FIND")
	}
	name = c.String("name")
	if name == "" {
		name = loginName()
		if name == "" {
			return "", "", "", usagef("cannot tell your name: give --name NAME or set P2PCAT_NAME")
		}
	}
	session = c.String("session")
	for flag, v := range map[string]string{"--find": peer, "--name": name, "--session": session} {
		if flag == "--find" && c.Bool("listen") {
			continue // a listener learns the peer's name from the server
		}
		if err := rendezvous.ValidSession(v); err != nil {
			return "", "", "", usagef("%s %q: %v", flag, v, err)
		}
	}
	if name == peer {
		return "", "", "", usagef("--find %q is your own name; give the peer's name (and --name for yours)", peer)
	}
	return name, peer, session, nil
}

// pipeAddresses sets the peer's address (--peer, no rendezvous) or the
// rendezvous server's and the STUN server's.
func pipeAddresses(c *cli.Context, cfg *pipe.Config) error {
	if p := c.String("peer"); p != "" {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			return usagef("--peer %q: want IP:PORT (%v)", p, err)
		}
		cfg.PeerAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if cfg.Relay == pipe.RelayOnly {
			return usagef("--relay only needs the rendezvous server; it does not go with --peer")
		}
		return nil
	}
	server, err := resolveServer(c)
	if err != nil {
		return err
	}
	cfg.Server = server
	if st := c.String("stun"); st != "" {
		if cfg.STUN, err = resolveHostPort("--stun", st); err != nil {
			return err
		}
	}
	return nil
}

// pipeLogger logs to w: nothing by default, INFO (the "connected" line)
// with one -v, DEBUG with two.
// verbosity is how many -v were given; P2PCAT_VERBOSE=1 (which urfave/cli
// does not count) is one.
func verbosity(c *cli.Context) int {
	if n := c.Count("verbose"); n > 0 || !c.Bool("verbose") {
		return n
	}
	return 1
}

func pipeLogger(w io.Writer, verbose int) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.Level(100)} // silent
	switch {
	case verbose >= 2:
		// Debug lines carry microseconds, so that the steps of a setup on
		// loopback (scripts/setup_steps.sh) can be told apart.
		opts.Level, opts.ReplaceAttr = slog.LevelDebug, microseconds
	case verbose == 1:
		opts.Level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// microseconds writes a record's time with microseconds (slog's text
// handler writes milliseconds).
func microseconds(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 && a.Value.Kind() == slog.KindTime {
		a.Value = slog.StringValue(a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}

// chatMode: stdin and stdout are both terminals, so the session is the
// interactive chat.
func chatMode(c *cli.Context) bool { return isTerminal(c.App.Reader) && isTerminal(c.App.Writer) }

// pipeTerminal sets how the session talks to a human: the chat when stdin
// and stdout are both terminals, else status lines on stderr when it is a
// terminal. The returned function closes the chat.
func pipeTerminal(c *cli.Context, cfg *pipe.Config, stderr io.Writer) (closeChat func(), err error) {
	cfg.EndOnPeerEOF = isTerminal(c.App.Reader)
	if chatMode(c) {
		chat, err := term.NewChat(os.Stdin, os.Stdout, cfg.Peer)
		if err != nil {
			return nil, err
		}
		cfg.Chat = chat
		cfg.Status = chat.Status
		return func() { chat.Close() }, nil
	}
	if isTerminal(c.App.ErrWriter) {
		cfg.Status = func(format string, args ...any) {
			fmt.Fprintf(stderr, "p2pcat: %s\n", fmt.Sprintf(format, args...))
		}
	}
	return func() {}, nil
}

// explainPipeError adds a hint to the errors whose fix the user may not
// guess.
func explainPipeError(err error, cfg pipe.Config) error {
	switch {
	case errors.Is(err, rendezvous.ErrNoServer):
		return hinted{err, "is the server running at " + cfg.Server.String() + "? check --server"}
	case errors.Is(err, rendezvous.ErrSessionKeyNeeded):
		return usageError{hinted{err, "get the session key from whoever registered the session, and give it with --session-key-file FILE or P2PCAT_SESSION_KEY"}}
	case errors.Is(err, rendezvous.ErrVersionMismatch), errors.Is(err, secure.ErrPeerVersion):
		return hinted{err, "run the same p2pcat version on both sides and on the server"}
	case errors.Is(err, secure.ErrUnconfirmed):
		return hinted{err, "if the peer gave the same password (and session key), someone else took its place: run again, and check who you are paired with (-v)"}
	case errors.Is(err, rendezvous.ErrBadAnswer):
		return hinted{err, "the server at " + cfg.Server.String() + " sent an answer this p2pcat cannot use: is it a p2pcat server of this version? (nothing was sent to the peer it named)"}
	case errors.Is(err, rendezvous.ErrServerLost):
		return hinted{err, "the server at " + cfg.Server.String() + " stopped answering; is it still running? try again when it is"}
	case errors.Is(err, path.ErrRelayEnded):
		return hinted{err, "the server caps what it relays per session (serve --relay-bytes); 'p2pcat nat-check' on both sides shows why no direct path was found"}
	case errors.Is(err, pipe.ErrNoRelay):
		return hinted{err, "this server runs without the relay (serve --no-relay); try --relay auto, or a server that relays"}
	case errors.Is(err, secure.ErrBothInitiators):
		// Before ErrNoPath, which it wraps: the path is not what failed.
		return hinted{err, "each side's --name must be the other's --find; if they are, the server at " + cfg.Server.String() + " named the peer otherwise (-v shows whom it paired you with)"}
	case errors.Is(err, pipe.ErrNoPath) && cfg.Relay == pipe.RelayNever:
		return hinted{err, "--relay never: no direct path between these NATs; allow the relay (--relay auto)"}
	case errors.Is(err, pipe.ErrNoPath):
		return hinted{err, "'p2pcat nat-check' on both sides shows the NAT types; a server with the relay connects any pair"}
	}
	return err
}

// pipeSessionKey reads the session key from --session-key-file or
// P2PCAT_SESSION_KEY; nil when neither is given.
func pipeSessionKey(file string) (*rendezvous.SessionKey, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, usagef("--session-key-file: %v", err)
		}
		k, err := rendezvous.ParseSessionKey(string(b))
		if err != nil {
			return nil, usagef("--session-key-file %s: %v", file, err)
		}
		return &k, nil
	}
	k, ok, err := sessionKeyFromEnv()
	if err != nil || !ok {
		return nil, err
	}
	return &k, nil
}

func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

func loginName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return strings.ReplaceAll(u.Username, " ", "_")
	}
	return os.Getenv("USER")
}
