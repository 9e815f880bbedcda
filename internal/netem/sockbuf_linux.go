package netem

import (
	"net"

	"golang.org/x/sys/unix"
)

// setSocketBuffers raises conn's buffers to size bytes, as far as the system
// allows: the *FORCE options pass net.core.[rw]mem_max when the process may
// (CAP_NET_ADMIN); otherwise the kernel caps the plain request at that limit.
// A small buffer only costs drops under load, so failures are ignored.
func setSocketBuffers(conn *net.UDPConn, size int) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return
	}
	var errR, errW error
	_ = raw.Control(func(fd uintptr) {
		errR = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		errW = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size)
	})
	if errR != nil {
		_ = conn.SetReadBuffer(size)
	}
	if errW != nil {
		_ = conn.SetWriteBuffer(size)
	}
}
