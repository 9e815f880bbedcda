package path

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/memnet"
	"github.com/p2pcat/p2pcat/internal/netem"
)

// The same tests over two networks, as wireguard-go runs its tests over
// an in-memory bind and over real UDP: internal/memnet's fake, where a
// Conn carries one datagram per call, and loopback UDP, where it uses the
// kernel's fast paths (GSO, GRO, sendmmsg, recvmmsg).

var _ Socket = (*memnet.Socket)(nil)

// testNet opens sockets on one of the two networks.
type testNet struct {
	mem *memnet.Network // nil: loopback UDP
}

// listen opens a socket on n, as listen does on loopback.
func (n testNet) listen(t *testing.T) (Socket, netip.AddrPort) {
	t.Helper()
	if n.mem == nil {
		return listen(t)
	}
	s, err := n.mem.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.Addr()
}

// forEachNet runs f over memnet and over loopback UDP, each in a subtest
// that fails if a goroutine of the package outlives it.
func forEachNet(t *testing.T, f func(t *testing.T, n testNet)) {
	t.Helper()
	for _, name := range []string{"memnet", "udp"} {
		t.Run(name, func(t *testing.T) {
			checkGoroutinesEnd(t) // first, so that its Cleanup runs last
			var n testNet
			if name == "memnet" {
				mem, err := memnet.New(memnet.Config{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { mem.Close() })
				n.mem = mem
			}
			f(t, n)
		})
	}
}

// exitGrace bounds how long a goroutine may take to return once Close
// told it to: the punch routine wakes from its wait at once, but a loaded
// machine (two cores, the race detector) may be slow to run it.
const exitGrace = 2 * time.Second

// received runs c's receive loop until c closes (it handles probes and
// the relay's datagrams on the way) and returns what the loop delivers.
func received(c *Conn) <-chan []byte {
	got := make(chan []byte, 64)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, _, err := c.Recv(buf)
			if err != nil {
				return
			}
			got <- append([]byte(nil), buf[:n]...)
		}
	}()
	return got
}

// checkGoroutinesEnd fails t unless every goroutine the package's own code
// started during t (the punch routine) has returned by the end of t's
// cleanups, within exitGrace. It compares goroutine ids in runtime.Stack
// snapshots, so goroutines of earlier tests do not count.
func checkGoroutinesEnd(t *testing.T) {
	t.Helper()
	before := map[string]bool{}
	for _, g := range pathGoroutines() {
		before[goroutineID(g)] = true
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(exitGrace)
		for {
			left := slices.DeleteFunc(pathGoroutines(), func(g string) bool { return before[goroutineID(g)] })
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines of the package outlived the test:\n%s", len(left), strings.Join(left, "\n\n"))
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// pathGoroutines returns the stacks of the goroutines created by the
// package's non-test code.
func pathGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		_, creator, ok := strings.Cut(g, "\ncreated by ")
		fn, file, _ := strings.Cut(creator, "\n")
		if ok && strings.HasPrefix(fn, "github.com/p2pcat/p2pcat/pipe/path.") && !strings.Contains(file, "_test.go") {
			found = append(found, g)
		}
	}
	return found
}

// goroutineID returns the id in a stack's first line, "goroutine 7 [...]:".
func goroutineID(stack string) string {
	id, _, _ := strings.Cut(strings.TrimPrefix(stack, "goroutine "), " ")
	return id
}

// TestCloseEndsRecv: a read deadline ends a blocked Recv with a timeout
// (the handshake's attempts rely on it); Close ends one for good, stops
// the punch routine and makes Send fail with net.ErrClosed; a second Close
// does no harm.
func TestCloseEndsRecv(t *testing.T) {
	forEachNet(t, func(t *testing.T, n testNet) {
		ua, _ := n.listen(t)
		_, peer := n.listen(t)
		_, server := n.listen(t)
		c := New(ua, server, [16]byte{8}, []netip.AddrPort{peer}, nil, Options{})
		errc := make(chan error, 1)
		recv := func() {
			buf := make([]byte, 65536)
			_, _, err := c.Recv(buf)
			errc <- err
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		go recv()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Recv past the deadline: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the read deadline did not end Recv")
		}
		c.SetReadDeadline(time.Time{})
		go recv()
		time.Sleep(20 * time.Millisecond) // most likely blocked in Recv by now
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Recv after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end Recv")
		}
		if err := c.Send([]byte("after close")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Send after Close: %v, want net.ErrClosed", err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// TestPunchOverImpairedNet: over a network that loses, duplicates,
// reorders and delays datagrams (memnet with netem's model), a side that
// knows only a dead candidate still learns the peer's address from its
// probes, and both confirm each other.
func TestPunchOverImpairedNet(t *testing.T) {
	checkGoroutinesEnd(t)
	mem, err := memnet.New(memnet.Config{
		Impairment: netem.Impairment{Loss: 0.3, Duplicate: 0.1, Reorder: 0.2, Delay: 5 * time.Millisecond, Jitter: 2 * time.Millisecond},
		Seed:       13,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	n := testNet{mem: mem}
	ua, aAddr := n.listen(t)
	ub, bAddr := n.listen(t)
	_, server := n.listen(t)
	id := [16]byte{1, 3}
	a := New(ua, server, id, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}, nil, Options{})
	b := New(ub, server, id, []netip.AddrPort{aAddr}, nil, Options{})
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
	waitUntil(t, "both confirmed", 10*time.Second, func() bool { return a.Peer() == bAddr && b.Peer() == aAddr })
	if st := mem.Stats(); st.DroppedLoss == 0 || st.Duplicated == 0 {
		t.Fatalf("the network impaired nothing (%v): the test proves nothing", st)
	}
}
