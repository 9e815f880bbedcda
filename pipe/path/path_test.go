package path

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

func listen(t *testing.T) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// recvTimeout reads one datagram for the secure layer, or fails the test.
func recvTimeout(t *testing.T, c *Conn, d time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	type res struct {
		b    []byte
		from netip.AddrPort
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		buf := make([]byte, 2048)
		n, from, err := c.Recv(buf)
		ch <- res{buf[:n], from, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.b, r.from
	case <-time.After(d):
		t.Fatal("no datagram")
	}
	return nil, netip.AddrPort{}
}

func TestPunchLearnConfirm(t *testing.T) {
	forEachNet(t, func(t *testing.T, n testNet) {
		for _, offload := range []bool{true, false} {
			t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { testPunchLearnConfirm(t, n, offload) })
		}
	})
}

func testPunchLearnConfirm(t *testing.T, n testNet, offload bool) {
	ua, aAddr := n.listen(t)
	ub, bAddr := n.listen(t)
	_, server := n.listen(t)
	dead := netip.MustParseAddrPort("127.0.0.1:9")
	id := [16]byte{1, 2, 3}
	// a knows only a dead candidate for b: it must learn b's real
	// address from b's probes.
	a := New(ua, server, id, []netip.AddrPort{dead}, nil, Options{NoOffload: !offload})
	b := New(ub, server, id, []netip.AddrPort{aAddr}, nil, Options{NoOffload: !offload})
	defer a.Close()
	defer b.Close()

	// b's datagram (fanned out: it has not confirmed a yet) reaches a.
	go func() {
		for range 50 {
			b.Send([]byte("hello from b"))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	got, from := recvTimeout(t, a, 5*time.Second)
	if string(got) != "hello from b" || from != bAddr {
		t.Fatalf("a got %q from %v", got, from)
	}
	// a learned b from its probe: before confirming, a's sends reach b.
	// (probes are handled while the secure layer reads: keep reading
	// b's datagrams until one of its probes has come in)
	for a.Stats().ProbesReceived == 0 {
		recvTimeout(t, a, 5*time.Second)
	}
	a.Send([]byte("reply"))
	for {
		got, _ := recvTimeout(t, b, 5*time.Second)
		if string(got) == "reply" {
			break
		}
	}
	a.Confirm(from)
	if a.Peer() != bAddr {
		t.Fatalf("peer = %v", a.Peer())
	}
	select {
	case <-a.Confirmed():
	default:
		t.Fatal("Confirmed not closed")
	}
	b.Confirm(aAddr)

	// A batch of mixed sizes arrives complete and in order (with
	// GSO: runs of equal sizes in one send, split again by GRO).
	var batch [][]byte
	for i := range 40 {
		size := 1200
		if i%7 == 6 {
			size = 300 + i
		}
		batch = append(batch, bytes.Repeat([]byte{byte(i)}, size))
	}
	if err := a.SendBatch(batch); err != nil {
		t.Fatal(err)
	}
	for i, want := range batch {
		got, _ := recvTimeout(t, b, 5*time.Second)
		if !bytes.Equal(got, want) {
			t.Fatalf("datagram %d: %d bytes of %d, want %d bytes of %d", i, len(got), got[0], len(want), want[0])
		}
	}
	if offload && n.mem == nil && !a.gso {
		t.Log("GSO unavailable here: the batch went out one datagram at a time")
	}
}

func TestStrayProbesAndServerIgnored(t *testing.T) {
	forEachNet(t, func(t *testing.T, n testNet) {
		for _, offload := range []bool{true, false} {
			t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { testStrayProbesAndServerIgnored(t, n, offload) })
		}
	})
}

func testStrayProbesAndServerIgnored(t *testing.T, n testNet, offload bool) {
	ua, aAddr := n.listen(t)
	us, server := n.listen(t)
	defer us.Close()
	peer, peerAddr := n.listen(t)
	defer peer.Close()
	a := New(ua, server, [16]byte{9}, []netip.AddrPort{peerAddr}, nil, Options{NoOffload: !offload})
	defer a.Close()
	other, _ := n.listen(t)
	defer other.Close()
	// A probe for another pairing, a late rendezvous answer and, before the
	// path is confirmed, a datagram from an address that is no candidate
	// are dropped; the next datagram from the peer's candidate comes
	// through.
	other.WriteToUDPAddrPort(append([]byte{ProbeType}, make([]byte, probeLen-1)...), aAddr)
	us.WriteToUDPAddrPort([]byte("P2PC late answer"), aAddr)
	other.WriteToUDPAddrPort([]byte("from a stranger"), aAddr)
	peer.WriteToUDPAddrPort([]byte("data"), aAddr)
	got, _ := recvTimeout(t, a, 5*time.Second)
	if string(got) != "data" {
		t.Fatalf("got %q", got)
	}
	if a.Stats().Dropped < 3 {
		t.Fatalf("dropped %d", a.Stats().Dropped)
	}
	a.mu.Lock()
	k := len(a.candidates)
	a.mu.Unlock()
	if k != 1 {
		t.Fatalf("a stray probe became a candidate")
	}
}

func TestLocalCandidates(t *testing.T) {
	for _, c := range LocalCandidates(4242, true) {
		if c.Port() != 4242 || !c.Addr().IsValid() || c.Addr().IsUnspecified() || c.Addr().IsLinkLocalUnicast() {
			t.Fatalf("bad candidate %v", c)
		}
	}
	for _, c := range LocalCandidates(1, false) {
		if c.Addr().IsLoopback() {
			t.Fatalf("loopback candidate %v without withLoopback", c)
		}
	}
}

func listenB(b *testing.B) (*net.UDPConn, netip.AddrPort) {
	b.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	RaiseBuffers(c, 8<<20, nil)
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}
