//go:build linux

package path

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPortUnreachableReported: probes to a loopback port nothing listens
// on draw ICMP port unreachable; the Conn reports it for that candidate
// (Refused, Stats.PortUnreachable), and a datagram from the other
// candidate still comes through Recv afterwards, on every receive path.
func TestPortUnreachableReported(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opt      Options
		oneByOne bool
	}{
		{"gro", Options{}, false},
		{"recvmmsg", Options{NoOffload: true}, false},
		{"one-by-one", Options{NoOffload: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closed := closedLoopbackPort(t)
			peer := listenLoopback4(t)
			defer peer.Close()
			sock := listenLoopback4(t)
			server := netip.MustParseAddrPort("127.0.0.1:1")
			c := New(sock, server, [16]byte{14}, []netip.AddrPort{closed, peer.LocalAddr().(*net.UDPAddr).AddrPort()}, nil, tc.opt)
			defer c.Close()
			if tc.oneByOne {
				c.testOnlyOneByOne()
			}
			got := received(c)
			select {
			case <-c.Refused():
			case <-time.After(10 * time.Second):
				t.Fatalf("no port unreachable reported for %s; stats %+v", closed, c.Stats())
			}
			if st := c.Stats(); st.PortUnreachable == 0 {
				t.Fatalf("Refused fired but Stats.PortUnreachable is 0")
			}
			to := sock.LocalAddr().(*net.UDPAddr)
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if _, err := peer.WriteToUDP([]byte{0x01, 'h', 'i'}, to); err != nil {
					t.Fatal(err)
				}
				select {
				case p := <-got:
					if string(p) != "\x01hi" {
						t.Fatalf("got %q, want the peer's datagram", p)
					}
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
			t.Fatal("no datagram through Recv after the ICMP error")
		})
	}
}

// TestPortUnreachableOtherAddressIgnored: ICMP about an address that is
// not a candidate does not fire Refused.
func TestPortUnreachableOtherAddressIgnored(t *testing.T) {
	sock := listenLoopback4(t)
	c := New(sock, netip.MustParseAddrPort("127.0.0.1:1"), [16]byte{15}, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:9")}, nil, Options{})
	defer c.Close()
	received(c)
	closed := closedLoopbackPort(t)
	for range 5 {
		_, _ = sock.WriteToUDPAddrPort([]byte{0x01}, closed)
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case <-c.Refused():
		t.Fatal("Refused fired for ICMP about an address that is not a candidate")
	default:
	}
	if st := c.Stats(); st.PortUnreachable != 0 {
		t.Fatalf("PortUnreachable %d for an address that is not a candidate", st.PortUnreachable)
	}
}

func listenLoopback4(t *testing.T) *net.UDPConn {
	t.Helper()
	s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// closedLoopbackPort returns a loopback UDP port nothing is bound to.
func closedLoopbackPort(t *testing.T) netip.AddrPort {
	t.Helper()
	s := listenLoopback4(t)
	a := s.LocalAddr().(*net.UDPAddr).AddrPort()
	s.Close()
	return a
}
