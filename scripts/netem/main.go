// Command netem relays UDP between two peers, dropping, duplicating,
// reordering, delaying and rate-limiting their datagrams, for shell scripts
// such as scripts/bench.sh on kernels without sch_netem (tc netem).
//
//	netem -a 127.0.0.1:5001 -b 127.0.0.1:5002 -loss 0.01 -delay 20ms
//
// Once ready it prints exactly one line on stdout,
//
//	faceA=IP:PORT faceB=IP:PORT
//
// Peer A must send to faceA and peer B to faceB; each sees the other's
// datagrams arrive from that same address. An omitted -a or -b is learned
// from the first datagram arriving at that peer's face.
//
// Impairment flags apply to both directions; the same flag with an -ab or
// -ba suffix (-loss-ab 0.05) overrides one direction, whatever the order of
// the flags. netem runs until SIGINT or SIGTERM, then prints its counters on
// stderr and exits 0. Bad flags exit 2 and a failure exits 1, each with one
// line on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "netem: error: %v\n", err)
		return exitUsage
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := netem.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "netem: error: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "faceA=%v faceB=%v\n", p.FaceA(), p.FaceB())

	<-p.Done() // a signal, or a socket failure
	err = p.Close()
	s := p.Stats()
	fmt.Fprintf(stderr, "netem: %v %v\nnetem: %v %v\n", netem.AtoB, s.AtoB, netem.BtoA, s.BtoA)
	if err != nil {
		fmt.Fprintf(stderr, "netem: error: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// knob is one impairment setting, settable for both directions or one.
type knob struct {
	name, usage string
	set         func(imp *netem.Impairment, value string) error
}

var knobs = []knob{
	probabilityKnob("loss", "probability that a datagram is dropped, 0..1 or a percentage (0.01, 1%)",
		func(imp *netem.Impairment) *float64 { return &imp.Loss }),
	probabilityKnob("dup", "probability that a datagram is delivered twice",
		func(imp *netem.Impairment) *float64 { return &imp.Duplicate }),
	probabilityKnob("reorder", "probability that a datagram is held back behind later ones",
		func(imp *netem.Impairment) *float64 { return &imp.Reorder }),
	durationKnob("reorder-delay", "longest hold of a reordered datagram (0 = 10ms)",
		func(imp *netem.Impairment) *time.Duration { return &imp.ReorderDelay }),
	durationKnob("delay", "one-way delay (20ms gives a 40ms RTT)",
		func(imp *netem.Impairment) *time.Duration { return &imp.Delay }),
	durationKnob("jitter", "delay varies uniformly by ± this much, order kept",
		func(imp *netem.Impairment) *time.Duration { return &imp.Jitter }),
	{"rate", "bottleneck in bytes per second, k/M/G multiply by 1000 (0 = unlimited)",
		func(imp *netem.Impairment, v string) (err error) {
			imp.Rate, err = parseBytes(v)
			return err
		}},
	{"queue", "bottleneck queue in bytes, k/M/G multiply by 1000 (0 = one BDP, at least 64KiB)",
		func(imp *netem.Impairment, v string) error {
			n, err := parseBytes(v)
			imp.QueueBytes = int(n)
			return err
		}},
}

func probabilityKnob(name, usage string, field func(*netem.Impairment) *float64) knob {
	return knob{name, usage, func(imp *netem.Impairment, v string) (err error) {
		*field(imp), err = parseProbability(v)
		return err
	}}
}

func durationKnob(name, usage string, field func(*netem.Impairment) *time.Duration) knob {
	return knob{name, usage, func(imp *netem.Impairment, v string) (err error) {
		*field(imp), err = parseDuration(v)
		return err
	}}
}

// parseFlags turns the command line into a proxy configuration. Help is
// written to stderr and reported as flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (netem.Config, error) {
	var cfg netem.Config
	fs := flag.NewFlagSet("netem", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed once, by run
	fs.Func("a", "peer A's `HOST:PORT` (omitted: learned from its first datagram)", func(v string) (err error) {
		cfg.A, err = resolve(v)
		return err
	})
	fs.Func("b", "peer B's `HOST:PORT` (omitted: learned from its first datagram)", func(v string) (err error) {
		cfg.B, err = resolve(v)
		return err
	})
	fs.Func("listen", "`IP` the faces bind (default loopback)", func(v string) (err error) {
		cfg.Listen, err = netip.ParseAddr(v)
		return err
	})
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of the random decisions")

	// Overrides apply after the symmetric settings, whatever their order.
	var both, ab, ba []func(*netem.Impairment)
	for _, k := range knobs {
		for _, v := range []struct {
			suffix, usage string
			into          *[]func(*netem.Impairment)
		}{{"", "", &both}, {"-ab", " (A to B only)", &ab}, {"-ba", " (B to A only)", &ba}} {
			fs.Func(k.name+v.suffix, k.usage+v.usage, func(value string) error {
				var probe netem.Impairment
				if err := k.set(&probe, value); err != nil {
					return err
				}
				*v.into = append(*v.into, func(imp *netem.Impairment) { _ = k.set(imp, value) })
				return nil
			})
		}
	}

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: netem [-a HOST:PORT] [-b HOST:PORT] [impairment flags]")
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, set := range both {
		set(&cfg.AtoB)
		set(&cfg.BtoA)
	}
	for _, set := range ab {
		set(&cfg.AtoB)
	}
	for _, set := range ba {
		set(&cfg.BtoA)
	}
	return cfg, nil
}

func resolve(hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp", hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}

func parseProbability(s string) (float64, error) {
	scale := 1.0
	if trimmed, ok := strings.CutSuffix(s, "%"); ok {
		s, scale = trimmed, 100
	}
	p, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, errors.New("not a number")
	}
	p /= scale
	if !(p >= 0 && p <= 1) {
		return 0, errors.New("probability outside 0..1")
	}
	return p, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration such as 20ms")
	}
	if d < 0 {
		return 0, errors.New("negative duration")
	}
	return d, nil
}

func parseBytes(s string) (int64, error) {
	scale := int64(1)
	for suffix, mult := range map[string]int64{"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9} {
		if trimmed, ok := strings.CutSuffix(s, suffix); ok {
			s, scale = trimmed, mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("not a non-negative whole number of bytes")
	}
	if n > (1<<62)/scale {
		return 0, errors.New("too large")
	}
	return n * scale, nil
}
