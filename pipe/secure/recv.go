package secure

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// Recv blocks until the next authentic data payload, copies it into buf
// and returns its length. Keepalives, late handshake packets and everything
// that fails to authenticate are consumed without returning. If buf is
// shorter than the payload, the packet is lost and the error wraps
// io.ErrShortBuffer; a buf of PayloadLimit bytes always suffices. After Close,
// Recv returns an error wrapping net.ErrClosed. If the peer reports that it
// failed to authenticate this session (before any of its packets arrived),
// Recv returns an error matching ErrAuth.
func (c *Conn) Recv(buf []byte) (int, error) {
	n, _, err := c.RecvPlaced(buf, nil)
	return n, err
}

// RecvPlaced is Recv for a reader that places bodies itself. For a
// DataHead packet it unprotects the head and calls place(head, bodyLen)
// before authenticating anything: place returns where the body should be
// opened (exactly bodyLen bytes), or nil to have it follow the head in buf.
// The head is not yet authentic, and when the packet fails to
// authenticate, whatever place returned is overwritten (with zeros), so
// place must only offer room that holds nothing of value. When the body
// went where place said, RecvPlaced returns the head's length and the body
// (the slice place returned); otherwise the payload's length and a nil
// body, as Recv does. head is valid only during the call.
func (c *Conn) RecvPlaced(buf []byte, place func(head []byte, bodyLen int) []byte) (n int, body []byte, err error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if c.early != nil {
		p := c.early
		c.early = nil
		n, err := c.deliver(buf, p)
		return n, nil, err
	}
	for {
		if c.failure != nil {
			return 0, nil, c.failure
		}
		pkt, from, err := c.readLocked()
		if err != nil {
			return 0, nil, err
		}
		switch pkt[0] {
		case typeData, typeKeepalive:
			// Decrypt straight into buf when it is large enough, which
			// saves copying the payload.
			var dst []byte
			if len(buf) >= len(pkt)-dataHeaderSize-gcmTagSize {
				dst = buf[:0]
			}
			p, ok := c.openLocked(pkt, from, dst)
			if ok && pkt[0] == typeData {
				if dst != nil {
					return len(p), nil, nil
				}
				n, err := c.deliver(buf, p)
				return n, nil, err
			}
		case typeDataHead:
			p, body, ok := c.openHeadLocked(pkt, from, buf, place)
			switch {
			case !ok:
			case body != nil:
				return len(p), body, nil
			case len(p) == 0 || &p[0] != &pkt[dataHeadHeaderSize]:
				return len(p), nil, nil // in buf
			default:
				n, err := c.deliver(buf, p)
				return n, nil, err
			}
		case typeHello, typeReply, typeFinish, typeFinished, typeAuthFailed, typeCancel:
			c.stats.handshake.Add(1)
			c.lateHandshakeLocked(pkt)
		default:
			c.stats.malformed.Add(1)
		}
	}
}

// readLocked reads the next datagram from the link into rbuf. Empty and
// oversized datagrams are counted as malformed and skipped.
func (c *Conn) readLocked() ([]byte, netip.AddrPort, error) {
	for {
		n, from, err := c.link.Recv(c.rbuf[:])
		if err != nil {
			if c.closed.Load() {
				return nil, from, fmt.Errorf("secure: recv: %w", net.ErrClosed)
			}
			return nil, from, fmt.Errorf("secure: recv: %w", err)
		}
		if n == 0 || n > maxDataDatagram {
			c.stats.malformed.Add(1)
			continue
		}
		return c.rbuf[:n], from, nil
	}
}

func (c *Conn) deliver(buf, p []byte) (int, error) {
	if len(buf) < len(p) {
		return 0, fmt.Errorf("secure: recv: %d-byte payload into %d-byte buffer: %w", len(p), len(buf), io.ErrShortBuffer)
	}
	return copy(buf, p), nil
}

// openLocked authenticates and decrypts a data or keepalive packet into
// dst, or in place when dst is nil. On success it records the counter,
// notes the peer's address (a roaming peer is confirmed to the link) and
// returns the payload, which aliases dst or pkt.
func (c *Conn) openLocked(pkt []byte, from netip.AddrPort, dst []byte) ([]byte, bool) {
	if len(pkt) < dataHeaderSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, false
	}
	if pkt[0] == typeKeepalive && len(pkt) != dataHeaderSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, false
	}
	counter := binary.BigEndian.Uint64(pkt[1:dataHeaderSize])
	if !c.replay.fresh(counter) {
		c.stats.replayed.Add(1)
		return nil, false
	}
	binary.BigEndian.PutUint64(c.rnonce[4:], counter)
	ct := pkt[dataHeaderSize:]
	if dst == nil {
		dst = ct[:0]
	}
	p, err := c.recvAEAD.Open(dst, c.rnonce[:], ct, pkt[:dataHeaderSize])
	if err != nil {
		c.stats.forged.Add(1)
		return nil, false
	}
	c.acceptedLocked(counter, from)
	return p, true
}

// acceptedLocked records an authentic data or keepalive packet: its
// counter, and its source as the peer's address (a roaming peer is
// confirmed to the link).
func (c *Conn) acceptedLocked(counter uint64, from netip.AddrPort) {
	c.replay.accept(counter)
	c.stats.opened.Add(1)
	c.heardPeer = true
	if from != c.peer {
		c.peer = from
		c.link.Confirm(from)
	}
	if c.heard != nil {
		c.heard.Heard(from)
	}
}

// openHeadLocked authenticates and decrypts a DataHead packet. With place
// (and room in buf for the head) the head goes to buf and the body where
// place says; it returns the head and the body. Otherwise the payload,
// head and body joined, goes to buf when it fits, else stays in pkt (opened
// in place); it returns the payload and a nil body. On success it records
// the counter and notes the peer's address, as openLocked does.
func (c *Conn) openHeadLocked(pkt []byte, from netip.AddrPort, buf []byte, place func([]byte, int) []byte) (p, body []byte, ok bool) {
	if len(pkt) < dataHeadHeaderSize+1+headSampleSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, nil, false
	}
	h := int(pkt[dataHeaderSize])
	bodyLen := len(pkt) - dataHeadHeaderSize - h - gcmTagSize
	if h < 1 || h > maxHeadLen || bodyLen < headSampleSize {
		c.stats.malformed.Add(1)
		return nil, nil, false
	}
	counter := binary.BigEndian.Uint64(pkt[1:dataHeaderSize])
	if !c.replay.fresh(counter) {
		c.stats.replayed.Add(1)
		return nil, nil, false
	}
	ad := pkt[:dataHeadHeaderSize+h]
	ct := pkt[len(ad):]
	head := ad[dataHeadHeaderSize:]
	headMask(c.recvHead, ct, &c.rmask, h)
	subtle.XORBytes(head, head, c.rmask.mask[:h])
	binary.BigEndian.PutUint64(c.rnonce[4:], counter)
	var dst []byte
	if place != nil && len(buf) >= h {
		if dst = place(head, bodyLen); len(dst) != bodyLen {
			dst = nil
		}
	}
	var err error
	if dst != nil {
		p = buf[:copy(buf, head)]
		body, err = c.recvAEAD.Open(dst[:0], c.rnonce[:], ct, ad)
	} else if len(buf) >= h+bodyLen {
		copy(buf, head)
		_, err = c.recvAEAD.Open(buf[h:h], c.rnonce[:], ct, ad)
		p = buf[:h+bodyLen]
	} else {
		// In place: the plaintext body lands right after the head.
		_, err = c.recvAEAD.Open(ct[:0], c.rnonce[:], ct, ad)
		p = pkt[dataHeadHeaderSize : dataHeadHeaderSize+h+bodyLen]
	}
	if err != nil {
		c.stats.forged.Add(1)
		return nil, nil, false
	}
	c.acceptedLocked(counter, from)
	return p, body, true
}

// acceptEarly handles a data or keepalive packet that reaches the initiator
// before Finished: if it authenticates, the responder holds the keys, which
// completes the handshake. A data payload is kept for the first Recv.
func (c *Conn) acceptEarly(pkt []byte, from netip.AddrPort) bool {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	var p []byte
	var ok bool
	if pkt[0] == typeDataHead {
		p, _, ok = c.openHeadLocked(pkt, from, nil, nil)
	} else {
		p, ok = c.openLocked(pkt, from, nil)
	}
	if !ok {
		return false
	}
	if pkt[0] != typeKeepalive {
		c.early = bytes.Clone(p)
	}
	return true
}

// lateHandshakeLocked answers handshake packets that arrive after the
// handshake: a repeated Finish means our Finished was lost, so the
// responder sends it again; an AuthFailed notice about this handshake means
// the peer rejected it, which ends the session unless the peer already
// proved it holds the keys. Everything else is stale and ignored.
func (c *Conn) lateHandshakeLocked(pkt []byte) {
	switch pkt[0] {
	case typeFinish:
		if c.finished == nil {
			return
		}
		h := sha256.Sum256(pkt)
		if subtle.ConstantTimeCompare(h[:], c.finishHash[:]) == 1 {
			// Best effort: if it is lost too, the peer asks again.
			_ = c.link.Send(c.finished)
		}
	case typeCancel:
		// The peer gave up before it heard from us (our Finished was
		// lost, say): honoured, as AuthFailed, only until it proved it has
		// the keys.
		m, err := parseCancel(pkt)
		if err == nil && m.id == c.id && !c.heardPeer && len(c.refs) > 0 && m.hello == c.refs[0] &&
			c.cancelKey != nil && hmac.Equal(m.tag[:], mac(c.cancelKey, m.hello[:])) {
			c.failure = ErrPeerCancelled
		}
	case typeAuthFailed:
		m, err := parseAuthFailed(pkt)
		if err != nil || m.id != c.id || c.heardPeer {
			return
		}
		for _, r := range c.refs {
			if r == m.hello || r == m.failed {
				c.failure = authError("the peer rejected the handshake")
				return
			}
		}
	}
}
