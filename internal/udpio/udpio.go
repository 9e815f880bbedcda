// Package udpio holds the small UDP helpers that the client's path, the
// rendezvous server and the test network emulator all need: batched reads
// and writes (recvmmsg/sendmmsg through x/net) and address normalisation.
// It imports only the standard library and x/net.
package udpio

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// BatchConn moves several datagrams per system call: recvmmsg and sendmmsg
// on Linux, one at a time elsewhere. ipv4.Message and ipv6.Message are the
// same type, so one interface serves both families.
type BatchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// NewBatchConn wraps conn for batched I/O. A socket bound to an IPv6
// address (dual-stack sockets bound to :: included) needs x/net's ipv6
// PacketConn; every other one its ipv4 PacketConn.
func NewBatchConn(conn *net.UDPConn) BatchConn {
	if a, ok := conn.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(conn)
	}
	return ipv4.NewPacketConn(conn)
}

// Unmap turns an IPv4-mapped IPv6 address (::ffff:a.b.c.d), as a dual-stack
// socket reports IPv4 senders, into the plain IPv4 address, so one peer has
// one spelling. Invalid addresses are returned as they are.
func Unmap(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
