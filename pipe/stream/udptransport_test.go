package stream

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// udpTransport is a plaintext Transport over a connected UDP socket on
// loopback: the same seam the secure layer fills, minus the crypto.
type udpTransport struct {
	conn *net.UDPConn
}

var _ Transport = (*udpTransport)(nil)

func (t *udpTransport) Send(p []byte) error {
	_, err := t.conn.Write(p)
	return err
}

// Recv skips the ICMP "port unreachable" errors a connected socket reports
// once the peer has closed, as a real transport does.
func (t *udpTransport) Recv(buf []byte) (int, error) {
	for {
		n, err := t.conn.Read(buf)
		if errors.Is(err, syscall.ECONNREFUSED) {
			continue
		}
		return n, err
	}
}
func (t *udpTransport) MaxPayload() int { return 1150 }
func (t *udpTransport) Close() error    { return t.conn.Close() }

// newUDPPair returns two transports connected over 127.0.0.1.
func newUDPPair(tb testing.TB) (a, b *udpTransport) {
	tb.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tb.Fatalf("listen: %v", err)
		}
		// Large socket buffers absorb bursts; the kernel may cap them.
		_ = c.SetReadBuffer(8 << 20)
		_ = c.SetWriteBuffer(8 << 20)
		return c
	}
	ca, cb := listen(), listen()
	connect := func(c, peer *net.UDPConn) *net.UDPConn {
		local := c.LocalAddr().(*net.UDPAddr)
		c.Close()
		d, err := net.DialUDP("udp4", local, peer.LocalAddr().(*net.UDPAddr))
		if err != nil {
			tb.Fatalf("dial: %v", err)
		}
		_ = d.SetReadBuffer(8 << 20)
		_ = d.SetWriteBuffer(8 << 20)
		return d
	}
	// A connected socket only accepts datagrams from its peer.
	da := connect(ca, cb)
	db := connect(cb, ca)
	return &udpTransport{da}, &udpTransport{db}
}
