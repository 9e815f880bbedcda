//go:build linux

package path

// ICMP port unreachable, Linux only: with IP_RECVERR (IPV6_RECVERR) the
// kernel queues the ICMP errors about the socket's sends on its error
// queue, with the destination of the datagram that caused each. One that
// says a candidate's port is unreachable is recorded (Refused): on a NAT
// that gives a new mapping per destination, it means the router has no
// mapping for us yet and took our probe for itself, so this socket pair is
// spoilt for a direct path (PROTOCOL.md 3.7). A plain read returns such an
// error once as ECONNREFUSED; the receive loops then drain the queue here.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	icmpOriginV4, icmpOriginV6     = 2, 3 // SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6
	icmpUnreachable, icmpPortUnr   = 3, 3 // ICMP destination unreachable, port
	icmp6Unreachable, icmp6PortUnr = 1, 4 // ICMPv6 destination unreachable, port
)

// enableRecvErr asks the kernel to queue ICMP errors on the socket, for
// both families (a dual-stack socket takes both options). Where neither
// can be set, nothing changes: Refused never fires.
func (c *Conn) enableRecvErr() {
	raw, err := c.udp.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		v4 := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1) == nil
		v6 := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1) == nil
		c.recvErr = v4 || v6
	})
}

// readErrQueue drains the socket's error queue, noting each ICMP port
// unreachable about a datagram sent to a candidate.
func (c *Conn) readErrQueue() {
	if c.udp == nil || !c.recvErr {
		return
	}
	raw, err := c.udp.SyscallConn()
	if err != nil {
		return
	}
	var buf [64]byte
	oob := make([]byte, 512)
	_ = raw.Control(func(fd uintptr) {
		for range 64 { // bounded; what is left stays queued for the next error
			_, oobn, _, from, err := unix.Recvmsg(int(fd), buf[:], oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err != nil {
				return
			}
			if portUnreachable(oob[:oobn]) {
				c.noteRefused(sockaddrAddrPort(from))
			}
		}
	})
}

// portUnreachable reports whether the control messages of an error-queue
// read carry an ICMP (ICMPv6) port unreachable.
func portUnreachable(oob []byte) bool {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return false
	}
	for _, m := range msgs {
		isErr := (m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR) ||
			(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR)
		if !isErr || len(m.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
			continue
		}
		ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
		switch {
		case ee.Origin == icmpOriginV4 && ee.Type == icmpUnreachable && ee.Code == icmpPortUnr:
			return true
		case ee.Origin == icmpOriginV6 && ee.Type == icmp6Unreachable && ee.Code == icmp6PortUnr:
			return true
		}
	}
	return false
}
