//go:build unix

package path

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// Pending reports whether a datagram from anyone but the rendezvous server
// waits to be read (looked at, not taken): while nobody calls Recv, as
// while the RSA key is generated, probes that arrived are not yet counted
// in Stats.LastHeard. It looks at the first waiting datagram only, and
// says true when it cannot tell.
func (c *Conn) Pending() bool {
	if c.udp == nil {
		return true
	}
	raw, err := c.udp.SyscallConn()
	if err != nil {
		return true
	}
	for range 2 { // again once after an ICMP error that the peek took
		pending, icmp := true, false
		var buf [1]byte
		// Control, not Read: a Recv blocked in another goroutine holds the
		// socket's read lock, and Read would wait for it.
		_ = raw.Control(func(fd uintptr) {
			_, from, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case err == unix.EAGAIN || err == unix.EWOULDBLOCK:
				pending = false
			case icmpError(err):
				icmp = true
			case err == nil:
				pending = sockaddrAddrPort(from) != c.server
			}
		})
		if !icmp {
			return pending
		}
		c.readErrQueue()
	}
	return true
}

// sockaddrAddrPort converts the kernel's address, IPv4 unmapped.
func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return udpio.Unmap(netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)))
	}
	return netip.AddrPort{}
}
