package path

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/memnet"
)

// recordingSocket is a memnet socket that remembers where every datagram
// went.
type recordingSocket struct {
	*memnet.Socket
	mu sync.Mutex
	to []netip.AddrPort
}

func (s *recordingSocket) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	s.mu.Lock()
	s.to = append(s.to, to)
	s.mu.Unlock()
	return s.Socket.WriteToUDPAddrPort(b, to)
}

func (s *recordingSocket) sent() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.to...)
}

// TestSprayStopsAtAnswer: the easy side's spray goes to distinct ports of
// the peer's IP only, and stops soon after a probe comes back from one of
// them, well short of its bound.
func TestSprayStopsAtAnswer(t *testing.T) {
	checkGoroutinesEnd(t)
	mem, err := memnet.New(memnet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	own, err := mem.Listen(netip.MustParseAddrPort("10.0.0.2:5000"))
	if err != nil {
		t.Fatal(err)
	}
	sock := &recordingSocket{Socket: own}
	peer := netip.MustParseAddrPort("192.0.2.7:40000") // the peer's observed address
	server := netip.MustParseAddrPort("192.0.2.1:3478")
	var pid [16]byte
	pid[0] = 7
	c := New(sock, server, pid, []netip.AddrPort{peer}, nil, Options{Spray: peer})
	defer c.Close()
	go func() { // the secure layer's reads, which handle probes
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.Recv(buf); err != nil && !os.IsTimeout(err) {
				return
			}
		}
	}()

	// Wait for some of the spray, then answer from one sprayed port.
	deadline := time.Now().Add(5 * time.Second)
	var hit netip.AddrPort
	for hit == (netip.AddrPort{}) && time.Now().Before(deadline) {
		for _, a := range sock.sent() {
			if a != peer && len(sock.sent()) > 64 {
				hit = a
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	if !hit.IsValid() {
		t.Fatal("no spray")
	}
	hard, err := mem.Listen(hit)
	if err != nil {
		t.Fatal(err)
	}
	defer hard.Close()
	hard.WriteToUDPAddrPort(newProbe(pid), own.Addr())
	time.Sleep(100 * time.Millisecond)
	n := len(sock.sent())
	time.Sleep(100 * time.Millisecond)

	ports := map[uint16]bool{}
	for _, a := range sock.sent() {
		if a.Addr() != peer.Addr() {
			t.Fatalf("a probe went to %s, not the peer's IP %s", a, peer.Addr())
		}
		if a != peer && a != hit {
			if ports[a.Port()] {
				t.Fatalf("port %d sprayed twice", a.Port())
			}
			ports[a.Port()] = true
		}
	}
	if len(ports) >= DefaultSprayProbes/2 {
		t.Errorf("%d ports sprayed after the answer, want the spray stopped", len(ports))
	}
	if later := len(sock.sent()) - n; later > 4 {
		t.Errorf("%d datagrams after the spray stopped, want only the punch rounds'", later)
	}
}

// TestBirthdayPunchPicksTheSocketThatMet: the hard side's sockets probe the
// peer only after their wait; the one the peer answers wins, every other
// socket is closed and no goroutine is left.
func TestBirthdayPunchPicksTheSocketThatMet(t *testing.T) {
	checkGoroutinesEnd(t)
	peer, peerAddr := listen(t)
	defer peer.Close()
	var pid [16]byte
	pid[1] = 9
	const n, wait = 32, 50 * time.Millisecond
	fdsBefore := openFDs(t)

	answered := make(chan netip.AddrPort, 1)
	go func() { // the easy side: answers the fifth probe's sender, once
		buf := make([]byte, 2048)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := 0; ; i++ {
			k, from, err := peer.ReadFromUDPAddrPort(buf)
			if err != nil {
				close(answered)
				return
			}
			if i == 4 && isProbe(buf[:k], newProbe(pid)) {
				peer.WriteToUDPAddrPort(newProbe(pid), from)
				answered <- from
				return
			}
		}
	}()
	start := time.Now()
	res, err := BirthdayPunch(context.Background(), peerAddr, pid, n, wait, 2*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	from := <-answered
	if res.Sock == nil {
		t.Fatalf("no socket won (%+v)", res)
	}
	defer res.Sock.Close()
	if got := res.Sock.LocalAddr().(*net.UDPAddr).Port; got != int(from.Port()) {
		t.Errorf("socket on port %d won, want %d (the one answered)", got, from.Port())
	}
	if res.Sockets != n || res.Probes < 5 || res.Probes > 2*n {
		t.Errorf("sockets %d probes %d, want %d and 5..%d", res.Sockets, res.Probes, n, 2*n)
	}
	if res.Took < wait || time.Since(start) < wait {
		t.Errorf("took %v, less than the wait %v", res.Took, wait)
	}
	if got := openFDs(t); got != fdsBefore+1 {
		t.Errorf("%d file descriptors open, want %d (the winner's one more)", got, fdsBefore+1)
	}
}

// TestBirthdayPunchGivesUp: without an answer every socket is closed when
// the budget runs out.
func TestBirthdayPunchGivesUp(t *testing.T) {
	checkGoroutinesEnd(t)
	peer, peerAddr := listen(t)
	defer peer.Close()
	fdsBefore := openFDs(t)
	res, err := BirthdayPunch(context.Background(), peerAddr, [16]byte{1}, 16, 10*time.Millisecond, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sock != nil {
		t.Fatal("a socket won without an answer")
	}
	if res.Took < time.Second || res.Took > 3*time.Second {
		t.Errorf("took %v, want the budget", res.Took)
	}
	// 16 sockets probing at 10, 210 and 410 ms, and never more than
	// birthdayRounds times (a late timer on a loaded machine may leave
	// the last round out).
	if res.Probes < 2*16 || res.Probes > birthdayRounds*16 {
		t.Errorf("%d probes, want %d..%d", res.Probes, 2*16, birthdayRounds*16)
	}
	if got := openFDs(t); got != fdsBefore {
		t.Errorf("%d file descriptors open, want %d", got, fdsBefore)
	}
}

func TestSprayPorts(t *testing.T) {
	ports := sprayPorts(DefaultSprayProbes, 4000)
	seen := map[uint16]bool{}
	for _, p := range ports {
		if p < sprayLowPort || p == 4000 || seen[p] {
			t.Fatalf("port %d: below %d, the skipped one, or twice", p, sprayLowPort)
		}
		seen[p] = true
	}
	if len(ports) != DefaultSprayProbes {
		t.Fatalf("%d ports", len(ports))
	}
}

// openFDs counts this process's open file descriptors (Linux), or skips.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}
