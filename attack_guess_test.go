package main

// TestAttack, one guess per run (attack 3 of TestAttack).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// --- 3. one guess per run ---

// guessAttacker plays the victim's peer in every punch attempt that the
// malicious server pairs: a new handshake with a new guess each time
// (cancelling the previous one), from one socket.
type guessAttacker struct {
	t      *testing.T
	peer   *attacker.Peer
	guess  func(attempt int) attacker.Guess
	silent bool
	mu     sync.Mutex // guards cancel and done: one handshake at a time
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	// results, by attempt (guarded by rmu)
	rmu     sync.Mutex
	results []string
	conns   []*secure.Conn
}

func newGuessAttacker(t *testing.T, silent bool, guess func(attempt int) attacker.Guess) *guessAttacker {
	g := &guessAttacker{t: t, peer: newAttackPeer(t), guess: guess, silent: silent}
	t.Cleanup(g.stop)
	return g
}

// pair is the malicious server's PairFunc: the victim meets the attacker.
func (g *guessAttacker) pair(a attacker.Attempt) *wire.FindResp {
	g.start(a)
	return &wire.FindResp{Role: wire.RoleResponder, PeerObserved: g.peer.Addr}
}

func (g *guessAttacker) start(a attacker.Attempt) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancel != nil {
		g.cancel()
		<-g.done // one link at a time reads the socket
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	g.cancel, g.done = cancel, done
	guess := g.guess(a.N)
	g.wg.Go(func() {
		defer close(done)
		for range 3 { // open the victim's NAT, as a peer would
			g.peer.Probe(a.From, a.PairingID)
		}
		conn, err := g.peer.Handshake(ctx, guess, attacker.Key(a.N%2), time.Now().Add(20*time.Second), g.silent, a.From)
		g.rmu.Lock()
		defer g.rmu.Unlock()
		switch {
		case err == nil:
			g.results = append(g.results, fmt.Sprintf("attempt %d: guess %q RIGHT, handshake complete", a.N+1, guess.Password))
			g.conns = append(g.conns, conn)
		case errors.Is(err, secure.ErrAuth):
			g.results = append(g.results, fmt.Sprintf("attempt %d: guess %q tested and wrong (%v)", a.N+1, guess.Password, err))
		default:
			g.results = append(g.results, fmt.Sprintf("attempt %d: guess %q not tested (%v)", a.N+1, guess.Password, err))
		}
	})
}

func (g *guessAttacker) stop() {
	g.mu.Lock()
	if g.cancel != nil {
		g.cancel()
	}
	g.mu.Unlock()
	g.wg.Wait()
	g.rmu.Lock()
	defer g.rmu.Unlock()
	for _, c := range g.conns {
		c.Close()
	}
}

func (g *guessAttacker) report() []string {
	g.rmu.Lock()
	defer g.rmu.Unlock()
	return append([]string(nil), g.results...)
}

// replies returns the distinct Replies the attacker received (the victim's
// password-dependent answers), and how many Reply datagrams in all.
func replies(ds []attacker.Datagram) (distinct []attacker.Datagram, total int) {
	seen := map[[32]byte]bool{}
	for _, d := range ds {
		if len(d.Data) == 0 || d.Data[0] != attacker.TypeReply {
			continue
		}
		total++
		if h := sha256.Sum256(d.Data); !seen[h] {
			seen[h] = true
			distinct = append(distinct, d)
		}
	}
	return distinct, total
}

// findAttempts returns when each attempt (a Find with a new reqID) of the
// client named name reached the server.
func findAttempts(ds []attacker.Datagram, name string) []time.Time {
	var at []time.Time
	seen := map[uint64]bool{}
	for _, d := range ds {
		if f, ok := decodeAs[*wire.Find](d.Data); ok && f.Name == name && !seen[f.ReqID] {
			seen[f.ReqID] = true
			at = append(at, d.At)
		}
	}
	return at
}

// attackGuesses: a malicious server pairs the victim (bob, the responder:
// "alice" sorts first) with an attacker in every punch attempt; the
// attacker sends a Hello with a new guess in each, and keeps quiet about
// the guesses the victim's Replies showed wrong. The victim must answer at
// most one Hello over the whole run and end with exit 4, "never
// confirmed".
func attackGuesses(t *testing.T, relay string) {
	ctx := testCtx(t, 60*time.Second)
	g := newGuessAttacker(t, true, func(n int) attacker.Guess {
		return attacker.Guess{Session: "default", Name: "alice", Peer: "bob", Password: []byte(fmt.Sprintf("guess-%d", n+1))}
	})
	srv := startAttackServer(t, attacker.Pair(g.pair))
	start := time.Now()
	victim := startP2pcat(t, strings.NewReader("the victim's secret\n"), peerEnv(srv.Addr.String(), "the real password"),
		"--name", "bob", "--find", "alice", "--relay", relay, "--connect-timeout", "10s", "-v")
	code := victim.wait(ctx)
	took := time.Since(start)
	g.stop()
	got := g.peer.Received()
	distinct, total := replies(got)
	attempts := findAttempts(srv.Received(), "bob")
	after := 0
	if len(distinct) > 0 {
		for _, at := range attempts {
			if at.After(distinct[0].At) {
				after++
			}
		}
	}
	for _, r := range g.report() {
		t.Log(r)
	}
	t.Logf("--relay %s: %d attempts (%d after the first Reply, none of them answered), the attacker sent a new Hello with a new guess in each; the victim sent %d distinct Replies (%d datagrams); exit %d after %v: %s",
		relay, len(attempts), after, len(distinct), total, code, took.Round(100*time.Millisecond), victim.errorLine())
	if len(distinct) > 1 {
		t.Errorf("BREAK: the victim answered %d different Hellos in one run: %d password guesses", len(distinct), len(distinct))
	}
	if code != exitAuth || !strings.Contains(victim.Stderr(), "never confirmed") {
		t.Errorf("exit %d, want %d with \"never confirmed\":\n%s", code, exitAuth, victim.Stderr())
	}
	if victim.stdout.Len() != 0 {
		t.Errorf("the victim output %q", victim.stdout.String())
	}
	if len(attempts) < 2 {
		t.Errorf("the victim made %d attempts: the attacker had no second attempt to guess in", len(attempts))
	}
	noPassword(t, "the real password", "the victim's log", []byte(victim.Stderr()))
}

// attackGuessMirror: the attacker is the responder (the victim, alice,
// initiates) and answers the victim's Hello with a Reply under a wrong
// guess: the victim sees the wrong early tag and exits 4 at once.
func attackGuessMirror(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	g := newGuessAttacker(t, true, func(n int) attacker.Guess {
		return attacker.Guess{Session: "default", Name: "bob", Peer: "alice", Password: []byte(fmt.Sprintf("guess-%d", n+1))}
	})
	srv := startAttackServer(t, attacker.Pair(g.pair))
	victim := startP2pcat(t, strings.NewReader("the victim's secret\n"), peerEnv(srv.Addr.String(), "the real password"),
		"--name", "alice", "--find", "bob", "--connect-timeout", "10s", "-v")
	code := victim.wait(ctx)
	exited := time.Now()
	g.stop()
	sent := g.peer.Sent()
	var replyAt time.Time
	for _, d := range sent {
		if d.Data[0] == attacker.TypeReply {
			replyAt = d.At
			break
		}
	}
	hellos := map[[32]byte]bool{}
	for _, d := range g.peer.Received() {
		if d.Data[0] == attacker.TypeHello {
			hellos[sha256.Sum256(d.Data)] = true
		}
	}
	attempts := findAttempts(srv.Received(), "alice")
	t.Logf("the victim sent %d distinct Hello(s) in %d attempt(s); the attacker's Reply came %v before the victim's exit %d: %s",
		len(hellos), len(attempts), exited.Sub(replyAt).Round(10*time.Millisecond), code, victim.errorLine())
	if replyAt.IsZero() {
		t.Fatalf("the attacker never answered (exit %d):\n%s", code, victim.Stderr())
	}
	if code != exitAuth {
		t.Errorf("exit %d, want %d:\n%s", code, exitAuth, victim.Stderr())
	}
	if d := exited.Sub(replyAt); d > 3*time.Second {
		t.Errorf("the victim exited %v after the wrong Reply, not at once", d)
	}
	if len(attempts) != 1 || len(hellos) != 1 {
		t.Errorf("%d attempts, %d Hellos: the victim went on after a wrong Reply", len(attempts), len(hellos))
	}
	if victim.stdout.Len() != 0 {
		t.Errorf("the victim output %q", victim.stdout.String())
	}
}

// attackGuessControl: the same attacker with the right password in its
// first attempt completes the handshake and reads the victim's input. So
// the Reply the other cases count is a real oracle, and the attacker a real
// peer.
func attackGuessControl(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	const secret = "the victim's secret"
	g := newGuessAttacker(t, true, func(n int) attacker.Guess {
		return attacker.Guess{Session: "default", Name: "alice", Peer: "bob", Password: []byte("the real password")}
	})
	srv := startAttackServer(t, attacker.Pair(g.pair))
	victim := startP2pcat(t, strings.NewReader(secret+"\n"), peerEnv(srv.Addr.String(), "the real password"),
		"--name", "bob", "--find", "alice", "--connect-timeout", "10s", "-v")
	if !victim.waitStderr(ctx, "msg=connected") {
		t.Fatalf("the victim did not connect to the attacker with the right password:\n%s\nattacker: %v", victim.Stderr(), g.report())
	}
	var conn *secure.Conn
	waitUntil(ctx, func() bool {
		g.rmu.Lock()
		defer g.rmu.Unlock()
		if len(g.conns) > 0 {
			conn = g.conns[0]
		}
		return conn != nil
	})
	if conn == nil {
		t.Fatalf("the attacker's handshake did not complete: %v", g.report())
	}
	buf := make([]byte, 65536)
	read := false
	deadline := time.Now().Add(10 * time.Second)
	for !read && time.Now().Before(deadline) {
		n, err := conn.Recv(buf)
		if err != nil {
			break
		}
		read = bytes.Contains(buf[:n], []byte(secret))
	}
	t.Logf("control: %v; the attacker read the victim's input: %v", g.report(), read)
	if !read {
		t.Errorf("the attacker with the right password did not read the victim's input")
	}
	victim.cmd.Process.Kill()
}
