package path

import (
	"fmt"
	"log/slog"
	"net"
)

// Listen opens the session's UDP socket on port (0: any), dual-stack where
// the system allows, with large buffers so bursts are not dropped.
func Listen(port int, log *slog.Logger) (*net.UDPConn, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, fmt.Errorf("opening UDP port %d: %w", port, err)
	}
	RaiseBuffers(conn, 8<<20, log)
	return conn, nil
}

// RaiseBuffers asks for socket buffers of size bytes, as root past
// net.core.rmem_max, and logs when the system grants less.
func RaiseBuffers(conn *net.UDPConn, size int, log *slog.Logger) {
	got, known := raiseBuffers(conn, size)
	if known && got < size && log != nil {
		log.Info("socket receive buffer capped by the system; raise net.core.rmem_max for bursty loads", "bytes", got, "wanted", size)
	}
}
