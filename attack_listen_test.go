package main

import (
	"crypto/rand"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// lyingPairer is a hostile server's pairing: it pairs the newest find of
// listener (a --listen find for that name) with the newest find of
// anyone else, honestly in every way but the peer names it gives: the
// listener is told its peer is tellListener, the finder that it got
// tellFinder ("" leaves the name the finder asked for). Re-sends of a
// find get the same answer, as from the real server.
type lyingPairer struct {
	listener, tellListener, tellFinder string

	mu       sync.Mutex
	waiting  map[bool]*lyingFind // by "is the listener's"
	answered map[uint64]*wire.FindResp
	listens  map[uint64]bool // the listener's any-peer finds, by request id
}

// listenFinds is how many any-peer finds (sessions waited for) the
// listener has sent.
func (p *lyingPairer) listenFinds() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.listens)
}

type lyingFind struct {
	from netip.AddrPort
	find *wire.Find
}

func (p *lyingPairer) behave(s *attacker.Server, d attacker.Datagram, m wire.Message) {
	switch m := m.(type) {
	case *wire.Hello:
		s.Send(d.From, s.Challenge(m.ReqID, false))
	case *wire.Find:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.answered == nil {
			p.answered, p.waiting, p.listens = map[uint64]*wire.FindResp{}, map[bool]*lyingFind{}, map[uint64]bool{}
		}
		if m.Flags&wire.FindAnyPeer != 0 {
			p.listens[m.ReqID] = true
		}
		if r := p.answered[m.ReqID]; r != nil {
			s.Send(d.From, r)
			return
		}
		isListener := m.Name == p.listener
		p.waiting[isListener] = &lyingFind{d.From, m}
		l, f := p.waiting[true], p.waiting[false]
		if l == nil || f == nil {
			s.Send(d.From, &wire.FindResp{ReqID: m.ReqID, Status: wire.FindWaiting, Observed: d.From})
			return
		}
		delete(p.waiting, true)
		delete(p.waiting, false)
		var id [16]byte
		rand.Read(id[:])
		toFinder := p.tellFinder
		if toFinder == "" {
			toFinder = f.find.Peer
		}
		// The finder arrived first or not: the listener is the initiator
		// end here; the handshake's roles come from the names anyway.
		rl := &wire.FindResp{ReqID: l.find.ReqID, Status: wire.FindMatched, Observed: l.from, PairingID: id, Role: wire.RoleInitiator,
			PeerName: p.tellListener, PeerObserved: f.from, PeerCandidates: f.find.Candidates}
		rf := &wire.FindResp{ReqID: f.find.ReqID, Status: wire.FindMatched, Observed: f.from, PairingID: id, Role: wire.RoleResponder,
			PeerName: toFinder, PeerObserved: l.from, PeerCandidates: l.find.Candidates}
		p.answered[l.find.ReqID], p.answered[f.find.ReqID] = rl, rf
		s.Send(l.from, rl)
		s.Send(f.from, rf)
	}
}

// TestAttackServerLiesToListener: a hostile server tells a listener that
// its peer is someone else while bob (who has the password) is the one who
// connects. The names are bound into the handshake, so no session starts:
// with "aaron" (the listener then takes the responder's part, as bob
// expects) the listener answers bob's Hello, bob rejects it and exits 4,
// and the listener logs a failed handshake from "aaron" with bob's
// address; with "mallory" both sides take the initiator's part, neither
// answers the other's Hello, and when their connect timeouts end bob
// exits 4 saying that the two sides disagree on their names (each got the
// other's Hello) and the listener logs the failed session. In
// both, the listener serves on (-k: it waits for the next peer) and no
// byte of either side's input reaches the other.
func TestAttackServerLiesToListener(t *testing.T) {
	for _, c := range []struct {
		lie     string
		exits   []int
		logs    string // the listener's failure
		bobSays string
	}{
		{"aaron", []int{exitAuth}, "wrong password from aaron at 127.0.0.1:", ""},
		{"mallory", []int{exitAuth}, "session with mallory failed", "the two sides disagree on their names"},
	} {
		t.Run(c.lie, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			liar := &lyingPairer{listener: "homebox", tellListener: c.lie}
			srv := startAttackServer(t, liar.behave)
			l := startListener(t, srv.Addr.String(), "homebox", strings.NewReader("the listener's secret\n"), "-k", "--connect-timeout", "5s")
			bob := startP2pcat(t, strings.NewReader("bob's secret\n"), peerEnv(srv.Addr.String(), "pw"),
				"--name", "bob", "--find", "homebox", "--connect-timeout", "5s", "-v")
			if code := bob.wait(ctx); !slices.Contains(c.exits, code) {
				t.Fatalf("bob exited %d, want one of %v:\n%s", code, c.exits, bob.Stderr())
			}
			if c.bobSays != "" && !bob.sawStderr(c.bobSays) {
				t.Fatalf("bob does not say %q:\n%s", c.bobSays, bob.Stderr())
			}
			if c.bobSays != "" && bob.sawStderr("nat-check") {
				t.Fatalf("bob's hint is about the path, which is not what failed:\n%s", bob.Stderr())
			}
			if !l.waitStderr(ctx, c.logs) {
				t.Fatalf("the listener did not log the failed handshake:\n%s", l.Stderr())
			}
			for liar.listenFinds() < 2 {
				select {
				case <-l.done:
					t.Fatalf("the listener exited:\n%s", l.Stderr())
				case <-ctx.Done():
					t.Fatalf("the listener does not wait for the next peer:\n%s", l.Stderr())
				case <-time.After(20 * time.Millisecond):
				}
			}
			if l.sawStderr("msg=connected") || bob.sawStderr("msg=connected") {
				t.Fatalf("BREAK: a session was established under a false name\nlistener:\n%s\nbob:\n%s", l.Stderr(), bob.Stderr())
			}
			if l.stdout.Len()+bob.stdout.Len() != 0 {
				t.Fatalf("BREAK: delivered %q to the listener, %q to bob", l.stdout.String(), bob.stdout.String())
			}
		})
	}
}

// TestAttackServerPairsWrongPeer: a hostile (or broken) server pairs bob,
// who asked for alice, with someone it names carol: bob refuses the
// answer before any packet goes to the peer, and says what is wrong and
// what to do.
func TestAttackServerPairsWrongPeer(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	liar := &lyingPairer{listener: "alice", tellListener: "bob", tellFinder: "carol"}
	srv := startAttackServer(t, liar.behave)
	alice := startP2pcat(t, strings.NewReader("alice's secret\n"), peerEnv(srv.Addr.String(), "pw"), "--name", "alice", "--find", "bob", "--connect-timeout", "5s")
	bob := startP2pcat(t, strings.NewReader("bob's secret\n"), peerEnv(srv.Addr.String(), "pw"), "--name", "bob", "--find", "alice", "--connect-timeout", "5s")
	code := bob.wait(ctx)
	alice.wait(ctx)
	if code == exitOK || bob.stdout.Len() != 0 || alice.stdout.Len() != 0 {
		t.Fatalf("BREAK: bob exit %d, bob got %q, alice got %q:\n%s", code, bob.stdout.String(), alice.stdout.String(), bob.Stderr())
	}
	if code != exitFailure {
		t.Fatalf("bob exited %d, want %d (a server's bad answer):\n%s", code, exitFailure, bob.Stderr())
	}
	if !bob.sawStderr(`paired us with \"carol\", we asked for \"alice\"`) && !bob.sawStderr(`paired us with "carol", we asked for "alice"`) {
		t.Fatalf("bob does not say whom the server paired it with:\n%s", bob.Stderr())
	}
	if !bob.sawStderr("is it a p2pcat server of this version?") {
		t.Fatalf("no hint for the bad answer:\n%s", bob.Stderr())
	}
}
