package memnet

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
)

func newNet(t *testing.T, cfg Config) *Network {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func listen(t *testing.T, n *Network, addr string) *Socket {
	t.Helper()
	var a netip.AddrPort
	if addr != "" {
		a = netip.MustParseAddrPort(addr)
	}
	s, err := n.Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// read returns the next datagram at s, or fails the test after a second.
func read(t *testing.T, s *Socket, size int) ([]byte, netip.AddrPort) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, size)
	n, from, err := s.ReadFromUDPAddrPort(b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n], from
}

// readAll reads datagrams at s until none comes for quiet.
func readAll(s *Socket, quiet time.Duration) []string {
	var got []string
	b := make([]byte, 2048)
	for {
		s.SetReadDeadline(time.Now().Add(quiet))
		n, _, err := s.ReadFromUDPAddrPort(b)
		if err != nil {
			return got
		}
		got = append(got, string(b[:n]))
	}
}

func TestSendReceive(t *testing.T) {
	n := newNet(t, Config{})
	a := listen(t, n, "192.0.2.1:1000")
	b := listen(t, n, "")
	if b.Addr().Addr() != netip.MustParseAddr("127.0.0.1") || b.Addr().Port() == 0 {
		t.Fatalf("Listen(invalid) = %v, want 127.0.0.1 and a port", b.Addr())
	}
	if got := b.LocalAddr().(*net.UDPAddr).AddrPort(); got != b.Addr() {
		t.Fatalf("LocalAddr = %v, want %v", got, b.Addr())
	}
	msg := []byte("hello")
	if k, err := a.WriteToUDPAddrPort(msg, b.Addr()); err != nil || k != len(msg) {
		t.Fatalf("write = %d, %v", k, err)
	}
	msg[0] = 'j' // the network keeps its own copy
	got, from := read(t, b, 64)
	if string(got) != "hello" || from != a.Addr() {
		t.Fatalf("got %q from %v, want hello from %v", got, from, a.Addr())
	}
	// Back, to an IPv4-mapped spelling of a's address, through the
	// net.PacketConn methods; a short buffer cuts the datagram.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(a.Addr().Addr().As16()), a.Addr().Port())
	if _, err := b.WriteTo([]byte("0123456789"), net.UDPAddrFromAddrPort(mapped)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	a.SetDeadline(time.Now().Add(time.Second))
	k, addr, err := a.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "0123" || addr.(*net.UDPAddr).AddrPort() != b.Addr() {
		t.Fatalf("ReadFrom = %q, %v, %v", buf[:k], addr, err)
	}
	// Order is kept on a perfect wire.
	for _, m := range []string{"1", "2", "3"} {
		a.WriteToUDPAddrPort([]byte(m), b.Addr())
	}
	if got := readAll(b, 50*time.Millisecond); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Fatalf("got %q, want 1 2 3 in order", got)
	}
	if _, err := a.WriteToUDPAddrPort(make([]byte, maxDatagram+1), b.Addr()); err == nil {
		t.Fatal("a datagram longer than UDP allows was sent")
	}
	if _, err := a.WriteToUDPAddrPort(msg, netip.AddrPort{}); err == nil {
		t.Fatal("a datagram to an invalid address was sent")
	}
}

func TestListenAddresses(t *testing.T) {
	n := newNet(t, Config{})
	a := listen(t, n, "10.0.0.1:0")
	b := listen(t, n, "10.0.0.1:0")
	if a.Addr() == b.Addr() || a.Addr().Port() == 0 || b.Addr().Port() == 0 {
		t.Fatalf("two port-0 sockets at %v and %v", a.Addr(), b.Addr())
	}
	if _, err := n.Listen(a.Addr()); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("Listen(%v) again = %v, want ErrAddrInUse", a.Addr(), err)
	}
	mapped := listen(t, n, "[::ffff:10.0.0.2]:7")
	if mapped.Addr() != netip.MustParseAddrPort("10.0.0.2:7") {
		t.Fatalf("Listen(mapped) = %v, want its IPv4 address", mapped.Addr())
	}
	a.Close()
	if c, err := n.Listen(a.Addr()); err != nil {
		t.Fatalf("a closed socket's address is not free again: %v", err)
	} else {
		c.Close()
	}
	n.Close()
	if _, err := n.Listen(netip.AddrPort{}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Listen after Close = %v, want net.ErrClosed", err)
	}
	if _, err := b.WriteToUDPAddrPort([]byte("x"), mapped.Addr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a socket of a closed network = %v, want net.ErrClosed", err)
	}
}

// A datagram nobody can take is lost without an error, as UDP loses it.
func TestUndelivered(t *testing.T) {
	n := newNet(t, Config{QueueLen: 2})
	a := listen(t, n, "")
	b := listen(t, n, "")
	if _, err := a.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
		t.Fatalf("write to nowhere: %v", err)
	}
	for range 3 {
		a.WriteToUDPAddrPort([]byte("y"), b.Addr())
	}
	if got := readAll(b, 20*time.Millisecond); len(got) != 2 {
		t.Fatalf("a queue of 2 gave %d datagrams", len(got))
	}
	if st := n.Stats(); st.Received != 4 || st.Delivered != 2 || st.Undelivered != 2 {
		t.Fatalf("stats %v, want 4 received, 2 delivered, 2 undelivered", st)
	}
}

func TestDeadlineAndClose(t *testing.T) {
	n := newNet(t, Config{})
	a := listen(t, n, "")
	buf := make([]byte, 16)

	a.SetReadDeadline(time.Now().Add(-time.Second))
	a.WriteToUDPAddrPort([]byte("waiting"), a.Addr())
	_, _, err := a.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline = %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	if k, _, err := a.ReadFromUDPAddrPort(buf); err != nil || string(buf[:k]) != "waiting" {
		t.Fatalf("read without a deadline = %q, %v", buf[:k], err)
	}

	// A deadline set while a read waits applies to it.
	errc := make(chan error, 1)
	go func() {
		_, _, err := a.ReadFromUDPAddrPort(buf)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	start := time.Now()
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %v, want the new deadline", err)
	}
	if d := time.Since(start); d < 15*time.Millisecond {
		t.Fatalf("the read ended %v after the deadline was set, before it", d)
	}

	// Close ends a waiting read.
	a.SetReadDeadline(time.Time{})
	go func() {
		_, _, err := a.ReadFromUDPAddrPort(buf)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not end the read")
	}
	if _, err := a.WriteToUDPAddrPort(buf, a.Addr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close = %v, want net.ErrClosed", err)
	}
	if err := a.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close = %v, want net.ErrClosed", err)
	}
}

func TestImpairment(t *testing.T) {
	send := func(t *testing.T, imp netem.Impairment, seed int64, count int) (*Network, []string) {
		n := newNet(t, Config{Impairment: imp, Seed: seed, QueueLen: 4096})
		a := listen(t, n, "192.0.2.1:1")
		b := listen(t, n, "192.0.2.2:2")
		for i := range count {
			a.WriteToUDPAddrPort([]byte{byte('A' + i%26), byte(i / 26)}, b.Addr())
		}
		return n, readAll(b, 100*time.Millisecond)
	}

	t.Run("loss", func(t *testing.T) {
		n, got := send(t, netem.Impairment{Loss: 0.5}, 1, 400)
		st := n.Stats()
		if len(got) == 0 || len(got) == 400 || st.DroppedLoss+uint64(len(got)) != 400 {
			t.Fatalf("%d of 400 arrived, stats %v", len(got), st)
		}
		_, again := send(t, netem.Impairment{Loss: 0.5}, 1, 400)
		if !slices.Equal(got, again) {
			t.Fatal("the same seed and addresses lost different datagrams")
		}
	})
	t.Run("duplicate", func(t *testing.T) {
		n, got := send(t, netem.Impairment{Duplicate: 1}, 1, 10)
		if len(got) != 20 || n.Stats().Duplicated != 10 {
			t.Fatalf("%d copies of 10 datagrams, stats %v", len(got), n.Stats())
		}
	})
	t.Run("delay keeps order", func(t *testing.T) {
		n := newNet(t, Config{Impairment: netem.Impairment{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond}})
		a := listen(t, n, "")
		b := listen(t, n, "")
		start := time.Now()
		var want []string
		for i := range 50 {
			want = append(want, string(rune('0'+i)))
			a.WriteToUDPAddrPort([]byte(want[i]), b.Addr())
		}
		first, _ := read(t, b, 16)
		if d := time.Since(start); d < 20*time.Millisecond {
			t.Fatalf("the first datagram came after %v, before the delay", d)
		}
		got := append([]string{string(first)}, readAll(b, 100*time.Millisecond)...)
		if !slices.Equal(got, want) {
			t.Fatalf("jitter reordered: %q", got)
		}
	})
	t.Run("reorder", func(t *testing.T) {
		n, got := send(t, netem.Impairment{Reorder: 0.3, ReorderDelay: 5 * time.Millisecond}, 2, 200)
		if len(got) != 200 || n.Stats().Reordered == 0 {
			t.Fatalf("%d of 200 arrived, stats %v", len(got), n.Stats())
		}
		if slices.IsSorted(got) {
			t.Fatal("nothing arrived out of order")
		}
	})
	t.Run("close drops what is on its way", func(t *testing.T) {
		n := newNet(t, Config{Impairment: netem.Impairment{Delay: time.Hour}})
		a := listen(t, n, "")
		a.WriteToUDPAddrPort([]byte("late"), a.Addr())
		n.Close()
	})
	if _, err := New(Config{Impairment: netem.Impairment{Loss: -1}}); err == nil {
		t.Fatal("a negative loss was accepted")
	}
}

// Many senders and readers at once, for the race detector.
func TestConcurrent(t *testing.T) {
	n := newNet(t, Config{Impairment: netem.Impairment{Delay: time.Millisecond, Duplicate: 0.1, Reorder: 0.1}, QueueLen: 1 << 14})
	dst := listen(t, n, "")
	var wg sync.WaitGroup
	for range 4 {
		src := listen(t, n, "")
		wg.Go(func() {
			for range 500 {
				src.WriteToUDPAddrPort([]byte("x"), dst.Addr())
			}
		})
	}
	got := make(chan int)
	go func() { got <- len(readAll(dst, 200*time.Millisecond)) }()
	for range 3 {
		wg.Go(func() { dst.SetReadDeadline(time.Now().Add(time.Second)) })
	}
	wg.Wait()
	if k := <-got; k < 2000 {
		t.Fatalf("%d of at least 2000 datagrams arrived", k)
	}
}
