package path

import (
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/p2pcat/p2pcat/internal/textsafe"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// relayKeepaliveInterval: on a direct path, how often an empty relayed
// datagram keeps our NAT mapping toward the relay open (NATs forget idle UDP
// mappings after 30 s or more).
const relayKeepaliveInterval = 10 * time.Second

// ErrRelayEnded: the server stopped relaying this session.
var ErrRelayEnded = errors.New("the rendezvous server ended the relay")

// sendRelayBind asks the server to move our end of the relay to the
// address this socket has now. Without a cookie the server answers with a
// Challenge, and fromServer sends it again with the cookie.
func (c *Conn) sendRelayBind(cookie []byte) {
	c.mu.Lock()
	if cookie == nil {
		c.bindReqID = randUint64()
	}
	m := &wire.RelayBind{ReqID: c.bindReqID, Cookie: cookie, PairingID: c.pairingID, Role: c.role}
	m.MAC = wire.RelayBindMAC(c.relayToken, c.pairingID, c.role, cookie)
	c.mu.Unlock()
	c.write(wire.Pad(m.AppendTo(nil)), c.server)
}

// relayUsable reports whether the relay may carry datagrams now.
func (c *Conn) relayUsable() bool { return c.relayAllowed && !c.relayEnded.Load() }

// relaying reports whether the confirmed path is the relay.
func (c *Conn) relaying() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peer.IsValid() && c.peer == c.server
}

// sentDirect notes a datagram sent on the direct path: if nothing comes
// back for a second, the path is lost.
func (c *Conn) sentDirect(now time.Time) {
	if c.unanswered.Load() == 0 {
		c.unanswered.CompareAndSwap(0, now.UnixNano())
	}
}

// directLost reports that what we sent on the direct path for more than a
// second got no datagram back.
func (c *Conn) directLost(now time.Time) bool {
	since := c.unanswered.Load()
	return since != 0 && now.UnixNano()-since > int64(time.Second)
}

// sendRelay sends b through the relay.
func (c *Conn) sendRelay(b []byte) error {
	if len(b) > wire.MaxRelayPayload {
		return nil // too large for the relay: lost, like any oversized datagram
	}
	c.relayMu.Lock()
	defer c.relayMu.Unlock()
	pkt := append(wire.AppendRelayHeader(c.relayBuf[:0], c.pairingID), b...)
	if err := c.write(pkt, c.server); errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// fromServer handles a datagram from the rendezvous server: a relayed
// datagram of this pairing, or the relay's end; late rendezvous answers
// are dropped.
func (c *Conn) fromServer(p []byte) ([]byte, error) {
	if !c.relayAllowed {
		c.count(func(s *Stats) { s.Dropped++ })
		return nil, nil
	}
	if id, payload, ok := wire.ParseRelay(p); ok && id == c.pairingID {
		if len(payload) == 0 {
			return nil, nil // the echo of our relay keepalive, or a bind's answer
		}
		if payload[0] == ProbeType {
			c.noteMovedOn(payload) // movedon.go; never for the secure layer
			return nil, nil
		}
		c.heard()
		return payload, nil
	}
	if m, err := wire.Decode(p); err == nil {
		if ch, ok := m.(*wire.Challenge); ok {
			c.mu.Lock()
			ours := ch.ReqID == c.bindReqID && c.bindReqID != 0
			c.mu.Unlock()
			if ours {
				c.sendRelayBind(ch.Cookie)
				return nil, nil
			}
		}
		if e, ok := m.(*wire.RelayEnded); ok && e.PairingID == c.pairingID && e.Verify(c.relayToken) {
			// Believed only under our token: the server, which gave it to
			// us alone, ended the relay.
			reason := textsafe.Line(e.Reason)
			c.mu.Lock()
			defer c.mu.Unlock()
			c.relayEnded.Store(true)
			c.relayErr = fmt.Errorf("%w: %q", ErrRelayEnded, reason)
			if c.peer == c.server || !c.peer.IsValid() {
				return nil, c.relayErr
			}
			c.log.Info("the server ended the relay; the direct path goes on", "reason", reason)
			return nil, nil
		}
	}
	c.count(func(s *Stats) { s.Dropped++ })
	return nil, nil
}

func randUint64() uint64 {
	var b [8]byte
	crand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}
