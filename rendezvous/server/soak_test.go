package server_test

// TestSoakServer: a real rendezvous server, in a child process so that what
// is measured is the server's own, driven for SOAK_DURATION (default 20 s;
// SOAK_DURATION=3m for the real run) as hard as it answers by the load
// generator in soak_load_test.go, then left to drain. Every second it
// samples the server's RSS, open file descriptors and CPU time (/proc), its
// live heap after a forced GC, its goroutines, and the size of each of its
// tables (server.SoakSizes). It prints the series, the least-squares
// slope of each over the second half of the load, and a verdict, and
// asserts:
//
//   - memory plateaus: RSS (not under -race, whose runtime keeps memory of
//     its own) and the live heap grow over the second half, at constant
//     table sizes (the tables fill between sweeps and empty at each, and
//     follow the load), by less than a bound of their own scale;
//   - goroutines and descriptors are constant: the second half starts and
//     ends with the same numbers, within 2, and so do the load's before
//     and after;
//   - each table stays within what its TTL allows (the entries that the
//     requests of the last TTL + sweep interval can have made), and
//     empties within a sweep once the load stops: sessions that end, time
//     out or are abandoned leave nothing behind;
//   - every kind of traffic was served, no answer broke the protocol, and
//     few were lost.
//
//	SOAK_DURATION=3m go test -run Soak -v -count=1 ./rendezvous/server/
//
// (longer than about 8 minutes needs a larger -timeout). SOAK_PROFILE=FILE
// also writes the server's heap profile, after the drain, to FILE.
//
// The child is this test binary, re-run with P2PCAT_SOAK_SERVER_CHILD=1 and
// -test.run=^TestSoakServerChild$; it serves with rendezvoustest.Start and
// answers the parent's commands ("sample", "metrics", "profile FILE") on
// fd 3 with JSON on fd 4.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

const soakChildEnv = "P2PCAT_SOAK_SERVER_CHILD"

// soakSweep is how often the server sweeps its tables (server.go,
// routineSweep).
const soakSweep = 5 * time.Second

// soakConfig is the server's configuration: the defaults (the per-IP rate
// limit and pending cap included), with TTLs short enough that entries
// expire many times within the run, a small relay byte cap, so that
// sessions reach it, and fewer relay pairings than the load offers, so
// that the relay evicts (the oldest unused first).
func soakConfig() server.Config {
	return server.Config{
		PendingTTL: time.Second,
		MatchTTL:   2 * time.Second,
		CookieTTL:  10 * time.Second,
		RelayIdle:  2 * time.Second,
		RelayBytes: 16 << 10,
		MaxRelays:  16 << 10,
	}
}

// soakStats is what the child reports for one sample.
type soakStats struct {
	HeapLive   uint64 // HeapAlloc right after runtime.GC
	HeapInuse  uint64
	Goroutines int
	Sizes      server.SoakSizes
	Pairings   float64 // p2pcat_rendezvous_pairings_total
}

type soakHello struct{ Addr, Alt netip.AddrPort }

// TestSoakServerChild is the server process of TestSoakServer.
func TestSoakServerChild(t *testing.T) {
	if os.Getenv(soakChildEnv) != "1" {
		t.Skip("the server process of TestSoakServer: runs only as its child")
	}
	ctrl, reports := os.NewFile(3, "soak-control"), os.NewFile(4, "soak-reports")
	defer reports.Close()
	srv := rendezvoustest.Start(t, soakConfig())
	enc := json.NewEncoder(reports)
	if err := enc.Encode(soakHello{srv.Addr, srv.STUNAlternate}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(ctrl)
	for sc.Scan() {
		var err error
		switch sc.Text() {
		case "sample":
			err = enc.Encode(soakSampleServer(srv))
		case "metrics":
			err = enc.Encode(soakMetrics(srv.Registry))
		default:
			// "profile FILE": a heap profile, for looking into what a run
			// leaves behind (SOAK_PROFILE, TestSoakServer).
			if file, ok := strings.CutPrefix(sc.Text(), "profile "); ok {
				err = writeHeapProfile(file)
				if err == nil {
					err = enc.Encode(file)
				}
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// The parent closed the control pipe: it is done. The server stops
	// with the test (rendezvoustest), which fails on any error of Serve.
}

// soakSampleServer reads the server's heap after a GC, and its tables.
// The tables only shrink when the server sweeps them, every 5 s: a sample
// in which they shrank between the GC and their reading saw a sweep
// (the heap from before it, the tables from after) and is taken again.
func soakSampleServer(srv *rendezvoustest.Server) soakStats {
	var s soakStats
	for range 3 {
		before := srv.SoakSizes()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s = soakStats{
			HeapLive: ms.HeapAlloc, HeapInuse: ms.HeapInuse, Goroutines: runtime.NumGoroutine(),
			Sizes: srv.SoakSizes(), Pairings: srv.Metric("p2pcat_rendezvous_pairings_total"),
		}
		if s.Sizes.Pending+s.Sizes.Settled >= before.Pending+before.Settled {
			break
		}
	}
	return s
}

func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// soakMetrics flattens a registry's counters and gauges, by name{labels}.
func soakMetrics(reg *prometheus.Registry) map[string]float64 {
	out := map[string]float64{}
	families, _ := reg.Gather()
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := f.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// soakChild is the server process, seen from the test.
type soakChild struct {
	cmd       *exec.Cmd
	ctrl      *os.File
	dec       *json.Decoder
	output    lockedBuffer // its stdout and stderr
	addr, alt netip.AddrPort
	done      chan error
}

func startSoakChild(t *testing.T, d time.Duration) *soakChild {
	t.Helper()
	ctrlR, ctrlW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &soakChild{ctrl: ctrlW, dec: json.NewDecoder(repR), done: make(chan error, 1)}
	// The child ends when the control pipe closes; its own timeout bounds
	// it should this process die first without closing it.
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestSoakServerChild$", "-test.count=1",
		"-test.timeout="+(d+5*time.Minute).String())
	c.cmd.Env = append(os.Environ(), soakChildEnv+"=1")
	c.cmd.ExtraFiles = []*os.File{ctrlR, repW}
	c.cmd.Stdout, c.cmd.Stderr = &c.output, &c.output
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctrlR.Close()
	repW.Close()
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		c.ctrl.Close()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
		repR.Close()
	})
	var h soakHello
	if err := c.dec.Decode(&h); err != nil {
		t.Fatalf("the server process did not start: %v\n%s", err, c.waitOutput())
	}
	c.addr, c.alt = h.Addr, h.Alt
	return c
}

// lockedBuffer is the child's output, which its copying goroutine writes
// while a failing test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitOutput returns the child's output once it has exited (or after 10 s).
func (c *soakChild) waitOutput() string {
	select {
	case err := <-c.done:
		c.done <- err
	case <-time.After(10 * time.Second):
	}
	return c.output.String()
}

func (c *soakChild) ask(t *testing.T, cmd string, v any) {
	t.Helper()
	if _, err := fmt.Fprintln(c.ctrl, cmd); err != nil {
		t.Fatalf("server process: %v\n%s", err, c.waitOutput())
	}
	if err := c.dec.Decode(v); err != nil {
		t.Fatalf("server process: %v\n%s", err, c.waitOutput())
	}
}

// sample asks the child for its runtime and table figures, then reads its
// RSS and descriptors from /proc.
func (c *soakChild) sample(t *testing.T) soakSample {
	t.Helper()
	var s soakSample
	c.ask(t, "sample", &s.soakStats)
	pid := c.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.RSS = kb << 10
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.FDs = len(fds)
	// utime and stime, fields 14 and 15, in USER_HZ (100 on Linux) ticks;
	// the command, field 2, is in parentheses and may hold spaces.
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(stat, ')'); i > 0 {
			f := strings.Fields(string(stat[i+1:]))
			if len(f) > 12 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				k, _ := strconv.ParseInt(f[12], 10, 64)
				s.CPU = float64(u+k) / 100
			}
		}
	}
	return s
}

// stop closes the control pipe and waits for the child to pass.
func (c *soakChild) stop(t *testing.T) {
	t.Helper()
	c.ctrl.Close()
	select {
	case err := <-c.done:
		c.done <- err
		if err != nil {
			t.Errorf("server process: %v\n%s", err, c.output.String())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("server process did not stop within 30 s of its control pipe closing\n%s", c.output.String())
	}
}

// soakSample is one second's figures.
type soakSample struct {
	soakStats
	T     float64 // seconds since the load started
	Phase string  // base, load, drain
	RSS   int64
	FDs   int
	CPU   float64 // seconds of CPU the server process has used
	// The generator's counters, cumulative, and its relayed sessions in
	// progress.
	TableOps, Addrs, Sent, Received, RelayLive int64
}

func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv("SOAK_DURATION")
	if s == "" {
		return 20 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 10*time.Second {
		t.Fatalf("SOAK_DURATION=%q: want a duration of at least 10s", s)
	}
	return d
}

func TestSoakServer(t *testing.T) {
	if testing.Short() {
		t.Skip("a soak test: not with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("samples the server process's /proc entries, and binds 127.x.y.z: Linux only")
	}
	if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 20, 0, 1)}); err != nil {
		t.Skipf("cannot bind loopback addresses beyond 127.0.0.1: %v", err)
	} else {
		c.Close()
	}
	d := soakDuration(t)
	cfg := soakConfig()
	child := startSoakChild(t, d)
	gen := newSoakGen(child.addr, child.alt, cfg)
	var start time.Time
	take := func(phase string) soakSample {
		s := child.sample(t)
		s.Phase, s.T = phase, time.Since(start).Seconds()
		s.TableOps, s.Addrs = gen.count(kTableOps), gen.count(kAddrs)
		s.Sent, s.Received, s.RelayLive = gen.count(kSent), gen.count(kReceived), gen.relayLive.Load()
		return s
	}
	start = time.Now()
	base := take("base")
	drops := udpRcvbufErrors()
	busy0, total0 := machineCPU()

	ctx, cancel := context.WithTimeout(context.Background(), d)
	start = time.Now()
	gen.run(ctx)
	defer func() { cancel(); gen.wait() }() // also when a sample fails
	var samples []soakSample
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			samples = append(samples, take("load"))
		}
	}
	gen.wait()
	loadTime := time.Since(start)
	busy, total := machineCPU()
	var counts [numKinds]int64
	for k := range counts {
		counts[k] = gen.count(soakKind(k))
	}

	// Drain: once the TTLs (and a rate bucket's refill, 2 s) and a sweep
	// have passed, nothing may be left; three sweeps are allowed.
	drainBy := time.Now().Add(max(cfg.PendingTTL, cfg.MatchTTL, cfg.RelayIdle, 2*time.Second) + 3*soakSweep)
	for time.Now().Before(drainBy) {
		<-tick.C
		s := take("drain")
		samples = append(samples, s)
		if soakDrained(s) {
			break
		}
	}
	var metrics map[string]float64
	child.ask(t, "metrics", &metrics)
	if file := os.Getenv("SOAK_PROFILE"); file != "" {
		var written string
		child.ask(t, "profile "+file, &written)
		t.Logf("the server's heap profile after the drain: %s", written)
	}
	child.stop(t)

	r := &soakReport{t: t, cfg: cfg, base: base, samples: samples, load: loadTime, counts: counts, metrics: metrics, wrong: gen.wrong,
		udpDrops: udpRcvbufErrors() - drops, machineBusy: (busy - busy0) / (total - total0)}
	r.print()
	r.check()
}

// udpRcvbufErrors reads the machine's count of UDP datagrams dropped on
// full receive buffers (/proc/net/snmp), or 0.
func udpRcvbufErrors() int64 {
	b, _ := os.ReadFile("/proc/net/snmp")
	var names []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		if i := slices.Index(names, "RcvbufErrors"); i > 0 && i < len(f) {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			return n
		}
	}
	return 0
}

// machineCPU reads the machine's CPU time, busy and in all, in ticks
// (/proc/stat; idle and iowait are not busy), or zeros.
func machineCPU() (busy, total float64) {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	// user nice system idle iowait irq softirq steal; guest time is
	// counted in user already.
	for i, v := range f[1:min(len(f), 9)] {
		n, _ := strconv.ParseFloat(v, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}
