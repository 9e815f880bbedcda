//go:build !linux

package netem

import "net"

// setSocketBuffers raises conn's buffers to size bytes, as far as the system
// allows; a small buffer only costs drops under load, so failures are ignored.
func setSocketBuffers(conn *net.UDPConn, size int) {
	_ = conn.SetReadBuffer(size)
	_ = conn.SetWriteBuffer(size)
}
