package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
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
// both behind one). alice sends a 1 MiB random file, bob a line back; the
// path must be direct. Needs root; skipped loudly otherwise.
func TestNATLab(t *testing.T) {
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
	type natCase struct {
		a, b string
		// mayFail, when set, says why the case may end in exit 5 (no path)
		// today; it must then fail cleanly, and a direct path is accepted
		// too. P2PCAT_NATLAB_STRICT=1 demands a direct path anyway, to
		// check a fix.
		mayFail string
	}
	// A NAT that maps every destination to a new port defeats hole
	// punching until the relay fallback exists (issue "Connect through
	// real NATs" will make these cases relay).
	const noRelay = "symmetric NAT and no relay yet"
	// A peer's first probe that reaches a "clash" router before that
	// router's own client has sent anything is delivered to the router's
	// stack, so conntrack confirms an entry for it; the client's outbound
	// flow to the peer then clashes with that entry and is masqueraded to
	// another port, which the other side's port-dependent filter drops
	// (see scripts/natlab.sh). p2pcat then meets the peer again from fresh
	// ports with one side holding back its first packets, then the other:
	// the clash side goes first in one of them, so cone-clash connects
	// directly (in the second attempt when the first clashed). With clash
	// on both sides whoever goes first clashes at the other's router: only
	// the relay will connect that.
	const clashBoth = "conntrack port clash on both routers, no relay yet"
	strict := os.Getenv("P2PCAT_NATLAB_STRICT") == "1"
	var cases []natCase
	kinds := []string{"public", "cone", "clash"}
	for i, a := range kinds {
		for _, b := range kinds[i:] {
			c := natCase{a: a, b: b}
			if a == "clash" && b == "clash" && !strict {
				c.mayFail = clashBoth
			}
			cases = append(cases, c)
		}
	}
	cases = append(cases,
		natCase{a: "samelan", b: "samelan"},
		natCase{a: "symmetric", b: "public", mayFail: noRelay},
		natCase{a: "symmetric", b: "cone", mayFail: noRelay},
		natCase{a: "symmetric", b: "symmetric", mayFail: noRelay},
	)

	// The cases run in parallel: each lab is its own set of namespaces,
	// and the ones that cannot connect spend their 10 s idle.
	var matrix struct {
		sync.Mutex
		lines []string
	}
	start := time.Now()
	t.Run("cases", func(t *testing.T) {
		for i, c := range cases {
			name := c.a + "-" + c.b
			if c.a == c.b && c.a == "samelan" {
				name = "samelan"
			}
			prefix := fmt.Sprintf("nl%dc%d", os.Getpid(), i)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				res := runNATCase(t, script, prefix, c.a, c.b, c.mayFail)
				matrix.Lock()
				defer matrix.Unlock()
				matrix.lines = append(matrix.lines, fmt.Sprintf("%-20s %s", name, res))
			})
		}
	})
	slices.Sort(matrix.lines)
	t.Logf("NAT lab matrix (%v in all):\n%s", time.Since(start).Round(time.Millisecond), strings.Join(matrix.lines, "\n"))
}

// runNATCase runs one lab and returns its line of the matrix. It fails t
// when the outcome is not the expected one.
func runNATCase(t *testing.T, script, prefix, typeA, typeB, mayFail string) (result string) {
	result = "FAILED (see the test log)"
	ctx := testCtx(t, 40*time.Second)
	natlab(t, ctx, script, "down", prefix) // a stale lab of a crashed run with the same pid
	t.Log(natlab(t, ctx, script, "up", typeA, typeB, prefix))
	// Registered before any process starts, so it runs after they are killed.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		natlab(t, ctx, script, "down", prefix)
	})

	const server = "198.51.100.1:3478"
	srv := startP2pcatIn(t, prefix+"-srv", nil, nil, "serve", "--listen", server, "--data", t.TempDir(), "--log-format", "json")
	srv.waitJSONLog(ctx, "rendezvous server listening")

	file := randomBytes(t, 1<<20)
	line := "hello from bob in " + prefix + "-b\n"
	env := peerEnv(server, "nat-lab-password")
	args := []string{"-v", "--connect-timeout", "10s", "--timeout", "20s"}
	begin := time.Now()
	alice := startP2pcatIn(t, prefix+"-a", bytes.NewReader(file), env, append([]string{"--name", "alice", "--find", "bob"}, args...)...)
	bob := startP2pcatIn(t, prefix+"-b", strings.NewReader(line), env, append([]string{"--name", "bob", "--find", "alice"}, args...)...)
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	pathA, peerA, atA := alice.connected()
	pathB, peerB, atB := bob.connected()
	connectTime := max(atA.Sub(begin), atB.Sub(begin)).Round(time.Millisecond)

	if mayFail != "" && !(ca == exitOK && cb == exitOK) {
		for name, c := range map[string]struct {
			code int
			p    *proc
		}{"alice": {ca, alice}, "bob": {cb, bob}} {
			if c.code == exitOK {
				t.Errorf("%s exited 0 while its peer failed (%d %d)\n%s", name, ca, cb, c.p.Stderr())
			}
		}
		if !(ca == exitNoPath && strings.Contains(alice.Stderr(), "no path to the peer could be established")) &&
			!(cb == exitNoPath && strings.Contains(bob.Stderr(), "no path to the peer could be established")) {
			t.Fatalf("want exit %d (no path) on at least one side, got %d %d\nalice:\n%s\nbob:\n%s", exitNoPath, ca, cb, alice.Stderr(), bob.Stderr())
		}
		t.Logf("KNOWN ISSUE, no direct path (%s): exit codes %d %d after %v%s", mayFail, ca, cb, time.Since(begin).Round(time.Millisecond), conntrackDump(prefix))
		return fmt.Sprintf("no path, exit %d %d (known: %s)", ca, cb, mayFail)
	}

	if ca != exitOK || cb != exitOK {
		t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s%s", ca, cb, alice.Stderr(), bob.Stderr(), conntrackDump(prefix))
	}
	if pathA != "direct" || pathB != "direct" {
		t.Fatalf("path=%q / %q, want direct\nalice:\n%s\nbob:\n%s", pathA, pathB, alice.Stderr(), bob.Stderr())
	}
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		t.Fatalf("bob received %d bytes, not the 1 MiB file", bob.stdout.Len())
	}
	if got := alice.stdout.String(); got != line {
		t.Fatalf("alice got %q, want %q", got, line)
	}
	if typeA == "samelan" && (!strings.HasPrefix(peerA, "10.0.1.") || !strings.HasPrefix(peerB, "10.0.1.")) {
		// The router does not hairpin: only the LAN addresses can work.
		t.Fatalf("behind one NAT the peers should meet on the LAN, not %s / %s", peerA, peerB)
	}
	t.Logf("direct: alice sees bob at %s, bob sees alice at %s; connected after %v, done after %v", peerA, peerB, connectTime, time.Since(begin).Round(time.Millisecond))
	kind := "direct"
	if mayFail != "" {
		kind = "direct (despite the known issue: " + mayFail + ")"
	}
	return fmt.Sprintf("%s, connected in %v (alice→%s, bob→%s)", kind, connectTime, peerA, peerB)
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

// natlab runs scripts/natlab.sh and returns its output; failing to build
// or tear down a lab fails the test.
func natlab(t *testing.T, ctx context.Context, script string, args ...string) string {
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
