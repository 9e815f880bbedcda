package path

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Socket is what a Conn needs of its datagram socket: an unconnected
// socket that sends to and receives from any address, as *net.UDPConn
// does. Methods are called concurrently: Recv's reads with Send's writes,
// SetReadDeadline and Close with both.
//
//   - ReadFromUDPAddrPort blocks until a datagram arrives and returns it
//     with its sender (a datagram longer than b is cut to len(b)). After
//     the read deadline it returns an error that wraps
//     os.ErrDeadlineExceeded; after Close one that wraps net.ErrClosed.
//   - WriteToUDPAddrPort sends one datagram. An error is the datagram's
//     loss, except one that wraps net.ErrClosed, which ends the Conn.
//   - SetReadDeadline bounds the reads blocked now and later; the zero
//     time removes the bound.
//   - Close unblocks every read and write, for good.
//
// With a *net.UDPConn the Conn also uses the kernel's fast paths where it
// has them: UDP GSO and GRO, sendmmsg and recvmmsg, and the don't-fragment
// socket options (offload_linux.go, batch_linux.go). Any other Socket
// (internal/memnet's, in tests) carries one datagram per call.
type Socket interface {
	ReadFromUDPAddrPort(b []byte) (n int, from netip.AddrPort, err error)
	WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	SetReadDeadline(t time.Time) error
	Close() error
}

var _ Socket = (*net.UDPConn)(nil)

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
