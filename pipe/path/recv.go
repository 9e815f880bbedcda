package path

import (
	"errors"
	"net/netip"
	"syscall"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// Recv returns the next datagram for the secure layer. A buf of 64 KiB
// holds any datagram; a shorter one gets a datagram's first len(buf) bytes.
func (c *Conn) Recv(buf []byte) (int, netip.AddrPort, error) {
	if c.gro {
		return c.recvGRO(buf)
	}
	return c.recvPlain(buf)
}

// recvEach reads one datagram per system call: the last resort, where the
// system has no recvmmsg.
func (c *Conn) recvEach(buf []byte) (int, netip.AddrPort, error) {
	for {
		n, from, err := c.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			// Any error but an ICMP report ends Recv, rather than a loop
			// that spins on it.
			if icmpError(err) {
				c.readErrQueue()
				continue
			}
			return 0, netip.AddrPort{}, err
		}
		from = udpio.Unmap(from)
		p, err := c.inbound(buf[:n], from)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if p != nil {
			return copy(buf, p), from, nil
		}
	}
}

// inbound sorts one received datagram p: it returns what the secure layer
// gets (p itself, or the payload of a relayed datagram), or nil for a
// datagram handled or dropped here.
func (c *Conn) inbound(p []byte, from netip.AddrPort) ([]byte, error) {
	switch {
	case len(p) == 0:
	case from == c.server:
		return c.fromServer(p)
	case p[0] == ProbeType:
		c.handleProbe(p, from)
		return nil, nil
	default:
		// Not yet authentic: only the secure layer's Heard, for the packets
		// that authenticate, moves the path's state. Before the path is
		// confirmed, only the addresses we know (the candidates the server
		// gave, and those that sent a probe with the pairing id) are heard
		// at all: someone who merely knows our port cannot put a Hello in
		// front of the peer's. After it, a packet from anywhere may be the
		// peer roaming, and the secure layer authenticates it.
		if !c.isConfirmed.Load() && !c.isKnown(from) {
			break
		}
		c.receivedFrom(from, len(p))
		c.heard()
		return p, nil
	}
	c.count(func(s *Stats) { s.Dropped++ })
	return nil, nil
}

// icmpError reports a read error that only relays an ICMP message about an
// earlier send (Linux reports "connection refused" after we probed a closed
// candidate): not fatal to the socket.
func icmpError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// recvGRO reads coalesced datagrams and returns them one at a time.
func (c *Conn) recvGRO(buf []byte) (int, netip.AddrPort, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for {
		if len(c.segs) > 0 {
			seg := c.segs[:min(c.segSize, len(c.segs))]
			c.segs = c.segs[len(seg):]
			p, err := c.inbound(seg, c.segFrom)
			if err != nil {
				return 0, netip.AddrPort{}, err
			}
			if p != nil {
				return copy(buf, p), c.segFrom, nil
			}
			continue
		}
		// With room for a whole coalesced read, read straight into buf
		// and keep only what follows the first datagram: large datagrams
		// (one per read) are then never copied.
		direct := len(buf) >= len(c.groBuf)
		rb := c.groBuf
		if direct {
			rb = buf[:len(c.groBuf)]
		}
		n, oobn, _, from, err := c.udp.ReadMsgUDPAddrPort(rb, c.oobIn)
		if err != nil {
			if icmpError(err) {
				c.readErrQueue()
				continue
			}
			return 0, netip.AddrPort{}, err
		}
		from = udpio.Unmap(from)
		if n == 0 {
			continue
		}
		size := groSegmentSize(c.oobIn[:oobn])
		if size <= 0 || size > n {
			size = n
		}
		if !direct {
			c.segs, c.segSize, c.segFrom = c.groBuf[:n], size, from
			continue
		}
		c.segs, c.segSize, c.segFrom = c.groBuf[:copy(c.groBuf, buf[size:n])], size, from
		p, err := c.inbound(buf[:size], from)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if p != nil {
			return copy(buf, p), from, nil
		}
	}
}
