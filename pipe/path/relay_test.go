package path

import (
	"context"
	"errors"
	"fmt"
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
)

// pairThroughServer pairs two fresh loopback sockets through a real
// rendezvous server and returns them with the pairing.
func pairThroughServer(t *testing.T, srv *rendezvoustest.Server) (ua, ub *net.UDPConn, ma, mb rendezvous.Match) {
	t.Helper()
	ua, _ = listen(t)
	ub, _ = listen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() {
		ma, errA = (&rendezvous.Client{Conn: ua, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	})
	wg.Go(func() {
		mb, errB = (&rendezvous.Client{Conn: ub, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "s", Name: "b", Peer: "a"})
	})
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("find: %v / %v", errA, errB)
	}
	if !ma.Relay || !mb.Relay {
		t.Fatal("the server did not offer the relay")
	}
	return ua, ub, ma, mb
}

// endOf is opt for the end of the relay that m describes: its role and
// token.
func endOf(opt Options, m rendezvous.Match) Options {
	opt.Role, opt.RelayToken = m.Role, m.RelayToken
	return opt
}

func TestRelayOnly(t *testing.T) {
	for _, offload := range []bool{true, false} {
		srv := rendezvoustest.Start(t, server.Config{})
		ua, ub, ma, mb := pairThroughServer(t, srv)
		checkGoroutinesEnd(t)
		opt := Options{RelayOnly: true, NoOffload: !offload}
		a := New(ua, srv.Addr, ma.PairingID, []netip.AddrPort{mb.Observed}, nil, endOf(opt, ma))
		b := New(ub, srv.Addr, mb.PairingID, []netip.AddrPort{ma.Observed}, nil, endOf(opt, mb))
		defer a.Close()
		defer b.Close()

		a.Send([]byte("through the relay"))
		got, from := recvTimeout(t, b, 5*time.Second)
		if string(got) != "through the relay" || from != srv.Addr {
			t.Fatalf("b got %q from %s, want the datagram from the server %s", got, from, srv.Addr)
		}
		b.Confirm(from)
		if !b.Relayed() {
			t.Fatal("b does not report the relay")
		}
		// Back, in a batch of equal sizes (a GSO run on a direct path).
		b.SendBatch([][]byte{[]byte("one"), []byte("two")})
		for _, want := range []string{"one", "two"} {
			got, from := recvTimeout(t, a, 5*time.Second)
			if string(got) != want || from != srv.Addr {
				t.Fatalf("a got %q from %s, want %q", got, from, want)
			}
		}
		if st := a.Stats(); st.ProbesSent != 0 {
			t.Fatalf("relay only, yet %d probes sent", st.ProbesSent)
		}
		if n := srv.Metric("p2pcat_rendezvous_relayed_packets_total"); n != 3 {
			t.Fatalf("server relayed %v datagrams, want 3", n)
		}
	}
}

// gate is a bidirectional UDP forwarder between a and b that can be shut:
// a sees b at Addr(a side), b sees a at the other side, as through NATs.
type gate struct {
	open         atomic.Bool
	sideA, sideB *net.UDPConn
	peerA, peerB netip.AddrPort
	wg           sync.WaitGroup
	closeOnce    sync.Once
	forwardedToB atomic.Int64
}

func newGate(t *testing.T, a, b netip.AddrPort) *gate {
	g := &gate{peerA: a, peerB: b}
	g.sideA, _ = listen(t)
	g.sideB, _ = listen(t)
	pump := func(in, out *net.UDPConn, to netip.AddrPort) {
		buf := make([]byte, 65536)
		for {
			n, _, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if g.open.Load() {
				out.WriteToUDPAddrPort(buf[:n], to)
			}
		}
	}
	g.wg.Go(func() { pump(g.sideA, g.sideB, b) })
	g.wg.Go(func() { pump(g.sideB, g.sideA, a) })
	t.Cleanup(func() {
		g.sideA.Close()
		g.sideB.Close()
		g.wg.Wait()
	})
	return g
}

func (g *gate) addrForA() netip.AddrPort { return g.sideA.LocalAddr().(*net.UDPAddr).AddrPort() }
func (g *gate) addrForB() netip.AddrPort { return g.sideB.LocalAddr().(*net.UDPAddr).AddrPort() }

// endpoint plays the secure layer for one Conn: it confirms the sender of
// every datagram and sends one datagram every 20 ms.
func runEndpoint(ctx context.Context, wg *sync.WaitGroup, c *Conn) {
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := c.Recv(buf)
			if err != nil {
				return
			}
			c.Confirm(from)
		}
	})
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				c.Send([]byte("data"))
			}
		}
	})
}

// TestRelayToDirectAndBack: a session that starts on the relay moves to a
// direct path when one opens, and back to the relay when it is lost.
func TestRelayToDirectAndBack(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { testRelayToDirectAndBack(t, offload) })
	}
}

// gatedPair pairs two Conns through a real server, each knowing the other
// only through a gate (open or shut), both driven by runEndpoint until the
// test ends.
func gatedPair(t *testing.T, open bool, opt Options) (*rendezvoustest.Server, *gate, *Conn, *Conn) {
	t.Helper()
	srv := rendezvoustest.Start(t, server.Config{})
	ua, ub, ma, mb := pairThroughServer(t, srv)
	g := newGate(t, ua.LocalAddr().(*net.UDPAddr).AddrPort(), ub.LocalAddr().(*net.UDPAddr).AddrPort())
	g.open.Store(open)
	a := New(ua, srv.Addr, ma.PairingID, []netip.AddrPort{g.addrForA()}, nil, endOf(opt, ma))
	b := New(ub, srv.Addr, mb.PairingID, []netip.AddrPort{g.addrForB()}, nil, endOf(opt, mb))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runEndpoint(ctx, &wg, a)
	runEndpoint(ctx, &wg, b)
	t.Cleanup(func() {
		cancel()
		a.Close()
		b.Close()
		wg.Wait()
	})
	return srv, g, a, b
}

func testRelayToDirectAndBack(t *testing.T, offload bool) {
	checkGoroutinesEnd(t)
	_, g, a, b := gatedPair(t, false, Options{Relay: true, RelayAfter: time.Millisecond, NoOffload: !offload})

	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v (a at %s, b at %s)", what, d, a.Peer(), b.Peer())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("both on the relay", 5*time.Second, func() bool { return a.Relayed() && b.Relayed() })

	g.open.Store(true)
	waitFor("both direct after the path opened", 10*time.Second, func() bool {
		return a.Peer() == g.addrForA() && b.Peer() == g.addrForB()
	})

	g.open.Store(false)
	waitFor("both back on the relay after the direct path was lost", 10*time.Second, func() bool { return a.Relayed() && b.Relayed() })
}

// TestDirectFallsBackToRelay: a session that started direct, with the relay
// allowed only as a fallback, moves to the relay when the direct path is
// lost, and sends nothing through it before.
func TestDirectFallsBackToRelay(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { testDirectFallsBackToRelay(t, offload) })
	}
}

func testDirectFallsBackToRelay(t *testing.T, offload bool) {
	checkGoroutinesEnd(t)
	srv, g, a, b := gatedPair(t, true, Options{Relay: true, NoOffload: !offload})
	waitUntil(t, "both direct", 5*time.Second, func() bool { return a.Peer() == g.addrForA() && b.Peer() == g.addrForB() })
	time.Sleep(300 * time.Millisecond) // traffic on the working direct path
	if n := srv.Metric("p2pcat_rendezvous_relayed_packets_total"); n != 0 {
		t.Fatalf("%v datagrams relayed while the direct path worked", n)
	}
	g.open.Store(false)
	waitUntil(t, "both on the relay after the direct path was lost", 10*time.Second, func() bool { return a.Relayed() && b.Relayed() })
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayEndedEndsRecv: when the server's byte cap ends the relay, Recv
// on a relayed path returns ErrRelayEnded with the server's reason, while
// the other side keeps sending.
func TestRelayEndedEndsRecv(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{RelayBytes: 20_000})
	ua, ub, ma, mb := pairThroughServer(t, srv)
	checkGoroutinesEnd(t)
	opt := Options{RelayOnly: true}
	a := New(ua, srv.Addr, ma.PairingID, nil, nil, endOf(opt, ma))
	b := New(ub, srv.Addr, mb.PairingID, nil, nil, endOf(opt, mb))
	defer a.Close()
	defer b.Close()
	a.Confirm(srv.Addr)
	b.Confirm(srv.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				a.SendBatch([][]byte{make([]byte, 1000), make([]byte, 1000)})
			}
		}
	})
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := b.Recv(buf); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrRelayEnded) || !strings.Contains(err.Error(), "20000 bytes per session") {
			t.Fatalf("Recv: %v, want ErrRelayEnded with the cap", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay never ended")
	}
	if err := b.RelayError(); !errors.Is(err, ErrRelayEnded) {
		t.Fatalf("RelayError() = %v", err)
	}
}

// TestRelayRebind: a path on another socket than the one the server
// paired (a timed crossing's, a birthday punch's) moves our end of the
// relay to it at once with RebindRelay, so the relay carries it both
// ways; without it, the server drops what the new socket sends.
func TestRelayRebind(t *testing.T) {
	for _, rebind := range []bool{true, false} {
		srv := rendezvoustest.Start(t, server.Config{})
		ua, ub, ma, mb := pairThroughServer(t, srv)
		moved, _ := listen(t)
		opt := Options{RelayOnly: true}
		optA := endOf(opt, ma)
		optA.RebindRelay = rebind
		a := New(moved, srv.Addr, ma.PairingID, nil, nil, optA)
		b := New(ub, srv.Addr, mb.PairingID, nil, nil, endOf(opt, mb))
		if !rebind {
			a.Send([]byte("from a socket the relay does not know"))
			b.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 2048)
			if n, _, err := b.Recv(buf); err == nil {
				t.Errorf("without RebindRelay the relay carried %q from an unbound socket", buf[:n])
			}
			a.Close()
			// The relay itself works: from the socket it paired.
			paired := New(ua, srv.Addr, ma.PairingID, nil, nil, endOf(opt, ma))
			paired.Send([]byte("paired"))
			b.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _, err := b.Recv(buf); err != nil || string(buf[:n]) != "paired" {
				t.Errorf("from the paired socket the relay carried %q, %v; want \"paired\"", buf[:n], err)
			}
			paired.Close()
			b.Close()
			continue
		}
		ua.Close()
		// a reads all along, as the secure layer does: the bind takes a
		// round trip (the server's Challenge, which a's reads answer with
		// the bind and its cookie).
		fromA := make(chan string, 16)
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := a.Recv(buf)
				if err != nil {
					close(fromA)
					return
				}
				if from == srv.Addr {
					fromA <- string(buf[:n])
				}
			}
		}()
		// Send until a datagram comes through.
		deadline := time.Now().Add(5 * time.Second)
		var got []byte
		for time.Now().Before(deadline) {
			a.Send([]byte("moved"))
			b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			buf := make([]byte, 2048)
			if n, _, err := b.Recv(buf); err == nil {
				got = buf[:n]
				break
			}
		}
		if string(got) != "moved" {
			t.Fatalf("the relay carried nothing from the rebound socket (got %q)", got)
		}
		b.SetReadDeadline(time.Time{})
		b.Confirm(srv.Addr)
		b.Send([]byte("back"))
		select {
		case p := <-fromA:
			if p != "back" {
				t.Fatalf("a got %q through the relay, want \"back\"", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a got nothing back through the relay")
		}
		a.Close()
		b.Close()
		for range fromA {
		}
	}
}
