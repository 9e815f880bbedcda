package netem

import (
	"errors"
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// readBatchSize is how many datagrams one read may return. Each needs a
// 64 KiB buffer, as any datagram may be that large.
const readBatchSize = 8

// batchConn moves several datagrams per system call: recvmmsg and sendmmsg
// on Linux, one at a time elsewhere. At tens of thousands of datagrams per
// second the per-call overhead is what would make the proxy the bottleneck.
// ipv4.Message and ipv6.Message are the same type, so one interface serves
// both families.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(conn *net.UDPConn) batchConn {
	if conn.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		return ipv4.NewPacketConn(conn)
	}
	return ipv6.NewPacketConn(conn)
}

func newReadBatch() []ipv4.Message {
	ms := make([]ipv4.Message, readBatchSize)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 64<<10)} // the largest UDP payload fits
	}
	return ms
}

// writeAll sends every message and reports how many were sent. A message the
// kernel refuses (ICMP errors queued on the socket, ENOBUFS) is skipped, as
// a real path would lose it; a closed socket ends the attempt.
func writeAll(conn batchConn, ms []ipv4.Message) (sent int) {
	for len(ms) > 0 {
		n, err := conn.WriteBatch(ms, 0)
		n = max(n, 0)
		sent += n
		ms = ms[n:]
		if err == nil && n > 0 {
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return sent
		}
		if len(ms) > 0 {
			ms = ms[1:] // the message that failed
		}
	}
	return sent
}
