//go:build !linux

package path

import "net"

const (
	maxGSOSegments = 1
	maxGSOBytes    = 0
)

func enableGRO(*net.UDPConn) bool          { return false }
func gsoSupported(*net.UDPConn) bool       { return false }
func gsoControl(b []byte, size int) []byte { return nil }
func groSegmentSize(oob []byte) int        { return 0 }

// setDontFragment is Linux only; elsewhere the system's default applies.
func setDontFragment(*net.UDPConn) {}

// raiseBuffers asks for socket buffers of size bytes, portably; the size
// granted is not known.
func raiseBuffers(conn *net.UDPConn, size int) (granted int, known bool) {
	_ = conn.SetReadBuffer(size)
	_ = conn.SetWriteBuffer(size)
	return 0, false
}
