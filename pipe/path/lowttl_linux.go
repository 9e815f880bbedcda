//go:build linux

package path

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// writeLowTTL sends b to to with the IP TTL (IPv6 hop limit) set to
// lowTTL for this one datagram (a control message, so the socket's other
// datagrams keep the default). It reports false when it could not: the
// socket is not a kernel one, or the kernel refused the control message.
func (c *Conn) writeLowTTL(b []byte, to netip.AddrPort) bool {
	if c.udp == nil {
		return false
	}
	level, typ := unix.IPPROTO_IP, unix.IP_TTL
	if to.Addr().Is6() && !to.Addr().Is4In6() {
		level, typ = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
	}
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], lowTTL)
	_, _, err := c.udp.WriteMsgUDPAddrPort(b, oob, to)
	if err != nil && icmpError(err) { // about an earlier datagram, as in write
		c.readErrQueue()
		_, _, err = c.udp.WriteMsgUDPAddrPort(b, oob, to)
	}
	return err == nil
}
