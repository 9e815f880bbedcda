package netem

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// testTimeout bounds every wait in these tests; only a broken proxy or a
// machine stalled for seconds reaches it.
const testTimeout = 10 * time.Second

// arrival is one datagram seen by a test peer.
type arrival struct {
	seq  uint64
	size int
	from netip.AddrPort
	at   time.Time
}

// testPeer is a UDP socket on loopback standing for A or B, with a reader
// goroutine that reports what arrives on its channel.
type testPeer struct {
	conn     *net.UDPConn
	arrivals chan arrival
}

func newTestPeer(t *testing.T, network, addr string) *testPeer {
	t.Helper()
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	// Bursts in these tests are small, but a roomy buffer keeps the test
	// socket from being the one that drops.
	_ = conn.SetReadBuffer(4 << 20)
	p := &testPeer{conn: conn, arrivals: make(chan arrival, 4096)}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed by cleanup
			}
			a := arrival{size: n, from: udpio.Unmap(from), at: time.Now()}
			if n >= 8 {
				a.seq = binary.BigEndian.Uint64(buf)
			}
			p.arrivals <- a
		}
	})
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	return p
}

func (p *testPeer) addr() netip.AddrPort {
	return udpio.Unmap(p.conn.LocalAddr().(*net.UDPAddr).AddrPort())
}

// send sends datagrams seq first..first+n-1 of the given size to face.
func (p *testPeer) send(t *testing.T, face netip.AddrPort, first uint64, n, size int) {
	t.Helper()
	buf := make([]byte, max(size, 8))
	for i := range uint64(n) {
		binary.BigEndian.PutUint64(buf, first+i)
		if _, err := p.conn.WriteToUDPAddrPort(buf, face); err != nil {
			t.Fatal(err)
		}
	}
}

// next returns the next arrival, failing the test after testTimeout.
func (p *testPeer) next(t *testing.T) arrival {
	t.Helper()
	select {
	case a := <-p.arrivals:
		return a
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for a datagram")
		return arrival{}
	}
}

// receive returns the next n arrivals.
func (p *testPeer) receive(t *testing.T, n int) []arrival {
	t.Helper()
	out := make([]arrival, n)
	for i := range out {
		out[i] = p.next(t)
	}
	return out
}

// startPair starts a proxy between two fresh loopback peers.
func startPair(t *testing.T, cfg Config) (p *Proxy, a, b *testPeer) {
	t.Helper()
	a = newTestPeer(t, "udp4", "127.0.0.1:0")
	b = newTestPeer(t, "udp4", "127.0.0.1:0")
	cfg.A, cfg.B = a.addr(), b.addr()
	p = startProxy(t, cfg)
	return p, a, b
}

func startProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// settled reports whether every datagram the direction received has left
// the proxy one way or another.
func settled(s DirStats) bool {
	return s.Received+s.Duplicated == s.Delivered+s.DroppedLoss+s.DroppedQueue+s.Undelivered
}

// sendSettled sends n datagrams from one peer in windows, letting the proxy
// settle each window so that no socket buffer along the way overflows, and
// returns the direction's stats at the end.
func sendSettled(t *testing.T, p *Proxy, dir Direction, from *testPeer, face netip.AddrPort, n, window int) DirStats {
	t.Helper()
	stats := func() DirStats {
		if dir == AtoB {
			return p.Stats().AtoB
		}
		return p.Stats().BtoA
	}
	for sent := 0; sent < n; sent += window {
		k := min(window, n-sent)
		from.send(t, face, uint64(sent), k, 64)
		waitFor(t, fmt.Sprintf("%d datagrams to settle", sent+k), func() bool {
			s := stats()
			return s.Received == uint64(sent+k) && settled(s)
		})
	}
	return stats()
}

func TestPerfectWireDeliversEverythingOnceInOrder(t *testing.T) {
	p, a, b := startPair(t, Config{})
	const n, window = 1000, 50
	for sent := 0; sent < n; sent += window {
		a.send(t, p.FaceA(), uint64(sent), window, 100)
		for i, got := range b.receive(t, window) {
			if want := uint64(sent + i); got.seq != want || got.from != p.FaceB() || got.size != 100 {
				t.Fatalf("B got datagram %d (%d bytes) from %v; want %d (100 bytes) from FaceB %v",
					got.seq, got.size, got.from, want, p.FaceB())
			}
		}
		b.send(t, p.FaceB(), uint64(sent), window, 1200)
		for i, got := range a.receive(t, window) {
			if want := uint64(sent + i); got.seq != want || got.from != p.FaceA() || got.size != 1200 {
				t.Fatalf("A got datagram %d (%d bytes) from %v; want %d (1200 bytes) from FaceA %v",
					got.seq, got.size, got.from, want, p.FaceA())
			}
		}
	}
	// The writer counts a batch once the send call returns, which may be
	// after the peer has read it.
	waitFor(t, "both directions to settle", func() bool { s := p.Stats(); return settled(s.AtoB) && settled(s.BtoA) })
	want := DirStats{Received: n, Delivered: n}
	if s := p.Stats(); s.AtoB != want || s.BtoA != want {
		t.Errorf("stats %v; want %v both ways", s, want)
	}
}

func TestLargeDatagramsPassIntact(t *testing.T) {
	a := newTestPeer(t, "udp4", "127.0.0.1:0")
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := startProxy(t, Config{A: a.addr(), B: udpio.Unmap(b.LocalAddr().(*net.UDPAddr).AddrPort())})

	payload := make([]byte, 65507) // the largest IPv4 UDP payload
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if _, err := a.conn.WriteToUDPAddrPort(payload, p.FaceA()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetReadDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], payload) {
		t.Fatalf("B got %d bytes, not the %d sent", n, len(payload))
	}
}

// lossyRun pushes n datagrams A→B through Loss=0.5 with the given seed and
// returns which arrived, checked against the proxy's stats.
func lossyRun(t *testing.T, seed int64, n int) []uint64 {
	t.Helper()
	p, a, b := startPair(t, Config{AtoB: Impairment{Loss: 0.5}, Seed: seed})
	s := sendSettled(t, p, AtoB, a, p.FaceA(), n, 100)
	if s.Delivered+s.DroppedLoss != uint64(n) || s.DroppedQueue != 0 || s.Undelivered != 0 {
		t.Fatalf("stats %v do not account for %d datagrams", s, n)
	}
	within(t, "dropped", int(s.DroppedLoss), float64(n)/2, 5*sigma(n, 0.5))

	got := make([]uint64, 0, s.Delivered)
	for _, arr := range b.receive(t, int(s.Delivered)) {
		got = append(got, arr.seq)
	}
	if !slices.IsSorted(got) {
		t.Error("loss alone reordered datagrams")
	}
	if len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Error("loss alone duplicated datagrams")
	}
	return got
}

func TestLossDropsAboutHalfAndStatsAgree(t *testing.T) {
	const n = 2000
	first := lossyRun(t, 1, n)
	if again := lossyRun(t, 1, n); !slices.Equal(first, again) {
		t.Error("the same seed and input dropped different datagrams")
	}
	if other := lossyRun(t, 2, n); slices.Equal(first, other) {
		t.Error("seeds 1 and 2 dropped the same datagrams")
	}
}

func TestDuplicateDeliversExtraCopies(t *testing.T) {
	t.Run("always", func(t *testing.T) {
		p, a, b := startPair(t, Config{BtoA: Impairment{Duplicate: 1}})
		const n = 200
		s := sendSettled(t, p, BtoA, b, p.FaceB(), n, 50)
		if s.Duplicated != n || s.Delivered != 2*n {
			t.Fatalf("stats %v; want every datagram duplicated", s)
		}
		count := map[uint64]int{}
		for _, arr := range a.receive(t, 2*n) {
			count[arr.seq]++
		}
		for seq := range uint64(n) {
			if count[seq] != 2 {
				t.Errorf("datagram %d arrived %d times, want 2", seq, count[seq])
			}
		}
	})
	t.Run("sometimes", func(t *testing.T) {
		p, a, b := startPair(t, Config{AtoB: Impairment{Duplicate: 0.3}, Seed: 5})
		const n = 1000
		s := sendSettled(t, p, AtoB, a, p.FaceA(), n, 100)
		within(t, "duplicated", int(s.Duplicated), 0.3*n, 5*sigma(n, 0.3))
		if s.Delivered != n+s.Duplicated {
			t.Fatalf("stats %v; want delivered = received + duplicated", s)
		}
		count := map[uint64]int{}
		for _, arr := range b.receive(t, int(s.Delivered)) {
			count[arr.seq]++
		}
		twice := 0
		for seq := range uint64(n) {
			switch count[seq] {
			case 1:
			case 2:
				twice++
			default:
				t.Errorf("datagram %d arrived %d times", seq, count[seq])
			}
		}
		if twice != int(s.Duplicated) {
			t.Errorf("%d datagrams arrived twice, stats say %d duplicated", twice, s.Duplicated)
		}
	})
}

func TestReorderDeliversOutOfOrder(t *testing.T) {
	p, a, b := startPair(t, Config{AtoB: Impairment{Reorder: 0.2, ReorderDelay: 20 * time.Millisecond}, Seed: 3})
	const n = 500
	s := sendSettled(t, p, AtoB, a, p.FaceA(), n, 50)
	if s.Delivered != n || s.Reordered == 0 {
		t.Fatalf("stats %v; want all %d delivered, some reordered", s, n)
	}
	var got []uint64
	for _, arr := range b.receive(t, n) {
		got = append(got, arr.seq)
	}
	late := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			late++
		}
	}
	if late == 0 {
		t.Error("every datagram arrived in order")
	}
	slices.Sort(got)
	for i, seq := range got {
		if seq != uint64(i) {
			t.Fatalf("after sorting, position %d holds %d: datagrams lost or repeated", i, seq)
		}
	}
}

func TestDelayIsRespected(t *testing.T) {
	const delay = 20 * time.Millisecond
	p, a, b := startPair(t, Config{
		AtoB: Impairment{Delay: delay},
		BtoA: Impairment{Delay: delay, Jitter: 10 * time.Millisecond},
	})
	for i := range uint64(10) {
		sent := time.Now()
		a.send(t, p.FaceA(), i, 1, 64)
		if got := b.next(t); got.at.Sub(sent) < delay {
			t.Fatalf("A→B datagram %d arrived after %v, want ≥ %v", got.seq, got.at.Sub(sent), delay)
		}
		sent = time.Now()
		b.send(t, p.FaceB(), i, 1, 64)
		if got := a.next(t); got.at.Sub(sent) < delay-10*time.Millisecond {
			t.Fatalf("B→A datagram %d arrived after %v, want ≥ %v", got.seq, got.at.Sub(sent), delay-10*time.Millisecond)
		}
	}
	// Jitter varies the delay but keeps order.
	const n = 200
	b.send(t, p.FaceB(), 0, n, 64)
	for i, got := range a.receive(t, n) {
		if got.seq != uint64(i) {
			t.Fatalf("with jitter, position %d holds datagram %d", i, got.seq)
		}
	}
}

func TestRateCapLimitsThroughput(t *testing.T) {
	const rate, size, queue, burst = 100_000, 1000, 10_000, 200
	const perDatagram = time.Second * size / rate // 10 ms on the wire
	p, a, b := startPair(t, Config{AtoB: Impairment{Rate: rate, QueueBytes: queue}})

	start := time.Now()
	a.send(t, p.FaceA(), 0, burst, size)
	waitFor(t, "the burst to reach the proxy", func() bool { return p.Stats().AtoB.Received == burst })
	window := time.Since(start) // the burst arrived within this window

	s := p.Stats().AtoB
	accepted := int(burst - s.DroppedQueue)
	// The queue holds queue/size datagrams at once, and the link drains one
	// per perDatagram while the burst arrives; anything more must be dropped.
	maxAccepted := queue/size + 1 + int(window/perDatagram) + 1
	if accepted < queue/size || accepted > maxAccepted {
		t.Fatalf("accepted %d of a %d-datagram burst arriving within %v; want %d..%d (stats %v)",
			accepted, burst, window, queue/size, maxAccepted, s)
	}

	arrivals := b.receive(t, accepted)
	// Each accepted datagram needs perDatagram on the wire, none starting
	// before the burst did.
	if took, least := arrivals[len(arrivals)-1].at.Sub(start), time.Duration(accepted)*perDatagram; took < least {
		t.Errorf("%d datagrams of %d bytes took %v, want ≥ %v at %d B/s", accepted, size, took, least, rate)
	}
	// Tail drop keeps the head of the burst; whatever got in later, as the
	// link drained, follows in order.
	for i, arr := range arrivals {
		if i < queue/size && arr.seq != uint64(i) {
			t.Fatalf("tail drop should keep the head of the burst: position %d holds %d", i, arr.seq)
		}
		if i > 0 && arr.seq <= arrivals[i-1].seq {
			t.Fatalf("position %d holds %d after %d: the bottleneck reordered", i, arr.seq, arrivals[i-1].seq)
		}
	}
}

func TestCaptureSeesEveryDatagramEvenWhenLost(t *testing.T) {
	var mu sync.Mutex
	seen := map[Direction][][]byte{}
	capture := func(dir Direction, datagram []byte) {
		mu.Lock()
		seen[dir] = append(seen[dir], datagram)
		mu.Unlock()
	}
	p, a, b := startPair(t, Config{AtoB: Impairment{Loss: 1}, BtoA: Impairment{Loss: 1}, Capture: capture})
	const n = 20
	a.send(t, p.FaceA(), 0, n, 100)
	b.send(t, p.FaceB(), 1000, n, 200)
	waitFor(t, "both directions to be read", func() bool {
		s := p.Stats()
		return s.AtoB.Received == n && s.BtoA.Received == n
	})

	mu.Lock()
	defer mu.Unlock()
	for _, c := range []struct {
		dir   Direction
		first uint64
		size  int
	}{{AtoB, 0, 100}, {BtoA, 1000, 200}} {
		got := seen[c.dir]
		if len(got) != n {
			t.Fatalf("%v: captured %d datagrams, want %d", c.dir, len(got), n)
		}
		for i, d := range got {
			want := make([]byte, c.size)
			binary.BigEndian.PutUint64(want, c.first+uint64(i))
			if !bytes.Equal(d, want) {
				t.Fatalf("%v: capture %d = %x…, want %x…", c.dir, i, d[:8], want[:8])
			}
		}
	}
}

func TestUnknownPeersAreLearned(t *testing.T) {
	a := newTestPeer(t, "udp4", "127.0.0.1:0")
	b := newTestPeer(t, "udp4", "127.0.0.1:0")
	p := startProxy(t, Config{B: b.addr()}) // A is learned

	// B speaks first: A is unknown, so the datagram has nowhere to go.
	b.send(t, p.FaceB(), 1, 1, 64)
	waitFor(t, "B's first datagram to settle", func() bool { return p.Stats().BtoA.Undelivered == 1 })

	a.send(t, p.FaceA(), 2, 1, 64)
	if got := b.next(t); got.seq != 2 || got.from != p.FaceB() {
		t.Fatalf("B got %d from %v, want 2 from %v", got.seq, got.from, p.FaceB())
	}
	b.send(t, p.FaceB(), 3, 1, 64)
	if got := a.next(t); got.seq != 3 || got.from != p.FaceA() {
		t.Fatalf("A got %d from %v, want 3 from %v", got.seq, got.from, p.FaceA())
	}
}

func TestIPv6Peers(t *testing.T) {
	probe, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	probe.Close()
	a := newTestPeer(t, "udp6", "[::1]:0")
	b := newTestPeer(t, "udp6", "[::1]:0")
	p := startProxy(t, Config{A: a.addr(), B: b.addr()})
	if !p.FaceA().Addr().Is6() || !p.FaceB().Addr().Is6() {
		t.Fatalf("faces %v %v for IPv6 peers", p.FaceA(), p.FaceB())
	}
	a.send(t, p.FaceA(), 9, 1, 64)
	if got := b.next(t); got.seq != 9 || got.from != p.FaceB() {
		t.Fatalf("B got %d from %v, want 9 from %v", got.seq, got.from, p.FaceB())
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	v4 := netip.MustParseAddrPort("127.0.0.1:9")
	for name, cfg := range map[string]Config{
		"loss above 1":         {AtoB: Impairment{Loss: 1.5}},
		"negative duplicate":   {BtoA: Impairment{Duplicate: -0.1}},
		"NaN reorder":          {AtoB: Impairment{Reorder: nan()}},
		"negative delay":       {AtoB: Impairment{Delay: -time.Millisecond}},
		"negative jitter":      {BtoA: Impairment{Jitter: -1}},
		"negative rate":        {AtoB: Impairment{Rate: -1}},
		"negative queue":       {AtoB: Impairment{Rate: 1, QueueBytes: -1}},
		"family mismatch":      {A: v4, Listen: netip.IPv6Loopback()},
		"negative reorder gap": {AtoB: Impairment{ReorderDelay: -1}},
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := Start(context.Background(), cfg); err == nil {
				p.Close()
				t.Fatal("Start accepted the config")
			}
		})
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

// goroutinesSettleTo waits until at most n goroutines run.
func goroutinesSettleTo(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("goroutines to return to %d", n), func() bool { return runtime.NumGoroutine() <= n })
}

func TestCloseStopsEverything(t *testing.T) {
	sender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	before := runtime.NumGoroutine()

	p, err := Start(context.Background(), Config{
		A:    udpio.Unmap(sender.LocalAddr().(*net.UDPAddr).AddrPort()),
		B:    netip.MustParseAddrPort("127.0.0.1:9"), // discard; nothing will reach it
		AtoB: Impairment{Delay: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 { // leave datagrams waiting in the delay line
		if _, err := sender.WriteToUDPAddrPort([]byte("pending"), p.FaceA()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "datagrams to be queued", func() bool { return p.Stats().AtoB.Received == 10 })

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	goroutinesSettleTo(t, before)
}

func TestContextCancelStopsProxy(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	p, err := Start(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed after the context was cancelled")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close after cancel: %v", err)
	}
	goroutinesSettleTo(t, before)
}
