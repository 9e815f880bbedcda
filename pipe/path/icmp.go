package path

import (
	"net/netip"
	"slices"
)

// noteRefused records an ICMP port unreachable about a datagram sent to
// to: when to is a candidate (ICMP naming anything else is ignored),
// Refused fires. It only ever shortens an attempt: it moves no path and
// reaches no handshake.
func (c *Conn) noteRefused(to netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Contains(c.candidates, to) {
		return
	}
	c.stats.PortUnreachable++
	if c.stats.PortUnreachable == 1 {
		close(c.refusedC)
	}
}

// Refused is closed at the first ICMP port unreachable about a datagram
// sent to one of the peer's candidates (Linux; elsewhere never).
func (c *Conn) Refused() <-chan struct{} { return c.refusedC }

// SeesICMP reports whether the socket reports ICMP errors (Refused can
// fire): Linux, where IP_RECVERR could be set.
func (c *Conn) SeesICMP() bool { return c.recvErr }
