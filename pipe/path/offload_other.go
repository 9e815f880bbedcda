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
