package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"
)

// startServeWith runs the real `p2pcat serve` on 127.0.0.1 with extra flags.
func startServeWith(t *testing.T, ctx context.Context, flags ...string) string {
	t.Helper()
	p := startP2pcat(t, nil, nil, append([]string{"serve", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--log-format", "json"}, flags...)...)
	return p.waitJSONLog(ctx, "rendezvous server listening")["addr"].(string)
}

// TestPipeThroughRelay: with --relay only the whole session crosses the
// server's relay; bytes arrive exact both ways and the connected line says
// path=relay with the server as the peer.
func TestPipeThroughRelay(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	server := startServeWith(t, ctx)
	file := randomBytes(t, 4<<20)
	env := peerEnv(server, "pw")
	alice := startP2pcat(t, bytes.NewReader(file), env, "--name", "alice", "--find", "bob", "--relay", "only", "-v")
	bob := startP2pcat(t, strings.NewReader("relayed hello\n"), env, "--name", "bob", "--find", "alice", "--relay", "only", "-v")
	if path, peer := alice.connectedPath(ctx); path != "relay" || peer != server {
		t.Fatalf("alice: path=%s peer=%s, want relay through %s", path, peer, server)
	}
	if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
		t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
	}
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		t.Fatalf("bob received %d bytes, not the 4 MiB file", bob.stdout.Len())
	}
	if got := alice.stdout.String(); got != "relayed hello\n" {
		t.Fatalf("alice got %q", got)
	}
}

// TestRelayByteCap: past the server's per-session cap both sides stop at
// once with exit 1 and say why, instead of waiting for the idle timeout.
func TestRelayByteCap(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	server := startServeWith(t, ctx, "--relay-bytes", "512KiB")
	env := peerEnv(server, "pw")
	alice := startP2pcat(t, bytes.NewReader(randomBytes(t, 4<<20)), env, "--name", "alice", "--find", "bob", "--relay", "only", "--idle-timeout", "60s")
	bob := startP2pcat(t, nil, env, "--name", "bob", "--find", "alice", "--relay", "only", "--idle-timeout", "60s")
	for name, p := range map[string]*proc{"alice": alice, "bob": bob} {
		if code := p.wait(ctx); code != exitFailure {
			t.Fatalf("%s: exit %d, want %d\n%s", name, code, exitFailure, p.Stderr())
		}
		if !strings.Contains(p.Stderr(), "the rendezvous server ended the relay") || !strings.Contains(p.Stderr(), "524288 bytes per session") {
			t.Fatalf("%s does not say the relay cap ended the session:\n%s", name, p.Stderr())
		}
	}
}

// TestPipeWithSTUN: --stun asks a STUN server (here a second p2pcat serve)
// for our reflexive address and offers it to the peer; a STUN server that
// does not answer costs a warning, not the session.
func TestPipeWithSTUN(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	server := startServeWith(t, ctx)
	stunServer := startServeWith(t, ctx, "--stun-alternate", "off")
	env := peerEnv(server, "pw")
	alice := startP2pcat(t, strings.NewReader("hi bob\n"), env, "--name", "alice", "--find", "bob", "--stun", stunServer, "-vv")
	bob := startP2pcat(t, strings.NewReader("hi alice\n"), env, "--name", "bob", "--find", "alice", "--stun", "127.0.0.1:"+freeUDPPort(t), "-vv")
	if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
		t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
	}
	if alice.stdout.String() != "hi alice\n" || bob.stdout.String() != "hi bob\n" {
		t.Fatalf("got %q / %q", alice.stdout.String(), bob.stdout.String())
	}
	if !strings.Contains(alice.Stderr(), `msg="reflexive address from STUN" stun=`+stunServer+" addr=127.0.0.1:") {
		t.Fatalf("alice did not learn her address from the STUN server:\n%s", alice.Stderr())
	}
	if !strings.Contains(bob.Stderr(), "the STUN server did not answer; going on without its address") {
		t.Fatalf("bob does not say that the STUN server was silent:\n%s", bob.Stderr())
	}
}

// TestRelayOnlyWithoutRelay: --relay only against a server that relays
// nothing ends at once with exit 5 and says why.
func TestRelayOnlyWithoutRelay(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	server := startServeWith(t, ctx, "--no-relay")
	env := peerEnv(server, "pw")
	alice := startP2pcat(t, nil, env, "--name", "alice", "--find", "bob", "--relay", "only")
	bob := startP2pcat(t, nil, env, "--name", "bob", "--find", "alice", "--relay", "only")
	for name, p := range map[string]*proc{"alice": alice, "bob": bob} {
		if code := p.wait(ctx); code != exitNoPath || !strings.Contains(p.Stderr(), "the rendezvous server offers no relay (--relay only)") ||
			!strings.Contains(p.Stderr(), "hint: this server runs without the relay") {
			t.Fatalf("%s: exit %d, want %d saying the server offers no relay:\n%s", name, code, exitNoPath, p.Stderr())
		}
	}
}
