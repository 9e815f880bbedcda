package path

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// plainPair returns two Conns without offload, confirmed to each other over
// loopback, with room in their sockets for a few 64 KiB datagrams.
func plainPair(t *testing.T) (a, b *Conn, aAddr, bAddr netip.AddrPort) {
	t.Helper()
	checkGoroutinesEnd(t)
	ua, aAddr := listen(t)
	ub, bAddr := listen(t)
	RaiseBuffers(ua, 4<<20, nil)
	RaiseBuffers(ub, 4<<20, nil)
	id := [16]byte{4, 2}
	a = New(ua, netip.AddrPort{}, id, []netip.AddrPort{bAddr}, nil, Options{NoOffload: true})
	b = New(ub, netip.AddrPort{}, id, []netip.AddrPort{aAddr}, nil, Options{NoOffload: true})
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	a.Confirm(bAddr)
	b.Confirm(aAddr)
	return a, b, aAddr, bAddr
}

// recvAll reads n datagrams for the secure layer into buffers of size
// bytes, or fails the test after d.
func recvAll(t *testing.T, c *Conn, n, size int, d time.Duration) (got [][]byte, from []netip.AddrPort) {
	t.Helper()
	type res struct {
		b    []byte
		from netip.AddrPort
		err  error
	}
	ch := make(chan res, n)
	go func() { // ends at the nth datagram, or when the test's Cleanup closes c
		for range n {
			buf := make([]byte, size)
			k, from, err := c.Recv(buf)
			ch <- res{buf[:k], from, err}
			if err != nil {
				return
			}
		}
	}()
	timeout := time.After(d)
	for range n {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatal(r.err)
			}
			got, from = append(got, r.b), append(from, r.from)
		case <-timeout:
			t.Fatalf("%d of %d datagrams within %v", len(got), n, d)
		}
	}
	return got, from
}

// TestPlainBatch: without offload a batch goes out in one sendmmsg and
// comes in several datagrams per recvmmsg, complete and in order, 64 KiB
// datagrams included (nothing truncates), whether the caller's buffer
// takes the first datagram of a read directly (64 KiB) or not.
func TestPlainBatch(t *testing.T) {
	for _, bufSize := range []int{65536, 65000} {
		a, b, aAddr, _ := plainPair(t)
		var batch [][]byte
		for i := range 40 {
			size := 1200
			switch {
			case i%13 == 5:
				size = 65000
			case i%7 == 6:
				size = 1 + i
			}
			batch = append(batch, bytes.Repeat([]byte{byte(i)}, size))
		}
		a.sendMu.Lock()
		sendCalls := a.plainOut.calls
		a.sendMu.Unlock()
		if err := a.SendBatch(batch); err != nil {
			t.Fatal(err)
		}
		a.sendMu.Lock()
		sendCalls = a.plainOut.calls - sendCalls
		a.sendMu.Unlock()
		if sendCalls != 1 {
			t.Errorf("%d datagrams in %d sendmmsg calls, want 1", len(batch), sendCalls)
		}

		got, from := recvAll(t, b, len(batch), bufSize, 10*time.Second)
		for i, want := range batch {
			if !bytes.Equal(got[i], want) || from[i] != aAddr {
				t.Fatalf("buffer %d: datagram %d: %d bytes of %d from %v, want %d bytes of %d from %v", bufSize, i, len(got[i]), got[i][0], from[i], len(want), want[0], aAddr)
			}
		}
		b.recvMu.Lock()
		recvCalls := b.plainIn.calls
		b.recvMu.Unlock()
		// The batch was in b's socket before b read (loopback delivers
		// during the send), so reads carried several datagrams each.
		if recvCalls >= uint64(len(batch)) {
			t.Errorf("%d datagrams in %d recvmmsg calls", len(batch), recvCalls)
		}
		t.Logf("buffer %d: %d datagrams in %d recvmmsg calls", bufSize, len(batch), recvCalls)
	}
}

// TestPlainRefusedSkipped: a datagram the kernel refuses (larger than UDP
// allows) is lost alone; the rest of the batch arrives.
func TestPlainRefusedSkipped(t *testing.T) {
	a, b, _, _ := plainPair(t)
	batch := [][]byte{[]byte("one"), make([]byte, 70000), []byte("two"), make([]byte, 70000), make([]byte, 70000), []byte("three")}
	if err := a.SendBatch(batch); err != nil {
		t.Fatalf("SendBatch: %v, want the refused datagrams skipped", err)
	}
	got, _ := recvAll(t, b, 3, 2048, 5*time.Second)
	for i, want := range []string{"one", "two", "three"} {
		if string(got[i]) != want {
			t.Fatalf("datagram %d: %q, want %q", i, got[i], want)
		}
	}
}

// TestPlainClosed: Close unblocks a pending Recv, and both Recv and
// SendBatch then report net.ErrClosed.
func TestPlainClosed(t *testing.T) {
	a, b, _, _ := plainPair(t)
	errc := make(chan error, 1)
	go func() {
		_, _, err := b.Recv(make([]byte, 65536))
		errc <- err
	}()
	b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Recv after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Recv")
	}
	a.Close()
	if err := a.SendBatch([][]byte{[]byte("x"), []byte("y")}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("SendBatch after Close: %v, want net.ErrClosed", err)
	}
}

// TestPlainDualStack: a dual-stack socket (bound to ::, as Listen opens
// it) sends batches to an IPv4 peer and reports IPv4 senders unmapped.
func TestPlainDualStack(t *testing.T) {
	u6, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Skipf("no IPv6 here: %v", err)
	}
	port := u6.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	sixAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	u4, fourAddr := listen(t)
	id := [16]byte{6}
	six := New(u6, netip.AddrPort{}, id, []netip.AddrPort{fourAddr}, nil, Options{NoOffload: true})
	four := New(u4, netip.AddrPort{}, id, []netip.AddrPort{sixAddr}, nil, Options{NoOffload: true})
	defer six.Close()
	defer four.Close()
	six.Confirm(fourAddr)
	four.Confirm(sixAddr)

	if err := six.SendBatch([][]byte{[]byte("to four"), []byte("again")}); err != nil {
		t.Fatal(err)
	}
	got, from := recvAll(t, four, 2, 2048, 5*time.Second)
	if string(got[0]) != "to four" || string(got[1]) != "again" || from[0] != sixAddr {
		t.Fatalf("four got %q from %v", got, from)
	}
	if err := four.SendBatch([][]byte{[]byte("to six"), []byte("back")}); err != nil {
		t.Fatal(err)
	}
	got, from = recvAll(t, six, 2, 65536, 5*time.Second)
	if string(got[0]) != "to six" || string(got[1]) != "back" || from[0] != fourAddr || from[1] != fourAddr {
		t.Fatalf("six got %q from %v, want from %v", got, from, fourAddr)
	}
}

// TestPlainICMPErrorSkipped: an ICMP error queued on the socket (here with
// IP_RECVERR, after a send to a closed port) does not end Recv.
func TestPlainICMPErrorSkipped(t *testing.T) {
	a, b, _, _ := plainPair(t)
	dead, deadAddr := listen(t)
	dead.Close()
	raw, err := b.udp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	})
	if err != nil {
		t.Skipf("IP_RECVERR: %v", err)
	}
	// Loopback answers with "port unreachable" during the send, so the
	// error is pending before the datagram below arrives.
	b.write([]byte("anyone?"), deadAddr)
	a.SendBatch([][]byte{[]byte("data"), []byte("more")})
	got, _ := recvAll(t, b, 2, 2048, 5*time.Second)
	if string(got[0]) != "data" || string(got[1]) != "more" {
		t.Fatalf("got %q", got)
	}
}

// TestPlainNoAllocs: in steady state, a batch sent and received on the
// plain path allocates nothing.
func TestPlainNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops items at random, so x/net's send state is reallocated")
	}
	a, b, _, _ := plainPair(t)
	batch := make([][]byte, 16)
	for i := range batch {
		batch[i] = make([]byte, 1200)
	}
	buf := make([]byte, 65536)
	round := func() {
		if err := a.SendBatch(batch); err != nil {
			t.Fatal(err)
		}
		for range batch {
			if _, _, err := b.Recv(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	round() // sets up the batch buffers
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Fatalf("%v allocations per batch, want 0", n)
	}
}

// TestSenderAddress: recvmmsg's raw sender addresses become the netip
// addresses the rest of the package compares: IPv4, IPv4-mapped IPv6
// unmapped, IPv6 with its scope named.
func TestSenderAddress(t *testing.T) {
	r := &plainReceiver{hdrs: make([]unix.Mmsghdr, 1), names: make([]unix.RawSockaddrInet6, 1)}
	set := func(family uint16, port uint16, addr []byte, scope uint32) {
		r.names[0] = unix.RawSockaddrInet6{Family: family, Scope_id: scope}
		p := (*[2]byte)(unsafe.Pointer(&r.names[0].Port))
		p[0], p[1] = byte(port>>8), byte(port)
		if family == unix.AF_INET {
			copy((*unix.RawSockaddrInet4)(unsafe.Pointer(&r.names[0])).Addr[:], addr)
			r.hdrs[0].Hdr.Namelen = unix.SizeofSockaddrInet4
		} else {
			copy(r.names[0].Addr[:], addr)
			r.hdrs[0].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		lo = &net.Interface{Index: 1, Name: "1"}
	}
	for _, tc := range []struct {
		family uint16
		addr   string
		scope  uint32
		want   string
	}{
		{unix.AF_INET, "192.0.2.7", 0, "192.0.2.7:4242"},
		{unix.AF_INET6, "::ffff:192.0.2.7", 0, "192.0.2.7:4242"},
		{unix.AF_INET6, "2001:db8::1", 0, "[2001:db8::1]:4242"},
		{unix.AF_INET6, "fe80::1", uint32(lo.Index), "[fe80::1%" + lo.Name + "]:4242"},
		{unix.AF_UNIX, "::", 0, "invalid AddrPort"},
	} {
		a := netip.MustParseAddr(tc.addr)
		raw := a.AsSlice()
		set(tc.family, 4242, raw, tc.scope)
		if got := r.sender(0); got.String() != tc.want {
			t.Errorf("%d %s: got %v, want %s", tc.family, tc.addr, got, tc.want)
		}
	}
}
