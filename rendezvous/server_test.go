package rendezvous_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

func TestMain(m *testing.M) {
	rendezvous.SetTestOnlyCredentialParams(rendezvous.Argon2Params{Time: 1, MemoryK: 64, Threads: 1})
	m.Run()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func localAddr(c *rendezvous.Client) netip.AddrPort {
	return c.Conn.(*net.UDPConn).LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestRegisterRefreshTaken(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	c := srv.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)

	first, err := c.Register(ctx, "team", []byte("correct horse"), time.Hour)
	if err != nil || first.Refreshed {
		t.Fatalf("first register: %+v, %v", first, err)
	}
	if d := time.Until(first.Expires); d < 59*time.Minute || d > 61*time.Minute {
		t.Fatalf("expiry %v is not an hour away", first.Expires)
	}
	again, err := c.Register(ctx, "team", []byte("correct horse"), 2*time.Hour)
	if err != nil || !again.Refreshed || !again.Expires.After(first.Expires) {
		t.Fatalf("refresh: %+v, %v", again, err)
	}
	other := srv.Client(t)
	if _, err := other.Register(ctx, "team", []byte("another password"), time.Hour); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("register with another password: err = %v, want ErrTaken", err)
	}
	if _, err := other.Register(ctx, "team", []byte("correct horse"), 10*time.Second); err == nil {
		t.Fatal("a ttl under the minimum was accepted")
	}
	if got := srv.Metric("p2pcat_rendezvous_registered_sessions"); got != 1 {
		t.Fatalf("registered_sessions = %v", got)
	}
}

// pair runs two finds concurrently (b starting after a has been told to
// wait when aFirst) and returns both matches.
func pair(t *testing.T, srv *rendezvoustest.Server, session, a, b string, pwA, pwB string) (ma, mb rendezvous.Match, errA, errB error) {
	t.Helper()
	ca, cb := srv.Client(t), srv.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	aWaiting := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		ma, errA = ca.Find(ctx, rendezvous.FindRequest{Session: session, Name: a, Peer: b, Password: []byte(pwA),
			Candidates: []netip.AddrPort{localAddr(ca)}, OnWaiting: func() { close(aWaiting) }})
	})
	select {
	case <-aWaiting:
	case <-ctx.Done():
	}
	mb, errB = cb.Find(ctx, rendezvous.FindRequest{Session: session, Name: b, Peer: a, Password: []byte(pwB),
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
	}
	return
}

func TestFindPairsBothOrders(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	for _, order := range [][2]string{{"alice", "bob"}, {"bob", "alice"}} {
		_, _, errA, errB := pair(t, srv, "s", order[0], order[1], "pw", "pw")
		if errA != nil || errB != nil {
			t.Fatalf("%v first: %v / %v", order[0], errA, errB)
		}
	}
	if got := srv.Metric("p2pcat_rendezvous_pairings_total"); got != 2 {
		t.Fatalf("pairings_total = %v, want 2", got)
	}
}

func TestRegisteredSessionNeedsPassword(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := srv.Client(t).Register(ctx, "club", []byte("secret"), time.Hour); err != nil {
		t.Fatal(err)
	}
	_, _, errA, errB := pair(t, srv, "club", "alice", "bob", "secret", "secret")
	if errA != nil || errB != nil {
		t.Fatalf("right password: %v / %v", errA, errB)
	}
	_, err := srv.Client(t).Find(ctx, rendezvous.FindRequest{Session: "club", Name: "mallory", Peer: "bob", Password: []byte("guess")})
	if !errors.Is(err, rendezvous.ErrAuth) {
		t.Fatalf("wrong password: err = %v, want ErrAuth", err)
	}
	if got := srv.Metric("p2pcat_rendezvous_auth_failures_total"); got != 1 {
		t.Fatalf("auth_failures_total = %v", got)
	}
	// Unregistered sessions pair on names alone: the passwords are the
	// peers' business (their end-to-end handshake decides).
	_, _, errA, errB = pair(t, srv, "open", "alice", "bob", "one", "two")
	if errA != nil || errB != nil {
		t.Fatalf("unregistered session: %v / %v", errA, errB)
	}
}

func TestPeerNotFoundAndExpiry(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{PendingTTL: time.Minute})
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
	if _, err := srv.Client(t).Register(ctx, "short", []byte("one"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client(t).Register(ctx, "short", []byte("two"), time.Minute); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("before expiry: %v", err)
	}
	offset.Store(int64(4 * time.Minute))
	if _, err := srv.Client(t).Register(ctx, "short", []byte("two"), time.Minute); err != nil {
		t.Fatalf("after expiry another password may register: %v", err)
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

// A server that stops answering while a find waits is noticed within the
// client's ServerTimeout (ErrServerLost), not only when the find's own
// timeout ends; one that never answers gives ErrNoServer just as soon.
func TestServerLostWhileWaiting(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	c := srv.Client(t)
	c.MaxRetry = 100 * time.Millisecond
	c.ServerTimeout = 500 * time.Millisecond
	start := time.Now()
	_, err := c.Find(ctxTimeout(t, time.Minute), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b", OnWaiting: srv.Stop})
	if !errors.Is(err, rendezvous.ErrServerLost) {
		t.Fatalf("err = %v, want ErrServerLost", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("noticed after %v", el)
	}

	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	conn, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer conn.Close()
	c = &rendezvous.Client{Conn: conn, Server: deadAddr, ServerTimeout: 500 * time.Millisecond}
	_, err = c.Find(ctxTimeout(t, time.Minute), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	if !errors.Is(err, rendezvous.ErrNoServer) {
		t.Fatalf("never answered: err = %v, want ErrNoServer", err)
	}
}

func TestNoServer(t *testing.T) {
	conn, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	defer conn.Close()
	c := &rendezvous.Client{Conn: conn, Server: deadAddr}
	_, err := c.Find(ctxTimeout(t, 500*time.Millisecond), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	if !errors.Is(err, rendezvous.ErrNoServer) {
		t.Fatalf("err = %v, want ErrNoServer", err)
	}
}

func TestThousandConcurrentPairs(t *testing.T) {
	const pairs = 1000
	srv := rendezvoustest.Start(t, rendezvous.Config{RatePerIP: -1, MaxPendingPerIP: 10 * pairs})
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
	srv := rendezvoustest.Start(t, rendezvous.Config{DataDir: dir})
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := srv.Client(t).Register(ctx, "kept", []byte("pw"), time.Hour); err != nil {
		t.Fatal(err)
	}
	id := srv.ServerID()
	srv.Stop()

	again := rendezvoustest.Start(t, rendezvous.Config{DataDir: dir})
	if again.ServerID() != id {
		t.Fatal("server id changed across a restart: every credential would break")
	}
	if _, err := again.Client(t).Register(ctx, "kept", []byte("other"), time.Hour); !errors.Is(err, rendezvous.ErrTaken) {
		t.Fatalf("after restart: err = %v, want ErrTaken", err)
	}
	r, err := again.Client(t).Register(ctx, "kept", []byte("pw"), time.Hour)
	if err != nil || !r.Refreshed {
		t.Fatalf("after restart the owner refreshes: %+v %v", r, err)
	}
}

func TestGarbageFloodDoesNotStopPairing(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
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
				copy(buf, "P2PC\x01")
				pkt = buf[:n]
			case 2: // truncated valid message
				pkt = hello[:i%len(hello)]
			case 3: // a find with a forged cookie
				pkt = wire.Pad((&wire.Find{ReqID: 9, Cookie: bytes.Repeat([]byte{1}, 20), Session: "s", Name: "x", Peer: "y"}).AppendTo(nil))
			}
			flood.Write(pkt)
			sent.Add(1)
		}
	})
	_, _, errA, errB := pair(t, srv, "busy", "alice", "bob", "pw", "pw")
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

// TestNoAmplification sends every kind of request from an address that has
// not proven itself and checks that no answer is larger than its request.
func TestNoAmplification(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reqs := [][]byte{
		(&wire.Hello{ReqID: 1, Session: "s"}).AppendTo(nil), // unpadded: smaller than a Challenge
		wire.Pad((&wire.Hello{ReqID: 2, Session: "s"}).AppendTo(nil)),
		(&wire.Find{ReqID: 3, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil),
		wire.Pad((&wire.Find{ReqID: 4, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil)),
		(&wire.Register{ReqID: 5, Session: "s"}).AppendTo(nil),
		[]byte("P2PC\x02\x01\x00\x00\x00\x00\x00\x00\x00\x06"), // another version
		[]byte("P2PC\x01\x7f\x00\x00\x00\x00\x00\x00\x00\x07"), // unknown type
		[]byte("P2PC\x01\x01\x00"),                             // truncated
		wire.Pad([]byte("P2PC\x01\x7f\x00\x00\x00\x00\x00\x00\x00\x08")),
	}
	answered := 0
	buf := make([]byte, 2048)
	for _, req := range reqs {
		conn.Write(req)
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			continue // dropped: fine
		}
		answered++
		if n > len(req) {
			t.Errorf("request of %d bytes (%x...) got a %d-byte answer", len(req), req[:6], n)
		}
	}
	if answered < 3 {
		t.Fatalf("only %d of %d requests answered: padded requests must get their (small) answers", answered, len(reqs))
	}
	if got := srv.Metric("p2pcat_rendezvous_drops_total"); got == 0 {
		t.Fatal("no drops counted")
	}
}

func TestVersionMismatchAnswered(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	conn, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	defer conn.Close()
	req := wire.Pad([]byte("P2PC\x02\x01\x00\x00\x00\x00\x00\x00\x00\x2a"))
	conn.Write(req)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := wire.Decode(buf[:n])
	e, ok := m.(*wire.Error)
	if err != nil || !ok || e.Code != wire.CodeVersion || e.ReqID != 0x2a {
		t.Fatalf("answer %#v, %v", m, err)
	}
}

func TestPanicIsRecovered(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
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
	_, _, errA, errB := pair(t, srv, "fine", "alice", "bob", "pw", "pw")
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
	srv, err := rendezvous.NewServer(rendezvous.Config{DataDir: t.TempDir()})
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

// TestCookieFromBeforeRestart: a client holding a cookie from a server that
// restarted (new cookie key) gets a fresh Challenge and goes on, instead of
// being ignored until it times out.
func TestCookieFromBeforeRestart(t *testing.T) {
	dir := t.TempDir()
	srv := rendezvoustest.Start(t, rendezvous.Config{DataDir: dir})
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	ask := func(m wire.Message) wire.Message {
		t.Helper()
		conn.Write(wire.Pad(m.AppendTo(nil)))
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no answer to %T: %v", m, err)
		}
		reply, err := wire.Decode(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return reply
	}
	old := ask(&wire.Hello{ReqID: 1, Session: "s"}).(*wire.Challenge).Cookie
	// The same server, restarted: the address stays (same port), the key changes.
	srv.Stop()
	again := rendezvoustest.Start(t, rendezvous.Config{DataDir: dir})
	conn.Close()
	conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(again.Addr))
	if err != nil {
		t.Fatal(err)
	}
	reply := ask(&wire.Find{ReqID: 2, Cookie: old, Session: "s", Name: "a", Peer: "b"})
	ch, ok := reply.(*wire.Challenge)
	if !ok || len(ch.Cookie) == 0 {
		t.Fatalf("find with an old cookie got %#v, want a fresh Challenge", reply)
	}
	if r, ok := ask(&wire.Find{ReqID: 2, Cookie: ch.Cookie, Session: "s", Name: "a", Peer: "b"}).(*wire.FindResp); !ok || r.Status != wire.FindWaiting {
		t.Fatalf("find with the fresh cookie: %#v", r)
	}
}

// TestFindLeavesNoDeadline: the socket goes on to carry the session, so a
// read deadline left by the client would break it moments later.
func TestFindLeavesNoDeadline(t *testing.T) {
	srv := rendezvoustest.Start(t, rendezvous.Config{})
	ca, cb := srv.Client(t), srv.Client(t)
	ca.Retry, cb.Retry = 50*time.Millisecond, 50*time.Millisecond
	ca.MaxRetry, cb.MaxRetry = 50*time.Millisecond, 50*time.Millisecond
	ctx := ctxTimeout(t, 10*time.Second)
	var wg sync.WaitGroup
	var errA error
	wg.Go(func() { _, errA = ca.Find(ctx, rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"}) })
	if _, err := cb.Find(ctx, rendezvous.FindRequest{Session: "s", Name: "b", Peer: "a"}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errA != nil {
		t.Fatal(errA)
	}
	time.Sleep(200 * time.Millisecond) // past any deadline the exchange set
	conn := ca.Conn.(*net.UDPConn)
	go func() {
		s, _ := net.DialUDP("udp", nil, conn.LocalAddr().(*net.UDPAddr))
		defer s.Close()
		s.Write([]byte("session data"))
	}()
	buf := make([]byte, 64)
	n, _, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "session data" {
		t.Fatalf("reading the socket after Find: %q, %v", buf[:n], err)
	}
}
