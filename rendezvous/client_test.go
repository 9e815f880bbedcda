package rendezvous_test

// Tests of the client's behaviour: against a fake server that is not this
// p2pcat's (an older version, or an attacker's), and against the real one
// for what the client itself must do (give up in time, leave its socket
// clean).

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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

func newKey(t *testing.T) rendezvous.SessionKey {
	t.Helper()
	k, err := rendezvous.GenerateSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A server that stops answering while a find waits is noticed within the
// client's ServerTimeout (ErrServerLost), not only when the find's own
// timeout ends; one that never answers gives ErrNoServer just as soon.
func TestServerLostWhileWaiting(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
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

// fakeServer answers every datagram with what reply returns, and records
// what it received. It stands in for a server that is not this one: an
// older version, or an attacker's.
type fakeServer struct {
	conn *net.UDPConn
	Addr netip.AddrPort
	mu   sync.Mutex
	got  [][]byte
}

func startFake(t *testing.T, reply func(pkt []byte) [][]byte) *fakeServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{conn: conn, Addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pkt := bytes.Clone(buf[:n])
			f.mu.Lock()
			f.got = append(f.got, pkt)
			f.mu.Unlock()
			for _, b := range reply(pkt) {
				conn.WriteToUDPAddrPort(b, from)
			}
		}
	})
	t.Cleanup(func() { conn.Close(); wg.Wait() })
	return f
}

func (f *fakeServer) received() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.got...)
}

func (f *fakeServer) client(t *testing.T) *rendezvous.Client {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rendezvous.Client{Conn: conn, Server: f.Addr}
}

// TestVersionMismatchClient: a version-1 server answers our Hello with its
// version error (what p2pcat 1 sends: "server speaks protocol version 1",
// version 1 in the header); the client fails at once with
// ErrVersionMismatch, for a Find and for a Register, and sends nothing
// more.
func TestVersionMismatchClient(t *testing.T) {
	v1 := startFake(t, func(pkt []byte) [][]byte {
		id, _ := wire.ReqIDOf(pkt)
		return [][]byte{wire.AppendErrorVersion(nil, 1, &wire.Error{ReqID: id, Code: wire.CodeVersion, Message: "server speaks protocol version 1\x1b[2J\u202egnp.exe"})}
	})
	start := time.Now()
	_, err := v1.client(t).Find(ctxTimeout(t, 30*time.Second), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	if !errors.Is(err, rendezvous.ErrVersionMismatch) {
		t.Fatalf("Find: err = %v, want ErrVersionMismatch", err)
	}
	want := fmt.Sprintf("the rendezvous server at %s speaks protocol version 1, this p2pcat speaks 2", v1.Addr)
	if !strings.HasPrefix(err.Error(), want) || strings.ContainsAny(err.Error(), "\x1b\u202e") {
		t.Fatalf("Find: err = %q, want it to start with %q and hold no escape or bidi override", err, want)
	}
	_, err = v1.client(t).Register(ctxTimeout(t, 30*time.Second), "s", newKey(t), time.Hour)
	if !errors.Is(err, rendezvous.ErrVersionMismatch) {
		t.Fatalf("Register: err = %v, want ErrVersionMismatch", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("failed after %v, want at once", el)
	}
	for _, pkt := range v1.received() {
		if h, err := wire.ParseHeader(pkt); err != nil || h.Type != wire.TypeHello {
			t.Fatalf("the client sent % x after the version error", pkt[:min(len(pkt), 8)])
		}
	}
}

// TestRegisteredFlagWithoutKey: whoever answers as the server says the
// session is registered, and the user gave no key: the client fails with
// ErrSessionKeyNeeded and sends nothing but its Hello. (With version 2
// there is nothing password-derived in the client to send anyway; this
// shows it does not even send a Find or a Leave.)
func TestRegisteredFlagWithoutKey(t *testing.T) {
	liar := startFake(t, func(pkt []byte) [][]byte {
		m, err := wire.Decode(pkt)
		if err != nil {
			return nil
		}
		if h, ok := m.(*wire.Hello); ok {
			return [][]byte{(&wire.Challenge{ReqID: h.ReqID, Cookie: []byte("attacker's cookie"), ServerID: [16]byte{0xee},
				Flags: wire.ChallengeRegistered}).AppendTo(nil)}
		}
		return nil
	})
	_, err := liar.client(t).Find(ctxTimeout(t, 30*time.Second), rendezvous.FindRequest{Session: "default", Name: "alice", Peer: "bob"})
	if !errors.Is(err, rendezvous.ErrSessionKeyNeeded) {
		t.Fatalf("err = %v, want ErrSessionKeyNeeded", err)
	}
	got := liar.received()
	if len(got) == 0 {
		t.Fatal("the fake server received nothing")
	}
	for _, pkt := range got {
		m, err := wire.Decode(pkt)
		if _, hello := m.(*wire.Hello); err != nil || !hello {
			t.Fatalf("after the Challenge the client sent %T (% x)", m, pkt[:min(len(pkt), 8)])
		}
	}
}

// TestFindLeavesNoDeadline: the socket goes on to carry the session, so a
// read deadline left by the client would break it moments later.
func TestFindLeavesNoDeadline(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
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

// countingConn counts the datagrams a client sends.
type countingConn struct {
	rendezvous.PacketConn
	mu   sync.Mutex
	sent int
}

func (c *countingConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	c.mu.Lock()
	c.sent++
	c.mu.Unlock()
	return c.PacketConn.WriteToUDPAddrPort(b, addr)
}

// TestFindRoundTrips: a pairing takes each side two requests, the Hello
// (whose Challenge proves its address and says whether the session is
// registered) and one Find, signed or not; the first arrival's match is
// pushed to it, with nothing more to ask. The -vv log's "rendezvous:
// matched" line (scripts/setup_steps.sh) says the same count.
func TestFindRoundTrips(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	key := srv.RegisterSession(t, "club")
	t.Run("unregistered", func(t *testing.T) { findRoundTrips(t, srv, "s", nil) })
	t.Run("registered", func(t *testing.T) { findRoundTrips(t, srv, "club", &key) })
}

func findRoundTrips(t *testing.T, srv *rendezvoustest.Server, session string, key *rendezvous.SessionKey) {
	ctx := ctxTimeout(t, 10*time.Second)
	var logs [2]lockedBuffer
	var conns [2]*countingConn
	var clients [2]*rendezvous.Client
	for i := range clients {
		clients[i] = srv.Client(t)
		conns[i] = &countingConn{PacketConn: clients[i].Conn}
		clients[i].Conn = conns[i]
		clients[i].Logger = slog.New(slog.NewTextHandler(&logs[i], &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var wg sync.WaitGroup
	var errB error
	arrived := false
	_, errA := clients[0].Find(ctx, rendezvous.FindRequest{Session: session, Name: "a", Peer: "b", SessionKey: key, OnWaiting: func() {
		arrived = true
		wg.Go(func() {
			_, errB = clients[1].Find(ctx, rendezvous.FindRequest{Session: session, Name: "b", Peer: "a", SessionKey: key})
		})
	}})
	wg.Wait()
	if errA != nil || errB != nil || !arrived {
		t.Fatalf("Find: a %v, b %v (b started: %v)", errA, errB, arrived)
	}
	for i, name := range []string{"first arrival", "second arrival"} {
		if conns[i].sent != 2 {
			t.Errorf("%s sent %d datagrams, want 2 (Hello, Find)", name, conns[i].sent)
		}
		if log := logs[i].String(); !strings.Contains(log, `msg="rendezvous: matched" requests=2 `) ||
			!strings.Contains(log, `msg="rendezvous: challenge" requests=1 `) {
			t.Errorf("%s logged:\n%s", name, log)
		}
	}
}

// lockedBuffer is a bytes.Buffer for a logger written from the client's
// goroutine and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStrayDatagramResendsFind: the server's match is lost on its way to
// us, as its push to the waiting first arrival or as its answer to the
// second; the peer's first probe arrives instead, and the client asks the
// server again at once, getting the match long before its next re-send
// would have (MaxRetry and Retry, here 10 s).
func TestStrayDatagramResendsFind(t *testing.T) {
	t.Run("push lost", func(t *testing.T) { strayResendsFind(t, true) })
	t.Run("answer lost", func(t *testing.T) { strayResendsFind(t, false) })
}

// strayResendsFind runs a fake server that answers a client's first Find
// with "waiting" (waiting) or not at all, and later ones with the match;
// a probe reaches the client once the first Find arrived.
func strayResendsFind(t *testing.T, waiting bool) {
	var finds atomic.Int32
	probed := make(chan struct{})
	match := &wire.FindResp{Status: wire.FindMatched, Observed: netip.MustParseAddrPort("192.0.2.1:1"),
		PairingID: [16]byte{7}, PeerName: "b", PeerObserved: netip.MustParseAddrPort("192.0.2.2:2")}
	srv := startFake(t, func(pkt []byte) [][]byte {
		m, err := wire.Decode(pkt)
		if err != nil {
			return nil
		}
		switch m := m.(type) {
		case *wire.Hello:
			return [][]byte{(&wire.Challenge{ReqID: m.ReqID, Cookie: []byte("cookie")}).AppendTo(nil)}
		case *wire.Find:
			if finds.Add(1) == 1 {
				close(probed)
				if waiting { // the match pushed a moment later is lost
					return [][]byte{(&wire.FindResp{ReqID: m.ReqID, Status: wire.FindWaiting}).AppendTo(nil)}
				}
				return nil // the answer is lost
			}
			r := *match
			r.ReqID = m.ReqID
			return [][]byte{r.AppendTo(nil)}
		}
		return nil
	})
	c := srv.client(t)
	c.Retry, c.MaxRetry = 10*time.Second, 10*time.Second
	var wg sync.WaitGroup
	wg.Go(func() {
		<-probed
		time.Sleep(10 * time.Millisecond) // after a "waiting" answer reached the client
		s, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(c.Conn.(*net.UDPConn).LocalAddr().(*net.UDPAddr).AddrPort()))
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		s.Write([]byte("the peer's probe"))
	})
	start := time.Now()
	m, err := c.Find(ctxTimeout(t, 30*time.Second), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	wg.Wait()
	if err != nil || m.PairingID != match.PairingID {
		t.Fatalf("Find = %+v, %v", m, err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("matched after %v: the probe did not make the client ask again", el)
	}
	if n := finds.Load(); n != 2 {
		t.Fatalf("the client sent %d Finds, want 2", n)
	}
}

// TestStrayDatagramKeepsBackOff: a server that asks us to slow down (rate
// limited) is not asked again sooner because a stray datagram arrived.
func TestStrayDatagramKeepsBackOff(t *testing.T) {
	var mu sync.Mutex
	var findAt []time.Time
	probed := make(chan struct{})
	srv := startFake(t, func(pkt []byte) [][]byte {
		m, err := wire.Decode(pkt)
		if err != nil {
			return nil
		}
		switch m := m.(type) {
		case *wire.Hello:
			return [][]byte{(&wire.Challenge{ReqID: m.ReqID, Cookie: []byte("cookie")}).AppendTo(nil)}
		case *wire.Find:
			mu.Lock()
			defer mu.Unlock()
			findAt = append(findAt, time.Now())
			if len(findAt) == 1 {
				close(probed)
				return [][]byte{(&wire.Error{ReqID: m.ReqID, Code: wire.CodeRateLimited}).AppendTo(nil)}
			}
			return [][]byte{(&wire.FindResp{ReqID: m.ReqID, Status: wire.FindMatched, PairingID: [16]byte{7}, PeerName: "b"}).AppendTo(nil)}
		}
		return nil
	})
	c := srv.client(t)
	c.Retry, c.MaxRetry = 50*time.Millisecond, time.Second
	var wg sync.WaitGroup
	wg.Go(func() {
		<-probed
		s, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(c.Conn.(*net.UDPConn).LocalAddr().(*net.UDPAddr).AddrPort()))
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		for range 5 {
			time.Sleep(50 * time.Millisecond)
			s.Write([]byte("a stray datagram"))
		}
	})
	_, err := c.Find(ctxTimeout(t, 30*time.Second), rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(findAt) != 2 || findAt[1].Sub(findAt[0]) < 900*time.Millisecond {
		t.Fatalf("Finds at %v: want the second one MaxRetry after the rate-limited first", findAt)
	}
}
