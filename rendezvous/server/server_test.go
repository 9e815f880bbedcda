package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func localAddr(c *rendezvous.Client) netip.AddrPort {
	return c.Conn.(*net.UDPConn).LocalAddr().(*net.UDPAddr).AddrPort()
}

func newKey(t *testing.T) rendezvous.SessionKey {
	t.Helper()
	k, err := rendezvous.GenerateSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRegisterRefreshTaken(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	c := srv.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	key, otherKey := newKey(t), newKey(t)

	first, err := c.Register(ctx, "team", key, time.Hour)
	if err != nil || first.Refreshed {
		t.Fatalf("first register: %+v, %v", first, err)
	}
	if d := time.Until(first.Expires); d < 59*time.Minute || d > 61*time.Minute {
		t.Fatalf("expiry %v is not an hour away", first.Expires)
	}
	again, err := c.Register(ctx, "team", key, 2*time.Hour)
	if err != nil || !again.Refreshed || !again.Expires.After(first.Expires) {
		t.Fatalf("refresh: %+v, %v", again, err)
	}
	other := srv.Client(t)
	if _, err := other.Register(ctx, "team", otherKey, time.Hour); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("register with another key: err = %v, want ErrTaken", err)
	}
	// A refresh may shorten the registration too (from another address:
	// only the key counts).
	short, err := other.Register(ctx, "team", key, time.Minute)
	if err != nil || !short.Refreshed || !short.Expires.Before(first.Expires) {
		t.Fatalf("shortening refresh: %+v, %v", short, err)
	}
	if _, err := other.Register(ctx, "team", key, 10*time.Second); err == nil {
		t.Fatal("a ttl under the minimum was accepted")
	}
	if _, err := other.Register(ctx, "team", key, 1000*time.Hour); err == nil {
		t.Fatal("a ttl over the maximum was accepted")
	}
	if got := srv.Metric("p2pcat_rendezvous_registered_sessions"); got != 1 {
		t.Fatalf("registered_sessions = %v", got)
	}
	if got := srv.Metric("p2pcat_rendezvous_registrations_total"); got != 4 {
		t.Fatalf("registrations_total = %v, want 4 (created, refreshed, taken, refreshed)", got)
	}
}

// pair runs two finds concurrently (b starting after a has been told to
// wait) and returns both matches. keyA and keyB are the sides' session
// keys (nil: none).
func pair(t *testing.T, srv *rendezvoustest.Server, session, a, b string, keyA, keyB *rendezvous.SessionKey) (ma, mb rendezvous.Match, errA, errB error) {
	t.Helper()
	ca, cb := srv.Client(t), srv.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	aWaiting := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		ma, errA = ca.Find(ctx, rendezvous.FindRequest{Session: session, Name: a, Peer: b, SessionKey: keyA,
			Candidates: []netip.AddrPort{localAddr(ca)}, OnWaiting: func() { close(aWaiting) }})
	})
	select {
	case <-aWaiting:
	case <-ctx.Done():
	}
	mb, errB = cb.Find(ctx, rendezvous.FindRequest{Session: session, Name: b, Peer: a, SessionKey: keyB,
		Candidates: []netip.AddrPort{localAddr(cb)}})
	if errB != nil {
		ca.Conn.(*net.UDPConn).Close() // unblock a
	}
	wg.Wait()
	if errA == nil && errB == nil {
		if ma.PairingID != mb.PairingID {
			t.Errorf("pairing ids differ: %x %x", ma.PairingID, mb.PairingID)
		}
		if ma.PeerObserved != localAddr(cb) || mb.PeerObserved != localAddr(ca) {
			t.Errorf("peer addresses: a sees %v (b is %v), b sees %v (a is %v)", ma.PeerObserved, localAddr(cb), mb.PeerObserved, localAddr(ca))
		}
		if ma.Observed != localAddr(ca) || mb.Observed != localAddr(cb) {
			t.Errorf("observed addresses wrong: %v %v", ma.Observed, mb.Observed)
		}
		if len(ma.PeerCandidates) != 1 || ma.PeerCandidates[0] != localAddr(cb) {
			t.Errorf("a got candidates %v", ma.PeerCandidates)
		}
		if ma.Role != wire.RoleInitiator || mb.Role != wire.RoleResponder {
			t.Errorf("roles: first arrival %v, second %v", ma.Role, mb.Role)
		}
		if ma.ServerID != srv.ServerID() || mb.ServerID != srv.ServerID() {
			t.Errorf("server ids %x %x, want %x", ma.ServerID, mb.ServerID, srv.ServerID())
		}
		if ma.Relay && (ma.RelayToken == [16]byte{} || ma.RelayToken == mb.RelayToken) {
			t.Errorf("relay tokens %x %x: want two different secrets", ma.RelayToken, mb.RelayToken)
		}
	}
	return
}

func TestFindPairsBothOrders(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	for _, order := range [][2]string{{"alice", "bob"}, {"bob", "alice"}} {
		_, _, errA, errB := pair(t, srv, "s", order[0], order[1], nil, nil)
		if errA != nil || errB != nil {
			t.Fatalf("%v first: %v / %v", order[0], errA, errB)
		}
	}
	if got := srv.Metric("p2pcat_rendezvous_pairings_total"); got != 2 {
		t.Fatalf("pairings_total = %v, want 2", got)
	}
}

func TestRegisteredSessionNeedsTheKey(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	ctx := ctxTimeout(t, 10*time.Second)
	key, wrong := newKey(t), newKey(t)
	if _, err := srv.Client(t).Register(ctx, "club", key, time.Hour); err != nil {
		t.Fatal(err)
	}
	_, _, errA, errB := pair(t, srv, "club", "alice", "bob", &key, &key)
	if errA != nil || errB != nil {
		t.Fatalf("right key: %v / %v", errA, errB)
	}
	_, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "mallory", Peer: "bob", SessionKey: &wrong})
	if !errors.Is(err, rendezvous.ErrSessionKeyRefused) {
		t.Fatalf("wrong key: err = %v, want ErrSessionKeyRefused", err)
	}
	if got := srv.Metric("p2pcat_rendezvous_auth_failures_total"); got != 1 {
		t.Fatalf("auth_failures_total = %v", got)
	}
	start := time.Now()
	_, err = srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "carol", Peer: "bob"})
	if !errors.Is(err, rendezvous.ErrSessionKeyNeeded) || !strings.Contains(err.Error(), `session "club" is registered on this server: give its session key`) {
		t.Fatalf("no key: err = %v, want ErrSessionKeyNeeded", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("no key: failed after %v, want at once", el)
	}
	if got := srv.Metric("p2pcat_rendezvous_pending"); got != 0 {
		t.Fatalf("pending = %v: a find without the key was recorded", got)
	}
	// Unregistered sessions pair on names alone: the passwords are the
	// peers' business (their end-to-end handshake decides). A key given
	// for one is not used, and the caller hears about it once.
	var told atomic.Int32
	ca, cb := srv.Client(t), srv.Client(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		_, errA = ca.Find(ctx, rendezvous.FindRequest{Session: "open", Name: "alice", Peer: "bob", SessionKey: &key,
			OnUnregistered: func() { told.Add(1) }})
	})
	_, errB = cb.Find(ctx, rendezvous.FindRequest{Session: "open", Name: "bob", Peer: "alice"})
	wg.Wait()
	if errA != nil || errB != nil || told.Load() != 1 {
		t.Fatalf("unregistered session: %v / %v, OnUnregistered called %d times, want once", errA, errB, told.Load())
	}
}

// TestReplayedRequests: a Register or Find captured on the client's path
// and sent again from another address gets a Challenge (the cookie, which
// the signature covers, belongs to the first address); one altered and
// sent from the same address does not verify.
func TestReplayedRequests(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	key := newKey(t)
	victim, attacker := dial(t, srv.Addr), dial(t, srv.Addr)
	ch := ask(t, victim, &wire.Hello{ReqID: 1, Session: "club"}).(*wire.Challenge)
	reg := &wire.Register{ReqID: 1, Cookie: ch.Cookie, Session: "club", Verifier: key.Verifier(), TTLSeconds: 3600,
		Signature: rendezvous.RegisterSignature(key, ch.ServerID, ch.Cookie, "club", 3600)}
	if r, ok := ask(t, victim, reg).(*wire.RegisterResp); !ok || r.Status != wire.RegisterCreated {
		t.Fatalf("the victim's Register: %#v", r)
	}
	expires := time.Unix(int64(ask(t, victim, reg).(*wire.RegisterResp).Expires), 0)

	// The capture, from another address: a Challenge for that address.
	if _, ok := ask(t, attacker, reg).(*wire.Challenge); !ok {
		t.Fatal("a replayed Register from another address was not answered with a Challenge")
	}
	// Altered to a short ttl, from the victim's own address (spoofed):
	// the signature does not verify.
	short := *reg
	short.TTLSeconds = 60
	if e, ok := ask(t, victim, &short).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("an altered Register: %#v, want Error auth_failed", e)
	}
	// Another verifier under the victim's signature: refused too.
	evil := newKey(t)
	taken := *reg
	taken.Verifier = evil.Verifier()
	if e, ok := ask(t, victim, &taken).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("a Register with another verifier: %#v, want Error auth_failed", e)
	}
	// The attacker's own cookie does not help it: it cannot sign for it.
	ach := ask(t, attacker, &wire.Hello{ReqID: 2, Session: "club"}).(*wire.Challenge)
	stolen := *reg
	stolen.Cookie = ach.Cookie
	if e, ok := ask(t, attacker, &stolen).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("a Register with the attacker's cookie: %#v, want Error auth_failed", e)
	}
	// The registration is what the victim made.
	r, err := srv.Client(t).Register(ctxTimeout(t, 10*time.Second), "club", key, time.Hour)
	if err != nil || !r.Refreshed || r.Expires.Before(expires) {
		t.Fatalf("after the attacks the owner refreshes: %+v, %v (expiry was %v)", r, err, expires)
	}

	// A Find of the registered session, likewise.
	fch := ask(t, victim, &wire.Hello{ReqID: 3, Session: "club"}).(*wire.Challenge)
	if fch.Flags&wire.ChallengeRegistered == 0 {
		t.Fatal("the Challenge does not say registered")
	}
	find := &wire.Find{ReqID: 3, Cookie: fch.Cookie, Session: "club", Name: "alice", Peer: "bob",
		Signature: rendezvous.FindSignature(key, fch.ServerID, fch.Cookie, "club", "alice", "bob")}
	if r, ok := ask(t, victim, find).(*wire.FindResp); !ok || r.Status != wire.FindWaiting {
		t.Fatalf("the victim's Find: %#v", r)
	}
	if _, ok := ask(t, attacker, find).(*wire.Challenge); !ok {
		t.Fatal("a replayed Find from another address was not answered with a Challenge")
	}
	// The attacker's own cookie under the victim's signature; the
	// victim's signature for another name.
	moved := *find
	moved.Cookie = ask(t, attacker, &wire.Hello{ReqID: 4, Session: "club"}).(*wire.Challenge).Cookie
	if e, ok := ask(t, attacker, &moved).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("a Find with the attacker's cookie: %#v, want Error auth_failed", e)
	}
	renamed := *find
	renamed.Name = "mallory"
	if e, ok := ask(t, victim, &renamed).(*wire.Error); !ok || e.Code != wire.CodeAuthFailed {
		t.Fatalf("a Find for another name: %#v, want Error auth_failed", e)
	}
}

// dial returns a socket connected to addr, closed when the test ends.
func dial(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// datagramConn is a socket that talks to the server only: a connected
// *net.UDPConn, or an askConn.
type datagramConn interface {
	Write(b []byte) (int, error)
	Read(b []byte) (int, error)
	SetReadDeadline(t time.Time) error
}

// ask sends m (padded) on c and returns the answer to it, skipping stray
// datagrams.
func ask(t *testing.T, c datagramConn, m wire.Message) wire.Message {
	t.Helper()
	if _, err := c.Write(wire.Pad(m.AppendTo(nil))); err != nil {
		t.Fatal(err)
	}
	want, _ := wire.ReqIDOf(m.AppendTo(nil))
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no answer to %T: %v", m, err)
		}
		reply, err := wire.Decode(buf[:n])
		if id, _ := wire.ReqIDOf(buf[:n]); err == nil && id == want {
			return reply
		}
	}
}

func TestPeerNotFoundAndExpiry(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{PendingTTL: time.Minute})
	var offset atomic.Int64
	srv.SetClock(func() time.Time { return time.Now().Add(time.Duration(offset.Load())) })

	// A client that gives up withdraws its find (Leave): bob, arriving
	// later, waits instead of being paired with a client that is gone.
	ca := srv.Client(t)
	ca.MaxRetry = 100 * time.Millisecond
	_, err := ca.Find(ctxTimeout(t, 700*time.Millisecond), rendezvous.FindRequest{Session: "s", Name: "alice", Peer: "bob"})
	if !errors.Is(err, rendezvous.ErrPeerNotFound) {
		t.Fatalf("absent peer: err = %v, want ErrPeerNotFound", err)
	}
	waitMetricBelow(t, srv, "p2pcat_rendezvous_pending", 1)
	cb := srv.Client(t)
	_, err = cb.Find(ctxTimeout(t, 700*time.Millisecond), rendezvous.FindRequest{Session: "s", Name: "bob", Peer: "alice"})
	if !errors.Is(err, rendezvous.ErrPeerNotFound) {
		t.Fatalf("bob after alice left: err = %v, want ErrPeerNotFound", err)
	}
	waitMetricBelow(t, srv, "p2pcat_rendezvous_pending", 1)

	// A client that vanishes without a word (killed: its socket closes
	// while it waits) leaves its find pending until it expires; then a
	// later peer must wait too.
	cc := srv.Client(t)
	conn := cc.Conn.(*net.UDPConn)
	_, err = cc.Find(ctxTimeout(t, 5*time.Second), rendezvous.FindRequest{Session: "s", Name: "carol", Peer: "dave", OnWaiting: func() { conn.Close() }})
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("find over a closed socket: err = %v, want net.ErrClosed", err)
	}
	if got := srv.Metric("p2pcat_rendezvous_pending"); got != 1 {
		t.Fatalf("pending = %v, want carol's find still pending", got)
	}
	offset.Store(int64(2 * time.Minute))
	cd := srv.Client(t)
	_, err = cd.Find(ctxTimeout(t, 700*time.Millisecond), rendezvous.FindRequest{Session: "s", Name: "dave", Peer: "carol"})
	if !errors.Is(err, rendezvous.ErrPeerNotFound) {
		t.Fatalf("dave after carol expired: err = %v, want ErrPeerNotFound", err)
	}

	// Registrations expire too: after the ttl another password may take it.
	ctx := ctxTimeout(t, 10*time.Second)
	one, two := newKey(t), newKey(t)
	if _, err := srv.Client(t).Register(ctx, "short", one, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client(t).Register(ctx, "short", two, time.Minute); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("before expiry: %v", err)
	}
	offset.Store(int64(4 * time.Minute))
	if _, err := srv.Client(t).Register(ctx, "short", two, time.Minute); err != nil {
		t.Fatalf("after expiry another key may register: %v", err)
	}
}

// waitMetricBelow waits (at most 5 s) until the metric is below limit.
func waitMetricBelow(t *testing.T, srv *rendezvoustest.Server, name string, limit float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Metric(name) >= limit {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want below %v", name, srv.Metric(name), limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestThousandConcurrentPairs(t *testing.T) {
	const pairs = 1000
	srv := rendezvoustest.Start(t, server.Config{RatePerIP: -1, MaxPendingPerIP: 10 * pairs})
	ctx := ctxTimeout(t, 60*time.Second)
	type result struct {
		m    rendezvous.Match
		self netip.AddrPort
		err  error
	}
	results := make([][2]result, pairs)
	var wg sync.WaitGroup
	for i := range pairs {
		for side := range 2 {
			c := srv.Client(t)
			name, peer := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
			if side == 1 {
				name, peer = peer, name
			}
			wg.Go(func() {
				m, err := c.Find(ctx, rendezvous.FindRequest{Session: "crowd", Name: name, Peer: peer,
					Candidates: []netip.AddrPort{localAddr(c)}})
				results[i][side] = result{m, localAddr(c), err}
			})
		}
	}
	wg.Wait()
	ids := make(map[[16]byte]int)
	for i, r := range results {
		a, b := r[0], r[1]
		if a.err != nil || b.err != nil {
			t.Fatalf("pair %d: %v / %v", i, a.err, b.err)
		}
		if a.m.PairingID != b.m.PairingID {
			t.Fatalf("pair %d: different pairing ids", i)
		}
		if a.m.PeerObserved != b.self || b.m.PeerObserved != a.self {
			t.Fatalf("pair %d cross-paired: a sees %v (b is %v), b sees %v (a is %v)", i, a.m.PeerObserved, b.self, b.m.PeerObserved, a.self)
		}
		if a.m.Role == b.m.Role {
			t.Fatalf("pair %d: both sides got role %v", i, a.m.Role)
		}
		ids[a.m.PairingID]++
	}
	if len(ids) != pairs {
		t.Fatalf("%d distinct pairing ids for %d pairs", len(ids), pairs)
	}
}

func TestRestartKeepsRegistrations(t *testing.T) {
	dir := t.TempDir()
	srv := rendezvoustest.Start(t, server.Config{DataDir: dir})
	ctx := ctxTimeout(t, 10*time.Second)
	key := newKey(t)
	if _, err := srv.Client(t).Register(ctx, "kept", key, time.Hour); err != nil {
		t.Fatal(err)
	}
	id := srv.ServerID()
	srv.Stop()

	again := rendezvoustest.Start(t, server.Config{DataDir: dir})
	if again.ServerID() != id {
		t.Fatal("server id changed across a restart: every signature would be for another server")
	}
	if _, err := again.Client(t).Register(ctx, "kept", newKey(t), time.Hour); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("after restart: err = %v, want ErrTaken", err)
	}
	r, err := again.Client(t).Register(ctx, "kept", key, time.Hour)
	if err != nil || !r.Refreshed {
		t.Fatalf("after restart the owner refreshes: %+v %v", r, err)
	}
	_, _, errA, errB := pair(t, again, "kept", "alice", "bob", &key, &key)
	if errA != nil || errB != nil {
		t.Fatalf("after restart the key pairs: %v / %v", errA, errB)
	}
}

// TestGarbageFloodDoesNotStopPairing: pairing works while one source
// sends garbage at about floodBurst packets per millisecond. The flood is
// paced: an unpaced sender in the same process outruns the server on a
// loaded 2-core machine under -race, the kernel drops every datagram past
// the full socket buffer, the pairing's included, and the test measures
// the machine instead of the server. What a server does beyond its
// capacity is the job of the benchmarks.
func TestGarbageFloodDoesNotStopPairing(t *testing.T) {
	const floodBurst = 16
	srv := rendezvoustest.Start(t, server.Config{})
	flood, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1500)
		hello := (&wire.Hello{ReqID: 1, Session: "x"}).AppendTo(nil)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			var pkt []byte
			switch i % 4 {
			case 0: // random noise
				n := 1 + i%len(buf)
				rand.Read(buf[:n])
				pkt = buf[:n]
			case 1: // our magic, random body
				n := wire.HeaderLen + i%64
				rand.Read(buf[:n])
				copy(buf, "P2PC\x02")
				pkt = buf[:n]
			case 2: // truncated valid message
				pkt = hello[:i%len(hello)]
			case 3: // a find with a forged cookie
				pkt = wire.Pad((&wire.Find{ReqID: 9, Cookie: bytes.Repeat([]byte{1}, 20), Session: "s", Name: "x", Peer: "y"}).AppendTo(nil))
			}
			flood.Write(pkt)
			sent.Add(1)
			if i%floodBurst == floodBurst-1 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	_, _, errA, errB := pair(t, srv, "busy", "alice", "bob", nil, nil)
	for sent.Load() < 5000 { // make sure the flood really overlapped the pairing
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("pairing under flood: %v / %v", errA, errB)
	}
	drops := srv.Metric("p2pcat_rendezvous_drops_total")
	if drops == 0 {
		t.Fatal("no drops counted under a garbage flood")
	}
	t.Logf("flood: %d packets sent, %v drops counted", sent.Load(), drops)
}

func TestPanicIsRecovered(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	srv.PanicOnSession("boom")
	c := srv.Client(t)
	c.MaxRetry = 100 * time.Millisecond
	_, err := c.Find(ctxTimeout(t, 500*time.Millisecond), rendezvous.FindRequest{Session: "boom", Name: "a", Peer: "b"})
	if err == nil {
		t.Fatal("find on the panicking session succeeded")
	}
	if got := srv.Metric("p2pcat_rendezvous_drops_total"); got == 0 {
		t.Fatal("panic not counted")
	}
	_, _, errA, errB := pair(t, srv, "fine", "alice", "bob", nil, nil)
	if errA != nil || errB != nil {
		t.Fatalf("server did not survive the panic: %v / %v", errA, errB)
	}
}

// TestDualStackSocket runs the server on a wildcard socket, as `serve
// --listen :3478` does, and pairs IPv4 clients through it (their addresses
// arrive v4-mapped and must go out again correctly in batched writes).
func TestDualStackSocket(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Skip("no wildcard UDP socket here:", err)
	}
	defer conn.Close()
	srv, err := server.NewServer(server.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	defer func() { cancel(); <-done }()
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(conn.LocalAddr().(*net.UDPAddr).Port))
	mk := func() *rendezvous.Client {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &rendezvous.Client{Conn: c, Server: addr}
	}
	ca, cb := mk(), mk()
	fctx := ctxTimeout(t, 10*time.Second)
	var ma rendezvous.Match
	var errA error
	var wg sync.WaitGroup
	wg.Go(func() { ma, errA = ca.Find(fctx, rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"}) })
	mb, errB := cb.Find(fctx, rendezvous.FindRequest{Session: "s", Name: "b", Peer: "a"})
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("%v / %v", errA, errB)
	}
	if ma.PeerObserved != localAddr(cb) || mb.PeerObserved != localAddr(ca) {
		t.Fatalf("addresses: %v %v", ma.PeerObserved, mb.PeerObserved)
	}
}

// TestStopLeavesNoGoroutines: a server that paired clients and relayed for
// them, then stopped, leaves no goroutine behind (nor do its clients).
func TestStopLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("serve", func(t *testing.T) {
		srv := rendezvoustest.Start(t, server.Config{})
		key := srv.RegisterSession(t, "club")
		ma, _, errA, errB := pair(t, srv, "club", "alice", "bob", &key, &key)
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		c := srv.Client(t)
		c.Conn.WriteToUDPAddrPort(wire.AppendRelayHeader(nil, ma.PairingID), srv.Addr)
	})
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the server started:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
