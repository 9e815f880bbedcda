package netem

import (
	"errors"
	"net"

	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// readBatchSize is how many datagrams one read may return. Each needs a
// 64 KiB buffer, as any datagram may be that large.
const readBatchSize = 8

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
func writeAll(conn udpio.BatchConn, ms []ipv4.Message) (sent int) {
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
