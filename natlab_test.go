package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNATLab runs the real p2pcat through real Linux NAT: netfilter
// conntrack and nftables in network namespaces built by scripts/natlab.sh.
// Each case is a fresh lab with a rendezvous server on the "internet"
// (198.51.100.1) and two clients, each public or behind its own NAT (or
// both behind one). The groups of cases run side by side, from one pool of
// labs: "cases", the matrix of NAT types (testNATMatrix), after
// "cases-alone", its cases that run one at a time first, "cases-delay",
// the same matrix with a delay between the clients (natLabDelay),
// "recovery", sessions broken while they run (recoveryJobs),
// "nat-check", and "lab", checks of the labs' delay and IPv6 filtering
// (labCheckJobs). Each matrix logs its table of runs when it ends, and the
// test a summary of both. Needs root; skipped loudly otherwise.
func TestNATLab(t *testing.T) {
	script := natLabScriptOrSkip(t)
	slots := make(chan struct{}, natLabWidth)
	table := &natTable{}
	// Cleanups run once the parallel subtests have ended.
	t.Cleanup(func() { table.logSummary(t) })
	matrix := func(delay time.Duration) func(t *testing.T) {
		return func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			testNATMatrix(t, script, slots, delay, false, table)
			table.logRuns(t, delay, time.Since(start))
		}
	}
	// The cases that need a quiet machine run first, one lab at a time:
	// the parallel groups below start when this function returns.
	t.Run("cases-alone", func(t *testing.T) {
		start := time.Now()
		testNATMatrix(t, script, make(chan struct{}, 1), 0, true, table)
		table.logRuns(t, 0, time.Since(start))
	})
	t.Run("cases", matrix(0))
	if delay := natLabDelay(t); delay > 0 {
		t.Run("cases-delay", matrix(delay))
	}
	t.Run("lab", func(t *testing.T) {
		t.Parallel()
		runLabs(t, slots, labCheckJobs(script, natLabDelay(t)))
	})
	t.Run("recovery", func(t *testing.T) {
		t.Parallel()
		runLabs(t, slots, recoveryJobs(script))
	})
	t.Run("nat-check", func(t *testing.T) {
		t.Parallel()
		runLabs(t, slots, natCheckJobs(script))
	})
}

// natCheckJobs run `p2pcat nat-check --json` behind each NAT type against
// the lab's server (which has its STUN alternate on port 3479, same IP) and
// check that it names the behaviour the lab built.
func natCheckJobs(script string) []labJob {
	type want struct {
		nat                bool
		mapping, filtering string
	}
	const (
		eiOrAD = "endpoint-independent-or-address-dependent"
		apd    = "address-and-port-dependent"
	)
	expect := map[string]want{
		"public":    {false, "endpoint-independent", eiOrAD},
		"cone":      {true, eiOrAD, apd},
		"clash":     {true, eiOrAD, apd},
		"symmetric": {true, apd, apd},
	}
	var jobs []labJob
	for i, pair := range [][2]string{{"public", "cone"}, {"clash", "symmetric"}} {
		jobs = append(jobs, labJob{"nat-check-" + pair[0] + "-" + pair[1], func(t *testing.T) {
			ctx := testCtx(t, 60*time.Second)
			lab := upNATLab(t, ctx, script, fmt.Sprintf("nl%dn%d", os.Getpid(), i), pair[0], pair[1])
			for side, kind := range map[string]string{"a": pair[0], "b": pair[1]} {
				p := startP2pcatIn(t, lab.prefix+"-"+side, nil, nil, "nat-check", "--server", natLabServer, "--json")
				if code := p.wait(ctx); code != exitOK {
					t.Fatalf("nat-check behind %s: exit %d\n%s", kind, code, p.Stderr())
				}
				var got struct {
					NAT       bool   `json:"nat"`
					Mapping   string `json:"mapping"`
					Filtering string `json:"filtering"`
					Verdict   string `json:"verdict"`
				}
				if err := json.Unmarshal(p.stdout.Bytes(), &got); err != nil {
					t.Fatalf("nat-check behind %s: %v\n%s", kind, err, p.stdout.String())
				}
				w := expect[kind]
				if got.NAT != w.nat || got.Mapping != w.mapping || got.Filtering != w.filtering {
					t.Errorf("behind %s: nat=%v mapping=%s filtering=%s, want nat=%v mapping=%s filtering=%s\n%s",
						kind, got.NAT, got.Mapping, got.Filtering, w.nat, w.mapping, w.filtering, p.stdout.String())
				}
				t.Logf("%-9s nat=%v mapping=%s filtering=%s: %s", kind, got.NAT, got.Mapping, got.Filtering, got.Verdict)
			}
		}})
	}
	return jobs
}

// natLabServer is where every lab runs `p2pcat serve`.
const natLabServer = "198.51.100.1:3478"

// natLab is one lab of scripts/natlab.sh with `p2pcat serve` running on
// its server host.
type natLab struct {
	t      *testing.T
	ctx    context.Context
	script string
	prefix string
}

// upNATLab builds a lab whose clients a and b are behind NAT types typeA and
// typeB and starts the rendezvous server in it. The lab is removed when
// the test ends, after its processes are killed.
func upNATLab(t *testing.T, ctx context.Context, script, prefix, typeA, typeB string) *natLab {
	t.Helper()
	return upNATLabWith(t, ctx, script, prefix, typeA, typeB, labOptions{})
}

// labOptions are the variants of a lab: IPv6 addresses on every host
// (ipv6 is natlab.sh's option: "ipv6" behind the routers' stateful
// firewalls, "ipv6open" unfiltered; "" for none), and a delay between the
// clients (half of it on each client's link to the internet).
type labOptions struct {
	ipv6  string
	delay time.Duration
	hop   bool // an ISP router between each NAT and the internet (natlab.sh's hop)
}

// upNATLabWith is upNATLab for a lab with options o.
func upNATLabWith(t *testing.T, ctx context.Context, script, prefix, typeA, typeB string, o labOptions) *natLab {
	t.Helper()
	l := &natLab{t: t, ctx: ctx, script: script, prefix: prefix}
	l.run("down") // a stale lab of a crashed run with the same pid
	// Registered before any process starts, so it runs after they are
	// killed; also before "up", which may fail halfway.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		runNATLabScript(t, ctx, script, "down", prefix)
	})
	args := []string{"up", typeA, typeB, prefix}
	if o.ipv6 != "" {
		args = append(args, o.ipv6)
	}
	if o.delay > 0 {
		args = append(args, "tap")
	}
	if o.hop {
		args = append(args, "hop")
	}
	t.Log(runNATLabScript(t, ctx, script, args...))
	if o.delay > 0 {
		startDelayedLinks(t, delayedLinks(prefix, typeA, typeB), o.delay)
	}
	srv := startP2pcatIn(t, prefix+"-srv", nil, nil, "serve", "--listen", natLabServer, "--data", t.TempDir(), "--log-format", "json")
	srv.waitJSONLog(ctx, "rendezvous server listening")
	return l
}

// run runs a scripts/natlab.sh command on this lab (its prefix goes
// second) and returns its output.
func (l *natLab) run(command string, args ...string) string {
	l.t.Helper()
	return runNATLabScript(l.t, l.ctx, l.script, append([]string{command, l.prefix}, args...)...)
}

// client starts p2pcat -v on host a (alice, who finds bob) or b (bob, who
// finds alice), with extra flags after the lab's defaults.
func (l *natLab) client(side string, stdin io.Reader, extra ...string) *proc {
	l.t.Helper()
	name, peer := "alice", "bob"
	if side == "b" {
		name, peer = peer, name
	}
	// The default --connect-timeout, so that the times to connect are the
	// ones users see (the relay takes over late in it).
	args := []string{"--name", name, "--find", peer, "-v", "--timeout", "20s"}
	return startP2pcatIn(l.t, l.prefix+"-"+side, stdin, peerEnv(natLabServer, "nat-lab-password"), append(args, extra...)...)
}

// labJob is one subtest that builds its own lab.
type labJob struct {
	name string
	run  func(t *testing.T)
}

// natLabWidth is how many labs run at once. They spend most of their time
// waiting on timers and the network, so more of them fit on a machine than
// go test's -parallel (GOMAXPROCS by default) would run with t.Parallel.
const natLabWidth = 6

// runLabs runs each job as a subtest of t when one of slots is free
// (natLabWidth of them, shared by the groups that run side by side),
// starting them in order (the slowest first makes the whole run shortest),
// and returns when all have ended.
func runLabs(t *testing.T, slots chan struct{}, jobs []labJob) {
	var wg sync.WaitGroup
	for _, j := range jobs {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			t.Run(j.name, j.run)
		}()
	}
	wg.Wait()
}

// natLabScriptOrSkip returns the path of scripts/natlab.sh, or skips t loudly
// when the NAT lab cannot run here.
func natLabScriptOrSkip(t *testing.T) string {
	t.Helper()
	if reason := natLabUnavailable(t); reason != "" {
		t.Log(strings.Repeat("*", 72))
		t.Logf("SKIPPING NAT LAB: %s", reason)
		t.Log(strings.Repeat("*", 72))
		t.Skipf("SKIPPING NAT LAB: %s", reason)
	}
	script, err := filepath.Abs(filepath.Join("scripts", "natlab.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return script
}

// natLabUnavailable says why the NAT lab cannot run here, or "".
func natLabUnavailable(t *testing.T) string {
	if os.Geteuid() != 0 {
		return "not root (network namespaces need root)"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	missing := func() []string {
		var m []string
		for _, tool := range []string{"ip", "nft", "conntrack", "timeout"} {
			if _, err := exec.LookPath(tool); err != nil {
				m = append(m, tool)
			}
		}
		return m
	}
	if len(missing()) > 0 {
		if _, err := exec.LookPath("apt-get"); err == nil {
			install := func() error {
				cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", "iproute2", "nftables", "conntrack")
				cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Logf("apt-get install: %v\n%s", err, out)
				}
				return err
			}
			if install() != nil {
				exec.CommandContext(ctx, "apt-get", "update", "-qq").Run()
				install()
			}
		}
		if m := missing(); len(m) > 0 {
			return fmt.Sprintf("%s not installed and could not be installed (apt-get install iproute2 nftables conntrack)", strings.Join(m, ", "))
		}
	}
	probe := fmt.Sprintf("nlprobe%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns does not work: %v: %s", err, bytes.TrimSpace(out))
	}
	defer exec.Command("ip", "netns", "delete", probe).Run()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", probe, "nft", "list", "ruleset").CombinedOutput(); err != nil {
		return fmt.Sprintf("nftables does not work in a network namespace: %v: %s", err, bytes.TrimSpace(out))
	}
	return ""
}

// runNATLabScript runs scripts/natlab.sh and returns its output; failing to build
// or tear down a lab fails the test.
func runNATLabScript(t *testing.T, ctx context.Context, script string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("natlab.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// conntrackDump returns the routers' conntrack tables, to explain a failure.
func conntrackDump(prefix string) string {
	var b strings.Builder
	for _, r := range []string{"ra", "rb", "r"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", prefix+"-"+r, "conntrack", "-L").CombinedOutput()
		cancel()
		if err == nil {
			fmt.Fprintf(&b, "\nconntrack -L in %s-%s:\n%s", prefix, r, out)
		}
	}
	return b.String()
}
