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
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// processStart is when package main was initialised, after every package
// it imports: the -vv log's "command ready" line measures from it.
var processStart = time.Now()

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// without it, --version tells the build from its build info (version.go).
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

// The app's description, in --help and the man page (man_cmd.go).
const (
	appExamples = `  echo hi | p2pcat --server rv.example:3478 --find bob      (on alice's machine)
  p2pcat --server rv.example:3478 --find alice > out         (on bob's machine)`
	appNotes = `The password comes from P2PCAT_PASSWORD or a hidden prompt on the terminal;
there is no password flag, because argv is visible to every user.
Every flag can also be set from the environment variable shown beside it.`
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
	if completing(args) { // a shell's Tab: completion_cmd.go
		printCompletions(app, args)
		return exitOK
	}
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
	case errors.Is(err, rendezvous.ErrSessionKeyRefused), errors.Is(err, secure.ErrAuth), errors.Is(err, secure.ErrBothInitiators):
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

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	cli.HelpFlag = &cli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help"}
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version"}
	app := &cli.App{
		Name:                   "p2pcat",
		Usage:                  "netcat across NATs: link stdin/stdout of two machines over an encrypted, hole-punched UDP path",
		Version:                versionString(),
		Description:            appExamples + "\n\n" + appNotes + "\n\n" + exitsHelpTxt,
		Reader:                 stdin,
		Writer:                 stdout,
		ErrWriter:              stderr,
		HideHelpCommand:        true,
		UseShortOptionHandling: true,
		ExitErrHandler:         func(*cli.Context, error) {}, // run() reports errors, once
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageError{err}
		},
		EnableBashCompletion: true, // completion_cmd.go
		Commands:             []*cli.Command{serveCommand(), registerCommand(), natCheckCommand(), completionCommand(), manCommand()},
		Flags:                pipeFlags(),
		Action:               runPipe,
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
