package path

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// UDP segmentation offload (GSO) and receive coalescing (GRO), Linux only.
// With GSO one sendmsg carries many equal-size datagrams that the kernel
// splits late (or, on loopback and veth, never: the receiver's GRO takes the
// whole batch at once); with GRO one recvmsg returns several datagrams of
// the same flow glued together, with their size in a control message. Both
// cut the per-datagram system calls that dominate the pipe's cost.

const (
	maxGSOSegments = 64    // UDP_MAX_SEGMENTS
	maxGSOBytes    = 65000 // one send stays under the 64 KiB datagram limit
)

// enableGRO asks the kernel to coalesce received datagrams on conn.
func enableGRO(conn *net.UDPConn) bool {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	raw.Control(func(fd uintptr) {
		ok = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	})
	return ok
}

// gsoSupported reports whether the kernel accepts UDP_SEGMENT on conn.
func gsoSupported(conn *net.UDPConn) bool {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	raw.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
		ok = err == nil
	})
	return ok
}

// gsoControl returns the control message that splits a send into segments
// of size bytes.
func gsoControl(b []byte, size int) []byte {
	b = b[:unix.CmsgSpace(2)]
	h := (*unix.Cmsghdr)(unsafePointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b
}

// groSegmentSize returns the segment size of a coalesced receive, or 0.
// It walks the control messages in place: ParseSocketControlMessage would
// allocate a slice on every receive.
func groSegmentSize(oob []byte) int {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4 {
			return int(binary.NativeEndian.Uint32(data))
		}
		oob = rest
	}
	return 0
}

// setDontFragment sets the DF bit on conn's datagrams (IPv4 and IPv6) and
// ignores the kernel's cached path MTU: a datagram larger than the
// interface MTU fails to send (EMSGSIZE), one larger than the path MTU is
// dropped on the way, and neither is fragmented.
func setDontFragment(conn *net.UDPConn) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		// Either may fail (an IPv4-only or IPv6-only socket): best effort.
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
	})
}

// raiseBuffers sets conn's socket buffers to size bytes, past the system's
// limit when privileged, and returns the receive buffer granted.
func raiseBuffers(conn *net.UDPConn, size int) (granted int, known bool) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, false
	}
	raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_RCVBUF, unix.SO_RCVBUFFORCE}, {unix.SO_SNDBUF, unix.SO_SNDBUFFORCE}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], size) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], size)
			}
		}
		got, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		// Linux reports twice what it grants: the rest is its bookkeeping.
		granted, known = got/2, err == nil
	})
	return granted, known
}
