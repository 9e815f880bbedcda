package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNATLab runs the real p2pcat through real Linux NAT: netfilter
// conntrack and nftables in network namespaces built by scripts/natlab.sh.
// Each case is a fresh lab with a rendezvous server on the "internet"
// (198.51.100.1) and two clients, each public or behind its own NAT (or
// both behind one). Two groups of cases run side by side, from one pool of
// labs: "cases", the matrix of NAT types (testNATMatrix), and "recovery",
// sessions broken while they run (recoveryJobs). Needs root; skipped
// loudly otherwise.
func TestNATLab(t *testing.T) {
	script := natLabScriptOrSkip(t)
	slots := make(chan struct{}, natLabWidth)
	t.Run("cases", func(t *testing.T) {
		t.Parallel()
		testNATMatrix(t, script, slots)
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

// testNATMatrix runs every pair of NAT types: alice sends a 1 MiB random
// file, bob a line back. Every case must connect: directly wherever the
// NAT types allow it, through the server's relay where they do not. The
// matrix of outcomes is logged at the end.
//
// P2PCAT_NATLAB_STRICT=1 demands a direct path in the cases where the NAT
// types allow one but the lab may still end relayed (clash-clash, and
// symmetric-public), to check a fix.
func testNATMatrix(t *testing.T, script string, slots chan struct{}) {
	strict := os.Getenv("P2PCAT_NATLAB_STRICT") == "1"
	var cases []natCase
	kinds := []string{"public", "cone", "clash"}
	for i, a := range kinds {
		for _, b := range kinds[i:] {
			c := natCase{a: a, b: b, want: wantDirect}
			// A peer's first probe that reaches a "clash" router before
			// that router's own client has sent anything is delivered to
			// the router's stack, so conntrack confirms an entry for it;
			// the client's outbound flow to the peer then clashes with
			// that entry and is masqueraded to another port, which the
			// other side's port-dependent filter drops (see
			// scripts/natlab.sh). p2pcat then meets the peer again from
			// fresh ports with one side holding back its first packets,
			// then the other: the clash side goes first in one of them, so
			// cone-clash connects directly (in the second attempt when the
			// first clashed). With clash on both sides whoever goes first
			// clashes at the other's router: in a lab with no delay that
			// is every time, so the relay may carry it (a real path's
			// delay usually lets both sides' packets cross first).
			if a == "clash" && b == "clash" && !strict {
				c.want = wantDirectOrRelay
			}
			cases = append(cases, c)
		}
	}
	// A symmetric NAT maps every destination to a new random port, so the
	// peer's probes never find the mapping its own packets opened: only a
	// public peer (which filters nothing and learns the real port from the
	// first packet) can meet it directly; the others go through the relay.
	symPublic := wantDirectOrRelay
	if strict {
		symPublic = wantDirect
	}
	cases = append(cases,
		natCase{a: "samelan", b: "samelan", want: wantDirect},
		natCase{a: "symmetric", b: "public", want: symPublic},
		natCase{a: "symmetric", b: "cone", want: wantDirectOrRelay},
		natCase{a: "symmetric", b: "clash", want: wantDirectOrRelay},
		natCase{a: "symmetric", b: "symmetric", want: wantDirectOrRelay},
		// The client's --relay: never keeps to direct paths (and must say
		// clearly that there is none); only goes through the relay even
		// where a direct path exists.
		natCase{a: "symmetric", b: "cone", relay: "never", want: wantNoPath},
		natCase{a: "cone", b: "cone", relay: "only", want: wantRelay},
	)

	// The cases that wait out punch attempts before the relay (or the
	// connect timeout) start first.
	slices.SortStableFunc(cases, func(x, y natCase) int { return y.slowness() - x.slowness() })

	var matrix struct {
		sync.Mutex
		lines []string
	}
	start := time.Now()
	var jobs []labJob
	for i, c := range cases {
		name := c.name()
		prefix := fmt.Sprintf("nl%dc%d", os.Getpid(), i)
		jobs = append(jobs, labJob{name, func(t *testing.T) {
			line := "FAILED (see the test log)"
			// Deferred: a case that fails still has its line.
			defer func() {
				matrix.Lock()
				defer matrix.Unlock()
				matrix.lines = append(matrix.lines, fmt.Sprintf("%-28s %s", name, line))
			}()
			runNATCase(t, script, prefix, c, &line)
		}})
	}
	runLabs(t, slots, jobs)
	slices.Sort(matrix.lines)
	t.Logf("NAT lab matrix (%v in all):\n%s", time.Since(start).Round(time.Millisecond), strings.Join(matrix.lines, "\n"))
}

// natCase is one line of the matrix: the NAT types of alice (a) and bob (b),
// the clients' --relay, and the outcome wanted.
type natCase struct {
	a, b  string
	relay string // "" leaves the default (auto)
	want  pathWant
}

// slowness ranks how long the case is expected to take: 2 when it waits
// out the punch attempts, 1 when it may need a second attempt, else 0.
func (c natCase) slowness() int {
	switch {
	case c.want == wantNoPath || c.want == wantDirectOrRelay && c.b != "public":
		return 2
	case c.a == "clash" || c.b == "clash":
		return 1
	}
	return 0
}

func (c natCase) name() string {
	name := c.a + "-" + c.b
	if c.a == "samelan" {
		name = "samelan"
	}
	if c.relay != "" {
		name += "-relay-" + c.relay
	}
	return name
}

// pathWant is the outcome a case accepts.
type pathWant int

const (
	wantDirect        pathWant = iota // path=direct on both sides
	wantDirectOrRelay                 // either, the same on both sides
	wantRelay                         // path=relay through the server
	wantNoPath                        // both exit 5, saying there is no path
)

// runNATCase runs one lab and sets *line to its line of the matrix: the
// kind of path, the time to connect, and the addresses each side sent to.
// It fails t when the outcome is not the one wanted.
func runNATCase(t *testing.T, script, prefix string, c natCase, line *string) {
	// A bound for a hang: a relayed case takes about 20 s under -race on
	// a busy 2-core machine.
	ctx := testCtx(t, 60*time.Second)
	lab := upNATLab(t, ctx, script, prefix, c.a, c.b)
	file := randomBytes(t, 1<<20)
	reply := "hello from bob in " + prefix + "-b\n"
	var extra []string
	if c.relay != "" {
		extra = []string{"--relay", c.relay}
	}
	begin := time.Now()
	alice := lab.client("a", bytes.NewReader(file), extra...)
	bob := lab.client("b", strings.NewReader(reply), extra...)
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	ended := time.Since(begin).Round(time.Millisecond)
	pathA, peerA, atA := alice.connected()
	pathB, peerB, atB := bob.connected()
	connectTime := max(atA.Sub(begin), atB.Sub(begin)).Round(time.Millisecond)
	logs := fmt.Sprintf("\nalice:\n%s\nbob:\n%s", alice.Stderr(), bob.Stderr())
	fail := func(short string) {
		t.Helper()
		*line = "FAILED: " + short
		t.Fatalf("%s%s%s", short, logs, conntrackDump(prefix))
	}

	if c.want == wantNoPath {
		const noPath = "no path to the peer could be established"
		if ca != exitNoPath || cb != exitNoPath {
			fail(fmt.Sprintf("exit codes %d %d, want %d %d (no path)", ca, cb, exitNoPath, exitNoPath))
		}
		for name, p := range map[string]*proc{"alice": alice, "bob": bob} {
			if !strings.Contains(p.Stderr(), noPath) {
				fail(fmt.Sprintf("%s does not say %q", name, noPath))
			}
		}
		if pathA != "" || pathB != "" {
			fail(fmt.Sprintf("exit 5 after logging connected (path=%q / %q)", pathA, pathB))
		}
		*line = fmt.Sprintf("no path, exit 5 on both sides after %v (as --relay %s must)", ended, c.relay)
		return
	}

	if ca != exitOK || cb != exitOK {
		fail(fmt.Sprintf("exit codes %d %d", ca, cb))
	}
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		fail(fmt.Sprintf("bob received %d bytes, not the 1 MiB file", bob.stdout.Len()))
	}
	if got := alice.stdout.String(); got != reply {
		fail(fmt.Sprintf("alice got %q, want %q", got, reply))
	}
	if pathA != pathB {
		fail(fmt.Sprintf("the two sides disagree: path=%q / %q", pathA, pathB))
	}
	switch {
	case pathA == "direct" && c.want != wantRelay:
	case pathA == "relay" && (c.want == wantRelay || c.want == wantDirectOrRelay):
		if peerA != natLabServer || peerB != natLabServer {
			fail(fmt.Sprintf("relayed, but the peers are %s / %s, not the server %s", peerA, peerB, natLabServer))
		}
	default:
		want := map[pathWant]string{wantDirect: "direct", wantRelay: "relay", wantDirectOrRelay: "direct or relay"}[c.want]
		fail(fmt.Sprintf("path=%s, want %s", pathA, want))
	}
	if c.a == "samelan" && (!strings.HasPrefix(peerA, "10.0.1.") || !strings.HasPrefix(peerB, "10.0.1.")) {
		// The router does not hairpin: only the LAN addresses can work.
		fail(fmt.Sprintf("behind one NAT the peers should meet on the LAN, not %s / %s", peerA, peerB))
	}
	t.Logf("%s: alice sends to %s, bob to %s; connected after %v, done after %v", pathA, peerA, peerB, connectTime, ended)
	*line = fmt.Sprintf("%s, connected in %v (alice→%s, bob→%s)", pathA, connectTime, peerA, peerB)
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
	l := &natLab{t: t, ctx: ctx, script: script, prefix: prefix}
	l.run("down") // a stale lab of a crashed run with the same pid
	// Registered before any process starts, so it runs after they are
	// killed; also before "up", which may fail halfway.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		runNATLabScript(t, ctx, script, "down", prefix)
	})
	t.Log(runNATLabScript(t, ctx, script, "up", typeA, typeB, prefix))
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
