package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestRelayFirstThenDirect runs the real p2pcat in a NAT lab
// (scripts/natlab.sh) where alice is behind a symmetric NAT (a new port
// for every destination: the first attempt races the relay) and bob is
// public, so that a direct path exists once bob learns alice's port from
// her probes. At first the lab's internet drops everything between the
// two, the server's relay excepted: the session starts over the relay
// (the "connected" line says path=relay) while alice sends a large random
// file; the block is lifted mid-transfer, and both sides move to the
// direct path ("moved to a direct path"), the file arrives exact, and both
// exit 0. The throughput before and after the move is logged, not
// checked: it depends on the machine. Needs root, like TestNATLab.
func TestRelayFirstThenDirect(t *testing.T) {
	script := natLabScriptOrSkip(t)
	t.Run("direct", func(t *testing.T) { directBaseline(t, script) })
	t.Run("relay-then-direct", func(t *testing.T) { relayThenDirect(t, script) })
}

// relayFirstSize is what alice sends.
const relayFirstSize = 64 << 20

// directBaseline: the same lab and file without the block, direct from the
// start, for the throughput a direct session has there.
func directBaseline(t *testing.T, script string) {
	ctx := testCtx(t, 90*time.Second)
	lab := upNATLab(t, ctx, script, fmt.Sprintf("rf%dd", os.Getpid()), "symmetric", "public")
	file := lineData(relayFirstSize)
	alice := lab.client("a", bytes.NewReader(file))
	bob := lab.client("b", strings.NewReader("ack\n"))
	if path, _ := bob.connectedPath(ctx); path != "direct" {
		t.Fatalf("connected with path=%s, want direct\n%s", path, bob.Stderr())
	}
	_, _, connectedAt := bob.connected()
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	if ca != exitOK || cb != exitOK || sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		t.Fatalf("exit codes %d %d, %d bytes received\nalice:\n%s\nbob:\n%s", ca, cb, bob.stdout.Len(), alice.Stderr(), bob.Stderr())
	}
	t.Logf("direct from the start: %s (%d MiB in %v)", rate(relayFirstSize, time.Since(connectedAt)), relayFirstSize>>20, time.Since(connectedAt).Round(time.Millisecond))
}

func relayThenDirect(t *testing.T, script string) {
	ctx := testCtx(t, 90*time.Second)
	prefix := fmt.Sprintf("rf%dr", os.Getpid())
	lab := upNATLab(t, ctx, script, prefix, "symmetric", "public")
	block := &labBlock{t: t, ctx: ctx, ns: prefix + "-inet"}
	block.set()

	const size = relayFirstSize
	file := lineData(size)
	begin := time.Now()
	alice := lab.client("a", bytes.NewReader(file))
	bob := lab.client("b", strings.NewReader("ack\n"))
	for name, p := range map[string]*proc{"alice": alice, "bob": bob} {
		if path, peer := p.connectedPath(ctx); path != "relay" || peer != natLabServer {
			t.Fatalf("%s connected with path=%s peer=%s, want the relay through %s\n%s", name, path, peer, natLabServer, p.Stderr())
		}
	}
	_, _, connectedAt := bob.connected()
	_, _, aliceAt := alice.connected()
	t.Logf("connected over the relay %v after both started", max(connectedAt.Sub(begin), aliceAt.Sub(begin)).Round(time.Millisecond))
	// Several MiB over the relay, then the direct path opens.
	if err := waitDelivered(ctx, bob, 10<<20, alice); err != nil {
		t.Fatalf("over the relay: %v\nalice:\n%s\nbob:\n%s", err, alice.Stderr(), bob.Stderr())
	}
	liftedAt, atLift := time.Now(), bob.stdout.Len()
	block.lift()
	const moved = "moved to a direct path"
	for name, p := range map[string]*proc{"alice": alice, "bob": bob} {
		if !p.waitStderr(ctx, moved) {
			t.Fatalf("%s never logged %q after the block was lifted\nalice:\n%s\nbob:\n%s", name, moved, alice.Stderr(), bob.Stderr())
		}
	}
	movedAt, atMove := time.Now(), bob.stdout.Len()
	windows := sampleRate(bob, 250*time.Millisecond)
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	endedAt := time.Now()
	if ca != exitOK || cb != exitOK {
		t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
	}
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		t.Fatalf("bob received %d bytes, not the %d-byte file", bob.stdout.Len(), size)
	}
	if got := alice.stdout.String(); got != "ack\n" {
		t.Fatalf("alice got %q, want the ack", got)
	}
	t.Logf("alice: %s", movedLines(alice))
	t.Logf("bob: %s", movedLines(bob))
	t.Logf("relayed: %s (%d MiB in %v); the move: logged on both sides %v after the block was lifted; direct: %s (%d MiB in %v)",
		rate(atLift, liftedAt.Sub(connectedAt)), atLift>>20, liftedAt.Sub(connectedAt).Round(time.Millisecond),
		movedAt.Sub(liftedAt).Round(time.Millisecond),
		rate(size-atMove, endedAt.Sub(movedAt)), (size-atMove)>>20, endedAt.Sub(movedAt).Round(time.Millisecond))
	t.Logf("after the move, per 250 ms: %s", strings.Join(<-windows, ", "))
}

// sampleRate samples what p wrote to stdout every window until it exits,
// and sends the rate of each window, in MB/s, when it has.
func sampleRate(p *proc, window time.Duration) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var rates []string
		tick := time.NewTicker(window)
		defer tick.Stop()
		last, lastAt := p.stdout.Len(), time.Now()
		for {
			select {
			case <-p.done:
				out <- rates
				return
			case now := <-tick.C:
				n := p.stdout.Len()
				rates = append(rates, fmt.Sprintf("%.1f", float64(n-last)/now.Sub(lastAt).Seconds()/1e6))
				last, lastAt = n, now
			}
		}
	}()
	return out
}

// rate spells n bytes in d as MB/s.
func rate(n int, d time.Duration) string {
	return fmt.Sprintf("%.1f MB/s", float64(n)/d.Seconds()/1e6)
}

// labBlock drops every frame between the two clients' sides of a NAT
// lab's internet (their public or router addresses), leaving their paths
// to the server alone: a direct path that does not work yet.
type labBlock struct {
	t   *testing.T
	ctx context.Context
	ns  string // the lab's internet namespace
}

const labBlockTable = "relayfirst_block"

func (b *labBlock) set() {
	a, z := "{ 198.51.100.10, 198.51.100.11 }", "{ 198.51.100.20, 198.51.100.21 }"
	b.nft(fmt.Sprintf(`table bridge %s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr %s ip daddr %s drop
		ip saddr %s ip daddr %s drop
	}
}
`, labBlockTable, a, z, z, a))
	// The lab's removal takes the table with it.
}

func (b *labBlock) lift() { b.nft("delete table bridge " + labBlockTable + "\n") }

func (b *labBlock) nft(rules string) {
	b.t.Helper()
	cmd := exec.CommandContext(b.ctx, "ip", "netns", "exec", b.ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.t.Fatalf("nft in %s: %v\n%s", b.ns, err, out)
	}
}
