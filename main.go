// Command p2pcat links stdin and stdout of two machines that cannot reach
// each other directly: both ask a rendezvous server for each other, punch a
// UDP path through their NATs, authenticate with a shared password and
// stream bytes end-to-end encrypted. `p2pcat serve` runs the rendezvous
// server.
//
// This file is only the command line: flags, environment variables, and the
// mapping from errors to exit codes. The work is in pipe/ and rendezvous/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/store"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// Exit codes. Scripts depend on them; README.md and --help list them.
const (
	exitOK       = 0   // session finished, every byte delivered and acknowledged both ways
	exitFailure  = 1   // runtime failure (peer lost mid-session, server unreachable, I/O error)
	exitUsage    = 2   // usage or configuration error
	exitNoPeer   = 3   // the peer did not show up within --timeout
	exitAuth     = 4   // authentication failed: wrong password or session key, a man in the middle, an unconfirmed handshake
	exitNoPath   = 5   // no path to the peer could be established
	exitTaken    = 6   // register: the session is registered with another session key
	exitSignal   = 130 // interrupted by Ctrl-C or SIGTERM (the peer is told)
	exitPipe     = 141 // stdout was closed by its reader (EPIPE, as SIGPIPE in a pipeline); the peer is told
	exitsHelpTxt = `EXIT CODES:
   0  success: every byte delivered and acknowledged both ways
   1  runtime failure (peer lost mid-session, server unreachable, I/O error)
   2  usage or configuration error (bad flag, missing password, server or session key)
   3  the peer did not show up within --timeout
   4  authentication failed: wrong password or session key, someone in the middle, or a handshake begun and never confirmed
   5  no path to the peer could be established
   6  register: the session is registered with another session key
 130  interrupted (Ctrl-C, SIGTERM), in any state; the peer is told and exits 1 at once
 141  stdout was closed by its reader (| head); the peer is told and exits 1 at once`
)

// usageError marks errors in what the user typed or configured.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// hinted carries a suggestion printed after the error.
type hinted struct {
	err  error
	hint string
}

func (e hinted) Error() string { return e.err.Error() }
func (e hinted) Unwrap() error { return e.err }

func main() {
	// P2PCAT_CPUPROFILE=FILE writes a CPU profile of the whole run, for
	// developers measuring the data path (scripts/bench.sh, go tool pprof).
	if file := os.Getenv("P2PCAT_CPUPROFILE"); file != "" {
		if f, err := os.Create(file); err == nil {
			pprof.StartCPUProfile(f)
			code := run(os.Args, os.Stdin, os.Stdout, os.Stderr)
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(code)
		}
	}
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code. All output to
// the user about failures happens here, once.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A closed stdout (`p2pcat ... | head`) must not kill us silently with
	// SIGPIPE: with the signal caught, the write fails with EPIPE, and the
	// peer is told that we stopped reading.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	app := newApp(stdin, stdout, stderr)
	err := app.RunContext(ctx, interspersed(app, args))
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if ctx.Err() != nil && code != exitUsage {
		// A signal arrived: whatever the command was doing failed because
		// of it (a prompt, a wait, a transfer), and scripts get 130 for
		// every one of them.
		code, err = exitSignal, pipe.ErrInterrupted
	}
	fmt.Fprintf(stderr, "p2pcat: error: %s\n", oneLine(err.Error()))
	var h hinted
	if errors.As(err, &h) && h.hint != "" {
		fmt.Fprintf(stderr, "p2pcat: hint: %s\n", h.hint)
	} else if code == exitUsage {
		fmt.Fprintln(stderr, "p2pcat: hint: see 'p2pcat --help'")
	}
	return code
}

// interspersed lets flags follow positional arguments of a subcommand
// (`p2pcat register team --ttl 1h`), which urfave/cli v2 does not do by
// itself: it moves the subcommand's positionals after its flags.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	cmd := app.Command(args[1])
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			positional = append(positional, rest[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(rest) {
			i++
			flags = append(flags, rest[i])
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return out
}

// exitCode maps an error to the exit code by its type alone: usage errors
// are usageError where they arise (our checks, and urfave/cli's flag errors
// through the OnUsageError hooks of newApp).
func exitCode(err error) int {
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, term.ErrNoPassword), errors.Is(err, term.ErrPasswordMismatch), errors.Is(err, term.ErrEmptyPassword):
		return exitUsage
	case errors.Is(err, rendezvous.ErrAuth), errors.Is(err, secure.ErrAuth):
		return exitAuth
	case errors.Is(err, pipe.ErrNoPath):
		return exitNoPath
	case errors.Is(err, pipe.ErrInterrupted):
		return exitSignal
	case errors.Is(err, pipe.ErrOutputClosed):
		return exitPipe
	case errors.Is(err, rendezvous.ErrTaken):
		return exitTaken
	case errors.Is(err, rendezvous.ErrPeerNotFound):
		return exitNoPeer
	}
	return exitFailure
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	cli.HelpFlag = &cli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help"}
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version"}
	app := &cli.App{
		Name:    "p2pcat",
		Usage:   "netcat across NATs: link stdin/stdout of two machines over an encrypted, hole-punched UDP path",
		Version: versionString(),
		Description: `  echo hi | p2pcat --server rv.example:3478 --find bob      (on alice's machine)
  p2pcat --server rv.example:3478 --find alice > out         (on bob's machine)

The password comes from P2PCAT_PASSWORD or a hidden prompt on the terminal;
there is no password flag, because argv is visible to every user.
Every flag can also be set from the environment variable shown beside it.

` + exitsHelpTxt,
		Reader:                 stdin,
		Writer:                 stdout,
		ErrWriter:              stderr,
		HideHelpCommand:        true,
		UseShortOptionHandling: true,
		ExitErrHandler:         func(*cli.Context, error) {}, // run() reports errors, once
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageError{err}
		},
		Commands: []*cli.Command{serveCommand(), registerCommand(), natCheckCommand()},
		Flags:    pipeFlags(),
		Action:   runPipe,
	}
	// A subcommand does not inherit the app's hook.
	for _, cmd := range app.Commands {
		cmd.OnUsageError = commandUsageError
	}
	return app
}

// commandUsageError marks a subcommand's flag error (an unknown flag, a
// value that does not parse) as a usage error. It first prints what
// urfave/cli prints itself for a command without this hook, so the output
// stays the same.
func commandUsageError(c *cli.Context, err error, _ bool) error {
	fmt.Fprintf(c.App.Writer, "Incorrect Usage: %s\n\n", err)
	if lineage := c.Lineage(); len(lineage) > 1 && !c.Command.HideHelp {
		_ = cli.ShowCommandHelp(lineage[1], c.Command.Name)
	}
	return usageError{err}
}

func serverFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "server", Aliases: []string{"s"}, EnvVars: []string{"P2PCAT_SERVER"},
		Usage: "rendezvous server `HOST:PORT` (required)"}
}

// resolveServer turns --server into an address, with a usage error saying
// what to do when it is missing or wrong.
func resolveServer(c *cli.Context) (netip.AddrPort, error) {
	s := c.String("server")
	if s == "" {
		return netip.AddrPort{}, usagef("no rendezvous server: give --server HOST:PORT or set P2PCAT_SERVER")
	}
	return resolveHostPort("--server", s)
}

// resolveHostPort resolves a HOST[:PORT] flag value; the port defaults to
// 3478, the STUN port the server also listens on by default.
func resolveHostPort(flag, s string) (netip.AddrPort, error) {
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(strings.Trim(s, "[]"), "3478")
	}
	ua, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, usagef("%s %q: %v", flag, s, err)
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return d + "/p2pcat"
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.local/state/p2pcat"
	}
	return "p2pcat-data"
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the rendezvous server",
		Description: `Pairs clients that ask for each other and keeps registered sessions in an
embedded database under --data. One UDP port serves everything.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Aliases: []string{"l"}, Value: ":3478", EnvVars: []string{"P2PCAT_LISTEN"}, Usage: "UDP `ADDR` to listen on"},
			&cli.StringFlag{Name: "data", Value: defaultDataDir(), EnvVars: []string{"P2PCAT_DATA"}, Usage: "`DIR` for the registration database"},
			&cli.StringFlag{Name: "metrics", EnvVars: []string{"P2PCAT_METRICS"}, Usage: "serve Prometheus metrics over HTTP on `ADDR` (e.g. 127.0.0.1:9478); off when empty"},
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"P2PCAT_LOG_FORMAT"}, Usage: "text or json"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, EnvVars: []string{"P2PCAT_VERBOSE"}, Usage: "debug logging"},
			&cli.Float64Flag{Name: "rate", Value: 20, EnvVars: []string{"P2PCAT_RATE"}, Usage: "find/register requests per second allowed per client IP (negative: unlimited)"},
			&cli.IntFlag{Name: "burst", Value: 40, EnvVars: []string{"P2PCAT_BURST"}, Usage: "burst size of --rate"},
			&cli.IntFlag{Name: "max-pending", Value: 100_000, EnvVars: []string{"P2PCAT_MAX_PENDING"}, Usage: "pending finds kept in all"},
			&cli.IntFlag{Name: "max-pending-per-ip", Value: 64, EnvVars: []string{"P2PCAT_MAX_PENDING_PER_IP"}, Usage: "pending finds kept per client IP"},
			&cli.DurationFlag{Name: "pending-ttl", Value: rendezvous.DefaultPendingTTL, EnvVars: []string{"P2PCAT_PENDING_TTL"}, Usage: "how long a find waits after its last re-send (clients re-send every 2 s)"},
			&cli.StringFlag{Name: "stun-alternate", Value: "auto", EnvVars: []string{"P2PCAT_STUN_ALTERNATE"}, Usage: "second UDP `ADDR` for STUN, so 'p2pcat nat-check' can tell NAT behaviours apart: auto (the --listen port + 1), an address, or off"},
			&cli.BoolFlag{Name: "no-relay", EnvVars: []string{"P2PCAT_NO_RELAY"}, Usage: "do not relay sessions that find no direct path"},
			&cli.StringFlag{Name: "relay-rate", Value: "10MB", EnvVars: []string{"P2PCAT_RELAY_RATE"}, Usage: "relay bandwidth per session, bytes per second (`SIZE`: 500KB, 10MB, 1GiB ...)"},
			&cli.StringFlag{Name: "relay-bytes", Value: "4GiB", EnvVars: []string{"P2PCAT_RELAY_BYTES"}, Usage: "relay bytes per session in all (`SIZE`); the session ends there"},
			&cli.IntFlag{Name: "relay-sessions", Value: 100_000, EnvVars: []string{"P2PCAT_RELAY_SESSIONS"}, Usage: "pairings remembered for the relay (about 180 bytes each)"},
			&cli.DurationFlag{Name: "max-register-ttl", Value: 30 * 24 * time.Hour, EnvVars: []string{"P2PCAT_MAX_REGISTER_TTL"}, Usage: "longest registration clients may ask for"},
		},
		Action: serve,
	}
}

func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("serve takes no arguments (got %q)", c.Args().First())
	}
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), level)
	if err != nil {
		return err
	}
	laddr, err := net.ResolveUDPAddr("udp", c.String("listen"))
	if err != nil {
		return usagef("--listen %q: %v", c.String("listen"), err)
	}
	relayRate, err := parseSize(c.String("relay-rate"))
	if err != nil {
		return usagef("--relay-rate: %v", err)
	}
	relayBytes, err := parseSize(c.String("relay-bytes"))
	if err != nil {
		return usagef("--relay-bytes: %v", err)
	}
	if c.Int("relay-sessions") <= 0 {
		return usagef("--relay-sessions must be positive (use --no-relay to turn the relay off)")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := rendezvous.NewServer(rendezvous.Config{
		DataDir:         c.String("data"),
		Logger:          log,
		Registry:        reg,
		PendingTTL:      c.Duration("pending-ttl"),
		MaxPending:      c.Int("max-pending"),
		MaxPendingPerIP: c.Int("max-pending-per-ip"),
		RatePerIP:       c.Float64("rate"),
		BurstPerIP:      c.Int("burst"),
		MaxRegisterTTL:  c.Duration("max-register-ttl"),
		NoRelay:         c.Bool("no-relay"),
		RelayRate:       relayRate,
		RelayBytes:      relayBytes,
		MaxRelays:       c.Int("relay-sessions"),
	})
	if err != nil {
		if errors.Is(err, store.ErrInUse) {
			return hinted{err, "another p2pcat serve uses this --data directory; stop it or give another --data"}
		}
		return err
	}
	defer srv.Close()
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return hinted{fmt.Errorf("listening on %s: %w", c.String("listen"), err), "is another server on that port? choose another with --listen"}
	}
	defer conn.Close()
	path.RaiseBuffers(conn, 4<<20, log)
	alt, err := listenSTUNAlternate(c.String("stun-alternate"), laddr)
	if err != nil {
		return err
	}

	ctx := c.Context
	if addr := c.String("metrics"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return usagef("--metrics %q: %v", addr, err)
		}
		hs := &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}
	if alt == nil {
		return srv.Serve(ctx, conn)
	}
	defer alt.Close()
	altDone := make(chan error, 1)
	go func() { altDone <- srv.ServeSTUNAlternate(ctx, alt) }()
	err = srv.Serve(ctx, conn)
	if aerr := <-altDone; err == nil && aerr != nil {
		err = fmt.Errorf("STUN alternate: %w", aerr)
	}
	return err
}

// listenSTUNAlternate opens the --stun-alternate socket: "auto" is the
// listen address with the next port (any port when listening on port 0).
func listenSTUNAlternate(flag string, listen *net.UDPAddr) (*net.UDPConn, error) {
	var addr *net.UDPAddr
	switch flag {
	case "off":
		return nil, nil
	case "auto", "":
		addr = &net.UDPAddr{IP: listen.IP, Zone: listen.Zone}
		if listen.Port != 0 {
			if listen.Port == 65535 {
				return nil, usagef("--stun-alternate auto: no port after %d; give an address or off", listen.Port)
			}
			addr.Port = listen.Port + 1
		}
	default:
		a, err := net.ResolveUDPAddr("udp", flag)
		if err != nil {
			return nil, usagef("--stun-alternate %q: want auto, off or an address (%v)", flag, err)
		}
		addr = a
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, hinted{fmt.Errorf("listening for STUN on %s: %w", addr, err), "is that port taken? give --stun-alternate another address, or off"}
	}
	return conn, nil
}

// parseSize reads a byte count: a number with an optional unit, decimal
// (KB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB), B or none for bytes.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || v*mult > math.MaxInt64/2 || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a positive size (examples: 500KB, 10MB, 4GiB)", s)
	}
	return int64(v * mult), nil
}

func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

func registerCommand() *cli.Command {
	return &cli.Command{
		Name:      "register",
		Usage:     "reserve a session name on the server with a new session key",
		ArgsUsage: "SESSION",
		Description: `Reserves SESSION so that only clients holding its session key can be paired
in it. The key is 256 random bits, made here; the server keeps only a
public verifier of it, and nothing derived from any password ever reaches
the server. Everyone who joins the session needs the key (P2PCAT_SESSION_KEY
or --session-key-file) as well as the password, which the peers check
with each other as before.

  p2pcat register team -k team.key    # makes team.key (mode 0600) and registers
  p2pcat register team -k team.key    # again later: extends the registration
  p2pcat register team > team.key     # without a key file: the new key on stdout

Registering again with the same key extends the registration; the name
registered with another key gets "session taken" (exit 6).`,
		Flags: []cli.Flag{
			serverFlag(),
			&cli.StringFlag{Name: "session-key-file", Aliases: []string{"key-file", "k"}, EnvVars: []string{"P2PCAT_SESSION_KEY_FILE"}, Usage: "the session key's `FILE`: read when it exists (to refresh), else created with a new key"},
			&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, EnvVars: []string{"P2PCAT_TTL"}, Usage: "how long the registration lasts"},
			&cli.DurationFlag{Name: "timeout", Value: 15 * time.Second, EnvVars: []string{"P2PCAT_TIMEOUT"}, Usage: "give up when the server does not answer within this"},
		},
		Action: register,
	}
}

func register(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("register takes exactly one argument, the session name")
	}
	session := c.Args().First()
	if err := rendezvous.ValidSession(session); err != nil {
		return usagef("session name %q: %v", session, err)
	}
	ttl := c.Duration("ttl")
	if ttl < rendezvous.MinRegisterTTL {
		return usagef("--ttl %s is shorter than the minimum %s", ttl, rendezvous.MinRegisterTTL)
	}
	server, err := resolveServer(c)
	if err != nil {
		return err
	}
	key, source, err := registerKey(c.String("session-key-file"))
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	client := &rendezvous.Client{Conn: conn, Server: server}
	res, err := client.Register(ctx, session, key, ttl)
	if err != nil {
		if source.created != "" {
			os.Remove(source.created) // a key for nothing
		}
		switch {
		case errors.Is(err, rendezvous.ErrNoServer):
			return hinted{err, "is the server running at " + server.String() + "? check --server"}
		case errors.Is(err, rendezvous.ErrTaken):
			return hinted{err, "pick another session name, or register with the key it was registered with (--session-key-file or P2PCAT_SESSION_KEY)"}
		}
		return err
	}
	if source.print {
		fmt.Fprintln(c.App.Writer, key.String())
	}
	verb := "registered"
	if res.Refreshed {
		verb = "refreshed"
	}
	fmt.Fprintf(c.App.ErrWriter, "p2pcat: %s session %q on %s until %s\n", verb, session, server, res.Expires.Local().Format(time.RFC3339))
	switch {
	case source.created != "":
		fmt.Fprintf(c.App.ErrWriter, "p2pcat: its new session key is in %s; everyone who joins the session needs it (--session-key-file or P2PCAT_SESSION_KEY)\n", source.created)
	case source.print:
		fmt.Fprintln(c.App.ErrWriter, "p2pcat: its new session key is the line on stdout, shown only this once; keep it: everyone who joins the session needs it (--session-key-file or P2PCAT_SESSION_KEY)")
	}
	return nil
}

// keySource says where register's session key came from.
type keySource struct {
	created string // a key file made for this registration (removed if it fails)
	print   bool   // a new key to print on stdout
}

// registerKey finds the session key to register with: the key file when
// it exists, else P2PCAT_SESSION_KEY, else a new key (written to the key
// file when one was named, printed otherwise).
func registerKey(file string) (rendezvous.SessionKey, keySource, error) {
	if file != "" {
		if b, err := os.ReadFile(file); err == nil {
			k, err := rendezvous.ParseSessionKey(string(b))
			if err != nil {
				return k, keySource{}, usagef("--session-key-file %s: %v", file, err)
			}
			return k, keySource{}, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return rendezvous.SessionKey{}, keySource{}, usagef("--session-key-file: %v", err)
		}
	} else if k, ok, err := sessionKeyFromEnv(); ok || err != nil {
		return k, keySource{}, err
	}
	k, err := rendezvous.GenerateSessionKey()
	if err != nil {
		return k, keySource{}, err
	}
	if file == "" {
		return k, keySource{print: true}, nil
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return k, keySource{}, usagef("--session-key-file: %v", err)
	}
	_, werr := fmt.Fprintln(f, k.String())
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(file)
		return k, keySource{}, fmt.Errorf("writing the session key to %s: %w", file, werr)
	}
	return k, keySource{created: file}, nil
}

// SessionKeyEnv supplies a registered session's key; there is no flag for
// the key itself, because argv is visible to every user.
const SessionKeyEnv = "P2PCAT_SESSION_KEY"

// sessionKeyFromEnv reads P2PCAT_SESSION_KEY: ok when it is set.
func sessionKeyFromEnv() (rendezvous.SessionKey, bool, error) {
	v, set := os.LookupEnv(SessionKeyEnv)
	if !set {
		return rendezvous.SessionKey{}, false, nil
	}
	k, err := rendezvous.ParseSessionKey(v)
	if err != nil {
		return k, true, usagef("%s: %v", SessionKeyEnv, err)
	}
	return k, true, nil
}
