package server_test

// Listeners (finds for any peer) through the real server and clients.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// listen runs a listener's find for name in the background; the returned
// function waits for its result. It returns once the server has said the
// listener waits.
func listen(t *testing.T, srv *rendezvoustest.Server, ctx context.Context, session, name string, key *rendezvous.SessionKey) func() (rendezvous.Match, error) {
	t.Helper()
	c := srv.Client(t)
	waiting := make(chan struct{})
	var m rendezvous.Match
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		m, err = c.Find(ctx, rendezvous.FindRequest{Session: session, Name: name, AnyPeer: true, SessionKey: key,
			OnWaiting: func() { close(waiting) }})
	}()
	select {
	case <-waiting:
	case <-done:
		t.Fatalf("the listener's find ended before it waited: %v", err)
	}
	return func() (rendezvous.Match, error) { <-done; return m, err }
}

// TestListenerServesFinders: a listener waits, a finder that names it is
// paired with it and each learns the other's name; the listener finds again
// and the next finder gets it. A finder that comes while the listener is
// away waits, and is served when the listener is back.
func TestListenerServesFinders(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	ctx := ctxTimeout(t, 20*time.Second)
	for _, finder := range []string{"laptop", "phone"} {
		result := listen(t, srv, ctx, "s", "homebox", nil)
		mf, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "s", Name: finder, Peer: "homebox"})
		if err != nil {
			t.Fatalf("%s: %v", finder, err)
		}
		ml, err := result()
		if err != nil {
			t.Fatalf("the listener, for %s: %v", finder, err)
		}
		if ml.PeerName != finder || mf.PeerName != "homebox" || ml.PairingID != mf.PairingID {
			t.Fatalf("the listener got %q, %s got %q; pairing ids %x %x", ml.PeerName, finder, mf.PeerName, ml.PairingID, mf.PairingID)
		}
		if ml.Role != wire.RoleInitiator || mf.Role != wire.RoleResponder {
			t.Fatalf("roles: listener %v, finder %v; want the waiting side the initiator", ml.Role, mf.Role)
		}
	}
	// Finder first: it waits until the listener comes back.
	c := srv.Client(t)
	var mf rendezvous.Match
	var errF error
	waiting := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		mf, errF = c.Find(ctx, rendezvous.FindRequest{Session: "s", Name: "tablet", Peer: "homebox", OnWaiting: func() { close(waiting) }})
	})
	<-waiting
	ml, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "s", Name: "homebox", AnyPeer: true})
	wg.Wait()
	if err != nil || errF != nil || ml.PeerName != "tablet" || mf.PeerName != "homebox" {
		t.Fatalf("finder first: listener %+v %v, finder %+v %v", ml, err, mf, errF)
	}
	if got := srv.Metric("p2pcat_rendezvous_pairings_total"); got != 3 {
		t.Fatalf("pairings_total = %v, want 3", got)
	}
}

// TestListenerRegisteredSession: in a registered session a listener's find
// needs the session key like any find, and the signature covers the flags.
func TestListenerRegisteredSession(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	ctx := ctxTimeout(t, 20*time.Second)
	key := srv.RegisterSession(t, "club")
	wrong := newKey(t)
	if _, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "homebox", AnyPeer: true}); !errors.Is(err, rendezvous.ErrSessionKeyNeeded) {
		t.Fatalf("without the key: %v, want ErrSessionKeyNeeded", err)
	}
	if _, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "homebox", AnyPeer: true, SessionKey: &wrong}); !errors.Is(err, rendezvous.ErrSessionKeyRefused) {
		t.Fatalf("with a wrong key: %v, want ErrSessionKeyRefused", err)
	}
	result := listen(t, srv, ctx, "club", "homebox", &key)
	mf, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "laptop", Peer: "homebox", SessionKey: &key})
	ml, errL := result()
	if err != nil || errL != nil || ml.PeerName != "laptop" || mf.PeerName != "homebox" {
		t.Fatalf("with the key: listener %+v %v, finder %+v %v", ml, errL, mf, err)
	}

	// Someone on the path who changes a find's flags (here: makes a
	// plain find an again-find, or the other way round) breaks its
	// signature.
	conn := dial(t, srv.Addr)
	ch := ask(t, conn, &wire.Hello{ReqID: 7, Session: "club"}).(*wire.Challenge)
	plain := &wire.Find{ReqID: 7, Cookie: ch.Cookie, Session: "club", Name: "alice", Peer: "bob",
		Signature: rendezvous.FindSignature(key, ch.ServerID, ch.Cookie, "club", "alice", "bob")}
	flipped := *plain
	flipped.Flags = wire.FindAgain
	if e, ok := ask(t, conn, &flipped).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("a plain find's signature with the again flag: %#v, want Error auth_failed", e)
	}
	again := *plain
	again.Flags = wire.FindAgain
	again.Signature = rendezvous.FindSignatureFlags(key, ch.ServerID, ch.Cookie, "club", "alice", "bob", wire.FindAgain)
	if r, ok := ask(t, conn, &again).(*wire.FindResp); !ok || r.Status != wire.FindWaiting {
		t.Fatalf("an again-find signed with its flag: %#v, want waiting", r)
	}
}

// TestFindFlagsRefused: flags no server acts on get a bad-argument Error
// that says why.
func TestFindFlagsRefused(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	conn := dial(t, srv.Addr)
	ch := ask(t, conn, &wire.Hello{ReqID: 1, Session: "s"}).(*wire.Challenge)
	for name, f := range map[string]wire.Find{
		"unknown bit":        {Name: "a", Peer: "b", Flags: 1 << 5},
		"any peer with peer": {Name: "a", Peer: "b", Flags: wire.FindAnyPeer},
		"no peer":            {Name: "a"},
		"any peer and again": {Name: "a", Flags: wire.FindAnyPeer | wire.FindAgain},
	} {
		f.ReqID, f.Cookie, f.Session = 1, ch.Cookie, "s"
		e, ok := ask(t, conn, &f).(*wire.Error)
		if !ok || e.Code != wire.CodeBadArgument || e.Message == "" {
			t.Errorf("%s: %#v, want Error bad_argument", name, e)
		}
	}
	if e := ask(t, conn, &wire.Find{ReqID: 1, Cookie: ch.Cookie, Session: "s", Name: "a", Peer: "b", Flags: 1 << 5}).(*wire.Error); !strings.Contains(e.Message, "0x20") {
		t.Error("the error does not name the unknown bit")
	}
}

// TestListenerLeaves: a listener that gives up withdraws its find; a
// finder arriving later waits instead of being paired with it.
func TestListenerLeaves(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := listen(t, srv, ctx, "s", "homebox", nil)
	cancel()
	if _, err := result(); !errors.Is(err, context.Canceled) {
		t.Fatalf("the interrupted listener: %v", err)
	}
	c := srv.Client(t)
	c.MaxRetry = 100 * time.Millisecond
	_, err := c.Find(ctxTimeout(t, 700*time.Millisecond), rendezvous.FindRequest{Session: "s", Name: "laptop", Peer: "homebox"})
	if !errors.Is(err, rendezvous.ErrPeerNotFound) {
		t.Fatalf("a finder after the listener left: %v, want ErrPeerNotFound", err)
	}
}
