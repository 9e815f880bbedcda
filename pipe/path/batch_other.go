//go:build !linux

package path

import "net/netip"

// Elsewhere than Linux, the plain path sends and receives one datagram per
// system call: x/net's WriteBatch and ReadBatch would loop over single
// sends and reads there anyway.

type (
	plainSender   struct{}
	plainReceiver struct{}
)

func (c *Conn) sendPlainLocked(bufs [][]byte, peer netip.AddrPort) error {
	return c.sendEachLocked(bufs, peer)
}

func (c *Conn) recvPlain(buf []byte) (int, netip.AddrPort, error) { return c.recvEach(buf) }

// testOnlyOneByOne: one datagram per system call is all there is here.
func (c *Conn) testOnlyOneByOne() {}
