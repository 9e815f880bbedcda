package server

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// batchSize is how many datagrams one read or write system call may carry
// (recvmmsg/sendmmsg). Under load the server's cost is in system calls, so
// it reads what has queued up in one call and sends the answers in another.
const batchSize = 64

// outBatch collects the answers produced while handling one read batch and
// sends them with as few system calls as possible.
type outBatch struct {
	conn udpio.BatchConn
	msgs []ipv4.Message
	bufs [][]byte
	n    int
	// onError counts datagrams the kernel refused.
	onError func(err error)
}

func newOutBatch(conn udpio.BatchConn, onError func(error)) *outBatch {
	o := &outBatch{conn: conn, msgs: make([]ipv4.Message, batchSize), bufs: make([][]byte, batchSize), onError: onError}
	for i := range o.bufs {
		o.bufs[i] = make([]byte, 0, 1500)
		o.msgs[i].Buffers = [][]byte{nil}
	}
	return o
}

// buffer returns an empty buffer for the next datagram; add queues it.
func (o *outBatch) buffer() []byte {
	if o.n == len(o.msgs) {
		o.flush()
	}
	return o.bufs[o.n][:0]
}

func (o *outBatch) add(b []byte, to netip.AddrPort) {
	o.bufs[o.n] = b
	o.msgs[o.n].Buffers[0] = b
	o.msgs[o.n].Addr = net.UDPAddrFromAddrPort(to)
	o.n++
}

// forward queues b, which the caller keeps valid until the next flush,
// without copying it (the relay forwards the datagram it read).
func (o *outBatch) forward(b []byte, to netip.AddrPort) {
	if o.n == len(o.msgs) {
		o.flush()
	}
	o.msgs[o.n].Buffers[0] = b
	o.msgs[o.n].Addr = net.UDPAddrFromAddrPort(to)
	o.n++
}

func (o *outBatch) flush() {
	sent := 0
	for sent < o.n {
		k, err := o.conn.WriteBatch(o.msgs[sent:o.n], 0)
		if err != nil {
			// Skip the datagram the kernel refused (say, an unreachable
			// address) and go on with the rest.
			o.onError(err)
			k = max(k, 1)
		}
		sent += k
	}
	o.n = 0
}
